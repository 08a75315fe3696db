"""Amazon Beauty declared through the generic format gives the same evaluation as the built-in partition.

    taskset -c 0 env SEMID_NUM_THREADS=1 python benchmarks/beauty_generic.py

1. Loads ``amazon-beauty`` with its built-in loader and writes it as generic-format files in a
   temporary folder (never in the repository): ``items.parquet`` with the id column named ``asin``
   and category paths as ``"A > B > C"`` strings, ``interactions.parquet`` with ISO 8601 times in a
   column named ``event_time``; declares them as the dataset ``beauty-generic`` in a datasets file
   there (``SEMID_DATASETS_FILE``).
2. Materializes the whole graph (every asset but the on-demand tokenizer ablation) once for
   ``amazon-beauty`` and once for ``beauty-generic``, each in a fresh process pinned like its parent
   (``taskset``), same run config, same seeds, one thread.
3. Compares the evaluation tables value by value, and the tables on the way (raw and prepared
   items, interactions, user sequences, semantic IDs), so a difference is traced to its first table.

Writes ``benchmarks/results/beauty_generic.json``. The run config is ``configs/beauty_cpu_small.yaml``
with fixed epoch counts instead of its wall-clock budget (a time budget stops two runs at
different steps, so identical inputs would not give identical models): ``--recommender-epochs``,
``--sasrec-epochs``, ``--tokenizer-epochs``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

BUILTIN, GENERIC = "amazon-beauty", "beauty-generic"
COMPARED_TABLES = ("raw_items", "raw_interactions", "items", "interactions", "user_sequences", "semantic_ids", "evaluation")


def convert(folder: Path) -> dict:
    """Writes Beauty as generic files in ``folder`` plus ``datasets.yaml`` declaring it; returns counts."""
    import yaml

    from semid_pipeline.core.data.generic import write_generic
    from semid_pipeline.core.data.registry import load_raw
    from semid_pipeline.paths import default_shared_dir

    raw = load_raw(BUILTIN, default_shared_dir())
    options = write_generic(raw, folder, "items.parquet", "interactions.parquet",
                            columns={"item_id": "asin", "timestamp": "event_time"}, categories_as="string", times_as="iso8601")
    entry = {"format": "generic", "description": "Amazon Beauty written as generic-format files by benchmarks/beauty_generic.py",
             "options": options}
    (folder / "datasets.yaml").write_text(yaml.safe_dump({"datasets": {GENERIC: entry}}, sort_keys=False))
    names_with_separator = sum(any(">" in name for name in path) for path in raw.items["categories"])
    return {"n_items": len(raw.items), "n_interactions": len(raw.interactions), "category_names_containing_separator": names_with_separator}


def run_config(args) -> dict:
    import yaml

    config = yaml.safe_load((REPO / "configs" / "beauty_cpu_small.yaml").read_text())
    ops = config["ops"]
    ops["generative_recommender"]["config"].update({"epochs": args.recommender_epochs, "max_train_minutes": None})
    ops.setdefault("sasrec_model", {}).setdefault("config", {})["epochs"] = args.sasrec_epochs
    ops.setdefault("sid_tokenizer", {}).setdefault("config", {})["epochs"] = args.tokenizer_epochs
    return config


def materialize_one(dataset: str, data_dir: Path, config_path: Path, out: Path) -> None:
    """Child process: the whole graph for one partition; writes wall time and step times to ``out``."""
    import yaml
    from dagster import DagsterInstance, materialize

    from run_pipeline import step_times
    from semid_pipeline.definitions import all_assets, build_resources

    instance = DagsterInstance.ephemeral()
    t0 = time.time()
    result = materialize(all_assets, partition_key=dataset, resources=build_resources(data_dir=str(data_dir)),
                         run_config=yaml.safe_load(config_path.read_text()), instance=instance)
    out.write_text(json.dumps({"success": result.success, "wall_seconds": round(time.time() - t0, 1),
                               "step_seconds": step_times(instance, result.run_id)}))


def _comparable(df):
    """A table as plain Python rows (arrays and lists as lists, NaN as None), columns sorted, without the partition column."""
    import numpy as np
    import pandas as pd

    def cell(v):
        if isinstance(v, np.ndarray):
            return [cell(x) for x in v.tolist()]
        if isinstance(v, list):
            return [cell(x) for x in v]
        if isinstance(v, (float, np.floating)) and np.isnan(v):
            return None
        if v is pd.NA or v is None:
            return None
        return v.item() if isinstance(v, np.generic) else v

    df = df.drop(columns=[c for c in ("dataset",) if c in df.columns])
    cols = sorted(df.columns)
    return cols, [tuple(cell(v) for v in row) for row in df[cols].itertuples(index=False, name=None)]


def compare(data_dirs: dict) -> dict:
    from semid_pipeline.core import storage

    out = {}
    for table in COMPARED_TABLES:
        a_cols, a = _comparable(storage.read_table(data_dirs[BUILTIN], table, BUILTIN))
        b_cols, b = _comparable(storage.read_table(data_dirs[GENERIC], table, GENERIC))
        same = a_cols == b_cols and a == b
        entry = {"identical": same, "rows": [len(a), len(b)]}
        if not same:
            entry["columns"] = [a_cols, b_cols]
            diff = [i for i, (x, y) in enumerate(zip(a, b)) if x != y]
            entry["n_rows_differing"] = len(diff) + abs(len(a) - len(b))
            if diff:
                entry["first_difference"] = {"row": diff[0], BUILTIN: str(a[diff[0]])[:400], GENERIC: str(b[diff[0]])[:400]}
        out[table] = entry
    return out


def evaluation_rows(data_dir: Path, dataset: str) -> list:
    from semid_pipeline.core import storage

    ev = storage.read_table(data_dir, "evaluation", dataset).sort_values(["model", "split", "metric", "k"])
    return [{"model": r.model, "split": r.split, "metric": r.metric, "k": int(r.k),
             "value": None if r.value != r.value else float(r.value), "n_users": int(r.n_users), "note": r.note}
            for r in ev.itertuples()]


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recommender-epochs", type=int, default=1)
    parser.add_argument("--sasrec-epochs", type=int, default=3)
    parser.add_argument("--tokenizer-epochs", type=int, default=10)
    parser.add_argument("--workdir", help="where the generic files and both data dirs go (default: a new temporary folder)")
    parser.add_argument("--parallel", action="store_true", help="run the two materializations at the same time (same CPUs)")
    parser.add_argument("--reuse", action="store_true",
                        help="keep a finished run whose result file is already in --workdir (resuming after an interruption)")
    parser.add_argument("--note", default="", help="a line about how this run was made, stored in the result")
    parser.add_argument("--child", nargs=4, metavar=("DATASET", "DATA_DIR", "CONFIG", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        dataset, data_dir, config_path, out = args.child
        materialize_one(dataset, Path(data_dir), Path(config_path), Path(out))
        return {}

    import yaml

    from run_pipeline import git_commit, hardware

    work = Path(args.workdir or tempfile.mkdtemp(prefix="beauty_generic_"))
    if REPO in work.resolve().parents:
        raise SystemExit(f"--workdir {work} is inside the repository; generated files never go there")
    work.mkdir(parents=True, exist_ok=True)
    started = datetime.now(timezone.utc).isoformat(timespec="seconds")
    t0 = time.time()
    conversion = convert(work / "files")
    conversion["seconds"] = round(time.time() - t0, 1)
    config = run_config(args)
    config_path = work / "run_config.yaml"
    config_path.write_text(yaml.safe_dump(config, sort_keys=False))

    env = {**os.environ, "SEMID_DATASETS_FILE": str(work / "files" / "datasets.yaml"), "PYTHONPATH": str(REPO)}
    runs, data_dirs, children = {}, {}, {}
    affinity = sorted(os.sched_getaffinity(0))
    for dataset in (BUILTIN, GENERIC):
        data_dirs[dataset] = work / f"data-{dataset}"
        out = work / f"run-{dataset}.json"
        if args.reuse and out.is_file() and json.loads(out.read_text()).get("success"):
            print(f"{dataset}: reusing the finished run in {data_dirs[dataset]}", flush=True)
            continue
        cmd = [sys.executable, __file__, "--child", dataset, str(data_dirs[dataset]), str(config_path), str(out)]
        print(f"{dataset}: materializing the whole graph (cpus {affinity}) ...", flush=True)
        with open(work / f"log-{dataset}.txt", "w") as log:
            children[dataset] = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
        if not args.parallel:
            children[dataset].wait()
    for dataset, child in children.items():
        if child.wait() != 0:
            raise SystemExit(f"{dataset}: run failed (exit {child.returncode}); see {work / f'log-{dataset}.txt'}")
    for dataset in (BUILTIN, GENERIC):
        runs[dataset] = json.loads((work / f"run-{dataset}.json").read_text())
        print(f"{dataset}: {runs[dataset]['wall_seconds']} s", flush=True)

    tables = compare(data_dirs)
    evaluation = {d: evaluation_rows(data_dirs[d], d) for d in (BUILTIN, GENERIC)}
    same = evaluation[BUILTIN] == evaluation[GENERIC]
    result = {
        "what": "Amazon Beauty through the generic format (Parquet files written by this script) vs the built-in "
                "amazon-beauty partition: same run config and seeds, whole graph, one thread each",
        "started_at": started,
        "evaluation_tables_identical": same,
        "tables": tables,
        "evaluation": {"amazon-beauty": evaluation[BUILTIN], "beauty-generic_differs_at": [
            {"builtin": a, "generic": b} for a, b in zip(evaluation[BUILTIN], evaluation[GENERIC]) if a != b]},
        "conversion": conversion,
        "runs": runs,
        "note": args.note,
        "cpus": affinity,
        "load_average_at_end": list(os.getloadavg()),
        "threads": os.environ.get("SEMID_NUM_THREADS"),
        "hardware": hardware(),
        "git_commit": git_commit(),
        "run_config": config,
        "workdir": str(work),
    }
    path = REPO / "benchmarks" / "results" / "beauty_generic.json"
    path.write_text(json.dumps(result, indent=2, default=str))
    print(json.dumps({"evaluation_tables_identical": same, "tables": {k: v["identical"] for k, v in tables.items()}}, indent=2))
    print(f"wrote {path}")
    return result


if __name__ == "__main__":
    main()
