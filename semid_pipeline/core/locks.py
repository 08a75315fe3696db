"""Who may write where: one writer per dataset partition, and whether a run's process still lives.

Both are OS file locks (``fcntl.flock``), chosen because the kernel releases them when the holding
process dies, however it dies (``kill -9`` included): no stale lock ever needs a timeout, a PID
check or a human to clear it. Dagster's own guards do not cover this: its run queue and tag
concurrency limits apply only to runs the daemon launches (``dagster asset materialize`` and
``materialize()`` bypass them), and a concurrency-pool slot claimed by a run that is killed stays
claimed until something frees it.

- :class:`PartitionLock`: ``<data_dir>/locks/<dataset>.lock``, held exclusively for a whole run by
  the process that runs it. A second run on the same partition fails fast with
  :class:`PartitionBusyError`, naming the run that holds it (its id, PID, host and start time are
  written into the lock file), before it writes anything. Runs on other partitions or other data
  dirs do not wait for each other.
- :func:`hold_run_alive` / :func:`run_is_alive`: ``<root>/<run_id>.lock`` is locked for as long as
  the run's process lives; another process that finds the file unlocked knows the run is dead
  (so the concurrency slots it holds can be freed), one that finds no file knows nothing.

Locks are per process and re-entrant for the same run: a process asking again for a lock it
already holds for that run gets it (nested resources of one run each ask).
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Dict, Optional

_held: Dict[str, "_Held"] = {}
_guard = threading.Lock()


@dataclass
class _Held:
    fd: int
    run_id: str
    count: int


class PartitionBusyError(RuntimeError):
    """Another run holds the dataset partition; ``str(err)`` names it and says what to do."""


def _lock_path(data_dir: str | os.PathLike, dataset: str) -> Path:
    return Path(data_dir) / "locks" / f"{dataset}.lock"


def _read_holder(path: Path) -> Dict[str, Any]:
    try:
        return json.loads(path.read_text() or "{}")
    except (OSError, ValueError):
        return {}


def _describe(holder: Dict[str, Any]) -> str:
    if not holder:
        return "another process (no details recorded)"
    return (
        f"run {holder.get('run_id')} (pid {holder.get('pid')} on {holder.get('host')}, "
        f"started {holder.get('since')})"
    )


def _try_lock(path: Path) -> Optional[int]:
    """An fd holding an exclusive flock on ``path`` (created if absent), or None when another process holds it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def _acquire(path: Path, run_id: str, info: Dict[str, Any]) -> bool:
    """Takes (or re-enters) the lock for ``run_id``; False when another process holds it.
    Raises when this process holds it for another run."""
    key = str(path.resolve())
    with _guard:
        held = _held.get(key)
        if held is not None:
            if held.run_id != run_id:
                raise PartitionBusyError(f"{path}: this process already holds it for run {held.run_id}, not {run_id}")
            held.count += 1
            return True
        fd = _try_lock(path)
        if fd is None:
            return False
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(info).encode(), 0)
        os.fsync(fd)
        _held[key] = _Held(fd, run_id, 1)
        return True


def _release(path: Path) -> None:
    key = str(path.resolve())
    with _guard:
        held = _held.get(key)
        if held is None:
            return
        held.count -= 1
        if held.count > 0:
            return
        del _held[key]
        os.close(held.fd)  # closing the only fd releases the flock


def _holder_info(run_id: str) -> Dict[str, Any]:
    return {
        "run_id": run_id,
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "since": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


class PartitionLock:
    """The exclusive right of one run to write ``<data_dir>``'s tables and models of ``dataset``.

    ``with PartitionLock(data_dir, dataset, run_id):`` takes it or raises
    :class:`PartitionBusyError`; ``wait_s`` > 0 queues instead, retrying every ``poll_s`` for at
    most that long before failing the same way.
    """

    def __init__(self, data_dir: str | os.PathLike, dataset: str, run_id: str, wait_s: float = 0.0, poll_s: float = 1.0):
        self.path = _lock_path(data_dir, dataset)
        self.dataset, self.run_id, self.wait_s, self.poll_s = dataset, run_id, wait_s, poll_s
        self.data_dir = Path(data_dir)

    def acquire(self) -> "PartitionLock":
        deadline = time.monotonic() + max(0.0, self.wait_s)
        while not _acquire(self.path, self.run_id, _holder_info(self.run_id)):
            if time.monotonic() >= deadline:
                holder = _read_holder(self.path)
                waited = f" after waiting {self.wait_s:g} s" if self.wait_s > 0 else ""
                raise PartitionBusyError(
                    f"dataset partition {self.dataset!r} of {self.data_dir} is being written by {_describe(holder)}; "
                    f"this run wrote nothing{waited}. Wait for that run to finish (or stop it) and start this one again; "
                    f"lock file {self.path}"
                )
            time.sleep(self.poll_s)
        return self

    def release(self) -> None:
        _release(self.path)

    def __enter__(self) -> "PartitionLock":
        return self.acquire()

    def __exit__(self, *exc: Any) -> None:
        self.release()


def partition_holder(data_dir: str | os.PathLike, dataset: str) -> Optional[Dict[str, Any]]:
    """What the lock file says about the run holding ``dataset``'s partition; None when nobody holds it."""
    path = _lock_path(data_dir, dataset)
    if not path.exists():
        return None
    key = str(path.resolve())
    with _guard:
        if key in _held:
            return _read_holder(path)
    fd = _try_lock(path)
    if fd is None:
        return _read_holder(path)
    os.close(fd)
    return None


def _alive_path(root: str | os.PathLike, run_id: str) -> Path:
    return Path(root) / f"{run_id}.lock"


def hold_run_alive(root: str | os.PathLike, run_id: str) -> bool:
    """Marks ``run_id`` alive for as long as this process lives (or until :func:`release_run_alive`)."""
    return _acquire(_alive_path(root, run_id), run_id, _holder_info(run_id))


def release_run_alive(root: str | os.PathLike, run_id: str) -> None:
    path = _alive_path(root, run_id)
    _release(path)
    if str(path.resolve()) not in _held:
        path.unlink(missing_ok=True)


def run_is_alive(root: str | os.PathLike, run_id: str) -> Optional[bool]:
    """True while a process holds ``run_id``'s liveness lock, False once it died without releasing
    it, None when the run never took one (started by other code: nothing is known)."""
    path = _alive_path(root, run_id)
    if not path.exists():
        return None
    with _guard:
        if str(path.resolve()) in _held:
            return True
    fd = _try_lock(path)
    if fd is None:
        return True
    os.close(fd)
    return False


def run_alive_info(root: str | os.PathLike, run_id: str) -> Dict[str, Any]:
    """The PID, host and start time the run's liveness file records ({} when absent)."""
    return _read_holder(_alive_path(root, run_id))
