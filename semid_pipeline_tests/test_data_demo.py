"""The synthetic demo shop: determinism, contract, and the properties the pipeline relies on."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from pydantic import ValidationError

from semid_pipeline.core.data.demo import DemoParams, generate_demo
from semid_pipeline.core.data.preprocess import PreprocessParams, build_tables
from semid_pipeline.core.data.schema import validate_raw


@pytest.fixture(scope="module")
def demo():
    params = DemoParams()
    return params, generate_demo(params)


def test_same_seed_same_data_other_seed_other_data():
    small = dict(n_items=300, n_users=500)
    a, b = generate_demo(DemoParams(seed=7, **small)), generate_demo(DemoParams(seed=7, **small))
    pd.testing.assert_frame_equal(a.items, b.items)
    pd.testing.assert_frame_equal(a.interactions, b.interactions)
    c = generate_demo(DemoParams(seed=8, **small))
    assert not a.interactions["item_id"].equals(c.interactions["item_id"])


def test_contract_and_shape(demo):
    params, raw = demo
    validate_raw(raw, "demo")
    items, inter = raw.items, raw.interactions
    assert len(items) == params.n_items and inter["user_id"].nunique() == params.n_users
    assert items["item_id"].is_unique and set(inter["item_id"]) == set(items["item_id"])
    assert (items["categories"].map(len) == 3).all()
    assert items["categories"].str[0].nunique() == 6
    assert items["categories"].map(tuple).nunique() == 72
    assert 0.05 < items["brand"].isna().mean() < 0.3 and items["brand"].nunique() <= params.n_brands
    assert items["image"].isna().all() and (items["title"].str.len() > 10).all()
    leaf_nouns_in_titles = [t for t, c in zip(items["title"], items["categories"]) if c[2].split()[0] in t]
    assert len(leaf_nouns_in_titles) > 0.5 * len(items)

    lengths = inter.groupby("user_id").size()
    assert lengths.min() >= params.min_seq_len and lengths.max() <= params.max_seq_len
    assert inter.groupby("item_id").size().min() >= 5
    assert not inter.duplicated(["user_id", "item_id"]).any()
    assert (inter.groupby("user_id")["timestamp"].diff().dropna() >= 0).all()
    assert (inter.groupby("user_id")["timestamp"].diff() == 0).any()  # some same-day ties
    assert set(inter["rating"].unique()) <= {1.0, 2.0, 3.0, 4.0, 5.0}


def test_kcore_keeps_everything_and_popularity_is_weak(demo):
    params, raw = demo
    items, inter, seqs = build_tables(raw, PreprocessParams())
    assert (len(items), len(seqs), len(inter)) == (params.n_items, params.n_users, len(raw.interactions))

    # most-popular over the training history (train items + validation targets), scored on the test targets
    history = np.concatenate([np.concatenate(seqs["train_items"].to_list()), seqs["valid_item"].to_numpy()])
    top10 = np.argsort(-np.bincount(history, minlength=len(items)), kind="stable")[:10]
    test = seqs["test_item"].to_numpy()
    assert np.isin(test, top10).mean() < 0.05

    # while the previous item's leaf category says a lot about the next one
    leaf = pd.factorize(items["category_path"].map(tuple))[0]
    assert (leaf[test] == leaf[seqs["valid_item"].to_numpy()]).mean() > 0.35


def test_params_are_checked():
    with pytest.raises(ValidationError, match="too few interactions"):
        DemoParams(n_users=100)
    with pytest.raises(ValidationError, match="must be <= 1"):
        DemoParams(p_same_leaf=0.9, p_complement=0.2)
    with pytest.raises(ValidationError):
        DemoParams(n_items=10)
