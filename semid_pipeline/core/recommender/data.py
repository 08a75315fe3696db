"""Token arrays and batches for the generative recommender (training and inference).

Everything is built once with vectorised numpy into ragged ("packed") flat arrays; a batch is a
gather from those arrays into ``[B, max length in batch]`` matrices, so the training loop does no
per-sample Python work.

Row layout (one row = one encoder input plus the decoder segments it trains):

* encoder: ``[user token] + SID tokens of history items first .. first + count - 1`` (``D`` tokens
  per item). ``enc_item`` gives every token's *absolute* item index in the user's history
  (``USER_ITEM`` for the user token, ``PAD_ITEM`` for padding); the model derives its attention
  masks and relative item-distance biases from it.
* decoder (training only): for every target index ``t`` of the row a segment
  ``[BOS, sid_t[0], .., sid_t[D-2]]`` with labels ``sid_t[0 .. D-1]``; ``dec_target`` holds ``t`` for
  every token of the segment (``-1`` for padding).

:func:`build_training_rows` with ``targets_per_row = max_history_items`` gives the ``per_user``
formulation (one row per user, or per chunk of ``targets_per_row`` targets for long histories);
``targets_per_row = 1`` gives classic per-prefix (TIGER) examples.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Optional, Sequence

import numpy as np
import torch

from semid_pipeline.core.recommender.vocab import BOS, PAD

SCORE_BUDGET = 1 << 24
"""Scores (users or positions x items) any full-catalogue scoring holds at once: 64 MiB of float32,
whatever the catalogue size (exact decoding, SASRec's ranking, the distillation teacher)."""

USER_ITEM = -1  # enc_item of the user token
PAD_ITEM = -2  # enc_item of encoder padding
PAD_TARGET = -1  # dec_target of decoder padding
IGNORE_LABEL = -100  # dec_labels of decoder padding (F.cross_entropy's ignore_index)


@dataclass
class SIDBatch:
    """A padded batch; ``B`` rows, padded to the batch's longest row.

    Attributes:
        enc_tokens: int64 ``[B, Le]`` encoder token ids (``PAD`` = 0 after the row's end).
        enc_item: int64 ``[B, Le]`` absolute history index of every token's item (``USER_ITEM``, ``PAD_ITEM``).
        dec_tokens: int64 ``[B, Ld]`` decoder inputs, or ``None`` for inference batches.
        dec_labels: int64 ``[B, Ld]`` next-token labels (``IGNORE_LABEL`` on padding), or ``None``.
        dec_target: int64 ``[B, Ld]`` target item index of every decoder token (``PAD_TARGET``), or ``None``.
    """

    enc_tokens: torch.Tensor
    enc_item: torch.Tensor
    dec_tokens: Optional[torch.Tensor] = None
    dec_labels: Optional[torch.Tensor] = None
    dec_target: Optional[torch.Tensor] = None

    def to(self, device: torch.device | str) -> "SIDBatch":
        moved = {f.name: getattr(self, f.name) for f in fields(self)}
        return SIDBatch(**{k: (v.to(device, non_blocking=True) if v is not None else None) for k, v in moved.items()})


@dataclass
class PackedRows:
    """Ragged rows stored flat: row ``r`` owns ``enc_*[enc_offsets[r]:enc_offsets[r+1]]`` (same for ``dec_*``).

    Attributes:
        enc_tokens, enc_item: int64 ``[total encoder tokens]``.
        enc_offsets: int64 ``[R + 1]``.
        dec_tokens, dec_labels, dec_target: int64 ``[total decoder tokens]`` (empty for inference rows).
        dec_offsets: int64 ``[R + 1]``.
        n_targets: int64 ``[R]`` next-item targets trained by each row (0 for inference rows).
    """

    enc_tokens: np.ndarray
    enc_item: np.ndarray
    enc_offsets: np.ndarray
    dec_tokens: np.ndarray
    dec_labels: np.ndarray
    dec_target: np.ndarray
    dec_offsets: np.ndarray
    n_targets: np.ndarray

    @property
    def n_rows(self) -> int:
        return len(self.enc_offsets) - 1

    @property
    def enc_lengths(self) -> np.ndarray:
        return np.diff(self.enc_offsets)

    @property
    def dec_lengths(self) -> np.ndarray:
        return np.diff(self.dec_offsets)

    @property
    def lengths(self) -> np.ndarray:
        """Encoder + decoder tokens per row (the cost proxy used for length bucketing)."""
        return self.enc_lengths + self.dec_lengths

    def batch(self, rows: np.ndarray) -> SIDBatch:
        """Collates ``rows`` (int array ``[B]``) into a :class:`SIDBatch` on CPU."""
        rows = np.asarray(rows, dtype=np.int64)
        enc_idx, enc_valid = _pad_index(self.enc_offsets, rows)
        batch = SIDBatch(
            enc_tokens=_gather(self.enc_tokens, enc_idx, enc_valid, PAD),
            enc_item=_gather(self.enc_item, enc_idx, enc_valid, PAD_ITEM),
        )
        if self.dec_tokens.size:
            dec_idx, dec_valid = _pad_index(self.dec_offsets, rows)
            batch.dec_tokens = _gather(self.dec_tokens, dec_idx, dec_valid, PAD)
            batch.dec_labels = _gather(self.dec_labels, dec_idx, dec_valid, IGNORE_LABEL)
            batch.dec_target = _gather(self.dec_target, dec_idx, dec_valid, PAD_TARGET)
        return batch


def _pad_index(offsets: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Flat indices ``[B, L]`` of the rows' elements (``L`` = longest row) and their validity mask."""
    starts = offsets[rows]
    lengths = offsets[rows + 1] - starts
    width = int(lengths.max()) if len(rows) else 0
    col = np.arange(width, dtype=np.int64)
    valid = col[None, :] < lengths[:, None]
    return np.where(valid, starts[:, None] + col[None, :], 0), valid


def _gather(flat: np.ndarray, idx: np.ndarray, valid: np.ndarray, fill: int) -> torch.Tensor:
    return torch.from_numpy(np.where(valid, flat[idx], fill))


def ragged_arange(counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For counts ``[R]``: (row id, index within row) of every element of ``concat(arange(c))``."""
    counts = np.asarray(counts, dtype=np.int64)
    row = np.repeat(np.arange(len(counts), dtype=np.int64), counts)
    starts = np.cumsum(counts) - counts
    return row, np.arange(int(counts.sum()), dtype=np.int64) - starts[row]


def _offsets(lengths: np.ndarray) -> np.ndarray:
    return np.concatenate([[0], np.cumsum(lengths, dtype=np.int64)]).astype(np.int64)


class _Histories:
    """All users' histories concatenated: ``item(u, t)`` is user ``u``'s ``t``-th item."""

    def __init__(self, histories: Sequence[np.ndarray], n_items: int):
        lengths = np.fromiter((len(h) for h in histories), dtype=np.int64, count=len(histories))
        self.lengths = lengths
        self.starts = np.cumsum(lengths) - lengths
        self.flat = (
            np.concatenate([np.asarray(h, dtype=np.int64).reshape(-1) for h in histories])
            if lengths.sum()
            else np.zeros(0, dtype=np.int64)
        )
        if self.flat.size and (self.flat.min() < 0 or self.flat.max() >= n_items):
            raise ValueError(f"history item indices must lie in [0, {n_items}), got [{self.flat.min()}, {self.flat.max()}]")

    def item(self, user: np.ndarray, t: np.ndarray) -> np.ndarray:
        return self.flat[self.starts[user] + t]


def _pack(
    hist: _Histories,
    user_tokens: np.ndarray,
    item_tokens: np.ndarray,
    row_user: np.ndarray,
    enc_first: np.ndarray,
    enc_count: np.ndarray,
    dec_first: np.ndarray,
    dec_count: np.ndarray,
) -> PackedRows:
    """Packs rows: encoder items ``enc_first .. + enc_count`` and decoder targets ``dec_first .. + dec_count``."""
    depth = item_tokens.shape[1]

    enc_offsets = _offsets(1 + enc_count * depth)
    enc_tokens = np.empty(int(enc_offsets[-1]), dtype=np.int64)
    enc_item = np.empty_like(enc_tokens)
    enc_tokens[enc_offsets[:-1]] = user_tokens[row_user]
    enc_item[enc_offsets[:-1]] = USER_ITEM
    r, k = ragged_arange(enc_count)
    t = enc_first[r] + k
    where = (enc_offsets[r] + 1 + k * depth)[:, None] + np.arange(depth)
    enc_tokens[where] = item_tokens[hist.item(row_user[r], t)]
    enc_item[where] = t[:, None]

    r, k = ragged_arange(dec_count)
    t = dec_first[r] + k
    labels = item_tokens[hist.item(row_user[r], t)]  # [M, D]
    inputs = np.concatenate([np.full((len(t), 1), BOS, dtype=np.int64), labels[:, :-1]], axis=1)
    return PackedRows(
        enc_tokens=enc_tokens,
        enc_item=enc_item,
        enc_offsets=enc_offsets,
        dec_tokens=inputs.reshape(-1),
        dec_labels=labels.reshape(-1),
        dec_target=np.repeat(t, depth),
        dec_offsets=_offsets(dec_count * depth),
        n_targets=dec_count.astype(np.int64),
    )


def build_training_rows(
    histories: Sequence[np.ndarray],
    user_tokens: np.ndarray,
    item_tokens: np.ndarray,
    max_history_items: int,
    targets_per_row: int,
) -> PackedRows:
    """Training rows: every item ``t >= 1`` of every history is a target, seeing items ``[t-H, t)``.

    Args:
        histories: per user, the item indices of the training sequence (chronological).
        user_tokens: int64 ``[U]`` user token ids (:meth:`SIDVocab.user_tokens`).
        item_tokens: int64 ``[N, D]`` token ids of every item's SID (:meth:`SIDVocab.item_tokens`).
        max_history_items: ``H``, the items a target may see.
        targets_per_row: targets packed per row. ``H`` -> ``per_user`` rows: a user's targets
            ``1 .. n-1`` are cut into chunks ``[a, a + H)``, each row's encoder holding items
            ``[max(0, a - H), a + H - 1)`` (users with ``n <= H + 1`` items give exactly one row);
            ``1`` -> ``per_prefix`` rows (one per target, encoder = the target's history window).

    Users with fewer than two items give no rows.
    """
    if targets_per_row < 1 or max_history_items < 1:
        raise ValueError("targets_per_row and max_history_items must be >= 1")
    hist = _Histories(histories, item_tokens.shape[0])
    if len(user_tokens) != len(hist.lengths):
        raise ValueError(f"{len(user_tokens)} user tokens for {len(hist.lengths)} histories")
    n_chunks = np.maximum(hist.lengths - 1, 0)
    n_chunks = (n_chunks + targets_per_row - 1) // targets_per_row
    row_user, chunk = ragged_arange(n_chunks)
    dec_first = 1 + chunk * targets_per_row
    dec_count = np.minimum(targets_per_row, hist.lengths[row_user] - dec_first)
    enc_first = np.maximum(dec_first - max_history_items, 0)
    enc_count = dec_first + dec_count - 1 - enc_first
    return _pack(hist, np.asarray(user_tokens, dtype=np.int64), item_tokens, row_user, enc_first, enc_count, dec_first, dec_count)


def build_inference_rows(
    histories: Sequence[np.ndarray],
    user_tokens: np.ndarray,
    item_tokens: np.ndarray,
    max_history_items: int,
) -> PackedRows:
    """One encoder-only row per user: the user token and the last ``max_history_items`` items.

    Items keep their absolute history index, as in training (the model only uses differences of
    indices). Empty histories give a row with the user token only.
    """
    hist = _Histories(histories, item_tokens.shape[0])
    if len(user_tokens) != len(hist.lengths):
        raise ValueError(f"{len(user_tokens)} user tokens for {len(hist.lengths)} histories")
    n_users = len(hist.lengths)
    enc_first = np.maximum(hist.lengths - max_history_items, 0)
    zeros = np.zeros(n_users, dtype=np.int64)
    return _pack(
        hist, np.asarray(user_tokens, dtype=np.int64), item_tokens, np.arange(n_users), enc_first, hist.lengths - enc_first, zeros, zeros
    )


class LengthBucketSampler:
    """Seeded, length-bucketed batches of row indices.

    Each epoch the rows are shuffled with ``np.random.default_rng([seed, epoch])``, cut into pools of
    ``batch_size * pool_batches`` rows, each pool is sorted by length and cut into batches, and the
    batch order is shuffled. Batches thus hold rows of similar length (little padding) while the
    order stays random and reproducible.
    """

    def __init__(self, lengths: np.ndarray, batch_size: int, seed: int, pool_batches: int = 50):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.lengths = np.asarray(lengths)
        self.batch_size = batch_size
        self.seed = seed
        self.pool = batch_size * pool_batches

    def __len__(self) -> int:
        return (len(self.lengths) + self.batch_size - 1) // self.batch_size

    def epoch(self, epoch: int) -> list[np.ndarray]:
        rng = np.random.default_rng([self.seed, epoch])
        order = rng.permutation(len(self.lengths))
        batches = []
        for start in range(0, len(order), self.pool):
            pool = order[start : start + self.pool]
            pool = pool[np.argsort(self.lengths[pool], kind="stable")]
            batches.extend(pool[i : i + self.batch_size] for i in range(0, len(pool), self.batch_size))
        return [batches[i] for i in rng.permutation(len(batches))]


def sorted_batches(lengths: np.ndarray, batch_size: int) -> list[np.ndarray]:
    """Deterministic inference batches: rows sorted by length, cut into chunks of ``batch_size``."""
    order = np.argsort(np.asarray(lengths), kind="stable")
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
