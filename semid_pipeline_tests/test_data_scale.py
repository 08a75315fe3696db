"""The synthetic scale shop (core/data/scale.py): determinism, sizes, Zipf shape, coherent sessions,
cold test targets, and the generic-format files its CLI writes."""

import json

import numpy as np
import pyarrow.parquet as pq
import pytest
import yaml

from semid_pipeline.core.data.scale import ScaleParams, cold_target_stats, generate_scale, main

N = 5000


@pytest.fixture(scope="module")
def data():
    return generate_scale(ScaleParams(n_items=N, seed=1))


def _codes(values):
    _, codes = np.unique(np.asarray(values, dtype=str), return_inverse=True)
    return codes


def test_same_seed_same_data_other_seed_other_data(data):
    again = generate_scale(ScaleParams(n_items=N, seed=1))
    other = generate_scale(ScaleParams(n_items=N, seed=2))
    for table in ("items", "interactions"):
        for col, values in getattr(data, table).items():
            assert np.array_equal(np.asarray(values), np.asarray(getattr(again, table)[col])), col
    assert not np.array_equal(data.interactions["item_id"], other.interactions["item_id"])


def test_sizes_bounds_and_no_repeats(data):
    p = ScaleParams(n_items=N, seed=1)
    inter = data.interactions
    assert len(data.items["item_id"]) == len(set(data.items["item_id"])) == N
    assert data.stats["n_repeats_dropped"] == 0 and len(inter["item_id"]) == round(p.interactions_per_item * N)
    per_item = np.bincount(_codes(inter["item_id"]), minlength=N)
    assert per_item.min() >= p.min_item_count  # a 5-core keeps the whole catalog
    user = _codes(inter["user_id"])
    per_user = np.bincount(user)
    assert per_user.min() >= p.min_seq_len and per_user.max() <= p.max_seq_len + p.min_seq_len
    assert abs(per_user.mean() - p.mean_seq_len) < 0.25 * p.mean_seq_len
    pairs = user.astype(np.int64) * N + _codes(inter["item_id"])
    assert len(np.unique(pairs)) == len(pairs)  # no user buys an item twice
    ts = np.asarray(inter["timestamp"])
    same_user = user[1:] == user[:-1]
    assert (np.diff(np.flatnonzero(np.r_[True, ~same_user])) > 0).all()  # a user's events are contiguous
    assert len(np.flatnonzero(np.r_[True, ~same_user])) == per_user.size
    assert (ts[1:][same_user] >= ts[:-1][same_user]).all()  # each user's events in time order


def test_popularity_is_long_tailed(data):
    counts = np.sort(np.bincount(_codes(data.interactions["item_id"])))[::-1]
    top = counts[: N // 100].sum() / counts.sum()
    assert top > 0.05  # the top 1% of items: over 5x their uniform share
    ranks = np.arange(1, len(counts) + 1)
    sel = (ranks >= 10) & (ranks <= N // 10)
    slope = np.polyfit(np.log(ranks[sel]), np.log(counts[sel]), 1)[0]
    assert -1.5 < slope < -0.25, slope


def test_sessions_are_category_coherent(data):
    row = {iid: i for i, iid in enumerate(data.items["item_id"])}
    leaf = data.items["leaf"][np.array([row[i] for i in data.interactions["item_id"]])]
    user = _codes(data.interactions["user_id"])
    same_user = user[1:] == user[:-1]
    same_leaf = (leaf[1:] == leaf[:-1])[same_user].mean()
    share = np.bincount(leaf) / len(leaf)
    assert same_leaf > 0.3 and same_leaf > 5 * (share**2).sum()  # far above chance


def test_cold_test_targets_exist_and_are_late_items(data):
    assert data.stats["cold_test_targets"] > 0 and 0 < data.stats["cold_test_share"] < 0.2
    # the helper itself, on a hand-made log: user 0: a b c (c test, b valid), user 1: a c d
    user, item = np.array([0, 0, 0, 1, 1, 1]), np.array([0, 1, 2, 0, 2, 3])
    stats = cold_target_stats(user, item, 4)
    assert stats["cold_test_targets"] == 2 and stats["cold_valid_targets"] == 2 and stats["items_without_training_events"] == 3


def test_bad_params_are_refused():
    with pytest.raises(ValueError, match="min_item_count"):
        ScaleParams(n_items=100, interactions_per_item=3)
    with pytest.raises(ValueError, match="mean_seq_len"):
        ScaleParams(mean_seq_len=100)


def test_cli_writes_generic_files_and_a_datasets_entry(tmp_path, capsys):
    assert main(["--items", "1000", "--out", str(tmp_path), "--seed", "3"]) == 0
    stats = json.loads(capsys.readouterr().out)
    items = pq.read_table(tmp_path / "items.parquet").to_pandas()
    inter = pq.read_table(tmp_path / "interactions.parquet").to_pandas()
    assert list(items.columns) == ["item_id", "title", "brand", "categories", "description"]
    assert list(inter.columns) == ["user_id", "item_id", "timestamp", "rating"]
    assert len(items) == stats["n_items"] == 1000 and len(inter) == stats["n_interactions"]
    assert set(inter["item_id"]) <= set(items["item_id"])
    assert all(len(c) == 3 for c in items["categories"]) and items["title"].str.len().min() > 10
    assert items["brand"].isna().any() and items["brand"].notna().mean() > 0.7
    entry = yaml.safe_load((tmp_path / "datasets.yaml").read_text())["datasets"]["scale-1000"]
    assert entry["format"] == "generic" and entry["options"]["items"] == "items.parquet"
    assert json.loads((tmp_path / "summary.json").read_text())["n_interactions"] == len(inter)


def test_scale_benchmark_runs_steps_in_dependency_order_one_op_each():
    """benchmarks/scale.py's process-per-step mode: every step after the steps it reads, a multi-asset once."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import scale

    from semid_pipeline.definitions import all_assets

    groups = scale.step_groups(scale.SELECT)
    position = {op: i for i, (op, _) in enumerate(groups)}
    assert sorted(k for _, keys in groups for k in keys) == sorted(scale.SELECT.split(","))
    assert sorted(dict(groups)["prepared_dataset"]) == ["interactions", "items", "user_sequences"]
    owner = {k.to_user_string(): a.op.name for a in all_assets for k in a.keys}
    for a in all_assets:
        if a.op.name in position:
            for deps in a.asset_deps.values():
                for up in deps:
                    if owner.get(up.to_user_string()) in position and owner[up.to_user_string()] != a.op.name:
                        assert position[owner[up.to_user_string()]] < position[a.op.name], (up, a.op.name)
    assert scale.text_encoder(10_000) == {} and scale.text_encoder(100_000) == {"kind": "static"}
