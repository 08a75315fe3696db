import math

import numpy as np
import pytest

from semid_pipeline.core.baselines.popularity import most_popular
from semid_pipeline.core.metrics import evaluate_topk, ndcg_at_k, recall_at_k
from semid_pipeline.core.recommendations import ranked_matrix, topk_frame


def test_metrics_match_hand_computed_examples():
    ranked = np.array([[7, 3, 9, 1, 2], [4, 5, 6, 8, 0], [1, 2, 3, 4, 5]])
    target = np.array([3, 0, 42])
    # user 0: hit at rank 1 (0-based); user 1: hit at rank 4; user 2: miss
    assert recall_at_k(ranked, target, 1).tolist() == [0.0, 0.0, 0.0]
    assert recall_at_k(ranked, target, 2).tolist() == [1.0, 0.0, 0.0]
    assert recall_at_k(ranked, target, 5).tolist() == [1.0, 1.0, 0.0]
    np.testing.assert_allclose(ndcg_at_k(ranked, target, 5), [1 / math.log2(3), 1 / math.log2(6), 0.0])
    m = evaluate_topk(ranked, target, ks=(2, 5))
    assert m["recall@2"] == pytest.approx(1 / 3)
    assert m["recall@5"] == pytest.approx(2 / 3)
    assert m["ndcg@5"] == pytest.approx((1 / math.log2(3) + 1 / math.log2(6)) / 3)


def test_metrics_ignore_padding_and_reject_short_lists():
    ranked = np.array([[5, -1, -1]])
    assert recall_at_k(ranked, np.array([5]), 3).tolist() == [1.0]
    with pytest.raises(ValueError):
        recall_at_k(ranked, np.array([5]), 4)


def test_topk_frame_round_trips_to_ranked_matrix():
    items = np.array([[2, 0, -1], [1, 2, 0]])
    scores = np.array([[-0.1, -0.5, -np.inf], [-0.2, -0.3, -0.9]])
    df = topk_frame("m", "test", np.array([10, 11]), ["u10", "u11"], items, scores, np.array(["a", "b", "c"]))
    assert len(df) == 5 and set(df["item_id"]) == {"a", "b", "c"}
    back = ranked_matrix(df, np.array([11, 10]), 3)
    assert back.tolist() == [[1, 2, 0], [2, 0, -1]]


def test_most_popular_counts_and_ties():
    items, scores = most_popular([np.array([1, 2, 2]), np.array([3, 3, 2])], n_items=5, top_k=3)
    assert items.tolist() == [2, 3, 1] and scores.tolist() == [3.0, 2.0, 1.0]
