"""Who holds a concurrency-pool slot, said and acted on (``run_guard.free_dead_slots``) on a real
SQLite instance: a live holder is named with how to free it, a dead or finished one is freed."""

import os
import subprocess
import sys
import uuid

import pytest
from dagster import DagsterInstance, DagsterRunStatus
from dagster._core.storage.dagster_run import DagsterRun

from semid_pipeline.core.locks import hold_run_alive, release_run_alive
from semid_pipeline.run_guard import free_dead_slots, liveness_root


class _Log:
    def __init__(self):
        self.lines = []

    def warning(self, message):
        self.lines.append(message)


@pytest.fixture()
def instance(tmp_path):
    with DagsterInstance.local_temp(str(tmp_path), overrides={"concurrency": {"pools": {"default_limit": 1}}}) as inst:
        inst.event_log_storage.set_concurrency_slots("gpu", 1)
        yield inst


def _run(instance, status=DagsterRunStatus.STARTED) -> str:
    run_id = str(uuid.uuid4())
    instance.add_run(DagsterRun(job_name="__ASSET_JOB", run_id=run_id, status=status))
    return run_id


def _slots(instance):
    return [(s.run_id, s.step_key) for s in instance.event_log_storage.get_concurrency_info("gpu").claimed_slots]


def test_a_live_holder_is_named_with_how_to_free_it_and_kept(instance):
    holder, me = _run(instance), _run(instance)
    events = instance.event_log_storage
    assert events.claim_concurrency_slot("gpu", holder, "sid_tokenizer").is_claimed
    assert not events.claim_concurrency_slot("gpu", me, "generative_recommender").is_claimed  # waits
    hold_run_alive(liveness_root(instance), holder)
    try:
        log, told = _Log(), set()
        assert free_dead_slots(instance, me, log, told) == []
        assert log.lines == [
            f"step generative_recommender waits for pool 'gpu' (limit 1): its slot is held by run {holder}, step sid_tokenizer "
            f"(alive, pid {os.getpid()}); it runs when that step ends. To free the slot now: stop that run (kill {os.getpid()}, "
            "or Terminate on its page in the UI). Slots of a killed run are freed automatically."
        ]
        free_dead_slots(instance, me, log, told)
        assert len(log.lines) == 1  # said once, not every check
        assert _slots(instance) == [(holder, "sid_tokenizer")]
    finally:
        release_run_alive(liveness_root(instance), holder)


def test_a_killed_holder_is_freed_and_marked_failed(instance):
    holder, me = _run(instance), _run(instance)
    assert instance.event_log_storage.claim_concurrency_slot("gpu", holder, "sid_tokenizer").is_claimed
    root = liveness_root(instance)
    code = ("import sys, time; from semid_pipeline.core.locks import hold_run_alive; "
            "hold_run_alive(sys.argv[1], sys.argv[2]); print('held', flush=True); time.sleep(60)")
    proc = subprocess.Popen([sys.executable, "-c", code, str(root), holder], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "held"
        assert free_dead_slots(instance, me) == []  # alive: kept
        proc.kill()  # SIGKILL: the kernel drops its lock, the file stays
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
    log = _Log()
    assert free_dead_slots(instance, me, log) == [holder]
    assert log.lines == [f"freed the 'gpu' pool slot of run {holder} (step sid_tokenizer): its process died (pid {proc.pid})"]
    assert _slots(instance) == []
    assert instance.get_run_by_id(holder).status == DagsterRunStatus.FAILURE
    assert not (root / f"{holder}.lock").exists()


def test_a_finished_holder_without_liveness_is_freed(instance):
    holder, me = _run(instance, DagsterRunStatus.CANCELED), _run(instance)
    assert instance.event_log_storage.claim_concurrency_slot("gpu", holder, "sid_tokenizer").is_claimed
    log = _Log()
    assert free_dead_slots(instance, me, log) == [holder]
    assert log.lines == [f"freed the 'gpu' pool slot of run {holder} (step sid_tokenizer): it is over (CANCELED)"]
    assert _slots(instance) == []


def test_the_watchdog_frees_a_slot_whose_holder_dies_while_this_run_waits(instance, tmp_path):
    import time

    from semid_pipeline.run_guard import _Watchdog

    holder, me = _run(instance), _run(instance)
    assert instance.event_log_storage.claim_concurrency_slot("gpu", holder, "sid_tokenizer").is_claimed
    root = liveness_root(instance)
    root.mkdir(parents=True, exist_ok=True)
    (root / f"{holder}.lock").write_text("{}")  # the liveness file of a run killed a moment ago: nobody holds its lock
    log = _Log()
    dog = _Watchdog(instance, me, log, interval=0.2)
    dog.start()
    try:
        deadline = time.monotonic() + 20
        while _slots(instance) and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        dog.stop.set()
        dog.join(timeout=10)
    assert _slots(instance) == [] and log.lines[0].startswith(f"freed the 'gpu' pool slot of run {holder} (step sid_tokenizer)")


def test_repository_instance_config_frees_finished_runs_slots_with_a_daemon(tmp_path, monkeypatch):
    import shutil
    from pathlib import Path

    shutil.copy(Path(__file__).resolve().parents[1] / "dagster.yaml", tmp_path / "dagster.yaml")
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path))
    with DagsterInstance.get() as inst:
        assert inst.run_monitoring_enabled and inst.run_monitoring_settings["free_slots_after_run_end_seconds"] == 30
        assert inst.get_concurrency_config().pool_config.default_pool_limit == 1
