"""Helpers for the deployment tests: a temporary instance built from docker/dagster.yaml, free ports,
process groups that are always stopped, GraphQL calls."""

import json
import os
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
BIN = Path(os.environ.get("VIRTUAL_ENV", REPO / ".venv")) / "bin"


def instance_yaml_for_tests(home: Path) -> str:
    """docker/dagster.yaml with SQLite storage and local paths under ``home`` (everything else as deployed)."""
    config = yaml.safe_load((REPO / "docker" / "dagster.yaml").read_text())
    config["storage"] = {"sqlite": {"base_dir": str(home / "storage")}}
    config["local_artifact_storage"]["config"]["base_dir"] = str(home / "storage")
    config["compute_logs"]["config"]["base_dir"] = str(home / "compute_logs")
    config["run_coordinator"]["config"]["dequeue_interval_seconds"] = 1
    config["run_monitoring"]["poll_interval_seconds"] = 5
    return yaml.safe_dump(config)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(cmd: list, env: dict, log: Path) -> subprocess.Popen:
    """Starts ``cmd`` in its own process group (so :func:`stop` ends it and every child)."""
    fh = open(log, "wb")
    return subprocess.Popen(cmd, env=env, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True, cwd=str(REPO))


def stop(proc: subprocess.Popen, timeout: float = 20.0) -> None:
    """SIGTERM to the process group, SIGKILL after ``timeout`` seconds."""
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=timeout)
    except ProcessLookupError:
        pass


def wait_for(predicate, timeout: float, what: str, interval: float = 1.0, procs: tuple = ()):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for p in procs:
            if p.poll() is not None:
                raise RuntimeError(f"{p.args[0]} exited with {p.returncode} while waiting for {what}")
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")


def graphql(port: int, query: str, variables: dict | None = None, timeout: float = 60.0) -> dict:
    body = json.dumps({"query": query, "variables": variables or {}}).encode()
    req = urllib.request.Request(f"http://127.0.0.1:{port}/graphql", data=body, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        out = json.loads(resp.read())
    if out.get("errors"):
        raise RuntimeError(f"GraphQL errors: {out['errors']}")
    return out["data"]


def http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return resp.status == 200
    except OSError:
        return False


def closed_selection(defs, target: str) -> list:
    """Keys of ``target`` and everything upstream, widened to whole multi-assets that cannot be subset."""
    from dagster import AssetSelection

    graph = defs.resolve_asset_graph()
    keys = set(AssetSelection.assets(target).upstream().resolve(graph))
    for key in list(keys):
        node = graph.get(key)
        if not node.assets_def.can_subset:
            keys |= set(node.assets_def.keys)
    return sorted(keys, key=lambda k: k.to_user_string())


def ops_config(config: dict, keys) -> dict:
    """The ``ops`` entries of ``config`` for the selected asset keys only (Dagster refuses the others)."""
    names = {k.path[-1] for k in keys}
    return {"ops": {k: v for k, v in config.get("ops", {}).items() if k in names}}
