"""Runs that overlap or die, for real: `dagster asset materialize` processes on one instance (the
repository's dagster.yaml: gpu pool limit 1) and one data dir.

1. A run killed with SIGKILL while its training step holds the gpu pool slot does not block the
   next run: the next one frees the dead run's slot, marks it failed and completes.
2. Two runs started at once on one dataset partition: one runs, the other fails at its start
   naming the run that holds the partition, and writes nothing; sid_versions keeps every assignment.

Each CLI process imports torch and Dagster (~10 s on an idle 2-core machine); every wait is bounded.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from dagster import DagsterInstance, DagsterRunStatus

from semid_pipeline.core import storage
from semid_pipeline.core.data.demo import DemoParams, generate_demo
from semid_pipeline.core.data.preprocess import PreprocessParams, build_tables
from semid_pipeline_tests.conftest import TINY_DEMO, write_collaborative_placeholder

pytestmark = pytest.mark.timeout(400)

REPO = Path(__file__).resolve().parents[1]
DAGSTER = str(Path(sys.executable).with_name("dagster"))
DIM = 32


def _inputs(data_dir: Path) -> pd.DataFrame:
    """What sid_tokenizer reads, written by hand: the tiny demo's items, random text embeddings, tags."""
    items = build_tables(generate_demo(DemoParams(**TINY_DEMO)), PreprocessParams()).items
    x = np.random.default_rng(0).normal(size=(len(items), DIM)).astype(np.float32)
    storage.write_table(data_dir, "items", "demo", items)
    storage.write_table(data_dir, "item_text_embeddings", "demo", items[["item_idx", "item_id"]].assign(embedding=list(x)))
    storage.write_table(data_dir, "catalog_item_embeddings", "demo", items[["item_idx", "item_id"]].assign(embedding=list(x)))
    tags = items[["item_idx", "item_id"]].assign(tag_path=items["category_path"], tag_source="true")
    storage.write_table(data_dir, "item_tags", "demo", tags)
    write_collaborative_placeholder(data_dir, "demo", items)
    return items


def _env(tmp_path: Path) -> dict:
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    shutil.copy(REPO / "dagster.yaml", home / "dagster.yaml")  # what scripts/instance.sh gives a local user
    env = dict(os.environ)
    env.update({
        "DAGSTER_HOME": str(home), "SEMID_DATA_DIR": str(tmp_path / "data"), "PYTHONPATH": str(REPO),
        "SEMID_NUM_THREADS": "1", "SEMID_SLOT_CHECK_S": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
    })
    return env


def _tokenizer_config(epochs: int) -> dict:
    return {"hidden_dims": [32], "latent_dim": 8, "codebook_size": 8, "epochs": epochs, "batch_size": 16, "probe_epochs": 1}


def _materialize(env: dict, select: str, ops: dict, log: Path) -> subprocess.Popen:
    cmd = [DAGSTER, "asset", "materialize", "-m", "semid_pipeline.definitions", "--select", select, "--partition", "demo",
           "--config-json", json.dumps({"ops": ops})]
    return subprocess.Popen(cmd, env=env, cwd=str(REPO), stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True)


def _wait_for_text(log: Path, text: str, proc: subprocess.Popen, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if text in log.read_text(errors="replace"):
            return
        if proc.poll() is not None:
            raise AssertionError(f"process ended ({proc.returncode}) before {text!r}:\n{log.read_text()[-3000:]}")
        time.sleep(0.2)
    raise AssertionError(f"no {text!r} within {timeout} s:\n{log.read_text()[-3000:]}")


def _finish(proc: subprocess.Popen, timeout: float) -> int:
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        raise


def test_a_run_killed_during_a_training_step_does_not_block_the_next(tmp_path):
    env = _env(tmp_path)
    _inputs(tmp_path / "data")
    first_log, second_log = tmp_path / "first.log", tmp_path / "second.log"
    first = _materialize(env, "sid_tokenizer", {"sid_tokenizer": {"config": _tokenizer_config(100000)}}, first_log)
    try:
        _wait_for_text(first_log, 'Started execution of step "sid_tokenizer"', first, timeout=180)
        time.sleep(1.0)  # inside the training loop, holding the gpu slot
    finally:
        os.killpg(first.pid, signal.SIGKILL)  # kill -9 the run: its process and anything it started
        first.wait()
    with DagsterInstance.from_config(env["DAGSTER_HOME"]) as instance:
        assert [s.run_id for s in instance.event_log_storage.get_concurrency_info("gpu").claimed_slots], "the dead run holds no slot?"
        dead = instance.get_runs()[0]
        assert dead.status == DagsterRunStatus.STARTED  # nobody told Dagster it died

    second = _materialize(env, "sid_tokenizer", {"sid_tokenizer": {"config": _tokenizer_config(2)}}, second_log)
    assert _finish(second, timeout=180) == 0, second_log.read_text()[-3000:]
    out = second_log.read_text()
    assert f"freed the 'gpu' pool slot of run {dead.run_id} (step sid_tokenizer): its process died" in out
    assert "RUN_SUCCESS" in out
    with DagsterInstance.from_config(env["DAGSTER_HOME"]) as instance:
        assert instance.get_run_by_id(dead.run_id).status == DagsterRunStatus.FAILURE
        assert instance.event_log_storage.get_concurrency_info("gpu").claimed_slots == []
    assert (storage.model_dir(tmp_path / "data", "sid_tokenizer", "demo") / "model.safetensors").exists()


def test_two_runs_on_one_partition_one_fails_fast_naming_the_other(tmp_path):
    env = _env(tmp_path)
    data_dir = tmp_path / "data"
    _inputs(data_dir)
    # run A trains a tokenizer, then assigns (append_token); run B starts while A trains and assigns with sinkhorn
    a_log, b_log = tmp_path / "a.log", tmp_path / "b.log"
    a_ops = {"sid_tokenizer": {"config": _tokenizer_config(300)}, "semantic_ids": {"config": {"collision_strategy": "append_token"}}}
    b_ops = {"semantic_ids": {"config": {"collision_strategy": "sinkhorn"}}}
    a = _materialize(env, "sid_tokenizer,semantic_ids,sid_versions", a_ops, a_log)
    try:
        _wait_for_text(a_log, 'Started execution of step "sid_tokenizer"', a, timeout=180)
        b = _materialize(env, "semantic_ids,sid_versions", b_ops, b_log)
        assert _finish(b, 180) == 1, b_log.read_text()[-3000:]
        assert a.poll() is None, "run A ended before run B was refused: no overlap was tested"
    finally:
        code_a = _finish(a, 240)
    assert code_a == 0, a_log.read_text()[-3000:]
    with DagsterInstance.from_config(env["DAGSTER_HOME"]) as instance:
        run_a = next(r for r in instance.get_runs() if "sid_tokenizer" in {k.path[-1] for k in r.asset_selection or ()})
    out_b = b_log.read_text()
    assert f"dataset partition 'demo' of {data_dir} is being written by run {run_a.run_id} (pid " in out_b, out_b[-3000:]
    assert "this run wrote nothing" in out_b
    versions = storage.read_table(data_dir, "sid_versions", "demo")
    assert versions["assignment_id"].nunique() == 1 and len(versions) == len(storage.read_table(data_dir, "semantic_ids", "demo"))

    # B again, now that the partition is free: its assignment is appended and A's is kept
    again = tmp_path / "again.log"
    assert _finish(_materialize(env, "semantic_ids,sid_versions", b_ops, again), 180) == 0, again.read_text()[-3000:]
    versions = storage.read_table(data_dir, "sid_versions", "demo")
    assert versions["assignment_id"].nunique() == 2
    assert not any((data_dir / storage.RUNS_DIR / "demo").glob("*"))  # no journal left behind
