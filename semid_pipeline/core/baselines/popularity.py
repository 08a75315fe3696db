"""Most-popular baseline: every user gets the items with the most training interactions.

Popularity is counted on the interactions a model may see for the split being scored: for
validation, the training items of every user; for test, the training items plus every user's
validation item (the same information the generative model sees at test time). Ties are broken
by the lower item index, so the lists are deterministic.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np


def popularity_counts(histories: Sequence[np.ndarray], n_items: int) -> np.ndarray:
    flat = np.concatenate([np.asarray(h, dtype=np.int64) for h in histories]) if len(histories) else np.empty(0, np.int64)
    return np.bincount(flat, minlength=n_items)


def most_popular(histories: Sequence[np.ndarray], n_items: int, top_k: int) -> tuple[np.ndarray, np.ndarray]:
    """Returns ``(items [top_k], scores [top_k])``: the top items by count (score = count)."""
    counts = popularity_counts(histories, n_items)
    order = np.lexsort((np.arange(n_items), -counts))[:top_k]
    return order.astype(np.int64), counts[order].astype(np.float64)
