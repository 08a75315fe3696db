"""Run the asset graph once per seed and write each seed's result plus the mean and spread per model.

    SEMID_NUM_THREADS=1 python benchmarks/run_seeds.py --dataset amazon-beauty \\
        --config configs/beauty_cpu_parallel.yaml --name beauty-cpu-parallel --seeds 0,1,2

Every seed materializes into its own data directory (``<data-root>/seed<s>``) with every ``seed``
field of every asset config set to ``s`` (found by walking the assets' config schemas, nested
configs included, e.g. ``generative_recommender.parallel.seed``); values the config file sets for
other fields are kept. By default the first seed runs the whole graph and every later seed starts
from a copy of the first seed's data directory and re-materializes only the assets that have a
seed and everything downstream of them, except the ``--reuse`` assets (default
``item_text_embeddings``: a pretrained encoder's output, whose seed only matters for the optional
image fusion); ingestion does not depend on the seed; ``--full`` re-runs everything per seed.

Per seed: ``<out-dir>/<name>-seed<s>.{json,md}`` (``run_pipeline.py``'s result) and
``<name>-seed<s>-rescore.json`` (``rescore_topk.py``'s independent SQL re-scoring of the exported
top-K lists; the seed's JSON records whether it agrees). Then ``<name>-summary.{json,md}``: for
every model, split and metric the per-seed values, mean, sample standard deviation (ddof 1), min
and max, the training samples/s and seconds of each trained asset per seed, and whether every
rescore agreed. The process exits 1 when a run failed or a rescore disagreed.
"""

from __future__ import annotations

import argparse
import copy
import json
import shutil
import statistics
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from rescore_topk import rescore  # noqa: E402
from run_pipeline import published_section, run_graph  # noqa: E402

METRICS = ("recall@5", "ndcg@5", "recall@10", "ndcg@10")
SPEED_KEYS = ("samples_per_s", "train_seconds", "best_epoch", "epochs_run", "peak_gpu_memory_mb")


def _fields(config_type):
    """The named fields of a Dagster config type (Shape / Permissive / Selector; Noneable unwrapped), or {}."""
    inner = getattr(config_type, "inner_type", None)
    if inner is not None:
        return _fields(inner)
    return getattr(config_type, "fields", None) or {}


def seed_paths(assets) -> dict[str, list[tuple[str, ...]]]:
    """``{op name: [path to a "seed" field inside the op's config, ...]}`` for every asset whose config
    (or a nested config of it) has a ``seed`` field."""
    found: dict[str, list[tuple[str, ...]]] = {}

    def walk(op: str, fields, prefix: tuple[str, ...]) -> None:
        for key, field in fields.items():
            if key == "seed":
                found.setdefault(op, []).append(prefix + (key,))
            else:
                walk(op, _fields(field.config_type), prefix + (key,))

    for asset in assets:
        op = getattr(asset, "op", None)
        schema = getattr(op, "config_schema", None) if op is not None else None
        if schema is None or getattr(schema, "config_type", None) is None:
            continue
        walk(op.name, _fields(schema.config_type), ())
    return found


def seeded_config(run_config: dict, seed: int, paths: dict[str, list[tuple[str, ...]]]) -> dict:
    """A copy of ``run_config`` with every seed field of ``paths`` set to ``seed``."""
    config = copy.deepcopy(run_config or {})
    ops = config.setdefault("ops", {})
    for op, op_paths in paths.items():
        for path in op_paths:
            node = ops.setdefault(op, {}).setdefault("config", {})
            for key in path[:-1]:
                node = node.setdefault(key, {})
            node[path[-1]] = seed
    return config


def spread(values: list[float]) -> dict:
    """Mean, sample standard deviation (0 for one value), min, max and n of ``values``."""
    return {
        "mean": statistics.fmean(values),
        "std": statistics.stdev(values) if len(values) > 1 else 0.0,
        "min": min(values),
        "max": max(values),
        "n": len(values),
    }


def summarize(name: str, dataset: str, seeds: list[int], results: list[dict]) -> dict:
    """Per model / split / metric: per-seed values and their spread; per trained asset: speed per seed."""
    models = sorted({m for r in results for m in r["metrics"]})
    table: dict = {}
    for model in models:
        for split in ("test", "valid"):
            for metric in METRICS:
                values = [r["metrics"].get(model, {}).get(split, {}).get(metric) for r in results]
                if any(v is None for v in values):
                    continue
                table.setdefault(model, {}).setdefault(split, {})[metric] = {**spread(values), "per_seed": values}
    speed: dict = {}
    for r in results:
        for asset, md in r.get("asset_metadata", {}).items():
            picked = {k: md[k] for k in SPEED_KEYS if isinstance(md.get(k), (int, float))}
            if "samples_per_s" in picked:
                speed.setdefault(asset, []).append(picked)
    return {
        "name": name,
        "dataset": dataset,
        "seeds": seeds,
        "protocol": "leave-one-out, full ranking over the catalogue; mean and sample std (ddof 1) over seeds",
        "all_succeeded": all(r["success"] for r in results),
        "rescore_all_agree": all(r["rescore"]["agree"] for r in results),
        "rescore_max_abs_diff": max(r["rescore"]["max_abs_diff"] for r in results),
        "metrics": table,
        "training_speed": speed,
        "per_seed": [
            {"seed": s, "json": r["json"], "data_dir": r["data_dir"], "wall_seconds": r["wall_seconds"], "git_commit": r["git_commit"]}
            for s, r in zip(seeds, results)
        ],
        "hardware": results[0]["hardware"] if results else {},
    }


def summary_markdown(summary: dict) -> str:
    def cell(model: str, split: str, metric: str) -> str:
        m = summary["metrics"][model].get(split, {}).get(metric)
        return f"{m['mean']:.4f} ± {m['std']:.4f}" if m else "—"

    hw = summary["hardware"]
    lines = [
        f"# {summary['name']}: {summary['dataset']}, seeds {', '.join(map(str, summary['seeds']))}",
        "",
        f"Machine: {hw.get('gpu') or hw.get('processor')}, {hw.get('cpu_count')} cores, torch {hw.get('torch')}, "
        f"{hw.get('torch_threads')} torch threads. All runs succeeded: {summary['all_succeeded']}; rescore agrees on every seed: "
        f"{summary['rescore_all_agree']} (max |diff| {summary['rescore_max_abs_diff']:.2g}).",
        "",
        "## Test split, mean ± sample std over seeds (valid R@10 / N@10 means for reference)",
        "",
        "| model | R@5 | N@5 | R@10 | N@10 | valid R@10 | valid N@10 | test R@10 per seed |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for model in summary["metrics"]:
        per_seed = summary["metrics"][model].get("test", {}).get("recall@10", {}).get("per_seed", [])
        lines.append(
            f"| {model} | " + " | ".join(cell(model, "test", m) for m in METRICS)
            + f" | {cell(model, 'valid', 'recall@10')} | {cell(model, 'valid', 'ndcg@10')} | {' / '.join(f'{v:.4f}' for v in per_seed)} |"
        )
    if summary["training_speed"]:
        lines += ["", "## Training speed per seed", "", "| asset | samples/s | train seconds | best epoch |", "|---|---|---|---|"]
        for asset, runs in summary["training_speed"].items():
            sps = " / ".join(f"{r['samples_per_s']:.0f}" for r in runs)
            secs = " / ".join(f"{r.get('train_seconds', 0):.0f}" for r in runs)
            best = " / ".join(str(r.get("best_epoch", "—")) for r in runs)
            lines.append(f"| {asset} | {sps} | {secs} | {best} |")
    return "\n".join(lines + published_section(summary["dataset"])) + "\n"


def run_seeds(
    dataset: str,
    run_config: dict,
    name: str,
    seeds: list[int],
    data_root: Path,
    out_dir: Path,
    full: bool = False,
    select: str = "*",
    dataset_options: dict | None = None,
    seeded_select: str | None = None,
    reuse: tuple[str, ...] = ("item_text_embeddings",),
    resume: bool = False,
) -> dict:
    """Runs the graph per seed (see the module docstring) and writes every JSON; returns the summary.

    ``seeded_select``: for the seeds after the first (unless ``full``), the comma-separated assets to
    re-materialize instead of "every seeded asset and its downstream". ``resume``: a seed whose JSON in
    ``out_dir`` records a successful run with an agreeing rescore is read back instead of run again (seeds
    run on different machines or cores are summarized together this way)."""
    from dagster import AssetSelection

    from semid_pipeline.definitions import all_assets

    paths = seed_paths(all_assets)
    if not paths:
        raise SystemExit("no asset config has a seed field: nothing to vary")
    if seeded_select:
        later = seeded_select
    else:
        roots = [op for op in paths if op not in reuse]
        keys = AssetSelection.assets(*roots).downstream().resolve(all_assets)
        later = ",".join(sorted(k.to_user_string() for k in keys))
    results = []
    for i, seed in enumerate(seeds):
        data_dir = data_root / f"seed{seed}"
        first = i == 0
        stem = f"{name}-seed{seed}"
        kept = out_dir / f"{stem}.json"
        if resume and kept.exists():
            result = json.loads(kept.read_text())
            if result.get("success") and result.get("rescore", {}).get("agree"):
                print(f"[run_seeds] seed {seed}: kept {kept} (--resume)", flush=True)
                results.append(result)
                continue
        if not first and not full:
            if data_dir.exists():
                shutil.rmtree(data_dir)
            shutil.copytree(data_root / f"seed{seeds[0]}", data_dir)
        print(f"[run_seeds] seed {seed}: {'all of ' + select if first or full else later} -> {data_dir}", flush=True)
        chosen = select if first or full else later
        config = seeded_config(run_config, seed, paths)
        if chosen != "*":  # Dagster refuses config for ops outside the selection
            keep = set(chosen.split(","))
            config["ops"] = {op: c for op, c in config["ops"].items() if op in keep}
        result = run_graph(dataset, config, stem, data_dir, out_dir, chosen, dataset_options)
        check = rescore(data_dir, dataset, [5, 10])
        (out_dir / f"{stem}-rescore.json").write_text(json.dumps(check, indent=2, default=float) + "\n")
        result["seed"] = seed
        result["rescore"] = {"agree": check["agree"], "max_abs_diff": check["max_abs_diff"], "json": str(out_dir / f"{stem}-rescore.json")}
        result["json"] = str(out_dir / f"{stem}.json")
        (out_dir / f"{stem}.json").write_text(json.dumps(result, indent=2, default=str))
        test = {m: s.get("test", {}).get("recall@10") for m, s in result["metrics"].items()}
        print(f"[run_seeds] seed {seed} done in {result['wall_seconds']:.0f} s: test R@10 {test}; rescore agree {check['agree']}", flush=True)
        results.append(result)
        write_summary(name, dataset, seeds[: i + 1], results, out_dir)  # rewritten after every seed: partial results survive
    return write_summary(name, dataset, seeds, results, out_dir)


def write_summary(name: str, dataset: str, seeds: list[int], results: list[dict], out_dir: Path) -> dict:
    """``<name>-summary.{json,md}`` of the seeds' results (run now or read back with ``--resume``)."""
    summary = summarize(name, dataset, seeds, results)
    (out_dir / f"{name}-summary.json").write_text(json.dumps(summary, indent=2, default=str))
    (out_dir / f"{name}-summary.md").write_text(summary_markdown(summary))
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="demo")
    parser.add_argument("--config", help="YAML/JSON run config (Dagster 'ops' layout)")
    parser.add_argument("--name", required=True, help="result file stem")
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated seeds")
    parser.add_argument("--data-root", help="per-seed data dirs go under it (default benchmarks/results/data/<name>)")
    parser.add_argument("--out-dir", help="JSON / Markdown folder (default benchmarks/results/seeds/<name>)")
    parser.add_argument("--full", action="store_true", help="run the whole selection for every seed (no copy of the first seed's upstream)")
    parser.add_argument("--select", default="*", help="asset selection of the first seed (default: everything)")
    parser.add_argument("--seeded-select", help="assets re-materialized for later seeds (default: seeded assets and their downstream)")
    parser.add_argument("--reuse", default="item_text_embeddings", help="seeded assets later seeds copy from the first seed (comma-separated)")
    parser.add_argument("--dataset-options", default="{}", help="JSON loader options for the dataset")
    parser.add_argument("--resume", action="store_true", help="read back seeds whose successful JSON is already in --out-dir")
    args = parser.parse_args(argv)

    import yaml

    run_config = yaml.safe_load(Path(args.config).read_text()) if args.config else {}
    data_root = Path(args.data_root) if args.data_root else REPO / "benchmarks" / "results" / "data" / args.name
    out_dir = Path(args.out_dir) if args.out_dir else REPO / "benchmarks" / "results" / "seeds" / args.name
    out_dir.mkdir(parents=True, exist_ok=True)
    seeds = [int(s) for s in args.seeds.split(",")]
    summary = run_seeds(
        args.dataset, run_config, args.name, seeds, data_root, out_dir, args.full, args.select, json.loads(args.dataset_options), args.seeded_select,
        tuple(a for a in args.reuse.split(",") if a), args.resume,
    )
    print(summary_markdown(summary))
    return 0 if summary["all_succeeded"] and summary["rescore_all_agree"] else 1


if __name__ == "__main__":
    sys.exit(main())
