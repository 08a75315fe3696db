"""The seeded evaluation user sample: drawn once at preparation, honoured by every model's lists and
by the metrics (and the independent SQL re-score)."""

import numpy as np
import pandas as pd
import pytest

from semid_pipeline.core.data.demo import DemoParams, generate_demo
from semid_pipeline.core.data.preprocess import PreprocessParams, build_tables
from semid_pipeline.core.frames import eval_rows, split_top_k
from semid_pipeline.core.metrics import sample_users, score_cold_warm, score_lists
from semid_pipeline_tests.conftest import TINY_DEMO


def test_sample_users_is_seeded_sorted_and_all_when_not_smaller():
    a, b = sample_users(1000, 50, 3), sample_users(1000, 50, 3)
    assert len(a) == 50 and len(set(a.tolist())) == 50 and (np.diff(a) > 0).all()
    assert np.array_equal(a, b)
    assert not np.array_equal(a, sample_users(1000, 50, 4))
    assert np.array_equal(sample_users(10, None, 0), np.arange(10))
    assert np.array_equal(sample_users(10, 10, 0), np.arange(10))


@pytest.fixture(scope="module")
def raw():
    return generate_demo(DemoParams(**TINY_DEMO))


def test_preparation_marks_the_sample(raw):
    full = build_tables(raw, PreprocessParams()).user_sequences
    assert full["in_eval"].all()
    sampled = build_tables(raw, PreprocessParams(eval_users=40, eval_seed=1)).user_sequences
    assert int(sampled["in_eval"].sum()) == 40
    again = build_tables(raw, PreprocessParams(eval_users=40, eval_seed=1)).user_sequences
    assert sampled["in_eval"].tolist() == again["in_eval"].tolist()
    # everything else is the same table
    pd.testing.assert_frame_equal(sampled.drop(columns="in_eval"), full.drop(columns="in_eval"))
    with pytest.raises(Exception, match="eval_users"):
        PreprocessParams(eval_users=0)


def test_lists_and_metrics_cover_only_the_sample(raw):
    seqs = build_tables(raw, PreprocessParams(eval_users=40, eval_seed=1)).user_sequences
    n_items = int(max(max((max(t) for t in seqs["train_items"] if len(t)), default=0), seqs["valid_item"].max(), seqs["test_item"].max())) + 1
    item_ids = np.array([f"i{i}" for i in range(n_items)], dtype=object)
    calls = []

    def oracle(histories, user_idx):  # ranks each split's target first: recall 1 on the users it is given
        calls.append(len(histories))
        target = seqs.set_index("user_idx").loc[user_idx, "test_item" if len(calls) == 2 else "valid_item"].to_numpy()
        items = np.stack([(target + j) % n_items for j in range(10)], axis=1)
        return items, np.zeros(items.shape)

    recs, per_split = split_top_k("oracle", seqs, item_ids, oracle)
    assert calls == [40, 40] and per_split["test"].shape == (40, 10)
    assert set(recs["user_idx"]) == set(seqs.loc[seqs["in_eval"], "user_idx"])
    table = score_lists(recs, seqs, [10])
    assert (table["value"] == 1.0).all() and (table["n_users"] == 40).all()
    # without the sample the same lists would count the 260 unscored users as misses
    unsampled = score_lists(recs, seqs.drop(columns="in_eval"), [10])
    assert (unsampled["value"] < 0.2).all()
    cold_warm = score_cold_warm(recs, seqs, [10])
    per_group = cold_warm[(cold_warm["k"] == 10) & (cold_warm["metric"] == "recall")]
    assert per_group.groupby("model")["n_users"].sum().eq(40).all()  # warm + cold = the sampled users
    assert len(eval_rows(seqs)) == 40 and len(eval_rows(seqs.drop(columns="in_eval"))) == len(seqs)
