"""Top-K ranking metrics with one held-out target per user (leave-one-out), vectorised.

``ranked`` is an int array ``[U, >=k]`` of item indices, best first (``-1`` pads lists shorter
than ``k``); ``target`` is ``[U]``. Recall@k is 1 when the target is among the first ``k``
(= hit rate with a single target); NDCG@k is ``1 / log2(rank + 2)`` for a 0-based ``rank < k``
(the ideal DCG with one relevant item is 1). Worked example: ranked ``[[7, 3, 9]]``, target
``[3]``: Recall@1 = 0, Recall@2 = 1, NDCG@2 = 1/log2(3) = 0.6309.
"""

from __future__ import annotations

from typing import Dict, Iterable, List

import numpy as np
import pandas as pd

from semid_pipeline.core.frames import split_inputs
from semid_pipeline.core.recommendations import ranked_matrix


def _hit_rank(ranked: np.ndarray, target: np.ndarray, k: int) -> np.ndarray:
    ranked = np.asarray(ranked)
    target = np.asarray(target)
    if ranked.ndim != 2 or target.ndim != 1 or ranked.shape[0] != target.shape[0]:
        raise ValueError(f"ranked must be [U, K] and target [U]; got {ranked.shape} and {target.shape}")
    if ranked.shape[1] < k:
        raise ValueError(f"need at least {k} ranked items per user, got {ranked.shape[1]}")
    hits = ranked[:, :k] == target[:, None]
    # first hit position, or k when the target is absent
    return np.where(hits.any(axis=1), hits.argmax(axis=1), k)


def recall_at_k(ranked: np.ndarray, target: np.ndarray, k: int) -> np.ndarray:
    """Per-user Recall@k (float array ``[U]``)."""
    return (_hit_rank(ranked, target, k) < k).astype(np.float64)


def ndcg_at_k(ranked: np.ndarray, target: np.ndarray, k: int) -> np.ndarray:
    """Per-user NDCG@k (float array ``[U]``)."""
    rank = _hit_rank(ranked, target, k)
    return np.where(rank < k, 1.0 / np.log2(rank + 2.0), 0.0)


def evaluate_topk(ranked: np.ndarray, target: np.ndarray, ks: Iterable[int] = (5, 10)) -> Dict[str, float]:
    """Mean Recall/NDCG at each k: ``{"recall@5": ..., "ndcg@5": ..., ...}``."""
    out: Dict[str, float] = {}
    for k in ks:
        out[f"recall@{k}"] = float(recall_at_k(ranked, target, k).mean()) if len(target) else 0.0
        out[f"ndcg@{k}"] = float(ndcg_at_k(ranked, target, k).mean()) if len(target) else 0.0
    return out


def score_lists(recs: pd.DataFrame, user_sequences: pd.DataFrame, ks: List[int]) -> pd.DataFrame:
    """Long metric table (model, split, metric, k, value, n_users) from exported top-K lists
    (the recommendations schema), each split scored against its targets (``frames.split_inputs``)."""
    user_idx = user_sequences["user_idx"].to_numpy(np.int64)
    rows = []
    for (model, split), group in recs.groupby(["model", "split"], sort=True):
        _, target = split_inputs(user_sequences, split)
        ranked = ranked_matrix(group, user_idx, max(ks))
        for name, value in evaluate_topk(ranked, target, ks).items():
            metric, k = name.split("@")
            rows.append({"model": model, "split": split, "metric": metric, "k": int(k), "value": value, "n_users": len(user_idx)})
    return pd.DataFrame(rows, columns=["model", "split", "metric", "k", "value", "n_users"])
