"""The demo launched the way the UI launches it gives README command one's evaluation table.

    python benchmarks/ui_vs_cli_demo.py --cli-data-dir /path/to/clone/data

Starts ``dagster dev`` (webserver + daemon) on a fresh instance and data folder, asks the GraphQL API
what the launchpad asks when a user opens the ``demo_pipeline`` job and picks the ``demo`` partition
(the partition's run config and tags), launches the run with exactly that (``launchRun``, the
mutation behind the Launch button), waits for it, and compares its ``evaluation`` table with the one
command one wrote into ``--cli-data-dir``. Both must run with the same ``SEMID_NUM_THREADS`` (the
seed is in the config). Writes ``benchmarks/results/ui_vs_cli_demo.json`` with both tables, the run's
status and duration, and the metadata entries the UI shows for the learning curve and the tokenizer.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

PARTITION_QUERY = """
query($repo: RepositorySelector!, $set: String!, $partition: String!) {
  partitionSetOrError(repositorySelector: $repo, partitionSetName: $set) {
    __typename
    ... on PartitionSet { partition(partitionName: $partition) {
      runConfigOrError { __typename ... on PartitionRunConfig { yaml } }
      tagsOrError { __typename ... on PartitionTags { results { key value } } }
    } }
  }
}"""
LAUNCH = """
mutation($params: ExecutionParams!) {
  launchRun(executionParams: $params) {
    __typename
    ... on LaunchRunSuccess { run { runId } }
    ... on PythonError { message }
    ... on RunConfigValidationInvalid { errors { message } }
  }
}"""
STATUS = """query($id: ID!) { runOrError(runId: $id) { __typename ... on Run { status startTime endTime jobName tags { key value } } } }"""
METADATA = """
query($key: AssetKeyInput!) { assetOrError(assetKey: $key) { ... on Asset { assetMaterializations(limit: 1) {
  partition metadataEntries { label __typename ... on MarkdownMetadataEntry { mdStr } ... on TextMetadataEntry { text }
  ... on IntMetadataEntry { intValue } ... on FloatMetadataEntry { floatValue } } } } } }"""


def gql(url: str, query: str, variables: dict) -> dict:
    req = urllib.request.Request(url, json.dumps({"query": query, "variables": variables}).encode(), {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=60) as resp:
        body = json.loads(resp.read())
    if body.get("errors"):
        raise RuntimeError(f"GraphQL errors: {body['errors']}")
    return body["data"]


def evaluation_rows(data_dir: Path) -> list:
    from semid_pipeline.core import storage

    ev = storage.read_table(data_dir, "evaluation", "demo")
    ev = ev.sort_values(["model", "split", "metric", "k"]).reset_index(drop=True)
    return [{"model": r.model, "split": r.split, "metric": r.metric, "k": int(r.k), "value": float(r.value)} for r in ev.itertuples()]


def describe_entries(entries: list) -> dict:
    out = {}
    for e in entries:
        if e["__typename"] == "MarkdownMetadataEntry":
            md = e["mdStr"]
            out[e["label"]] = f"markdown, {'PNG image' if 'data:image/png' in md else 'text'} ({len(md):,} chars)"
        else:
            values = [e.get(k) for k in ("text", "intValue", "floatValue")]
            out[e["label"]] = next((v for v in values if v is not None), e["__typename"])
    return out


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cli-data-dir", required=True, help="SEMID_DATA_DIR of README command one's run")
    parser.add_argument("--work", help="folder for the UI run's instance and data (default: a temp folder)")
    parser.add_argument("--port", type=int, default=3339)
    parser.add_argument("--timeout-min", type=float, default=60)
    parser.add_argument("--dry-run", action="store_true", help="stop after reading the launchpad's config and tags")
    args = parser.parse_args(argv)
    work = Path(args.work or tempfile.mkdtemp(prefix="ui_demo_"))
    home, data = work / "home", work / "data"
    home.mkdir(parents=True, exist_ok=True)
    (home / "dagster.yaml").write_text((REPO / "dagster.yaml").read_text())
    env = {**os.environ, "DAGSTER_HOME": str(home), "SEMID_DATA_DIR": str(data), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    log = open(work / "dagster_dev.log", "w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "dagster", "dev", "-m", "semid_pipeline.definitions", "-p", str(args.port)],
        cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    url = f"http://127.0.0.1:{args.port}/graphql"
    try:
        for _ in range(240):
            try:
                gql(url, "{ version }", {})
                break
            except OSError:
                time.sleep(1)
        repo = {"repositoryLocationName": "semid_pipeline.definitions", "repositoryName": "__repository__"}
        locations = gql(url, "{ workspaceOrError { ... on Workspace { locationEntries { name } } } }", {})
        repo["repositoryLocationName"] = locations["workspaceOrError"]["locationEntries"][0]["name"]
        part = gql(url, PARTITION_QUERY, {"repo": repo, "set": "demo_pipeline_partition_set", "partition": "demo"})
        p = part["partitionSetOrError"]["partition"]
        run_config_yaml = p["runConfigOrError"]["yaml"]
        tags = p["tagsOrError"]["results"]
        if args.dry_run:
            print(run_config_yaml[:400], tags)
            return {}
        params = {
            "selector": {**repo, "jobName": "demo_pipeline"},
            "runConfigData": run_config_yaml,
            "mode": "default",
            "executionMetadata": {"tags": tags},
        }
        launched = gql(url, LAUNCH, {"params": params})["launchRun"]
        if launched["__typename"] != "LaunchRunSuccess":
            raise RuntimeError(f"launchRun: {launched}")
        run_id = launched["run"]["runId"]
        deadline = time.time() + args.timeout_min * 60
        while True:
            run = gql(url, STATUS, {"id": run_id})["runOrError"]
            if run["status"] in ("SUCCESS", "FAILURE", "CANCELED") or time.time() > deadline:
                break
            time.sleep(10)
        shown = {}
        for asset in ("generative_recommender", "sid_tokenizer", "tokenizer_quality"):
            got = gql(url, METADATA, {"key": {"path": [asset]}})["assetOrError"]["assetMaterializations"]
            shown[asset] = describe_entries(got[0]["metadataEntries"]) if got else {}
    finally:
        os.killpg(proc.pid, signal.SIGINT)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
    ui_rows = evaluation_rows(data) if run["status"] == "SUCCESS" else []
    cli_rows = evaluation_rows(Path(args.cli_data_dir))
    out = {
        "run_id": run_id,
        "job": run["jobName"],
        "status": run["status"],
        "seconds": round((run["endTime"] or time.time()) - run["startTime"], 1),
        "tags": {t["key"]: t["value"] for t in run["tags"] if not t["key"].startswith(".dagster")},
        "threads": os.environ.get("SEMID_NUM_THREADS", "all cores"),
        "launchpad_run_config_is_demo_yaml": __import__("yaml").safe_load(run_config_yaml)
        == __import__("yaml").safe_load((REPO / "semid_pipeline" / "configs" / "demo.yaml").read_text()),
        "identical_to_cli": ui_rows == cli_rows,
        "max_abs_difference": max((abs(a["value"] - b["value"]) for a, b in zip(ui_rows, cli_rows)), default=None),
        "ui_evaluation": ui_rows,
        "cli_evaluation": cli_rows,
        "ui_metadata_entries": shown,
    }
    results = REPO / "benchmarks" / "results"
    (results / "ui_vs_cli_demo.json").write_text(json.dumps(out, indent=2))
    print(json.dumps({k: v for k, v in out.items() if not k.endswith("evaluation")}, indent=2))
    return out


if __name__ == "__main__":
    main()
