"""What keeps runs from losing each other's work: one writer per partition, dead runs' slots freed,
refused runs rolled back. Entered once per run by the IO managers (``io_managers.py``).

For the length of a run, the process that runs it (``dagster asset materialize``, the UI's run
worker, ``materialize()``: the in-process executor, the default here):

1. **Holds the dataset partition** (:class:`~semid_pipeline.core.locks.PartitionLock` on
   ``<data_dir>/locks/<dataset>.lock``). A second run on the same partition fails at its start,
   before writing anything, naming the run that holds it (``SEMID_PARTITION_WAIT_S`` > 0 makes it
   queue that many seconds first). Why a file lock and not Dagster's run queue or tag limits: those
   only reach runs the daemon launches, and CLI materializations bypass them; the kernel releases
   a file lock when its process dies, so a killed run never leaves the partition locked.
2. **Marks itself alive** (``<DAGSTER_HOME>/semid_runs/<run_id>.lock``) and, at its start and every
   ``SEMID_SLOT_CHECK_S`` seconds (default 5) while it runs, looks at who holds the instance's
   concurrency-pool slots (the ``gpu`` pool): a run whose process died (its liveness lock is
   free: ``kill -9``, a crash, a closed terminal) gets its slots freed and is marked failed; a run
   already over (failed, canceled, succeeded) gets its slots freed too (what the daemon's
   ``run_monitoring.free_slots_after_run_end_seconds`` does, without a daemon). When a step of
   this run waits for a slot held by a live run, the log says which run and step hold it and how
   to free it.
3. **Journals what it replaces** (:class:`~semid_pipeline.core.storage.RunJournal`: hard links, no
   copies) and, when the run ends with a step *refused* for bad input or a failed blocking check
   (:data:`REFUSALS`), puts every table and model it replaced back byte-identical, so a refused
   run changes nothing. A run that fails for another reason (a crash, out of memory) keeps what
   its finished steps wrote; so does a killed run.

With the multiprocess executor each step process enters the guard for its step only (the
partition is held step by step, and a refused step rolls back its own outputs only).
"""

import os
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Tuple

from dagster import DagsterEventType, DagsterInstance, DagsterRunStatus, InitResourceContext

from semid_pipeline.core import storage
from semid_pipeline.core.locks import (
    PartitionBusyError, PartitionLock, hold_run_alive, partition_holder, release_run_alive, run_alive_info, run_is_alive,
)

PARTITION_TAG = "dagster/partition"

REFUSALS = frozenset({
    "InputError", "LimitError", "UnknownKeyError", "ValidationError", "VersionMismatchError", "CheckRefusedError",
    "FallbackError", "DagsterTypeCheckDidNotPass",
})
"""Error classes that mean "this input or config is refused" (not a crash): a run ending with one of them is rolled back."""

_FINISHED = {DagsterRunStatus.SUCCESS, DagsterRunStatus.FAILURE, DagsterRunStatus.CANCELED}
_active: Dict[Tuple[str, str], int] = {}
_active_lock = threading.Lock()


def liveness_root(instance: DagsterInstance) -> Path:
    """Where runs of ``instance`` mark themselves alive: ``<instance root>/semid_runs``."""
    return Path(instance.root_directory) / "semid_runs"


def _env_float(name: str, default: float) -> float:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"{name} must be a number of seconds, got {raw!r}") from None
    if value < 0:
        raise ValueError(f"{name} must be >= 0, got {raw!r}")
    return value


def free_dead_slots(instance: DagsterInstance, own_run_id: str, log: Any = None, told: Optional[set] = None) -> List[str]:
    """Frees the concurrency slots of runs that are dead or over; returns their run ids.

    Also logs (once per holder, in ``told``) which live run holds a pool this run waits for.
    """
    events = instance.event_log_storage
    if not events.supports_global_concurrency_limits:
        return []
    root = liveness_root(instance)
    freed: List[str] = []
    for pool in sorted(events.get_concurrency_keys()):
        info = events.get_concurrency_info(pool)
        waiting = [p.step_key for p in info.pending_steps if p.run_id == own_run_id and p.assigned_timestamp is None]
        for slot in info.claimed_slots:
            holder = slot.run_id
            if holder == own_run_id or holder in freed:
                continue
            alive = run_is_alive(root, holder)
            record = instance.get_run_record_by_id(holder)
            status = record.dagster_run.status if record is not None else None
            if alive is False or record is None or status in _FINISHED:
                why = (
                    f"its process died (pid {run_alive_info(root, holder).get('pid')})" if alive is False
                    else "it no longer exists" if record is None else f"it is over ({status.value})"
                )
                events.free_concurrency_slots_for_run(holder)
                if alive is False and record is not None and status not in _FINISHED:
                    instance.report_run_failed(record.dagster_run, f"run {holder} marked failed by run {own_run_id}: {why}; its concurrency slots were freed")
                if alive is False:
                    (root / f"{holder}.lock").unlink(missing_ok=True)
                freed.append(holder)
                if log is not None:
                    log.warning(f"freed the '{pool}' pool slot of run {holder} (step {slot.step_key}): {why}")
                continue
            key = (pool, holder, slot.step_key)
            if waiting and log is not None and (told is None or key not in told):
                if told is not None:
                    told.add(key)
                pid = run_alive_info(root, holder).get("pid")
                how = (
                    f"stop that run (kill {pid}, or Terminate on its page in the UI)" if alive
                    else "if that run is gone, free its slots on its page in the UI (Free concurrency slots); it was not "
                    "started by this pipeline's code, so its liveness cannot be checked here"
                )
                log.warning(
                    f"step {', '.join(waiting)} waits for pool '{pool}' (limit {info.slot_count}): its slot is held by run "
                    f"{holder}, step {slot.step_key} ({'alive, pid ' + str(pid) if alive else 'liveness unknown'}); it runs "
                    f"when that step ends. To free the slot now: {how}. Slots of a killed run are freed automatically."
                )
    return freed


def refusal(instance: DagsterInstance, run_id: str) -> Optional[str]:
    """``"<step>: <Error>: <message>"`` for the first step of the run that failed with a refusal, else None."""
    for record in instance.all_logs(run_id, of_type=DagsterEventType.STEP_FAILURE):
        event = record.dagster_event
        error = event.step_failure_data.error if event is not None and event.step_failure_data is not None else None
        while error is not None:
            if error.cls_name in REFUSALS:
                return f"{event.step_key}: {error.cls_name}: {error.message.strip().splitlines()[-1][:300]}"
            error = error.cause
    return None


class _Watchdog(threading.Thread):
    def __init__(self, instance: DagsterInstance, run_id: str, log: Any, interval: float):
        super().__init__(name=f"semid-slot-watchdog-{run_id[:8]}", daemon=True)
        self.instance, self.run_id, self.log, self.interval = instance, run_id, log, interval
        self.stop = threading.Event()
        self.told: set = set()

    def run(self) -> None:
        while not self.stop.wait(self.interval):
            try:
                free_dead_slots(self.instance, self.run_id, self.log, self.told)
            except Exception as err:  # a storage hiccup must not kill the run; say it and retry
                self.log.warning(f"checking concurrency slots failed ({type(err).__name__}: {err}); retrying in {self.interval:g} s")


@contextmanager
def guarded_run(context: InitResourceContext, data_dir: str) -> Iterator[None]:
    """The run-long guard described in the module docstring; a no-op outside a run and when re-entered."""
    run = context.dagster_run
    if run is None or context.instance is None:
        yield
        return
    key = (str(Path(data_dir).resolve()), run.run_id)
    with _active_lock:
        nested = _active.get(key, 0) > 0
        _active[key] = _active.get(key, 0) + 1
    try:
        if nested:
            yield
        else:
            with _guard(context, data_dir, run.run_id, run.tags.get(PARTITION_TAG)):
                yield
    finally:
        with _active_lock:
            _active[key] -= 1
            if not _active[key]:
                del _active[key]


@contextmanager
def _guard(context: InitResourceContext, data_dir: str, run_id: str, dataset: Optional[str]) -> Iterator[None]:
    instance, log = context.instance, context.log
    if not Path(data_dir).exists():  # said, not silent: a typo in the path shows here, the first run still works
        log.warning(
            f"data dir {data_dir} does not exist: creating it (SEMID_DATA_DIR, or the storage resource's data_dir, "
            "chooses another)"
        )
        Path(data_dir).mkdir(parents=True)
    lock = None
    if dataset:
        holder = partition_holder(data_dir, dataset)
        if holder is not None and holder.get("run_id") == run_id and holder.get("pid") != os.getpid():
            yield  # another process of this run (the multiprocess executor's) holds the partition
            return
        lock = PartitionLock(data_dir, dataset, run_id, wait_s=_env_float("SEMID_PARTITION_WAIT_S", 0.0)).acquire()
    root = liveness_root(instance)
    watchdog = None
    try:
        hold_run_alive(root, run_id)
        if dataset:
            storage.discard_stale_journals(data_dir, dataset, keep=run_id)
        free_dead_slots(instance, run_id, log)
        watchdog = _Watchdog(instance, run_id, log, _env_float("SEMID_SLOT_CHECK_S", 5.0))
        watchdog.start()
        yield
    finally:
        if watchdog is not None:
            watchdog.stop.set()
        try:
            if dataset:
                journal = storage.RunJournal(data_dir, dataset, run_id)
                refused = refusal(instance, run_id)
                if refused and journal.entries():
                    restored = journal.rollback()
                    log.warning(
                        f"run refused ({refused}); restored the {len(restored)} outputs it had replaced to their state "
                        f"before the run (byte-identical): {', '.join(_short(p, data_dir) for p in restored)}"
                    )
                else:
                    journal.discard()
        finally:
            release_run_alive(root, run_id)
            if lock is not None:
                lock.release()


def _short(path: str, data_dir: str) -> str:
    try:
        return str(Path(path).relative_to(data_dir))
    except ValueError:
        return path


def check_writer(data_dir: str, dataset: str, run_id: str) -> None:
    """Raises :class:`~semid_pipeline.core.locks.PartitionBusyError` when another run holds ``dataset``:
    a step of a run that lost its partition (its run was killed and another started) must not write."""
    holder = partition_holder(data_dir, dataset)
    if holder is not None and holder.get("run_id") not in (None, run_id):
        raise PartitionBusyError(
            f"dataset partition {dataset!r} of {data_dir} is held by run {holder.get('run_id')} (pid {holder.get('pid')}), "
            f"not by this run {run_id}; not writing"
        )
