"""Token layout of the generative recommender.

One flat vocabulary serves encoder, decoder and output head::

    0                      PAD
    1                      BOS (decoder start)
    offset_l + c           code ``c`` of SID level ``l`` (every level has its own range, including
                           an appended de-duplication level with its own size)
    user_offset + b        user bucket ``b`` (user ids are hashed into ``n_user_buckets``)

Because every level owns a disjoint token range, a token id alone tells which level it belongs to
(:meth:`SIDVocab.token_types`), and the decoder's next-token distribution for level ``l`` is the
slice :meth:`SIDVocab.level_slice` of the full-vocabulary logits.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, Tuple

import numpy as np

PAD = 0
BOS = 1
N_SPECIAL = 2

# Token types (see ``SIDVocab.token_types``): special tokens, the user token, then one per level.
TYPE_PAD = 0
TYPE_BOS = 1
TYPE_USER = 2
TYPE_LEVEL0 = 3


def level_sizes(sids: np.ndarray) -> Tuple[int, ...]:
    """Codes per SID level as ``sids`` ``(N, D)`` use them: ``max code + 1`` per column."""
    return tuple(int(m) + 1 for m in np.asarray(sids).max(axis=0))

@dataclass(frozen=True)
class SIDVocab:
    """Vocabulary for SIDs with ``D = len(level_sizes)`` levels plus hashed user tokens.

    Args:
        level_sizes: number of distinct codes per level, e.g. ``(256, 256, 256, 8)`` for three
            RQ-VAE levels plus a de-duplication token that never exceeds 7.
        n_user_buckets: number of hashed user tokens (TIGER: 2000).
    """

    level_sizes: Tuple[int, ...]
    n_user_buckets: int

    def __post_init__(self) -> None:
        sizes = tuple(int(s) for s in self.level_sizes)
        if not sizes or min(sizes) < 1:
            raise ValueError(f"level_sizes must be non-empty positive ints, got {self.level_sizes}")
        if self.n_user_buckets < 1:
            raise ValueError(f"n_user_buckets must be >= 1, got {self.n_user_buckets}")
        object.__setattr__(self, "level_sizes", sizes)

    @classmethod
    def from_sids(cls, sids: np.ndarray, n_user_buckets: int) -> "SIDVocab":
        """Level sizes = ``max code + 1`` per column of ``sids`` ``(N, D)``."""
        arr = np.asarray(sids)
        if arr.ndim != 2 or arr.shape[0] == 0 or arr.shape[1] == 0:
            raise ValueError(f"sids must be a non-empty (items, levels) array, got shape {arr.shape}")
        if arr.min() < 0:
            raise ValueError("sids must be non-negative codes")
        return cls(level_sizes(arr), n_user_buckets)

    @property
    def n_levels(self) -> int:
        return len(self.level_sizes)

    @property
    def level_offsets(self) -> Tuple[int, ...]:
        """First token id of every level."""
        return tuple(int(o) for o in N_SPECIAL + np.concatenate([[0], np.cumsum(self.level_sizes)[:-1]]))

    @property
    def user_offset(self) -> int:
        return N_SPECIAL + sum(self.level_sizes)

    @property
    def vocab_size(self) -> int:
        return self.user_offset + self.n_user_buckets

    @property
    def n_types(self) -> int:
        """PAD, BOS, user, then one type per SID level."""
        return TYPE_LEVEL0 + self.n_levels

    def level_slice(self, level: int) -> slice:
        """Token ids of SID level ``level``: ``logits[..., vocab.level_slice(l)]`` is level ``l``'s codes."""
        off = self.level_offsets[level]
        return slice(off, off + self.level_sizes[level])

    def item_tokens(self, sids: np.ndarray) -> np.ndarray:
        """``(N, D)`` codes -> ``(N, D)`` int64 token ids; raises on codes outside a level's range."""
        arr = np.asarray(sids, dtype=np.int64)
        if arr.ndim != 2 or arr.shape[1] != self.n_levels:
            raise ValueError(f"sids must have shape (N, {self.n_levels}), got {arr.shape}")
        sizes = np.asarray(self.level_sizes)
        bad = (arr < 0) | (arr >= sizes)
        if bad.any():
            row, col = np.argwhere(bad)[0]
            raise ValueError(f"sid row {row} level {col}: code {arr[row, col]} outside [0, {sizes[col]})")
        return arr + np.asarray(self.level_offsets, dtype=np.int64)

    def user_tokens(self, user_ids: np.ndarray) -> np.ndarray:
        """``(U,)`` non-negative integer user ids -> ``(U,)`` user token ids.

        Ids are hashed with splitmix64 (deterministic across processes and platforms) into
        ``n_user_buckets`` buckets, as TIGER hashes users into 2000 tokens.
        """
        ids = np.asarray(user_ids)
        if ids.size and not np.issubdtype(ids.dtype, np.integer):
            raise ValueError(f"user ids must be integers (user_idx), got dtype {ids.dtype}")
        z = ids.astype(np.uint64)
        with np.errstate(over="ignore"):
            z = z + np.uint64(0x9E3779B97F4A7C15)
            z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
            z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
            z = z ^ (z >> np.uint64(31))
        return (z % np.uint64(self.n_user_buckets)).astype(np.int64) + self.user_offset

    def token_types(self) -> np.ndarray:
        """``(vocab_size,)`` int64: the type of every token id (``TYPE_*`` constants, level ``l`` -> ``TYPE_LEVEL0 + l``)."""
        types = np.full(self.vocab_size, TYPE_USER, dtype=np.int64)
        types[PAD] = TYPE_PAD
        types[BOS] = TYPE_BOS
        for level in range(self.n_levels):
            types[self.level_slice(level)] = TYPE_LEVEL0 + level
        return types

    def to_dict(self) -> Dict[str, Any]:
        return {"level_sizes": list(self.level_sizes), "n_user_buckets": self.n_user_buckets}

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> "SIDVocab":
        return cls(tuple(d["level_sizes"]), int(d["n_user_buckets"]))
