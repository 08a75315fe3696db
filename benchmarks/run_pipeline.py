"""Run the whole asset graph on one dataset partition and write a benchmark result.

    python benchmarks/run_pipeline.py --dataset amazon-beauty --config benchmarks/configs/beauty_cpu.json

Writes ``benchmarks/results/<name>.json`` (every metric of the evaluation asset, tokenizer quality,
wall time per step, peak memory, hardware, git commit, the run config) and ``<name>.md``: our
numbers in a table, followed by the published rows for the dataset read at run time from
``../shared/reference/published-results.md`` (labelled as published; the JSON holds only what this
run measured). Runs in-process against a fresh data directory unless ``--data-dir`` is given.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import resource
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

PUBLISHED_SECTIONS = {"amazon-beauty": "Amazon Beauty", "amazon-sports": "Amazon Sports and Outdoors", "amazon-toys": "Amazon Toys and Games"}


def hardware() -> dict:
    import torch

    info = {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.is_available(),
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    try:
        mem = Path("/proc/meminfo").read_text().split("\n")[0]
        info["memory"] = " ".join(mem.split()[1:])
    except OSError:
        pass
    return info


def git_commit() -> str:
    try:
        sha = subprocess.check_output(["git", "rev-parse", "HEAD"], cwd=REPO, text=True).strip()
        dirty = subprocess.call(["git", "diff", "--quiet", "HEAD"], cwd=REPO) != 0
        return sha + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def step_spans(instance, run_id: str) -> dict:
    """``step -> (start, end, succeeded)`` from the run's STEP_START / STEP_SUCCESS|FAILURE event timestamps."""
    starts, out = {}, {}
    for entry in instance.all_logs(run_id):
        ev = entry.dagster_event
        if ev is None or not ev.step_key:
            continue
        if ev.event_type_value == "STEP_START":
            starts[ev.step_key] = entry.timestamp
        elif ev.event_type_value in ("STEP_SUCCESS", "STEP_FAILURE") and ev.step_key in starts:
            out[ev.step_key] = (starts[ev.step_key], entry.timestamp, ev.event_type_value == "STEP_SUCCESS")
    return out


def step_times(instance, run_id: str) -> dict:
    """Seconds per step."""
    return {step: round(end - start, 2) for step, (start, end, _) in step_spans(instance, run_id).items()}


def published_rows(dataset: str) -> list[str]:
    """The Markdown table rows of the dataset's section of the published-results file (or [])."""
    from semid_pipeline.paths import default_shared_dir

    path = Path(default_shared_dir()) / "reference" / "published-results.md"
    section = PUBLISHED_SECTIONS.get(dataset)
    if not section or not path.exists():
        return []
    text = path.read_text()
    m = re.search(rf"^## {re.escape(section)}.*?\n(.*?)(?=^## |\Z)", text, flags=re.M | re.S)
    return [line for line in (m.group(1).splitlines() if m else []) if line.startswith("|")]



def published_section(dataset: str) -> list[str]:
    """Markdown lines with the published rows for ``dataset`` (none when the reference has none)."""
    pub = published_rows(dataset)
    if not pub:
        return []
    return ["", "## Published (read from ../shared/reference/published-results.md, not measured here)", "", *pub]

def markdown(result: dict) -> str:
    rows = []
    for model, splits in sorted(result["metrics"].items()):
        t = splits.get("test", {})
        v = splits.get("valid", {})
        rows.append(
            f"| {model} (this run) | {t.get('recall@5', 0):.4f} | {t.get('ndcg@5', 0):.4f} | {t.get('recall@10', 0):.4f} "
            f"| {t.get('ndcg@10', 0):.4f} | {v.get('recall@10', 0):.4f} |"
        )
    hw = result["hardware"]
    lines = [
        f"# Benchmark: {result['dataset']} ({result['started_at']})",
        "",
        f"Machine: {hw.get('gpu') or hw.get('processor')}, {hw['cpu_count']} cores, torch {hw['torch']}; "
        f"commit {result['git_commit']}; total wall time {result['wall_seconds'] / 60:.1f} min; "
        f"peak RSS {result['peak_rss_mb']:.0f} MB.",
        "",
        "## This run (test split; valid R@10 for reference)",
        "",
        "| model | R@5 | N@5 | R@10 | N@10 | valid R@10 |",
        "|---|---|---|---|---|---|",
        *rows,
        "",
        "## Tokenizer",
        "",
        *[f"- {k}: {v}" for k, v in result["tokenizer"].items()],
        "",
        "## Wall time per step (s)",
        "",
        *[f"- {k}: {v}" for k, v in result["step_seconds"].items()],
    ]
    return "\n".join(lines + published_section(result["dataset"])) + "\n"


def run_graph(
    dataset: str,
    run_config: dict,
    name: str,
    data_dir: Path,
    out_dir: Path,
    select: str = "*",
    dataset_options: dict | None = None,
) -> dict:
    """Materializes ``select`` of the asset graph for ``dataset`` into ``data_dir`` (in-process, an
    ephemeral Dagster instance) and writes ``<out_dir>/<name>.{json,md}``; returns the JSON dict."""
    from dagster import AssetSelection, DagsterInstance, materialize

    from semid_pipeline.core import storage
    from semid_pipeline.definitions import all_assets, build_resources

    out_dir.mkdir(parents=True, exist_ok=True)
    resources = build_resources(data_dir=str(data_dir), datasets_options_json=json.dumps({dataset: dataset_options or {}}))
    instance = DagsterInstance.ephemeral()
    started = datetime.now(timezone.utc).isoformat(timespec="seconds")
    t0 = time.time()
    selection = AssetSelection.all() if select == "*" else AssetSelection.from_coercible(select.split(","))
    result = materialize(all_assets, selection=selection, partition_key=dataset, resources=resources, run_config=run_config, instance=instance)
    wall = time.time() - t0

    metrics: dict = {}
    tokenizer: dict = {}
    if storage.table_path(data_dir, "evaluation", dataset).exists():  # absent when the selection stops before it
        ev = storage.read_table(data_dir, "evaluation", dataset)
        for row in ev[ev["k"] > 0].itertuples():
            metrics.setdefault(row.model, {}).setdefault(row.split, {})[f"{row.metric}@{row.k}"] = round(float(row.value), 5)
        tokenizer = {row.metric: round(float(row.value), 5) for row in ev[ev["model"] == "sid_tokenizer"].itertuples()}
    materializations = {}
    for e in result.get_asset_materialization_events():
        md = e.materialization.metadata
        materializations[e.asset_key.to_user_string()] = {
            k: v.value for k, v in md.items() if isinstance(getattr(v, "value", None), (int, float, str)) and len(str(v.value)) < 200
        }
    out = {
        "dataset": dataset,
        "name": name,
        "data_dir": str(data_dir),
        "started_at": started,
        "success": result.success,
        "wall_seconds": round(wall, 1),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "hardware": hardware(),
        "git_commit": git_commit(),
        "metrics": metrics,
        "tokenizer": tokenizer,
        "step_seconds": step_times(instance, result.run_id),
        "asset_metadata": materializations,
        "run_config": run_config,
    }
    (out_dir / f"{name}.json").write_text(json.dumps(out, indent=2, default=str))
    (out_dir / f"{name}.md").write_text(markdown(out))
    return out


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="demo")
    parser.add_argument("--config", help="YAML/JSON run config (Dagster 'ops' layout) for the assets, e.g. configs/demo.yaml")
    parser.add_argument("--name", help="result file stem (default: <dataset>-<device>)")
    parser.add_argument("--data-dir", help="where to materialize (default: a fresh folder under benchmarks/results/data)")
    parser.add_argument("--out-dir", help="where the JSON / Markdown go (default: benchmarks/results)")
    parser.add_argument("--select", default="*", help="asset selection (default: everything)")
    parser.add_argument("--dataset-options", default="{}", help="JSON loader options for the dataset")
    args = parser.parse_args(argv)

    import torch
    import yaml

    device = "cuda" if torch.cuda.is_available() else "cpu"
    name = args.name or f"{args.dataset}-{device}"
    out_dir = Path(args.out_dir) if args.out_dir else REPO / "benchmarks" / "results"
    data_dir = Path(args.data_dir) if args.data_dir else REPO / "benchmarks" / "results" / "data" / name
    run_config = yaml.safe_load(Path(args.config).read_text()) if args.config else {}
    out = run_graph(args.dataset, run_config, name, data_dir, out_dir, args.select, json.loads(args.dataset_options))
    print(markdown(out))
    return out


if __name__ == "__main__":
    main()
