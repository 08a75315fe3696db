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
    assert [s["level"] for s in stats] == [0, 1]
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
