"""The deployment's processes for real, without Docker, all on 127.0.0.1 and all stopped afterwards:
a user-code gRPC server, the webserver and the daemon against a temporary instance made from
docker/dagster.yaml (SQLite instead of PostgreSQL). A run launched through the webserver's GraphQL
API materializes the tiny ``demo`` up to ``sid_versions``; then new item files dropped into the
incoming folder make the daemon's sensor launch a frozen re-tokenization, which keeps every old
SID and whose version diff reports exactly the new items.

Slow by nature (three Python processes plus two run workers import torch and Dagster): about two
minutes on an idle 2-core machine.
"""

import json
import os
import time

import pytest

from semid_pipeline_tests.conftest import TINY_DEMO, TINY_RUN_CONFIG
from semid_pipeline_tests.deployment_utils import (
    BIN,
    closed_selection,
    free_port,
    graphql,
    http_ok,
    instance_yaml_for_tests,
    ops_config,
    start,
    stop,
    wait_for,
)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1500)]

RUN_TIMEOUT = float(os.environ.get("SEMID_TEST_RUN_TIMEOUT", "600"))

LAUNCH = """
mutation Launch($params: ExecutionParams!) {
  launchRun(executionParams: $params) {
    __typename
    ... on LaunchRunSuccess { run { runId status } }
    ... on PythonError { message stack }
    ... on RunConfigValidationInvalid { errors { message } }
    ... on InvalidSubsetError { message }
    ... on PipelineNotFoundError { message }
  }
}"""
RUN_STATUS = """query Run($id: ID!) { runOrError(runId: $id) { __typename ... on Run { status } } }"""
RUNS_BY_TAG = """
query Runs($key: String!, $value: String!) {
  runsOrError(filter: {tags: [{key: $key, value: $value}]}) { ... on Runs { results { runId status tags { key value } } } }
}"""
LOCATIONS = """
query { workspaceOrError { ... on Workspace { locationEntries { name loadStatus locationOrLoadError { __typename } } } } }"""
RUN_LOGS = """
query Logs($id: ID!) { logsForRun(runId: $id) { ... on EventConnection { events { __typename ... on MessageEvent { message } } } } }"""


def _location_loaded(port: int) -> bool:
    try:
        entries = graphql(port, LOCATIONS)["workspaceOrError"]["locationEntries"]
    except Exception:  # webserver still starting
        return False
    return any(e["loadStatus"] == "LOADED" and e["locationOrLoadError"]["__typename"] == "RepositoryLocation" for e in entries)


def _wait_run(port: int, run_id: str, procs) -> str:
    def done():
        status = graphql(port, RUN_STATUS, {"id": run_id})["runOrError"]["status"]
        return status if status in ("SUCCESS", "FAILURE", "CANCELED") else None

    status = wait_for(done, RUN_TIMEOUT, f"run {run_id}", interval=2.0, procs=procs)
    if status != "SUCCESS":
        events = graphql(port, RUN_LOGS, {"id": run_id})["logsForRun"]["events"]
        messages = [e.get("message", "") for e in events][-15:]
        raise AssertionError(f"run {run_id} ended {status}:\n" + "\n".join(messages))
    return status


def test_grpc_webserver_daemon_run_and_sensor_triggered_retokenization(tmp_path):
    from semid_pipeline.core import storage
    from semid_pipeline.core.tokenizers.versioning import diff_versions
    from semid_pipeline.definitions import defs

    home, data = tmp_path / "home", tmp_path / "data"
    home.mkdir()
    (home / "dagster.yaml").write_text(instance_yaml_for_tests(home))
    grpc_port, web_port = free_port(), free_port()
    workspace = tmp_path / "workspace.yaml"
    workspace.write_text(
        f"load_from:\n  - grpc_server:\n      host: 127.0.0.1\n      port: {grpc_port}\n      location_name: semid_pipeline\n"
    )
    env = {
        **os.environ,
        "DAGSTER_HOME": str(home),
        "SEMID_DATA_DIR": str(data),
        "SEMID_DATASET_OPTIONS": json.dumps({"demo": TINY_DEMO}),
        "SEMID_NUM_THREADS": "1",
        "SEMID_INCOMING_MODE": "frozen",
        "SEMID_INCOMING_SENSOR_INTERVAL": "2",
        "SEMID_INCOMING_SENSOR_STATUS": "running",
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "PATH": f"{BIN}:{os.environ.get('PATH', '')}",
    }
    # Create the SQLite storages once, before the webserver and the daemon open the instance at the
    # same moment (two processes stamping a fresh schema race: "alembic_version has more than one head").
    from dagster import DagsterInstance

    DagsterInstance.from_config(str(home)).dispose()
    procs = []
    try:
        grpc = start([str(BIN / "dagster"), "api", "grpc", "-m", "semid_pipeline.definitions", "--host", "127.0.0.1", "--port", str(grpc_port)], env, tmp_path / "grpc.log")
        procs.append(grpc)
        web = start([str(BIN / "dagster-webserver"), "-w", str(workspace), "-h", "127.0.0.1", "-p", str(web_port)], env, tmp_path / "webserver.log")
        procs.append(web)
        daemon = start([str(BIN / "dagster-daemon"), "run", "-w", str(workspace)], env, tmp_path / "daemon.log")
        procs.append(daemon)
        wait_for(lambda: http_ok(f"http://127.0.0.1:{web_port}/server_info"), 300, "the webserver", procs=procs)
        wait_for(lambda: _location_loaded(web_port), 300, "the code location over gRPC", interval=2.0, procs=procs)

        # 1. a run through the GraphQL API: demo up to sid_versions, tiny models
        keys = closed_selection(defs, "sid_versions")
        params = {
            "selector": {
                "repositoryLocationName": "semid_pipeline",
                "repositoryName": "__repository__",
                "jobName": "full_pipeline",
                "assetSelection": [{"path": k.path} for k in keys],
            },
            "runConfigData": ops_config(TINY_RUN_CONFIG, keys),
            "executionMetadata": {"tags": [{"key": "dagster/partition", "value": "demo"}]},
        }
        launched = graphql(web_port, LAUNCH, {"params": params})["launchRun"]
        assert launched["__typename"] == "LaunchRunSuccess", launched
        _wait_run(web_port, launched["run"]["runId"], procs)
        v1 = storage.read_table(data, "semantic_ids", "demo")
        assert len(v1) > 0 and not v1["sid_str"].duplicated().any()

        # 2. new items (10% of the catalog) arrive; the daemon's sensor launches the frozen re-tokenization
        folder = data / "incoming" / "demo"
        folder.mkdir(parents=True)
        new_ids = [f"NEW{i:04d}" for i in range(len(v1) // 10)]
        lines = [json.dumps({"item_id": i, "title": f"Citrus hand cream {k}", "categories": ["Skin Care", "Hands"]}) for k, i in enumerate(new_ids)]
        (folder / "batch-001.jsonl").write_text("\n".join(lines) + "\n")

        def triggered():
            runs = graphql(web_port, RUNS_BY_TAG, {"key": "semid/trigger", "value": "incoming_items"})["runsOrError"]["results"]
            return runs[0] if runs else None

        run = wait_for(triggered, RUN_TIMEOUT, "the sensor-triggered run", interval=2.0, procs=procs)
        tags = {t["key"]: t["value"] for t in run["tags"]}
        assert tags["dagster/partition"] == "demo" and tags["semid/mode"] == "frozen" and tags["dagster/sensor_name"] == "incoming_items_sensor"
        _wait_run(web_port, run["runId"], procs)

        v2 = storage.read_table(data, "semantic_ids", "demo").set_index("item_id")
        old = v1.set_index("item_id")
        assert (v2.loc[old.index, "sid_str"] == old["sid_str"]).all()
        assert len(v2) == len(v1) + len(new_ids) and not v2["sid_str"].duplicated().any()
        diff = diff_versions(storage.read_table(data, "sid_versions", "demo"), "previous", "latest")
        assert diff.added == new_ids and diff.moved == [] and diff.removed == []
    except BaseException:
        for name in ("grpc", "webserver", "daemon"):
            log = tmp_path / f"{name}.log"
            if log.exists():
                print(f"----- {name}.log (tail) -----\n" + log.read_text(errors="replace")[-3000:])
        raise
    finally:
        for proc in reversed(procs):
            stop(proc)
    assert all(p.poll() is not None for p in procs)
    time.sleep(0.1)
