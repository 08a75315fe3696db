"""Semantic-ID collisions: detection, TIGER's appended-token resolution and codebook statistics.

A *collision* is two or more items whose full code tuple ``(c_1, ..., c_L)`` is identical. TIGER
resolves collisions by appending one extra token that numbers the items of each colliding group
``0, 1, 2, ...``; unique items get ``0``. Everything here is vectorised numpy (``np.unique`` over
rows), so a million-item catalogue takes well under a second.

Levels are numbered from 1 wherever a person reads them (``codebook_stats``' ``level``); code
indexes into ``codes`` columns start at 0 as usual.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np


def _as_codes(codes: np.ndarray) -> np.ndarray:
    arr = np.asarray(codes)
    if arr.ndim != 2:
        raise ValueError(f"codes must be a 2-D (items, levels) array, got shape {arr.shape}")
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"codes must be integers, got dtype {arr.dtype}")
    return arr.astype(np.int64, copy=False)


def _group_rows(codes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Labels every row by its distinct tuple: returns (inverse (N,), counts (G,)).

    Group labels follow the lexicographic order of the tuples (``np.unique(axis=0)``).
    """
    _, inverse, counts = np.unique(codes, axis=0, return_inverse=True, return_counts=True)
    return inverse.reshape(-1), counts


def collided_mask(codes: np.ndarray) -> np.ndarray:
    """``(N,)`` bool: True where the item's full code tuple is shared with at least one other item."""
    arr = _as_codes(codes)
    if arr.shape[0] == 0:
        return np.zeros(0, dtype=bool)
    inverse, counts = _group_rows(arr)
    return counts[inverse] > 1


def collision_rate(codes: np.ndarray) -> float:
    """Share of items whose full code tuple is shared with at least one other item (0.0 for no items).

    Example: codes ``[[1,2],[1,2],[3,4]]`` -> 2/3 (both items of the ``(1,2)`` group collide).
    """
    mask = collided_mask(codes)
    return float(mask.mean()) if mask.size else 0.0


def append_dedup_token(codes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """TIGER's collision resolution: appends a token numbering the items of each code tuple.

    Items that share a code tuple get ``0, 1, 2, ...`` in ascending item-index (row) order; items
    with a unique tuple get ``0``. Returns ``(sids (N, L+1) int64, dedup (N,) int64)`` where
    ``sids = [codes | dedup]``. Every row of ``sids`` is unique. The largest dedup value is the
    size of the biggest collision group minus one and may exceed the codebook size; the
    recommender vocabulary must reserve ``dedup.max() + 1`` tokens for this last position.
    """
    arr = _as_codes(codes)
    n = arr.shape[0]
    if n == 0:
        return np.zeros((0, arr.shape[1] + 1), dtype=np.int64), np.zeros(0, dtype=np.int64)
    inverse, counts = _group_rows(arr)
    order = np.argsort(inverse, kind="stable")  # grouped, ascending item index inside each group
    group_start = np.concatenate(([0], np.cumsum(counts)[:-1]))
    dedup = np.empty(n, dtype=np.int64)
    dedup[order] = np.arange(n, dtype=np.int64) - group_start[inverse[order]]
    return np.concatenate([arr, dedup[:, None]], axis=1), dedup


def _entropy(counts: np.ndarray) -> float:
    """Natural-log Shannon entropy of the distribution proportional to ``counts``."""
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log(p)).sum())


def codebook_stats(codes: np.ndarray, codebook_size: int) -> list[dict[str, Any]]:
    """Per-level codebook usage statistics of an ``(N, L)`` code matrix.

    For each level (column ``l`` of ``codes``) returns a dict with

    - ``level`` (1-based: ``l + 1``, the numbering every report uses), ``codebook_size``;
    - ``used_codes``: distinct codes used at this level, and ``utilisation = used_codes / K``;
    - ``perplexity``: ``exp(H(c_l))`` of the marginal code usage (K for perfectly uniform use);
    - ``unique_prefixes``: distinct prefixes ``(c_0..c_l)``; at the last level this is the number
      of distinct semantic IDs (``N`` when there is no collision);
    - ``conditional_perplexity``: ``exp(H(c_l | c_0..c_{l-1}))``, the effective number of children
      per parent prefix (equals ``perplexity`` at level 1);
    - ``max_prefix_size``: items under the most crowded prefix ``(c_0..c_l)``.
    """
    arr = _as_codes(codes)
    if codebook_size < 1:
        raise ValueError(f"codebook_size must be >= 1, got {codebook_size}")
    if arr.size and (arr.min() < 0 or arr.max() >= codebook_size):
        raise ValueError(f"codes must lie in [0, {codebook_size}), got range [{arr.min()}, {arr.max()}]")
    stats: list[dict[str, Any]] = []
    prev_prefix_entropy = 0.0
    for level in range(arr.shape[1]):
        usage = np.bincount(arr[:, level], minlength=codebook_size)
        used = int((usage > 0).sum())
        if arr.shape[0]:
            _, prefix_counts = _group_rows(arr[:, : level + 1])
        else:
            prefix_counts = np.zeros(0, dtype=np.int64)
        prefix_entropy = _entropy(prefix_counts) if prefix_counts.size else 0.0
        stats.append(
            {
                "level": level + 1,
                "codebook_size": codebook_size,
                "used_codes": used,
                "utilisation": used / codebook_size,
                "perplexity": float(np.exp(_entropy(usage))) if used else 0.0,
                "unique_prefixes": int(prefix_counts.size),
                "conditional_perplexity": float(np.exp(prefix_entropy - prev_prefix_entropy)) if used else 0.0,
                "max_prefix_size": int(prefix_counts.max()) if prefix_counts.size else 0,
            }
        )
        prev_prefix_entropy = prefix_entropy
    return stats


def sid_strings(sids: np.ndarray) -> list[str]:
    """Renders each row of an ``(N, L)`` integer array as ``"12-200-7-0"``."""
    return ["-".join(map(str, row)) for row in _as_codes(sids).tolist()]


CollisionStrategy = Literal["append_token", "sinkhorn"]
COLLISION_STRATEGIES: tuple[str, ...] = ("append_token", "sinkhorn")


def resolve_collisions(
    codes: np.ndarray,
    last_distances: np.ndarray | None = None,
    strategy: str = "append_token",
    seed: int = 0,
    reserved: np.ndarray | None = None,
    sinkhorn_epsilon: float = 0.05,
    sinkhorn_iters: int = 200,
    level_distances: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Makes every item's semantic ID unique. Returns ``(sids (N, W) int64, dedup (N,) int64)``.

    ``codes`` ``(N, L)``: the tokenizer's codes. ``strategy``:

    - ``"append_token"`` (TIGER): ``sids = [codes | dedup]`` (``W = L + 1``); ``dedup`` numbers the
      items of each code tuple ``0, 1, 2, ...`` in row order. ``last_distances`` is ignored.
      With ``reserved`` ``(M, L + 1)`` (SIDs already handed out, e.g. by a frozen tokenizer), new
      items continue each tuple's numbering after the largest reserved dedup value, so no
      reserved SID is repeated.
    - ``"sinkhorn"`` (CAT-ID2 / LETTER): ``W = L``, no extra token; ``dedup`` is all zeros. The
      last code of colliding items is re-assigned by balanced optimal transport over the
      last level's codewords (:func:`~semid_pipeline.core.tokenizers.sinkhorn.sinkhorn_reassign_last_level`),
      which needs ``last_distances`` ``(N, K)``: each item's distance to every last-level codeword.
      With ``reserved`` ``(M, L)`` new items avoid those SIDs too. A prefix ``(c_1..c_{L-1})`` with
      more than K items first spills its excess items to sibling prefixes (upper codes change for
      those few; ``level_distances`` ``(N, L, K)``, optional, picks the nearest sibling). Raises
      ``ValueError`` only when ``N + M > K^L``.

    Deterministic: same inputs and ``seed`` (used only to break exact ties) -> same output.
    """
    arr = _as_codes(codes)
    if strategy == "append_token":
        if reserved is None or np.asarray(reserved).size == 0:
            return append_dedup_token(arr)
        res = _as_codes(np.asarray(reserved).reshape(-1, arr.shape[1] + 1))
        sids, dedup = append_dedup_token(arr)
        if arr.shape[0] == 0:
            return sids, dedup
        # Offset each tuple's numbering by (largest reserved dedup of that tuple + 1).
        both = np.concatenate([arr, res[:, :-1]], axis=0)
        _, inv = np.unique(both, axis=0, return_inverse=True)
        inv = inv.reshape(-1)
        offset = np.zeros(int(inv.max()) + 1, dtype=np.int64)
        np.maximum.at(offset, inv[arr.shape[0] :], res[:, -1] + 1)
        dedup = dedup + offset[inv[: arr.shape[0]]]
        return np.concatenate([arr, dedup[:, None]], axis=1), dedup
    if strategy == "sinkhorn":
        if last_distances is None:
            raise ValueError("collision_strategy 'sinkhorn' needs last_distances (N, K) for the last level")
        from semid_pipeline.core.tokenizers.sinkhorn import sinkhorn_reassign_last_level

        sids = sinkhorn_reassign_last_level(
            arr, last_distances, seed=seed, epsilon=sinkhorn_epsilon, n_iters=sinkhorn_iters, reserved=reserved,
            level_distances=level_distances,
        )
        return sids, np.zeros(arr.shape[0], dtype=np.int64)
    raise ValueError(f"unknown collision strategy {strategy!r}; expected one of {COLLISION_STRATEGIES}")
