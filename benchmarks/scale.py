"""The recommendation graph at growing catalog sizes: seconds, peak RSS and rows/s per step.

    taskset -c 0 env SEMID_NUM_THREADS=1 python benchmarks/scale.py --sizes 10000 100000

For each size: the synthetic scale shop (``core/data/scale.py``, seed 0) is generated once into
``--data-root/scale-<N>/`` (items + interactions Parquet and a datasets file declaring
``scale-<N>`` in the generic format), then the graph runs in a fresh child process (so each size's
memory is its own) with ``SEMID_DATASETS_FILE`` naming that file and the run config
:func:`recipe` gives for the size; above 20,000 items every step runs in a fresh process of its own
(``--process-per-step``), as Dagster's multiprocess and k8s executors run them, so a step's memory
is its own and the whole run's peak is the largest step's. The child records, per step: wall seconds (Dagster's step
events), CPU seconds of the process (less sensitive to a shared machine's load), peak RSS (a sampler thread reads the kernel's high-water mark ``VmHWM`` every 0.1 s and
resets it, so each sample is the true peak of its interval), and rows/s (items for catalog steps,
interactions for the rest); plus the evaluation's test Recall@10 / NDCG@10 per model, overall and
on cold targets where the evaluation reports them, and the epochs each trainer reached.

Writes ``<out>/scale-<N>.json`` per size, ``<out>/scale.json`` (every size measured into ``<out>``, this
run's and earlier runs') and ``<out>/scale.png``
(log-log seconds per step against catalog size). The steps run: the recommendation graph
(``--select``); LLM enrichment stages keep their defaults (off without an LLM), retrieval and
explanations are left out.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Dict, List

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from run_pipeline import step_spans  # noqa: E402

SELECT = (
    "raw_items,raw_interactions,user_sequences,items,interactions,item_tags,tag_pool,item_captions,item_image_embeddings,"
    "item_intent_descriptors,item_quality_scores,descriptor_quality_labels,item_text_embeddings,sasrec_model,"
    "item_collaborative_embeddings,sid_tokenizer,incoming_items,catalog_item_embeddings,semantic_ids,generative_recommender,"
    "generative_recommendations,popularity_recommendations,sasrec_recommendations,evaluation"
)
ITEM_STEPS = ("raw_items", "items", "item_", "tag_pool", "catalog_item_embeddings", "sid_tokenizer", "semantic_ids", "incoming_items",
              "descriptor_quality_labels")


LARGE_CONFIG = REPO / "configs" / "scale_large.yaml"
LARGE_FROM = 20_000


def recipe(n_items: int) -> Dict[str, Any]:
    """The run config for a catalog of ``n_items``. Up to ``LARGE_FROM`` items: OPQ SIDs (8 digits x 64
    codes over text + SASRec dimensions), the parallel recommender with exact (bounded-memory) scoring and
    SASRec-CE (full softmax) as the baseline, trained for fixed epochs, every user scored. Above it:
    ``configs/scale_large.yaml``, the configuration a user should start from at that size (sampled-softmax
    SASRec, validation on 2,000 seeded users, evaluation on a seeded sample of 10,000 users, time-capped
    training whose epochs reached are recorded) and the static text encoder (:func:`text_encoder`)."""
    if n_items > LARGE_FROM:
        import yaml

        return yaml.safe_load(LARGE_CONFIG.read_text())
    parallel = {
        "d_model": 64, "n_layers": 2, "n_heads": 2, "d_ff": 128, "dropout": 0.3, "loss": "per_digit",
        "item_id_embedding": True, "item_id_dropout": 0.25, "lr": 0.003, "lr_schedule": "cosine",
        "warmup_steps": 50, "batch_size": 64, "epochs": 30, "patience": 5, "eval_max_users": 2000,
    }
    return {
        "ops": {
            "prepared_dataset": {"config": {"eval_users": 10_000}},
            "sid_tokenizer": {"config": {"kind": "opq", "pq_digits": 8, "pq_codebook_size": 64, "pca_dim": 64,
                                         "collaborative_dims": 32, "text_dims": 32}},
            "sasrec_model": {"config": {"epochs": 20}},
            "generative_recommender": {"config": {"kind": "parallel", "parallel": parallel}},
            "generative_recommendations": {"config": {"decoding": "exact"}},
        }
    }


def step_groups(select: str) -> List[tuple]:
    """``[(op, [asset keys of the selection it materializes]), ...]`` in dependency order: the steps of
    the selection, one per op (a multi-asset's tables are one step)."""
    from semid_pipeline.definitions import all_assets

    chosen = set(select.split(","))
    owner = {k.to_user_string(): a.op.name for a in all_assets for k in a.keys}
    keys_of: Dict[str, List[str]] = {}
    ups: Dict[str, set] = {}
    for a in all_assets:
        selected = [k.to_user_string() for k in a.keys if k.to_user_string() in chosen]
        if selected:
            keys_of[a.op.name] = selected
            ups[a.op.name] = {owner[u.to_user_string()] for deps in a.asset_deps.values() for u in deps if u.to_user_string() in owner}
    order: List[str] = []
    while len(order) < len(keys_of):
        ready = sorted(op for op in keys_of if op not in order and not (ups[op] & set(keys_of)) - set(order) - {op})
        if not ready:
            raise ValueError(f"dependency cycle among {sorted(set(keys_of) - set(order))}")
        order.extend(ready)
    return [(op, keys_of[op]) for op in order]


def merge_steps(parts: List[Dict[str, Any]], n_items: int) -> Dict[str, Any]:
    """One size's record from its per-step child records (process per step)."""
    steps = {k: v for part in parts for k, v in part["steps"].items()}
    record = {**parts[-1], "n_items": n_items, "steps": steps, "process_per_step": True,
              "success": all(p["success"] for p in parts),
              "wall_seconds": round(sum(p["wall_seconds"] for p in parts), 1),
              "wall_seconds_with_process_starts": (round(sum(p["process_seconds"] for p in parts), 1)
                                                   if all("process_seconds" in p for p in parts) else None),
              "peak_rss_mb": max(p["peak_rss_mb"] for p in parts),
              "slowest_step": max(steps, key=lambda k: steps[k]["seconds"]) if steps else None,
              "training": {k: v for p in parts for k, v in p.get("training", {}).items()},
              "config": recipe(n_items)}
    for p in parts:  # the evaluation step's metrics (earlier steps report none)
        if p.get("metrics") and "error" not in p["metrics"]:
            record["metrics"] = p["metrics"]
    return record


def run_per_step(n_items: int, base: List[str], env: Dict[str, str], out: Path, select: str,
                 resume_from: str | None = None) -> Dict[str, Any] | None:
    """Runs each step of ``select`` in a fresh child process (``base`` + ``--select <its keys> --part <op>``), in
    dependency order, stopping at the first step that fails or writes no record; returns the merged record
    (:func:`merge_steps`; ``success`` false when it stopped early), None when no step ran. With ``resume_from``
    (an op), the steps before it are not run again: their successful records in ``out/parts`` are kept (their
    outputs are already in the data dir), and a missing or failed one is an error."""
    ops = step_groups(select)
    names = [op for op, _ in ops]
    if resume_from is not None and resume_from not in names:
        raise SystemExit(f"--resume-from {resume_from!r}: not a step of the selection ({', '.join(names)})")
    first = names.index(resume_from) if resume_from else 0
    parts = []
    for op in names[:first]:
        part_path = out / "parts" / f"scale-{n_items}-{op}.json"
        part = json.loads(part_path.read_text()) if part_path.exists() else None
        if part is None or not part["success"]:
            raise SystemExit(f"--resume-from {resume_from}: {part_path} is missing or failed; run from an earlier step")
        parts.append(part)
    for op in names[first:]:
        stale = out / "parts" / f"scale-{n_items}-{op}.json"
        if stale.exists():
            stale.unlink()
    for op, keys in ops[first:]:
        t0 = time.time()
        subprocess.run(base + ["--select", ",".join(keys), "--part", op], env=env, check=False)
        part_path = out / "parts" / f"scale-{n_items}-{op}.json"
        if not part_path.exists():
            print(f"scale {n_items:,}: step {op} wrote no record (killed?); stopping", flush=True)
            break
        part = json.loads(part_path.read_text())
        part["process_seconds"] = round(time.time() - t0, 1)
        if resume_from:
            part["resumed"] = True  # run after the steps before resume_from, in a later invocation
        part_path.write_text(json.dumps(part, indent=2, default=str))  # a later --resume-from keeps it whole
        parts.append(part)
        if not part["success"]:
            print(f"scale {n_items:,}: step {op} failed; stopping", flush=True)
            break
    return merge_steps(parts, n_items) if parts else None


def text_encoder(n_items: int) -> Dict[str, Any]:
    """The text-encoder settings for a catalog of ``n_items`` (``SEMID_TEXT_ENCODER_OPTIONS`` of the child run):
    the transformer up to ``LARGE_FROM`` items, above it the static table distilled from the same model (the
    transformer embeds about 150 texts/s on one core here: hours at 10^6 items, twice, for tags and embeddings).
    An operator's own ``SEMID_TEXT_ENCODER_OPTIONS`` wins."""
    return {"kind": "static"} if n_items > LARGE_FROM else {}


class PeakSampler(threading.Thread):
    """Samples this process's peak RSS (``VmHWM``, reset after each read) every ``every_s`` seconds."""

    def __init__(self, every_s: float = 0.1):
        super().__init__(daemon=True)
        self.every_s = every_s
        self.samples: List[tuple] = []  # (wall time, peak kB since the previous sample, process CPU seconds so far)
        self._halt = threading.Event()

    @staticmethod
    def _hwm_kb() -> int:
        return int(re.search(r"VmHWM:\s+(\d+)", Path("/proc/self/status").read_text()).group(1))

    def run(self) -> None:
        while not self._halt.is_set():
            usage = resource.getrusage(resource.RUSAGE_SELF)
            self.samples.append((time.time(), self._hwm_kb(), usage.ru_utime + usage.ru_stime))
            try:
                Path("/proc/self/clear_refs").write_text("5")
            except OSError:
                pass
            self._halt.wait(self.every_s)

    def stop(self) -> None:
        self._halt.set()
        self.join()

    def peak_mb(self, start: float, end: float) -> float:
        inside = [kb for t, kb, _ in self.samples if start <= t <= end + self.every_s]
        return round(max(inside, default=0) / 1024, 1)

    def cpu_seconds(self, start: float, end: float) -> float:
        """CPU seconds of the process between the samples nearest ``start`` and ``end`` (all threads);
        less sensitive than wall time to other load on a shared machine."""
        def at(when: float) -> float:
            return min(self.samples, key=lambda s: abs(s[0] - when))[2] if self.samples else 0.0

        return round(at(end) - at(start), 2)


def run_one(n_items: int, data_root: Path, out: Path, select: str, part: str | None = None) -> Dict[str, Any]:
    """Runs ``select`` on ``scale-<n_items>`` in this process (the child) and writes its JSON
    (``<out>/scale-<N>.json``, or ``<out>/parts/scale-<N>-<part>.json`` for one step of a process-per-step run)."""
    name = f"scale-{n_items}"
    summary = json.loads((data_root / name / "summary.json").read_text())
    record = profile_run(name, recipe(n_items), data_root / name / "run", select, summary)
    record["n_items"] = n_items
    path = out / f"{name}.json" if part is None else out / "parts" / f"{name}-{part}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=2, default=str))
    return record


def profile_run(name: str, config: Dict[str, Any], run_dir: Path, select: str, summary: Dict[str, Any] | None = None) -> Dict[str, Any]:
    """Materializes ``select`` on partition ``name`` in this process with per-step seconds and peak RSS."""
    from dagster import AssetSelection, DagsterInstance, materialize

    from semid_pipeline.core import storage
    from semid_pipeline.definitions import all_assets, build_resources

    if select != SELECT:  # a partial run: config only for the selected steps (Dagster refuses the others)
        chosen = set(select.split(","))
        ops_run = {a.op.name for a in all_assets if any(k.to_user_string() in chosen for k in a.keys)}
        config = {**config, "ops": {k: v for k, v in config.get("ops", {}).items() if k in ops_run}}
    sampler = PeakSampler()
    sampler.start()
    instance = DagsterInstance.ephemeral()
    t0 = time.time()
    result = materialize(all_assets, selection=AssetSelection.from_coercible(select.split(",")), partition_key=name,
                         resources=build_resources(data_dir=str(run_dir)), run_config=config, instance=instance,
                         raise_on_error=False)
    wall = time.time() - t0
    sampler.stop()
    if summary is None:  # a declared dataset: its sizes from the prepared tables
        summary = {"n_items": len(storage.read_table(run_dir, "items", name)),
                   "n_interactions": len(storage.read_table(run_dir, "interactions", name))}
    steps = {}
    for key, (start, end, ok) in sorted(step_spans(instance, result.run_id).items(), key=lambda kv: kv[1][0]):
        seconds = end - start
        rows = summary["n_items"] if key.startswith(ITEM_STEPS) else summary["n_interactions"]
        steps[key] = {"seconds": round(seconds, 2), "cpu_seconds": sampler.cpu_seconds(start, end), "peak_rss_mb": sampler.peak_mb(start, end), "ok": ok,
                      "rows": rows, "rows_per_s": round(rows / max(seconds, 1e-3), 1)}
    metrics: Dict[str, Any] = {}
    try:
        ev = storage.read_table(run_dir, "evaluation", name)
        test = ev[ev["split"].isin(["test", "test_cold", "test_warm"]) & (ev["k"] == 10) & ev["metric"].isin(["recall", "ndcg"])]
        for row in test.itertuples():  # test: every user; test_cold / test_warm: targets never / ever trained on
            metrics.setdefault(row.model, {})[f"{row.split}_{row.metric}@10"] = round(float(row.value), 5)
    except Exception as e:  # a failed run still reports its steps
        metrics["error"] = f"{type(e).__name__}: {e}"
    training = {}
    for e in result.get_asset_materialization_events():
        md = e.materialization.metadata
        key = e.asset_key.to_user_string()
        if key in ("sasrec_model", "generative_recommender"):
            training[key] = {k: v.value for k, v in md.items() if k in ("epochs_run", "best_epoch", "train_seconds", "epochs")
                             and isinstance(getattr(v, "value", None), (int, float))}
    return {
        "partition": name, "dataset": summary, "success": result.success, "wall_seconds": round(wall, 1),
        "peak_rss_mb": sampler.peak_mb(0.0, float("inf")),  # ru_maxrss is reset with VmHWM by the sampler: not usable here
        "steps": steps, "slowest_step": max(steps, key=lambda k: steps[k]["seconds"]) if steps else None,
        "metrics": metrics, "training": training, "config": config, "load_at_end": os.getloadavg(),
        "threads": os.environ.get("SEMID_NUM_THREADS"), "affinity": sorted(os.sched_getaffinity(0)),
        "text_encoder_options": os.environ.get("SEMID_TEXT_ENCODER_OPTIONS", "{}"),
    }


def plot(records: List[Dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5.5))
    sizes = [r["n_items"] for r in records]
    keys = sorted({k for r in records for k in r["steps"]}, key=lambda k: -max(r["steps"].get(k, {}).get("seconds", 0) for r in records))
    for key in keys[:12]:
        xs = [r["n_items"] for r in records if key in r["steps"]]
        ys = [max(r["steps"][key]["seconds"], 0.01) for r in records if key in r["steps"]]
        ax.plot(xs, ys, marker="o", label=key)
    done = [r for r in records if r["success"]]  # a partial run has no whole-graph time
    ax.plot([r["n_items"] for r in done], [max(r["wall_seconds"], 0.01) for r in done], "k--", marker="s", label="whole graph")
    for r in records:
        if not r["success"]:
            ax.annotate(f"stopped at {r.get('failed_step', {}).get('step', 'a failed step')}", (r["n_items"], 1.0), fontsize=7, ha="right")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("catalog size (items)")
    ax.set_ylabel("seconds")
    ax.set_title("Seconds per step against catalog size (1 thread)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv: List[str] | None = None) -> List[Dict[str, Any]]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="*", default=[10_000, 100_000],
                        help="catalog sizes to run; none (a bare --sizes): only rebuild scale.json and the plot from --out")
    parser.add_argument("--data-root", default=str(REPO / "benchmarks" / "results" / "data" / "scale"))
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "scale"))
    parser.add_argument("--select", default=SELECT)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)  # run one size in this process
    parser.add_argument("--part", help=argparse.SUPPRESS)  # the child runs one step of a process-per-step run
    parser.add_argument("--process-per-step", choices=("auto", "yes", "no"), default="auto",
                        help="run every step in a fresh process, as the multiprocess / k8s executors do (auto: above "
                        f"{LARGE_FROM:,} items), so one step's memory is not the next step's floor")
    parser.add_argument("--resume-from", metavar="STEP",
                        help="process per step: keep the records of the steps before STEP (an op, e.g. sid_tokenizer) from --out "
                        "and run from STEP on (after a fix, or a step killed by the machine)")
    parser.add_argument("--profile", help="instead: per-step seconds / peak RSS of this declared dataset (e.g. amazon-beauty)")
    parser.add_argument("--config", help="--profile: the run config (YAML, Dagster 'ops' layout)")
    args = parser.parse_args(argv)
    data_root, out = Path(args.data_root), Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.child:
        return [run_one(args.child, data_root, out, args.select, args.part)]
    if args.profile:
        import yaml

        config = yaml.safe_load(Path(args.config).read_text()) if args.config else {}
        record = profile_run(args.profile, config, data_root / args.profile / "run", args.select)
        (out / f"profile-{args.profile}.json").write_text(json.dumps(record, indent=2, default=str))
        return [record]

    from semid_pipeline.core.data import scale

    records = []
    for n in args.sizes:
        folder = data_root / f"scale-{n}"
        if not (folder / "summary.json").exists():
            scale.main(["--items", str(n), "--out", str(folder), "--seed", str(args.seed)])
        env = {**os.environ, "SEMID_DATASETS_FILE": str(folder / "datasets.yaml"), "DAGSTER_HOME": str(folder / "home")}
        env.setdefault("SEMID_TEXT_ENCODER_OPTIONS", json.dumps(text_encoder(n)))
        (folder / "home").mkdir(parents=True, exist_ok=True)
        per_step = args.process_per_step == "yes" or (args.process_per_step == "auto" and n > LARGE_FROM)
        base = [sys.executable, __file__, "--child", str(n), "--data-root", str(data_root), "--out", str(out)]
        print(f"scale {n:,} items: running the graph{' (a process per step)' if per_step else ''} ...", flush=True)
        path = out / f"scale-{n}.json"
        if per_step:
            record = run_per_step(n, base, env, out, args.select, args.resume_from)
            if record is not None:
                path.write_text(json.dumps(record, indent=2, default=str))
        else:
            subprocess.run(base + ["--select", args.select], env=env, check=False)
        if path.exists():
            record = json.loads(path.read_text())
            record["generate"] = json.loads((folder / "summary.json").read_text())
            path.write_text(json.dumps(record, indent=2, default=str))
            records.append(record)
            print(json.dumps({k: record[k] for k in ("n_items", "success", "wall_seconds", "peak_rss_mb", "slowest_step")}), flush=True)
    # scale.json and the plot cover every size measured into --out, this invocation's and earlier ones'
    done = {r["n_items"] for r in records}
    for path in out.glob("scale-*.json"):
        record = json.loads(path.read_text())
        if isinstance(record, dict) and record.get("n_items") not in done and record.get("steps"):  # a partial run plots the steps it ran
            records.append(record)
    records.sort(key=lambda r: r["n_items"])
    (out / "scale.json").write_text(json.dumps(records, indent=2, default=str))
    if records:
        plot(records, out / "scale.png")
    return records


if __name__ == "__main__":
    main()
