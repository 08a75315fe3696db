"""Semantic-ID assignment of a catalog: ``full`` (every item from scratch) or ``frozen``.

``frozen`` is how a living catalog grows without invalidating a trained recommender: the
tokenizer is not retrained, every item that already has a SID keeps it (codes, de-duplication
token, everything), and only items without one are encoded. Collisions of new items are resolved
*against* the SIDs already handed out, never by renumbering an old item
(:func:`~semid_pipeline.core.tokenizers.collisions.resolve_collisions` with ``reserved``):

- ``append_token`` (TIGER): a new item whose code tuple is taken gets the next de-duplication
  token after the largest one ever given to that tuple (items that left the catalog included,
  so a retired SID is never reused for a different item).
- ``sinkhorn`` (CAT-ID2 / LETTER, no extra token): colliding new items are moved to a free
  last-level code by balanced optimal transport over their distances to the last codebook,
  avoiding every reserved SID.

Items of the previous assignment that are not in the catalog any more are dropped from the new
assignment (the version diff reports them as removed). Changed items (same ``item_id``, new
text) keep their SID in frozen mode: stability is the point of that mode; ``full`` mode
re-encodes them.
"""

from __future__ import annotations

from typing import Optional, Tuple

import numpy as np
import pandas as pd
import torch

from semid_pipeline.core.tokenizers.collisions import collided_mask, resolve_collisions, sid_strings


@torch.no_grad()
def encode_catalog(
    model, x: np.ndarray, batch_size: int = 8192, last_distances: bool = True
) -> Tuple[np.ndarray, Optional[np.ndarray]]:
    """Codes ``(N, L)`` int64 and last-level distances ``(N, K)`` float32 (None unless
    ``last_distances``) of ``x`` under ``model`` (an RQ-VAE: eval mode, deterministic argmin), on the CPU."""
    if not last_distances:
        return model.encode(torch.as_tensor(x), batch_size=batch_size).numpy().astype(np.int64), None
    if not (hasattr(model, "encode_latent") and hasattr(model, "quantize")):
        raise ValueError(f"{type(model).__name__} exposes no last-level distances; use collision strategy 'append_token'")
    z = model.encode_latent(torch.as_tensor(x), batch_size)
    codes, last = [], []
    for i in range(0, max(z.shape[0], 1), batch_size):
        c, _, _, dist = model.quantize(z[i : i + batch_size])
        codes.append(c.cpu())
        last.append(dist[:, -1].float().cpu())
    return torch.cat(codes).numpy().astype(np.int64), torch.cat(last).numpy()


def _frame(item_idx, item_ids, codes, dedup, sids, status) -> pd.DataFrame:
    df = pd.DataFrame(
        {
            "item_idx": np.asarray(item_idx, dtype=np.int64),
            "item_id": np.asarray(item_ids, dtype=object),
            "codes": list(np.asarray(codes, dtype=np.int64)),
            "dedup": np.asarray(dedup, dtype=np.int64),
            "sid": list(np.asarray(sids, dtype=np.int64)),
            "sid_str": sid_strings(np.asarray(sids, dtype=np.int64)),
            "collided": collided_mask(np.asarray(codes, dtype=np.int64)),
            "status": np.asarray(status, dtype=object),
        }
    )
    return df.sort_values("item_idx", kind="stable").reset_index(drop=True)


def assign_full(
    item_idx: np.ndarray,
    item_ids: np.ndarray,
    codes: np.ndarray,
    last_distances: Optional[np.ndarray] = None,
    strategy: str = "append_token",
    seed: int = 0,
) -> pd.DataFrame:
    """Every item from scratch: ``resolve_collisions`` over the whole catalog (rows in ``item_idx`` order).

    Returns the ``semantic_ids`` table (docs/DESIGN.md) plus ``status`` = ``"new"``.
    """
    order = np.argsort(np.asarray(item_idx), kind="stable")
    codes = np.asarray(codes, dtype=np.int64)[order]
    dist = None if last_distances is None else np.asarray(last_distances)[order]
    sids, dedup = resolve_collisions(codes, dist, strategy=strategy, seed=seed)
    return _frame(np.asarray(item_idx)[order], np.asarray(item_ids)[order], codes, dedup, sids, ["new"] * len(order))


def assign_frozen(
    previous: pd.DataFrame,
    item_idx: np.ndarray,
    item_ids: np.ndarray,
    codes: np.ndarray,
    last_distances: Optional[np.ndarray] = None,
    strategy: str = "append_token",
    seed: int = 0,
) -> pd.DataFrame:
    """Items of ``previous`` (a ``semantic_ids`` table) keep their SID; the others get one that
    collides with no SID of ``previous`` nor with each other.

    ``item_idx`` / ``item_ids`` / ``codes`` (/ ``last_distances`` for ``sinkhorn``) describe the
    current catalog; ``codes`` of kept items are ignored (their previous codes are kept).
    ``status`` is ``"kept"`` or ``"new"``. Raises ``ValueError`` if ``previous`` was made with a
    different SID layout than ``strategy`` produces (an extra token or not), since mixing them
    would give SIDs of different lengths.
    """
    item_ids = np.asarray(item_ids, dtype=object)
    codes = np.asarray(codes, dtype=np.int64)
    n_levels = codes.shape[1]
    prev = previous.drop_duplicates("item_id", keep="last").set_index("item_id")
    prev_sids = np.stack(prev["sid"].to_numpy()).astype(np.int64) if len(prev) else np.zeros((0, n_levels), np.int64)
    width = n_levels + 1 if strategy == "append_token" else n_levels
    if len(prev) and prev_sids.shape[1] != width:
        raise ValueError(
            f"previous assignment has SIDs of length {prev_sids.shape[1]} but strategy {strategy!r} makes length {width}; "
            "a frozen assignment must keep the previous collision strategy (or re-assign in mode 'full')"
        )
    kept = pd.Index(prev.index).get_indexer(item_ids) >= 0
    new = ~kept
    dist = None if last_distances is None else np.asarray(last_distances)[new]
    new_sids, new_dedup = resolve_collisions(codes[new], dist, strategy=strategy, seed=seed, reserved=prev_sids)

    out_codes = codes.copy()
    out_sids = np.zeros((len(item_ids), width), dtype=np.int64)
    out_dedup = np.zeros(len(item_ids), dtype=np.int64)
    if kept.any():
        rows = prev.loc[item_ids[kept]]
        out_codes[kept] = np.stack(rows["codes"].to_numpy()).astype(np.int64)
        out_sids[kept] = np.stack(rows["sid"].to_numpy()).astype(np.int64)
        out_dedup[kept] = rows["dedup"].to_numpy(np.int64) if "dedup" in rows else 0
    out_sids[new] = new_sids
    out_dedup[new] = new_dedup
    status = np.where(kept, "kept", "new")
    frame = _frame(item_idx, item_ids, out_codes, out_dedup, out_sids, status)
    if frame["sid_str"].duplicated().any():  # resolve_collisions guarantees this; a failure here is a bug
        dup = frame.loc[frame["sid_str"].duplicated(keep=False), ["item_id", "sid_str"]].head(4).to_dict("records")
        raise RuntimeError(f"frozen assignment produced duplicate SIDs, e.g. {dup}")
    return frame
