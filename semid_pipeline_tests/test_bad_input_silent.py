"""Issue 17, class 2 (bad input accepted without a word): each case now fails naming what it must,
or is labelled and counted in the Dagster log and the asset metadata; earlier outputs stay byte-identical."""

import json

import numpy as np
import pandas as pd
import pytest
import torch
from dagster import DagsterInstance, materialize

from semid_pipeline.core import storage
from semid_pipeline.core.artifacts import save_artifact
from semid_pipeline.core.recommender.model import GenerativeRecommender, RecommenderParams
from semid_pipeline.core.recommender.vocab import SIDVocab
from semid_pipeline.core.tokenizers.versioning import (
    VersionMismatchError, check_same_assignment, current_assignment_id, version_rows,
)
from semid_pipeline.definitions import all_assets
from semid_pipeline_tests.conftest import tiny_resources, write_collaborative_placeholder
from semid_pipeline_tests.test_recommender_assets import write_inputs

ITEMS = [f"B{i:04d}" for i in range(8)]


def _write_p5(root, meta_asins):
    root.mkdir(parents=True, exist_ok=True)
    lines = [" ".join([f"U{u}"] + [ITEMS[(u + j) % len(ITEMS)] for j in range(6)]) for u in range(12)]
    (root / "user_sequence.txt").write_text("\n".join(lines) + "\n")
    meta = [json.dumps({"asin": a, "title": f"Item {a}", "categories": [["Beauty", "Skin Care", "Face"]]}) for a in meta_asins]
    (root / "meta_Beauty.jsonl").write_text("\n".join(meta) + ("\n" if meta else ""))


def _run(data_dir, selection, options=None, instance=None, config=None, dataset="amazon-beauty"):
    return materialize(all_assets, selection=selection, partition_key=dataset, resources=tiny_resources(data_dir, options),
                       instance=instance or DagsterInstance.ephemeral(), raise_on_error=False, run_config=config or {})


def _error(result, cls_name):
    error = [e for e in result.all_events if e.is_step_failure][0].step_failure_data.error
    while error.cause is not None and error.cls_name != cls_name:
        error = error.cause
    assert error.cls_name == cls_name, error.cls_name
    return error.message


def _warnings(instance, result):
    return [r.user_message for r in instance.all_logs(result.run_id) if r.level >= 30 and r.dagster_event is None]


@pytest.mark.parametrize("meta_asins, named", [
    ([], "8 of 8 items with interactions have no metadata line here (e.g. 'B0000')"),
    ([f"X{i}" for i in range(8)], "8 of 8 items with interactions have no metadata line here"),  # another category's file
    (ITEMS[:3], "5 of 8 items with interactions have no metadata line here"),
])
def test_empty_or_unrelated_metadata_fails_naming_the_file(tmp_path, meta_asins, named):
    root, data_dir = tmp_path / "beauty", tmp_path / "data"
    options = {"amazon-beauty": {"root": str(root)}}
    _write_p5(root, ITEMS)
    assert _run(data_dir, ["raw_items", "raw_interactions"], options).success
    before = storage.table_path(data_dir, "raw_items", "amazon-beauty").read_bytes()
    _write_p5(root, meta_asins)
    result = _run(data_dir, ["raw_items", "raw_interactions"], options)
    message = _error(result, "InputError")
    assert f"InputError: {root / 'meta_Beauty.jsonl'}: " in message and named in message and "max_missing_metadata = 0.5" in message
    assert storage.table_path(data_dir, "raw_items", "amazon-beauty").read_bytes() == before


def test_missing_metadata_and_duplicate_asins_reach_dagster_log_and_metadata(tmp_path):
    root, data_dir = tmp_path / "beauty", tmp_path / "data"
    _write_p5(root, ITEMS[1:] + ["B0003"])  # B0000 has no metadata line, B0003 has two
    instance = DagsterInstance.ephemeral()
    result = _run(data_dir, ["raw_items", "raw_interactions"], {"amazon-beauty": {"root": str(root)}}, instance)
    assert result.success
    meta = [m for m in result.asset_materializations_for_node("raw_dataset") if m.asset_key.path[-1] == "raw_items"][0].metadata
    assert meta["items_without_metadata"].value == 1 and meta["duplicate_metadata_lines"].value == 1
    assert meta["input_warnings"].value == 2 and meta["n_untitled_items"].value == 1
    logged = _warnings(instance, result)
    assert any("1 of 8 items with interactions have no metadata (e.g. 'B0000')" in m for m in logged), logged
    assert any("1 duplicate metadata lines ignored" in m for m in logged), logged
    # the ceiling is configurable: allow all items untitled explicitly
    _write_p5(root, [])
    allowed = _run(data_dir, ["raw_items", "raw_interactions"], {"amazon-beauty": {"root": str(root), "max_missing_metadata": 1.0}})
    assert allowed.success


def test_upper_case_jsonl_is_read_and_other_files_are_reported(tmp_path):
    folder = tmp_path / "incoming" / "demo"
    folder.mkdir(parents=True)
    (folder / "NEW.JSONL").write_text(json.dumps({"item_id": "N1", "title": "Rose balm"}) + "\n")
    (folder / "more.Jsonl").write_text(json.dumps({"item_id": "N2", "title": "Lip oil"}) + "\n")
    (folder / "items.json").write_text(json.dumps({"item_id": "N3", "title": "never read"}) + "\n")
    instance = DagsterInstance.ephemeral()
    result = _run(tmp_path, ["incoming_items"], instance=instance, dataset="demo")
    assert result.success
    assert storage.read_table(tmp_path, "incoming_items", "demo")["item_id"].tolist() == ["N1", "N2"]
    meta = result.asset_materializations_for_node("incoming_items")[0].metadata
    assert meta["n_files"].value == 2 and meta["incoming_files_ignored"].value == 1 and meta["input_warnings"].value == 1
    assert any("1 files ignored, not *.jsonl: items.json" in m for m in _warnings(instance, result))


def test_frozen_without_previous_assignment_refuses(tmp_path):
    data_dir = _versioning_inputs(tmp_path)  # items, embeddings and a tokenizer; no semantic_ids yet
    result = _run(data_dir, ["incoming_items", "catalog_item_embeddings", "semantic_ids"], dataset="demo",
                  config={"ops": {"semantic_ids": {"config": {"mode": "frozen"}}}})
    message = _error(result, "FileNotFoundError")
    assert str(storage.table_path(data_dir, "semantic_ids", "demo")) in message and "mode 'frozen' needs the previous assignment" in message
    assert not storage.table_path(data_dir, "semantic_ids", "demo").exists()


def _versioning_inputs(tmp_path):
    from semid_pipeline.core.data.demo import DemoParams, generate_demo
    from semid_pipeline.core.data.preprocess import PreprocessParams, build_tables
    from semid_pipeline_tests.conftest import TINY_DEMO
    from semid_pipeline_tests.test_versioning_pipeline import DIM, _tokenizer

    prepared = build_tables(generate_demo(DemoParams(**TINY_DEMO)), PreprocessParams())
    items = prepared.items
    x = np.random.default_rng(0).normal(size=(len(items), DIM)).astype(np.float32)
    storage.write_table(tmp_path, "items", "demo", items)
    storage.write_table(tmp_path, "user_sequences", "demo", prepared.user_sequences)
    storage.write_table(tmp_path, "item_text_embeddings", "demo", items[["item_idx", "item_id"]].assign(embedding=list(x)))
    write_collaborative_placeholder(tmp_path, "demo", items)
    save_artifact(_tokenizer(0, x), storage.model_dir(tmp_path, "sid_tokenizer", "demo"))
    return tmp_path


def _assignment(sids, version="tok-0123456789abcdef"):
    n = len(sids)
    return pd.DataFrame({"item_idx": np.arange(n), "item_id": [f"i{i:03d}" for i in range(n)], "codes": list(sids), "dedup": 0,
                         "sid": list(sids), "sid_str": ["-".join(map(str, s)) for s in sids], "collided": False,
                         "status": "new", "tokenizer_version": version})


def test_check_same_assignment():
    sids = np.array([[0, 1, 0], [0, 2, 0], [1, 1, 0], [1, 2, 0]])
    trained = _assignment(sids)
    history = version_rows(trained, "tok-0123456789abcdef", "full")
    aid = current_assignment_id(trained)
    check_same_assignment(aid, trained, None)  # same assignment: no history needed
    grown = _assignment(np.vstack([sids, [[2, 0, 0]]]))  # a frozen run added an item: fine
    check_same_assignment(aid, grown, history)
    moved = _assignment(sids[[1, 0, 2, 3]])  # same tokenizer version, two SIDs swapped
    with pytest.raises(VersionMismatchError, match=r"2 items moved to another SID \(e.g. \['i000: 0-1-0 -> 0-2-0'"):
        check_same_assignment(aid, moved, history)
    with pytest.raises(VersionMismatchError, match="sid_versions has no record"):
        check_same_assignment(aid, moved, None)
    with pytest.raises(VersionMismatchError, match="records no SID assignment"):
        check_same_assignment(None, moved, history)


def test_recommender_refuses_moved_sids_of_the_same_tokenizer_version(tmp_path):
    sids, _ = write_inputs(tmp_path)
    table = storage.read_table(tmp_path, "semantic_ids", "demo").assign(tokenizer_version="tok-0123456789abcdef", status="new")
    storage.write_table(tmp_path, "semantic_ids", "demo", table)
    storage.write_table(tmp_path, "sid_versions", "demo", version_rows(table, "tok-0123456789abcdef", "full"))
    torch.manual_seed(0)
    params = RecommenderParams(d_model=16, n_encoder_layers=1, n_decoder_layers=1, n_heads=2, d_head=8, d_ff=32,
                               n_user_buckets=4, max_history_items=5)
    model = GenerativeRecommender(params, SIDVocab.from_sids(np.asarray(sids), 4))
    extra = {"tokenizer_version": "tok-0123456789abcdef", "assignment_id": current_assignment_id(table)}
    save_artifact(model, storage.model_dir(tmp_path, "generative_recommender", "demo"), extra=extra)
    config = {"ops": {"generative_recommendations": {"config": {"beam_size": 10, "top_k": 10}}}}
    assert _run(tmp_path, ["generative_recommendations"], dataset="demo", config=config).success
    before = storage.table_path(tmp_path, "generative_recommendations", "demo").read_bytes()
    swapped = table.copy()
    for col in ("codes", "sid", "sid_str"):
        swapped.loc[[0, 1], col] = swapped.loc[[1, 0], col].to_numpy()
    storage.write_table(tmp_path, "semantic_ids", "demo", swapped)  # a re-assignment that moved two SIDs
    result = _run(tmp_path, ["generative_recommendations"], dataset="demo", config=config)
    assert "2 items moved to another SID" in _error(result, "VersionMismatchError")
    assert storage.table_path(tmp_path, "generative_recommendations", "demo").read_bytes() == before
