"""Bad input that used to pass silently or fail vaguely: each is now refused in one line naming the
file (or table), the line (or row) and the problem, or changed and counted where the user looks
(the asset's metadata and the run's log)."""

import gzip
import json
import subprocess
import sys
import unicodedata

import numpy as np
import pandas as pd
import pytest
from dagster import DagsterInstance, materialize

from semid_pipeline.core import storage
from semid_pipeline.core.data.amazon import load_amazon_2014, load_amazon_2018
from semid_pipeline.core.data.schema import RawDataset, validate_raw
from semid_pipeline.core.errors import InputError
from semid_pipeline.definitions import all_assets
from semid_pipeline_tests.conftest import tiny_resources
from semid_pipeline_tests.test_versioning_pipeline import data_dir  # noqa: F401  (fixture: tokenizer inputs on disk)

T0 = 1_400_000_000  # 2014


def _reviews(path, rows):
    with gzip.open(path, "wt") as fh:
        for user, item, t in rows:
            fh.write(json.dumps({"reviewerID": user, "asin": item, "unixReviewTime": t, "overall": 5.0}) + "\n")


def _meta_2014(path, asins, extra_line=None):
    lines = [repr({"asin": a, "title": f"Item {a}", "categories": [["Beauty", "Face"]]}) for a in asins]
    if extra_line is not None:
        lines.insert(1, extra_line)
    with gzip.open(path, "wt") as fh:
        fh.write("\n".join(lines) + "\n")


def _good_rows():
    return [(f"U{u}", f"B{(u + j) % 8}", T0 + 100 * j) for u in range(4) for j in range(5)]


@pytest.mark.parametrize("value, problem", [
    (-5, "field 'unixReviewTime': timestamp -5 is negative"),
    (32503680000, "field 'unixReviewTime': timestamp 32503680000 is in the future"),  # the year 3000
    (10**20, "field 'unixReviewTime': timestamp 100000000000000000000 is in the future"),  # was an OverflowError
])
def test_out_of_range_review_times_are_refused_naming_file_and_line(tmp_path, value, problem):
    reviews, meta = tmp_path / "reviews_Beauty_5.json.gz", tmp_path / "meta_Beauty.json.gz"
    rows = _good_rows()
    rows[6] = (rows[6][0], rows[6][1], value)
    _reviews(reviews, rows)
    _meta_2014(meta, [f"B{i}" for i in range(8)])
    with pytest.raises(InputError) as err:
        load_amazon_2014(reviews, meta)
    assert str(err.value).startswith(f"{reviews}:7: {problem}")


def test_float_review_time_1e20_is_refused_naming_file_and_line(tmp_path):
    reviews, meta = tmp_path / "reviews.json", tmp_path / "meta.json"
    reviews.write_text(json.dumps({"reviewerID": "U1", "asin": "B1", "unixReviewTime": 1e20}) + "\n")
    meta.write_text(json.dumps({"asin": "B1", "title": "x"}) + "\n")
    with pytest.raises(InputError, match=r"reviews.json:1: field 'unixReviewTime' must be an integer, got 1e\+20"):
        load_amazon_2018(reviews, meta)


def test_out_of_range_timestamps_from_any_loader_are_refused_naming_the_row():
    items = pd.DataFrame({"item_id": ["i1", "i2"], "title": ["a", "b"], "brand": None, "categories": [[], []],
                          "description": None, "image": None})
    inter = pd.DataFrame({"user_id": ["u1", "u1", "u2"], "item_id": ["i1", "i2", "i1"], "timestamp": np.array([5, -5, 7]),
                          "rating": np.nan})
    with pytest.raises(InputError, match=r"^src: interactions row 1 \(user 'u1', item 'i2'\): timestamp -5 is negative; 1 rows"):
        validate_raw(RawDataset(items, inter), "src")


@pytest.mark.parametrize("field, value, problem", [
    ("reviewerID", "A B", "field 'reviewerID' holds whitespace or a control character ('A B'); ids must be single tokens"),
    ("asin", "B\t1", "field 'asin' holds whitespace or a control character ('B\\t1'); ids must be single tokens"),
    ("asin", " ", "field 'asin' is only whitespace (' ')"),
])
def test_ids_with_whitespace_are_refused_naming_file_and_line(tmp_path, field, value, problem):
    reviews, meta = tmp_path / "reviews_Beauty_5.json.gz", tmp_path / "meta_Beauty.json.gz"
    rows = [dict(reviewerID=u, asin=i, unixReviewTime=t) for u, i, t in _good_rows()]
    rows[2][field] = value
    with gzip.open(reviews, "wt") as fh:
        fh.write("".join(json.dumps(r) + "\n" for r in rows))
    _meta_2014(meta, [f"B{i}" for i in range(8)])
    with pytest.raises(InputError) as err:
        load_amazon_2014(reviews, meta)
    assert str(err.value) == f"{reviews}:3: {problem}"


def test_ids_with_whitespace_from_any_loader_are_refused_naming_the_row():
    items = pd.DataFrame({"item_id": ["i1", "i 2"], "title": ["a", "b"], "brand": None, "categories": [[], []],
                          "description": None, "image": None})
    inter = pd.DataFrame({"user_id": ["u1"], "item_id": ["i1"], "timestamp": np.array([5]), "rating": np.nan})
    with pytest.raises(InputError, match=r"^src: items row 1: item_id holds whitespace or a control character \('i 2'\)"):
        validate_raw(RawDataset(items, inter), "src")


def test_2014_meta_with_code_names_what_and_where_not_an_ast_object(tmp_path):
    reviews, meta = tmp_path / "reviews_Beauty_5.json.gz", tmp_path / "meta_Beauty.json.gz"
    _reviews(reviews, _good_rows())
    _meta_2014(meta, [f"B{i}" for i in range(8)], extra_line="{'asin': 'B1', 'title': __import__('os').getcwd()}")
    with pytest.raises(InputError) as err:
        load_amazon_2014(reviews, meta)
    message = str(err.value)
    assert message.startswith(f"{meta}:2: neither a Python literal nor JSON: it holds a function call at column 25 (\"__import__('os')")
    assert "<ast." not in message and "code is never run" in message


ITEMS = [f"B{i:04d}" for i in range(8)]


def test_silent_changes_are_counted_in_the_metadata(tmp_path):
    """NFD ids merged into NFC, a huge title cut, repeats removed, k-core drops, out-of-order times: all counted."""
    root, data = tmp_path / "beauty", tmp_path / "data"
    root.mkdir()
    nfc, nfd = unicodedata.normalize("NFC", "Bé01"), unicodedata.normalize("NFD", "Bé01")
    assert nfc != nfd
    seqs = {f"U{u}": [ITEMS[(u + j) % 8] for j in range(6)] for u in range(12)}
    seqs["U0"] = [nfc, nfd, *ITEMS[:6]]  # one item spelled two ways: the second is a repeat once both are NFC
    seqs["U99"] = ITEMS[:2] + ITEMS[:1]  # too short for the 5-core: dropped
    (root / "user_sequence.txt").write_text("".join(" ".join([u, *s]) + "\n" for u, s in seqs.items()))
    meta = [{"asin": a, "title": f"Item {a}", "categories": [["Beauty", "Face"]]} for a in ITEMS]
    meta[3]["title"] = "long " * 2000  # 10,000 characters
    meta.append({"asin": nfc, "title": "Accented", "categories": [["Beauty", "Face"]]})
    (root / "meta_Beauty.jsonl").write_text("".join(json.dumps(m) + "\n" for m in meta))
    for u in range(1, 12):  # more users of the accented item so it survives the 5-core
        seqs[f"U{u}"][5] = nfc
    (root / "user_sequence.txt").write_text("".join(" ".join([u, *s]) + "\n" for u, s in seqs.items()))

    instance = DagsterInstance.ephemeral()
    result = materialize(all_assets, selection=["raw_items", "raw_interactions", "items", "interactions", "user_sequences"],
                         partition_key="amazon-beauty", instance=instance,
                         resources=tiny_resources(data, {"amazon-beauty": {"root": str(root)}}))
    assert result.success
    mats = {e.asset_key.path[-1]: e.step_materialization_data.materialization.metadata
            for e in result.get_asset_materialization_events()}
    raw = mats["raw_items"]
    assert raw["ids_normalized_nfc"].value == 2  # U0's NFD event and the NFD item row
    assert raw["items_merged_by_nfc"].value == 1
    prepared = mats["user_sequences"]
    assert prepared["titles_truncated"].value == 1
    assert prepared["repeats_removed"].value == 2  # U0's second (NFD) spelling and U99's second B0000
    assert prepared["kcore_users_removed"].value == 1  # U99: 2 events after de-duplication
    assert prepared["kcore_interactions_removed"].value == 2
    assert prepared["users_reordered_by_time"].value == 0  # positions are in order
    items = storage.read_table(data, "items", "amazon-beauty")
    assert items["title"].str.len().max() == 1000 and nfd not in set(items["item_id"]) and nfc in set(items["item_id"])
    logged = [r.user_message for r in instance.all_logs(result.run_id) if r.dagster_event is None]
    assert any("ids rewritten to their Unicode NFC spelling" in m for m in logged)


def test_users_reordered_by_time_are_counted():
    from semid_pipeline.core.data.preprocess import PreprocessParams, prepare

    items = pd.DataFrame({"item_id": [f"i{k}" for k in range(6)], "title": "t", "brand": None, "categories": [[]] * 6,
                          "description": None, "image": None})
    users = [f"u{u}" for u in range(6) for _ in range(5)]
    inter = pd.DataFrame({"user_id": users, "item_id": [f"i{(u + j) % 6}" for u in range(6) for j in range(5)],
                          "timestamp": np.array([T0 + (4 - j if u == 2 else j) for u in range(6) for j in range(5)]), "rating": np.nan})
    _, report = prepare(RawDataset(items, inter), PreprocessParams(k_core_item=1))
    assert report["users_reordered_by_time"] == 1


def test_a_data_dir_that_does_not_exist_is_created_with_a_message(tmp_path):
    data = tmp_path / "no" / "such" / "dir"
    instance = DagsterInstance.ephemeral()
    result = materialize(all_assets, selection=["raw_items", "raw_interactions"], partition_key="demo", instance=instance,
                         resources=tiny_resources(data))
    assert result.success
    logged = [r.user_message for r in instance.all_logs(result.run_id) if r.dagster_event is None and r.level >= 30]
    assert any(m.startswith(f"data dir {data} does not exist: creating it") for m in logged), logged


@pytest.mark.parametrize("batch_size", [0, -5])
def test_semantic_ids_batch_size_below_one_is_a_config_error(data_dir, batch_size):  # noqa: F811
    assert materialize(all_assets, selection=["incoming_items", "catalog_item_embeddings"], partition_key="demo",
                       instance=DagsterInstance.ephemeral(), resources=tiny_resources(data_dir)).success
    result = materialize(all_assets, selection=["semantic_ids"], partition_key="demo", instance=DagsterInstance.ephemeral(),
                         resources=tiny_resources(data_dir), raise_on_error=False,
                         run_config={"ops": {"semantic_ids": {"config": {"batch_size": batch_size}}}})
    error = [e for e in result.all_events if e.is_step_failure][0].step_failure_data.error
    while error.cause is not None and error.cls_name != "ValidationError":
        error = error.cause
    assert error.cls_name == "ValidationError"
    assert "SemanticIdConfig" in error.message and "batch_size" in error.message and "greater than or equal to 1" in error.message
    assert not storage.table_path(data_dir, "semantic_ids", "demo").exists()


def test_query_returning_a_billion_rows_prints_a_capped_result_with_a_note(tmp_path):
    storage.write_table(tmp_path, "items", "demo", pd.DataFrame({"item_id": ["a"]}))
    sql = "select a.range as x, b.range as y from range(100000) a, range(10000) b"  # 10^9 rows
    df = storage.query(tmp_path, sql, max_rows=7)
    assert len(df) == 7 and df.attrs["truncated"] is True
    assert storage.query(tmp_path, "select 1 as x", max_rows=7).attrs["truncated"] is False
    cli = subprocess.run([sys.executable, "-m", "semid_pipeline.query", sql, "--data-dir", str(tmp_path), "--max-rows", "5"],
                         capture_output=True, text=True, timeout=120)
    assert cli.returncode == 0, cli.stderr
    assert cli.stderr.strip() == ("note: showing the first 5 rows; the query returns more (add a LIMIT, aggregate, or pass "
                                  "--max-rows N)")
    assert len([ln for ln in cli.stdout.splitlines() if ln.strip()]) == 6  # header + 5 rows


@pytest.mark.parametrize("module, cls, field, value", [
    ("semantic_ids", "SemanticIdConfig", "batch_size", 0),
    ("semantic_ids", "SemanticIdConfig", "max_collision_rate", -1.0),
    ("recommender", "RecommendConfig", "batch_size", 0),
    ("recommender", "RecommendConfig", "graph_steps", 0),
    ("baselines", "SASRecRecommendConfig", "batch_size", -5),
    ("tokenizer_quality", "TokenizerQualityConfig", "n_projection", 0),
    ("catalog", "CatalogConfig", "max_category_depth", 0),
    ("explanations", "ExplanationConfig", "max_history", 0),
])
def test_sizes_that_cannot_work_are_config_errors(module, cls, field, value):
    import importlib

    from pydantic import ValidationError

    config = getattr(importlib.import_module(f"semid_pipeline.assets.{module}"), cls)
    with pytest.raises(ValidationError, match=field):
        config(**{field: value})


def test_incoming_item_ids_are_checked_and_normalized_like_raw_ones(tmp_path):
    from semid_pipeline.core.data.incoming import load_incoming_items

    folder = tmp_path / "incoming"
    folder.mkdir()
    nfd = unicodedata.normalize("NFD", "Bé01")
    (folder / "a.jsonl").write_text(json.dumps({"item_id": nfd, "title": "x"}) + "\n")
    items = load_incoming_items(folder)
    assert items["item_id"].tolist() == [unicodedata.normalize("NFC", "Bé01")]
    (folder / "b.jsonl").write_text(json.dumps({"item_id": "ok", "title": "x"}) + "\n" + json.dumps({"item_id": "B 1", "title": "y"}) + "\n")
    with pytest.raises(InputError) as err:
        load_incoming_items(folder)
    assert str(err.value) == f"{folder / 'b.jsonl'}:2: 'item_id' holds whitespace or a control character ('B 1'); ids must be single tokens"
