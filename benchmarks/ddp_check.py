"""Does data parallelism change a model's result? One data dir, the recommender trained twice.

    SEMID_NUM_THREADS=1 python benchmarks/ddp_check.py --dataset amazon-beauty \\
        --source <a materialized data dir> --config configs/beauty_cpu_parallel.yaml --epochs 15

Copies ``--source`` (a data dir where the whole graph ran, so the SIDs and the teacher exist) twice and
re-materializes ``generative_recommender, generative_recommendations, evaluation`` in each: once with
``world_size 1`` and ``batch_size B``, once with ``world_size --ranks`` and ``batch_size B / ranks``
(the same global batch, so the same steps and learning-rate schedule). Both run a fixed number of
epochs with early stopping (patience above the epochs) and the time cap off (a time cap would let the faster run train longer),
the checkpoint chosen on validation as usual. Writes ``<out>/<name>.json``: both runs' test and
validation metrics, training samples/s and seconds, and the differences. Each run is a child of this
process in turn (``run_pipeline.run_graph``); the ranks of the second are spawned by the training loop.
"""

from __future__ import annotations

import argparse
import copy
import json
import shutil
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from run_pipeline import run_graph  # noqa: E402

SELECT = "generative_recommender,generative_recommendations,evaluation"
KEYS = ("recall@10", "ndcg@10", "recall@5", "ndcg@5")


def trainer_config(run_config: dict) -> dict:
    """The recommender trainer's own config block inside ``run_config`` (created when absent): the
    ``parallel`` sub-block for ``kind: parallel`` (the default), the asset config itself for TIGER."""
    rec = run_config.setdefault("ops", {}).setdefault("generative_recommender", {}).setdefault("config", {})
    return rec.setdefault("parallel", {}) if rec.get("kind", "parallel") == "parallel" else rec


def variant(run_config: dict, ranks: int, global_batch: int, epochs: int, seed: int) -> dict:
    """The run config with the recommender's data-parallel settings; only the selected ops keep config."""
    config = copy.deepcopy(run_config)
    config["ops"] = {op: c for op, c in config.get("ops", {}).items() if op in SELECT.split(",")}
    trainer_config(config).update({"world_size": ranks, "batch_size": global_batch // ranks, "epochs": epochs, "patience": epochs + 1,
                  "max_train_minutes": None, "seed": seed})
    return config


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--source", required=True, help="a data dir where the whole graph was materialized")
    parser.add_argument("--config", required=True, help="the run config of that data dir (Dagster 'ops' layout)")
    parser.add_argument("--ranks", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work", required=True, help="scratch folder for the two copies")
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "ddp"))
    parser.add_argument("--name", default=None)
    args = parser.parse_args(argv)
    run_config = yaml.safe_load(Path(args.config).read_text()) or {}
    global_batch = int(trainer_config(copy.deepcopy(run_config)).get("batch_size", 256))
    if global_batch % args.ranks:
        raise SystemExit(f"batch_size {global_batch} is not divisible by --ranks {args.ranks}")
    name = args.name or f"{args.dataset}-ddp-{args.ranks}ranks"
    out, work = Path(args.out), Path(args.work)
    runs = {}
    for ranks in (1, args.ranks):
        data_dir = work / f"ranks{ranks}"
        if data_dir.exists():
            shutil.rmtree(data_dir)
        shutil.copytree(args.source, data_dir)
        config = variant(run_config, ranks, global_batch, args.epochs, args.seed)
        result = run_graph(args.dataset, config, f"{name}-ranks{ranks}", data_dir, out, SELECT)
        runs[ranks] = {"world_size": ranks, "batch_size_per_rank": global_batch // ranks, "success": result["success"],
                       "metrics": result["metrics"], "wall_seconds": result["wall_seconds"], "config": config,
                       "training": {k: v for k, v in result["asset_metadata"].get("generative_recommender", {}).items()
                                    if k in ("samples_per_s", "train_seconds", "best_epoch", "epochs_run", "world_size")}}
    one, many = runs[1], runs[args.ranks]
    diff = {}
    for model, splits in one["metrics"].items():
        for split in ("test", "valid"):
            for key in KEYS:
                a, b = splits.get(split, {}).get(key), many["metrics"].get(model, {}).get(split, {}).get(key)
                if a is not None and b is not None:
                    diff.setdefault(model, {}).setdefault(split, {})[key] = round(b - a, 5)
    summary = {"dataset": args.dataset, "source": args.source, "epochs": args.epochs, "global_batch": global_batch, "seed": args.seed,
               "runs": runs, "difference_ranks_minus_one": diff}
    (out / f"{name}.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
    print(json.dumps(diff, indent=2))
    return 0 if one["success"] and many["success"] else 1


if __name__ == "__main__":
    sys.exit(main())
