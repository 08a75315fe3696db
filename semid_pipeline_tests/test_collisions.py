"""Collision rate, TIGER's appended dedup token, codebook statistics and SID strings."""

from __future__ import annotations

import math

import numpy as np
import pytest

from semid_pipeline.core.tokenizers.collisions import (
    append_dedup_token,
    codebook_stats,
    collided_mask,
    collision_rate,
    sid_strings,
)

CODES = np.array(
    [
        [1, 2, 3],  # 0: group A
        [4, 5, 6],  # 1: unique
        [1, 2, 3],  # 2: group A
        [7, 8, 9],  # 3: group B
        [1, 2, 3],  # 4: group A
        [7, 8, 9],  # 5: group B
        [1, 2, 4],  # 6: shares a prefix with A only
    ]
)


def test_collision_rate_hand_example():
    assert collided_mask(CODES).tolist() == [True, False, True, True, True, True, False]
    assert collision_rate(CODES) == pytest.approx(5 / 7)
    assert collision_rate(np.array([[0, 1], [1, 0]])) == 0.0
    assert collision_rate(np.array([[3, 3], [3, 3]])) == 1.0
    assert collision_rate(np.zeros((0, 3), dtype=np.int64)) == 0.0


def test_append_dedup_token_numbers_groups_in_item_order():
    sids, dedup = append_dedup_token(CODES)
    assert dedup.tolist() == [0, 0, 1, 0, 2, 1, 0]
    assert sids.shape == (7, 4) and sids.dtype == np.int64
    np.testing.assert_array_equal(sids[:, :3], CODES)
    np.testing.assert_array_equal(sids[:, 3], dedup)
    assert collision_rate(sids) == 0.0
    assert len({tuple(row) for row in sids.tolist()}) == len(sids)


def test_append_dedup_token_unique_and_empty():
    codes = np.array([[5, 1], [0, 2], [3, 3]])
    sids, dedup = append_dedup_token(codes)
    assert dedup.tolist() == [0, 0, 0]
    assert sids.tolist() == [[5, 1, 0], [0, 2, 0], [3, 3, 0]]
    sids, dedup = append_dedup_token(np.zeros((0, 2), dtype=np.int64))
    assert sids.shape == (0, 3) and dedup.shape == (0,)


def test_append_dedup_token_large_random_matches_reference():
    rng = np.random.default_rng(0)
    codes = rng.integers(0, 4, size=(500, 2))
    _, dedup = append_dedup_token(codes)
    seen: dict[tuple, int] = {}
    expected = []
    for row in map(tuple, codes.tolist()):
        expected.append(seen.get(row, 0))
        seen[row] = seen.get(row, 0) + 1
    assert dedup.tolist() == expected


def test_codebook_stats_hand_example():
    codes = np.array([[0, 0], [0, 1], [1, 0], [1, 0]])
    stats = codebook_stats(codes, codebook_size=4)
    assert [s["level"] for s in stats] == [1, 2]  # levels are numbered from 1 in every report
    s0, s1 = stats
    assert s0["used_codes"] == 2 and s0["utilisation"] == 0.5
    assert s0["perplexity"] == pytest.approx(2.0)  # uniform over two codes
    assert s0["unique_prefixes"] == 2 and s0["conditional_perplexity"] == pytest.approx(2.0)
    assert s0["max_prefix_size"] == 2
    assert s1["used_codes"] == 2
    assert s1["perplexity"] == pytest.approx(math.exp(-(0.75 * math.log(0.75) + 0.25 * math.log(0.25))))
    assert s1["unique_prefixes"] == 3 and s1["max_prefix_size"] == 2
    # H(c0, c1) - H(c0) = H(1/4, 1/4, 1/2) - log 2 = 0.5 log 2
    assert s1["conditional_perplexity"] == pytest.approx(math.sqrt(2.0))


def test_codebook_stats_rejects_out_of_range_codes():
    with pytest.raises(ValueError, match="codes must lie"):
        codebook_stats(np.array([[0, 4]]), codebook_size=4)
    with pytest.raises(ValueError, match="2-D"):
        codebook_stats(np.array([0, 1]), codebook_size=4)


def test_sid_strings():
    assert sid_strings(np.array([[12, 200, 7, 0], [0, 0, 0, 1]])) == ["12-200-7-0", "0-0-0-1"]
    assert sid_strings(np.zeros((0, 4), dtype=np.int64)) == []


# -- resolve_collisions / Sinkhorn ------------------------------------------------------------------
from semid_pipeline.core.tokenizers.collisions import resolve_collisions  # noqa: E402
from semid_pipeline.core.tokenizers.sinkhorn import sinkhorn_plan  # noqa: E402


def _random_colliding_codes(seed: int, n: int = 80, k: int = 16):
    rng = np.random.default_rng(seed)
    codes = np.stack([rng.integers(0, 3, n), rng.integers(0, 4, n), rng.integers(0, 3, n)], axis=1)  # many collisions
    dist = rng.random((n, k))
    return codes, dist


def test_sinkhorn_plan_has_uniform_marginals():
    cost = np.random.default_rng(0).random((5, 7))
    plan = sinkhorn_plan(cost, epsilon=0.1, n_iters=500)
    np.testing.assert_allclose(plan.sum(1), 1 / 5, atol=1e-8)
    np.testing.assert_allclose(plan.sum(0), 1 / 7, atol=1e-6)


def test_sinkhorn_resolution_is_unique_without_extra_token_and_deterministic():
    codes, dist = _random_colliding_codes(0)
    assert collision_rate(codes) > 0.5
    sids, dedup = resolve_collisions(codes, dist, strategy="sinkhorn", seed=3)
    assert sids.shape == codes.shape and (dedup == 0).all()
    assert collision_rate(sids) == 0.0
    np.testing.assert_array_equal(sids[:, :-1], codes[:, :-1])  # only the last level moves
    assert sids[:, -1].max() < dist.shape[1]
    again, _ = resolve_collisions(codes.copy(), dist.copy(), strategy="sinkhorn", seed=3)
    np.testing.assert_array_equal(sids, again)
    # items that never collided keep their codes
    keep = ~collided_mask(codes)
    np.testing.assert_array_equal(sids[keep], codes[keep])


def test_sinkhorn_keeps_nearest_item_and_moves_the_other_to_its_best_free_code():
    codes = np.array([[0, 1], [0, 1], [1, 1]])
    dist = np.array([[5.0, 1.0, 9.0, 9.0], [3.0, 0.5, 2.0, 9.0], [0.0, 0.0, 0.0, 0.0]])
    sids, _ = resolve_collisions(codes, dist, strategy="sinkhorn")
    # row 1 is nearer to code 1 (0.5 < 1.0), so it keeps it; row 0 moves to its nearest free code 0
    np.testing.assert_array_equal(sids, [[0, 0], [0, 1], [1, 1]])


def test_sinkhorn_respects_reserved_sids_and_raises_when_a_prefix_overflows():
    codes = np.array([[2, 0], [2, 0]])
    dist = np.array([[0.0, 1.0, 2.0], [0.0, 1.0, 2.0]])
    sids, _ = resolve_collisions(codes, dist, strategy="sinkhorn", reserved=np.array([[2, 1]]))
    assert sorted(sids[:, 1].tolist()) == [0, 2]
    with pytest.raises(ValueError, match="cannot get unique"):
        resolve_collisions(np.zeros((10, 2), dtype=np.int64), np.zeros((10, 3)), strategy="sinkhorn")


def test_sinkhorn_spills_an_overfull_prefix_to_siblings():
    # 7 items share prefix 0 but the last level has only 3 codes: 4 must move to other level-0 codes
    codes = np.array([[0, 0]] * 7 + [[1, 2]])
    rng = np.random.default_rng(0)
    dist = rng.random((8, 3))
    sids, _ = resolve_collisions(codes, dist, strategy="sinkhorn")
    assert collision_rate(sids) == 0.0
    assert (sids[:, 0] == 0).sum() == 3 and np.bincount(sids[:, 0], minlength=3).max() <= 3
    np.testing.assert_array_equal(sids, resolve_collisions(codes, dist, strategy="sinkhorn")[0])
    # with per-level distances, a mover goes to its nearest sibling with room
    ld = np.zeros((8, 2, 3))
    ld[:, 0, 2] = 1.0  # code 2 far for everyone -> movers fill code 1 first (room for 2 next to item 7), then code 2
    sids2, _ = resolve_collisions(codes, dist, strategy="sinkhorn", level_distances=ld)
    assert collision_rate(sids2) == 0.0
    assert (sids2[:7, 0] == 1).sum() == 2 and (sids2[:7, 0] == 2).sum() == 2 and (sids2[:7, 0] == 0).sum() == 3
    with pytest.raises(ValueError, match="last_distances"):
        resolve_collisions(codes, None, strategy="sinkhorn")
    with pytest.raises(ValueError, match="unknown collision strategy"):
        resolve_collisions(codes, dist, strategy="nope")


def test_append_token_strategy_matches_tiger_and_continues_after_reserved():
    sids, dedup = resolve_collisions(CODES, strategy="append_token")
    ref_sids, ref_dedup = append_dedup_token(CODES)
    np.testing.assert_array_equal(sids, ref_sids)
    np.testing.assert_array_equal(dedup, ref_dedup)
    new = np.array([[1, 2], [1, 2], [9, 9]])
    sids, dedup = resolve_collisions(new, strategy="append_token", reserved=np.array([[1, 2, 0], [1, 2, 1]]))
    np.testing.assert_array_equal(dedup, [2, 3, 0])
