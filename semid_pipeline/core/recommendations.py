"""Per-user top-K lists as a long table, and back to a ranked matrix for scoring.

Every model (most-popular, SASRec, the generative recommender) writes the same schema, so anyone
can re-score the exported lists: ``model, split, user_idx, user_id, rank, item_idx, item_id, score``.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd

from semid_pipeline.core.params import check_limit

COLUMNS = ["model", "split", "user_idx", "user_id", "rank", "item_idx", "item_id", "score"]


def check_top_k(top_k: int, n_items: int, beam_size: int | None = None) -> None:
    """Refuses, before any work, a list length (and beam width) that cannot make sense for the catalog.

    ``top_k`` must be in ``[1, n_items]``; a beam search's ``beam_size`` in ``[top_k, n_items]``
    (with one beam per item the search is already exact). ``LimitError`` names value and limit.
    """
    check_limit("top_k", top_k, low=1, high=n_items, high_reason="the catalog size (items that can be recommended)")
    if beam_size is not None:
        check_limit("beam_size", beam_size, low=top_k, low_reason="beam search keeps at least top_k beams",
                    high=n_items, high_reason="the catalog size (the search is exact with one beam per item)")


def topk_frame(
    model: str,
    split: str,
    user_idx: np.ndarray,
    user_ids: Sequence[str],
    items: np.ndarray,
    scores: np.ndarray,
    item_ids: np.ndarray,
) -> pd.DataFrame:
    """Long table from ``items [U, K]`` (``-1`` = no item) and ``scores [U, K]``; padding rows are dropped."""
    items = np.asarray(items, dtype=np.int64)
    n_users, k = items.shape
    valid = items >= 0
    u_rep = np.repeat(np.arange(n_users), k).reshape(n_users, k)
    rank = np.tile(np.arange(k), (n_users, 1))
    sel_items = items[valid]
    return pd.DataFrame(
        {
            "model": model,
            "split": split,
            "user_idx": np.asarray(user_idx, dtype=np.int64)[u_rep[valid]],
            "user_id": np.asarray(user_ids, dtype=object)[u_rep[valid]],
            "rank": rank[valid].astype(np.int64),
            "item_idx": sel_items,
            "item_id": np.asarray(item_ids, dtype=object)[sel_items],
            "score": np.asarray(scores, dtype=np.float64)[valid],
        },
        columns=COLUMNS,
    )


def ranked_matrix(recs: pd.DataFrame, user_idx: np.ndarray, k: int) -> np.ndarray:
    """``[U, k]`` item matrix aligned with ``user_idx`` (``-1`` where a list is shorter than ``k``)."""
    user_idx = np.asarray(user_idx, dtype=np.int64)
    out = np.full((len(user_idx), k), -1, dtype=np.int64)
    if recs.empty:
        return out
    pos = pd.Index(user_idx).get_indexer(recs["user_idx"].to_numpy())
    rank = recs["rank"].to_numpy()
    keep = (pos >= 0) & (rank < k)
    out[pos[keep], rank[keep]] = recs["item_idx"].to_numpy()[keep]
    return out
