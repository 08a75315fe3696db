"""Top-K ranking metrics with one held-out target per user (leave-one-out), vectorised.

``ranked`` is an int array ``[U, >=k]`` of item indices, best first (``-1`` pads lists shorter
than ``k``); ``target`` is ``[U]``. Recall@k is 1 when the target is among the first ``k``
(= hit rate with a single target); NDCG@k is ``1 / log2(rank + 2)`` for a 0-based ``rank < k``
(the ideal DCG with one relevant item is 1). Worked example: ranked ``[[7, 3, 9]]``, target
``[3]``: Recall@1 = 0, Recall@2 = 1, NDCG@2 = 1/log2(3) = 0.6309.

Cold and warm targets (:func:`score_cold_warm`): a test target is *cold* when no user's training
items (``train_items``, what every model trains on) contain it: a new item, or one only ever bought
last. Semantic-ID models rank such items from their content; ID models (SASRec's item embedding,
popularity counts) have learnt nothing about them, so their cold rows read ``n/a`` with the reason
(:data:`COLD_NOT_RANKABLE`) instead of a zero that looks measured.
"""

from __future__ import annotations

from typing import Dict, Iterable, List

import numpy as np
import pandas as pd

from semid_pipeline.core.frames import eval_rows, split_inputs
from semid_pipeline.core.recommendations import ranked_matrix


def sample_users(n_users: int, max_users: int | None, seed: int) -> np.ndarray:
    """Sorted indices of the users a validation or evaluation scores: all ``n_users`` when ``max_users``
    is None or not below it, else a uniform sample of ``max_users`` drawn with ``seed`` (the same users
    for the same seed and user order, whichever model asks)."""
    if max_users is None or max_users >= n_users:
        return np.arange(n_users)
    return np.sort(np.random.default_rng(seed).choice(n_users, max_users, replace=False))


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


COLD_NOT_RANKABLE: Dict[str, str] = {
    "sasrec": "n/a: ID model cannot rank unseen items",
    "most_popular": "n/a: popularity counts cannot rank unseen items",
}
"""Models whose score of an item comes from its training interactions alone, and the note their cold rows carry."""

METRIC_COLUMNS = ["model", "split", "metric", "k", "value", "n_users", "note"]


def trained_items(user_sequences: pd.DataFrame) -> np.ndarray:
    """Sorted unique item indices of every user's ``train_items``: the items the models were trained on."""
    trains = [np.asarray(t, dtype=np.int64) for t in user_sequences["train_items"]]
    return np.unique(np.concatenate(trains)) if trains else np.zeros(0, np.int64)


def cold_targets(user_sequences: pd.DataFrame, split: str = "test") -> np.ndarray:
    """bool ``[U]``: the user's ``split`` target never appears in anyone's training items."""
    _, target = split_inputs(user_sequences, split)
    return ~np.isin(target, trained_items(user_sequences))


def score_cold_warm(recs: pd.DataFrame, user_sequences: pd.DataFrame, ks: List[int], split: str = "test") -> pd.DataFrame:
    """Rows ``<split>_warm`` and ``<split>_cold`` of the metric table (:data:`METRIC_COLUMNS`): each model's
    Recall/NDCG@k over the evaluation users whose target was (warm) or was never (cold) trained on.

    ``n_users`` counts the users of each group. A model in :data:`COLD_NOT_RANKABLE` gets ``NaN`` and that
    note on its cold rows; an empty group gets ``NaN`` and ``"no <group> targets"``.
    """
    scored = eval_rows(user_sequences)  # cold is decided against every user's training items
    user_idx = scored["user_idx"].to_numpy(np.int64)
    _, target = split_inputs(scored, split)
    cold = ~np.isin(target, trained_items(user_sequences))
    rows = []
    for model, group in recs[recs["split"] == split].groupby("model", sort=True):
        ranked = ranked_matrix(group, user_idx, max(ks))
        for name, mask in (("warm", ~cold), ("cold", cold)):
            note = COLD_NOT_RANKABLE.get(str(model), "") if name == "cold" else ""
            if not mask.any():
                note = f"no {name} targets"
            scores = evaluate_topk(ranked[mask], target[mask], ks) if mask.any() and not note else {}
            for k in ks:
                for metric in ("recall", "ndcg"):
                    value = scores.get(f"{metric}@{k}", float("nan"))
                    rows.append({"model": model, "split": f"{split}_{name}", "metric": metric, "k": int(k), "value": value,
                                 "n_users": int(mask.sum()), "note": note})
    return pd.DataFrame(rows, columns=METRIC_COLUMNS)


def score_lists(recs: pd.DataFrame, user_sequences: pd.DataFrame, ks: List[int]) -> pd.DataFrame:
    """Long metric table (:data:`METRIC_COLUMNS`, ``note`` empty) from exported top-K lists
    (the recommendations schema), each split scored against its targets (``frames.split_inputs``), over the
    evaluation users (``frames.eval_rows``: every user unless the preparation drew a sample)."""
    user_sequences = eval_rows(user_sequences)
    user_idx = user_sequences["user_idx"].to_numpy(np.int64)
    rows = []
    for (model, split), group in recs.groupby(["model", "split"], sort=True):
        _, target = split_inputs(user_sequences, split)
        ranked = ranked_matrix(group, user_idx, max(ks))
        for name, value in evaluate_topk(ranked, target, ks).items():
            metric, k = name.split("@")
            rows.append({"model": model, "split": split, "metric": metric, "k": int(k), "value": value, "n_users": len(user_idx),
                         "note": ""})
    return pd.DataFrame(rows, columns=METRIC_COLUMNS)
