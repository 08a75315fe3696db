"""The partition lock and the run journal on their own: a second holder is refused naming the first,
a step of another run may not write, and a rollback restores tables and model folders byte for byte."""

import subprocess
import sys

import pandas as pd
import pytest

from semid_pipeline.core import storage
from semid_pipeline.core.locks import PartitionBusyError, PartitionLock, partition_holder
from semid_pipeline.run_guard import check_writer


def _holder(data_dir, seconds: float) -> subprocess.Popen:
    """Another process holding partition 'demo' of ``data_dir`` for run-A during ``seconds``."""
    code = ("import sys, time; from semid_pipeline.core.locks import PartitionLock; "
            "PartitionLock(sys.argv[1], 'demo', 'run-A').acquire(); print('held', flush=True); time.sleep(float(sys.argv[2]))")
    proc = subprocess.Popen([sys.executable, "-c", code, str(data_dir), str(seconds)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_second_holder_is_refused_naming_the_first_and_the_lock_dies_with_its_process(tmp_path):
    proc = _holder(tmp_path, 60)
    try:
        with pytest.raises(PartitionBusyError) as err:
            PartitionLock(tmp_path, "demo", "run-B").acquire()
        assert str(err.value).startswith(f"dataset partition 'demo' of {tmp_path} is being written by run run-A (pid {proc.pid} on ")
        assert "this run wrote nothing" in str(err.value)
        with pytest.raises(PartitionBusyError, match="held by run run-A .* not by this run run-B; not writing"):
            check_writer(str(tmp_path), "demo", "run-B")  # a leftover step of another run may not write
        check_writer(str(tmp_path), "demo", "run-A")
        with PartitionLock(tmp_path, "other", "run-B"):  # another partition: no wait
            pass
    finally:
        proc.kill()
        proc.wait(timeout=10)
    assert partition_holder(tmp_path, "demo") is None  # SIGKILL released it
    with PartitionLock(tmp_path, "demo", "run-B"):
        assert partition_holder(tmp_path, "demo")["run_id"] == "run-B"
        with PartitionLock(tmp_path, "demo", "run-B"):  # re-entrant for its run
            pass
        assert partition_holder(tmp_path, "demo")["run_id"] == "run-B"
    assert partition_holder(tmp_path, "demo") is None


def test_rollback_restores_tables_and_model_folders_and_removes_new_outputs(tmp_path):
    old = storage.write_table(tmp_path, "items", "demo", pd.DataFrame({"a": [1, 2]}))
    model = storage.model_dir(tmp_path, "sid_tokenizer", "demo")
    model.mkdir(parents=True)
    (model / "config.json").write_text('{"v": 1}')
    before = {p: p.read_bytes() for p in (old, model / "config.json")}

    journal = storage.RunJournal(tmp_path, "demo", "run-1")
    for path in (old, model, storage.table_path(tmp_path, "semantic_ids", "demo")):
        journal.keep(path)
    journal.keep(old)  # a second write of the same output in the run: the state before the run is kept
    storage.write_table(tmp_path, "items", "demo", pd.DataFrame({"a": [3]}))
    storage.write_table(tmp_path, "semantic_ids", "demo", pd.DataFrame({"b": [1]}))
    (model / "new.json").write_text('{"v": 2}')
    (model / "new.json").replace(model / "config.json")  # a new file replaces the old, as save_artifact and write_table do
    assert old.read_bytes() != before[old] and (model / "config.json").read_text() == '{"v": 2}'

    restored = journal.rollback()
    assert len(restored) == 3
    assert {p: p.read_bytes() for p in before} == before
    assert not storage.table_path(tmp_path, "semantic_ids", "demo").exists()
    assert not (tmp_path / storage.RUNS_DIR / "demo" / "run-1").exists()


def test_a_waiting_run_gets_the_partition_when_the_holder_ends(tmp_path):
    proc = _holder(tmp_path, 1.5)
    try:
        with PartitionLock(tmp_path, "demo", "run-B", wait_s=60, poll_s=0.1):
            assert proc.poll() is not None  # got it only once A had ended
    finally:
        proc.kill()
        proc.wait(timeout=10)
