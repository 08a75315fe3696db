"""A refused run changes nothing: every earlier table and model stays byte-identical (file hashes
before and after), also when an earlier step of the same run had already written; a failed
blocking check means the rejected assignment is never the current one; "latest" in sid_versions
is always the assignment semantic_ids holds."""

import hashlib
import json

import numpy as np
import pytest
from dagster import DagsterInstance, materialize

from semid_pipeline.core import storage
from semid_pipeline.core.params import LimitError
from semid_pipeline.core.tokenizers.base import TokenizerParams, train_tokenizer
from semid_pipeline.core.tokenizers.versioning import current_assignment_id, diff_versions, list_versions
from semid_pipeline.definitions import all_assets
from semid_pipeline_tests.conftest import tiny_resources
from semid_pipeline_tests.test_versioning_pipeline import data_dir  # noqa: F401  (fixture: tokenizer inputs on disk)

PREPARE = ["raw_items", "raw_interactions", "items", "interactions", "user_sequences"]
SIDS = ["incoming_items", "catalog_item_embeddings", "semantic_ids", "sid_versions"]


def _hashes(data_dir) -> dict:
    """Every output file (tables and models) and its SHA-256; the run's own bookkeeping is left out."""
    files = [p for sub in ("tables", "models") for p in (data_dir / sub).rglob("*") if p.is_file()]
    return {str(p.relative_to(data_dir)): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


def _write_p5(root, sequences, titles):
    root.mkdir(parents=True, exist_ok=True)
    (root / "user_sequence.txt").write_text("".join(" ".join([u, *items]) + "\n" for u, items in sequences.items()))
    (root / "meta_Beauty.jsonl").write_text(
        "".join(json.dumps({"asin": a, "title": t, "categories": [["Beauty", "Skin Care"]]}) + "\n" for a, t in titles.items())
    )


ITEMS = [f"B{i:04d}" for i in range(8)]
GOOD = {f"U{u}": [ITEMS[(u + j) % 8] for j in range(6)] for u in range(12)}


def _run(data_dir, selection, root=None, config=None, instance=None, dataset="amazon-beauty"):
    options = {"amazon-beauty": {"root": str(root)}} if root is not None else None
    return materialize(all_assets, selection=selection, partition_key=dataset, resources=tiny_resources(data_dir, options),
                       instance=instance or DagsterInstance.ephemeral(), raise_on_error=False, run_config=config or {})


def _error(result) -> tuple:
    failure = [e for e in result.all_events if e.is_step_failure][0]
    error = failure.step_failure_data.error
    while error.cause is not None and error.cls_name not in ("InputError", "CheckRefusedError", "ValidationError"):
        error = error.cause
    return failure.step_key, error.cls_name, error.message


def _warnings(instance, result):
    return [r.user_message for r in instance.all_logs(result.run_id) if r.level >= 30 and r.dagster_event is None]


def test_every_user_too_short_leaves_raw_and_prepared_tables_byte_identical(tmp_path):
    root, data = tmp_path / "beauty", tmp_path / "data"
    _write_p5(root, GOOD, {a: f"Item {a}" for a in ITEMS})
    assert _run(data, PREPARE, root).success
    before = _hashes(data)
    assert len(before) == 5

    _write_p5(root, {f"U{u}": ITEMS[u % 8: u % 8 + 2] for u in range(12)}, {a: f"Other {a}" for a in ITEMS})  # 2 events each
    instance = DagsterInstance.ephemeral()
    result = _run(data, PREPARE, root, instance=instance)
    assert not result.success
    step, cls, message = _error(result)
    assert (step, cls) == ("prepared_dataset", "InputError")
    assert "no interactions survive the 5/5 (user/item) k-core filter" in message and "lower k_core_user (>= 3)" in message
    # raw_dataset had written both raw tables in this run; the refusal put them back
    assert _hashes(data) == before
    logged = _warnings(instance, result)
    assert any(m.startswith("run refused (prepared_dataset: InputError:") and "restored the 2 outputs" in m for m in logged), logged
    assert not any((data / storage.RUNS_DIR / "amazon-beauty").iterdir())


def test_one_item_catalog_is_refused_at_preparation_with_advice_on_the_data(tmp_path):
    root, data = tmp_path / "beauty", tmp_path / "data"
    _write_p5(root, GOOD, {a: f"Item {a}" for a in ITEMS})
    assert _run(data, PREPARE, root).success
    before = _hashes(data)

    _write_p5(root, {f"U{u}": ["B0000"] * 6 for u in range(12)}, {"B0000": "The only item"})
    config = {"ops": {"prepared_dataset": {"config": {"drop_duplicates": False}}}}
    result = _run(data, PREPARE, root, config)
    step, cls, message = _error(result)
    assert (step, cls) == ("prepared_dataset", "InputError")
    assert "only 1 item ('B0000') left of 1 in the catalog" in message and "semantic IDs need at least 2 items" in message
    assert "codebook_size <=" not in message
    assert _hashes(data) == before

    # the tokenizer itself, handed one item, advises on the data too (codebook_size cannot go below 2)
    with pytest.raises(LimitError, match="1 item to tokenize: a tokenizer needs at least 2 items") as err:
        train_tokenizer(np.ones((1, 8), np.float32), TokenizerParams(codebook_size=2))
    assert "codebook_size <=" not in str(err.value)


def test_failing_blocking_check_writes_no_assignment(data_dir):  # noqa: F811
    assert _run(data_dir, SIDS, dataset="demo").success
    before = _hashes(data_dir)
    current = current_assignment_id(storage.read_table(data_dir, "semantic_ids", "demo"))

    config = {"ops": {"semantic_ids": {"config": {"max_collision_rate": 0.0, "collision_strategy": "sinkhorn"}}}}
    result = _run(data_dir, ["semantic_ids", "sid_versions"], config=config, dataset="demo")
    step, cls, message = _error(result)
    assert (step, cls) == ("semantic_ids", "CheckRefusedError")
    assert "refused by its blocking checks (collision_rate: collision rate before resolution 0." in message
    assert "> max_collision_rate 0.0); nothing written" in message
    assert {e.check_name: e.passed for e in result.get_asset_check_evaluations()}["collision_rate"] is False
    assert "sid_versions" not in {e.asset_key.path[-1] for e in result.get_asset_materialization_events()}
    assert _hashes(data_dir) == before
    assert current_assignment_id(storage.read_table(data_dir, "semantic_ids", "demo")) == current


def test_sinkhorn_and_back_leaves_latest_on_the_current_assignment(data_dir):  # noqa: F811
    def assign(strategy):
        config = {"ops": {"semantic_ids": {"config": {"collision_strategy": strategy}}}}
        assert _run(data_dir, ["semantic_ids", "sid_versions"], config=config, dataset="demo").success
        return current_assignment_id(storage.read_table(data_dir, "semantic_ids", "demo"))

    assert _run(data_dir, SIDS, dataset="demo").success
    a = current_assignment_id(storage.read_table(data_dir, "semantic_ids", "demo"))
    b = assign("sinkhorn")
    rows_b = len(storage.read_table(data_dir, "sid_versions", "demo"))
    assert assign("append_token") == a != b
    history = storage.read_table(data_dir, "sid_versions", "demo")
    assert len(history) > rows_b  # append-only: A's rows again, nothing removed
    assert list_versions(history)["assignment_id"].tolist() == [b, a]  # ordered by when each became current
    diff = diff_versions(history, "previous", "latest")
    assert (diff.a, diff.b) == (b, a)  # latest = what semantic_ids holds
    assert assign("append_token") == a and len(storage.read_table(data_dir, "sid_versions", "demo")) == len(history)  # idempotent


def test_a_run_that_crashes_keeps_what_its_finished_steps_wrote(tmp_path, monkeypatch):
    import semid_pipeline.assets.preprocessing as preprocessing

    root, data = tmp_path / "beauty", tmp_path / "data"
    _write_p5(root, GOOD, {a: f"Item {a}" for a in ITEMS})
    assert _run(data, PREPARE, root).success
    before = _hashes(data)
    _write_p5(root, GOOD, {a: f"Renamed {a}" for a in ITEMS})

    def crash(*args, **kwargs):
        raise RuntimeError("out of memory (simulated)")

    monkeypatch.setattr(preprocessing, "prepare", crash)
    result = _run(data, PREPARE, root)
    assert not result.success
    after = _hashes(data)
    changed = {k for k in after if after[k] != before[k]}
    assert changed == {"tables/raw_items/dataset=amazon-beauty/part.parquet"}  # not a refusal: the new raw titles stay
