"""Recall@k with several relevant products per query (CAT-ID2 section 4.1, "Evaluation").

Recall@k of a query = |top-k retrieved ∩ relevant| / |relevant|; the reported value is the mean over
queries with at least one relevant product. Worked example: ranked ``[[4, 2, 9]]``, relevant
``[{2, 5}]``: Recall@1 = 0, Recall@2 = 0.5, Recall@3 = 0.5.
"""

from __future__ import annotations

from typing import Dict, Iterable, Sequence

import numpy as np

RETRIEVAL_KS = (5, 10, 20, 50, 100)


def recall_per_query(ranked: np.ndarray, relevant: Sequence[np.ndarray], k: int) -> np.ndarray:
    """Per-query Recall@k; ``ranked`` int ``[Q, >=k]`` (``-1`` pads short lists), ``relevant`` one int array per query."""
    ranked = np.asarray(ranked)
    if ranked.ndim != 2 or ranked.shape[0] != len(relevant):
        raise ValueError(f"ranked must be [Q, K] with Q = {len(relevant)} queries, got {ranked.shape}")
    if ranked.shape[1] < k:
        raise ValueError(f"need at least {k} ranked items per query, got {ranked.shape[1]}")
    out = np.zeros(len(relevant), dtype=np.float64)
    for q, rel in enumerate(relevant):
        rel = np.unique(np.asarray(rel, dtype=np.int64))
        if rel.size == 0:
            raise ValueError(f"query {q} has no relevant item")
        top = ranked[q, :k]
        out[q] = np.isin(np.unique(top[top >= 0]), rel).sum() / rel.size
    return out


def recall_table(ranked: np.ndarray, relevant: Sequence[np.ndarray], ks: Iterable[int] = RETRIEVAL_KS) -> Dict[int, float]:
    """Mean Recall@k for every ``k`` (ks larger than the list length are skipped)."""
    return {int(k): float(recall_per_query(ranked, relevant, k).mean()) for k in ks if k <= np.asarray(ranked).shape[1]}
