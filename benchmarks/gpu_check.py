"""GPU check: the Dagster graph's training assets on CUDA, from a prepared data directory, several seeds.

    python benchmarks/gpu_check.py --bundle .gpu/amazon-beauty --out "$OUT"        # on the GPU machine
    python benchmarks/gpu_check.py --bundle .gpu/amazon-beauty --out /tmp/x --device cpu --cap-minutes 0.05 \\
        --shim faiss,openai                                                          # the same script, tried on a CPU

The bundle (``benchmarks/gpu_bundle.sh``) is a data directory whose upstream assets are already materialized
(items, user sequences, tags, quality scores, the semantic IDs, the popularity lists), so the GPU only trains.
For every variant (``--variants``, each ``configs/beauty_gpu.yaml`` merged with ``configs/beauty_gpu_<variant>.yaml``
when that file exists) and seed, a copy of the bundle gets ``sasrec_model``, ``sasrec_recommendations``,
``generative_recommender``, ``generative_recommendations`` and ``evaluation`` materialized through
``run_pipeline.run_graph`` with every seed field set to the seed (``run_seeds.seeded_config``): the baseline and
``rpg_kd`` with that baseline as its teacher, scored on the same split and SIDs, then re-scored in SQL
(``rescore_topk.py``). Runs go ``--parallel`` at a time (separate processes: one small model leaves an H200 mostly
idle). The SIDs are the bundle's, the same for every seed (they came from one CPU run): the seeds vary the
baselines' and the recommender's initialisation, dropout, negatives and batch order.

Then a speed phase, one model at a time, alone on the device: each baseline and ``rpg_kd`` trained for
``--speed-minutes`` at the config's batch size and at ``--speed-batch``, recording training samples/s (next-item
targets per second, as every trainer counts them) and peak GPU memory (``torch.cuda.max_memory_allocated``).

Writes under ``--out``: ``seed<s>.json`` (every variant's full run result for that seed, peak GPU memory of the
process included), ``summary.json`` / ``summary.md`` (per variant: mean and sample std of every model's metrics
over the seeds, rescore agreement, speed table) and ``log.txt``. Stops starting new work at ``--deadline-minutes``
and says what it skipped. Exits 1 when a run failed or a rescore disagreed.
"""

from __future__ import annotations

import argparse
import copy
import importlib.abc
import importlib.machinery
import json
import os
import shutil
import subprocess
import sys
import time
import types
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

TRAIN_SELECT = "sasrec_model,sasrec_recommendations,generative_recommender,generative_recommendations,evaluation"


class _AbsentModule(types.ModuleType):
    def __getattr__(self, name: str):
        if name.startswith("__"):
            raise AttributeError(name)
        raise ImportError(f"{self.__name__}.{name}: {self.__name__} is not installed on this machine (gpu_check runs training assets only)")


class _AbsentFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Lets ``import faiss`` / ``import openai`` succeed where the package is missing; any use raises ImportError.

    The modules that import them at the top (tokenizers, retrieval, LLM enrichment) are never run by the training
    assets, so the check does not need their multi-megabyte wheels in the bundle."""

    def __init__(self, names: set[str]):
        self.names = names

    def find_spec(self, fullname, path=None, target=None):
        return importlib.machinery.ModuleSpec(fullname, self) if fullname.split(".")[0] in self.names else None

    def create_module(self, spec):
        return _AbsentModule(spec.name)

    def exec_module(self, module):
        module.__path__ = []  # a package, so "import faiss.contrib" also resolves here


def install_shims(names: list[str]) -> list[str]:
    """Shims the named modules that cannot be imported (all of them with ``force``); returns those shimmed."""
    force = os.environ.get("SEMID_GPU_CHECK_FORCE_SHIMS") == "1"  # the CPU dry run: behave as on the GPU machine
    missing = []
    for name in names:
        if not force:
            try:
                __import__(name)
                continue
            except ImportError:
                pass
        missing.append(name)
    if missing:
        sys.meta_path.insert(0, _AbsentFinder(set(missing)))
    return missing


def merge(base: dict, override: dict) -> dict:
    """Recursive dict merge (override wins)."""
    out = copy.deepcopy(base)
    for k, v in override.items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else copy.deepcopy(v)
    return out


def variant_config(variant: str, device: str, cap_minutes: float | None, epochs: int | None) -> dict:
    import yaml

    config = yaml.safe_load((REPO / "configs" / "beauty_gpu.yaml").read_text())
    extra = REPO / "configs" / f"beauty_gpu_{variant}.yaml"
    if extra.exists():
        config = merge(config, yaml.safe_load(extra.read_text()))
    elif variant != "sasrec_ce":
        raise SystemExit(f"unknown variant {variant!r}: no {extra}")
    ops = config["ops"]
    ops["sasrec_model"]["config"]["device"] = device
    ops["generative_recommender"]["config"]["parallel"]["device"] = device
    for node in (ops["sasrec_model"]["config"], ops["generative_recommender"]["config"]["parallel"]):
        if cap_minutes is not None:
            node["max_train_minutes"] = cap_minutes
        if epochs is not None:
            node["epochs"] = epochs
    keep = set(TRAIN_SELECT.split(","))
    config["ops"] = {op: c for op, c in ops.items() if op in keep}
    return config


def peak_gpu_mb() -> float | None:
    import torch

    return torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else None


def one_run(args) -> int:
    """Child process: one (variant, seed) graph run on a fresh copy of the bundle; writes its JSON to --result."""
    install_shims(args.shim.split(",") if args.shim else [])
    from rescore_topk import rescore
    from run_pipeline import run_graph
    from run_seeds import seed_paths, seeded_config

    from semid_pipeline.definitions import all_assets

    data_dir = Path(args.work) / f"{args.variant}-seed{args.seed}"
    if data_dir.exists():
        shutil.rmtree(data_dir)
    shutil.copytree(args.bundle, data_dir)
    config = seeded_config(variant_config(args.variant, args.device, args.cap_minutes, args.epochs), args.seed, seed_paths(all_assets))
    config["ops"] = {op: c for op, c in config["ops"].items() if op in TRAIN_SELECT.split(",")}
    result = run_graph(args.dataset, config, f"{args.variant}-seed{args.seed}", data_dir, Path(args.work) / "json", TRAIN_SELECT)
    result.update(variant=args.variant, seed=args.seed, peak_gpu_memory_mb=peak_gpu_mb())
    check = rescore(data_dir, args.dataset, [5, 10])
    result["rescore"] = {"agree": check["agree"], "max_abs_diff": check["max_abs_diff"], "list_checks": check["list_checks"]}
    Path(args.result).write_text(json.dumps(result, indent=2, default=str))
    return 0 if result["success"] else 1


def speed_run(args, log) -> list[dict]:
    """In-process, one model at a time: samples/s and peak GPU memory of each trained asset."""
    import torch

    install_shims(args.shim.split(",") if args.shim else [])
    from run_pipeline import run_graph

    from semid_pipeline.core.baselines.sasrec import SASRecParams
    from semid_pipeline.core.recommender.parallel import ParallelParams

    defaults = {"sasrec_model": SASRecParams().batch_size, "generative_recommender": ParallelParams().batch_size}
    source = Path(args.work) / f"{args.variants.split(',')[0]}-seed{args.seeds.split(',')[0]}"
    rows = []
    for variant in args.variants.split(","):
        for asset in ("sasrec_model", "generative_recommender"):
            if asset == "generative_recommender" and variant != args.variants.split(",")[0]:
                continue  # rpg_kd's speed does not depend on which teacher scored its targets
            for batch in sorted({None, args.speed_batch}, key=lambda b: b or 0):
                if time.monotonic() > args.deadline:
                    rows.append({"variant": variant, "asset": asset, "batch_size": batch, "skipped": "deadline"})
                    log(f"speed: skipped {variant} {asset} batch {batch} (deadline)")
                    continue
                config = variant_config(variant, args.device, args.speed_minutes, args.epochs)
                node = config["ops"][asset]["config"]
                node = node["parallel"] if asset == "generative_recommender" else node
                if batch is not None:
                    node["batch_size"] = batch
                node["patience"] = 1000
                data_dir = Path(args.work) / f"speed-{variant}-{asset}-{batch}"
                if data_dir.exists():
                    shutil.rmtree(data_dir)
                shutil.copytree(source, data_dir)
                if torch.cuda.is_available():
                    torch.cuda.synchronize()
                    torch.cuda.reset_peak_memory_stats()
                config["ops"] = {asset: config["ops"][asset]}
                result = run_graph(args.dataset, config, f"speed-{variant}-{asset}-{batch}", data_dir, Path(args.work) / "json", asset)
                md = result["asset_metadata"].get(asset, {})
                row = {
                    "variant": variant,
                    "asset": asset,
                    "model": md.get("model_name"),
                    "batch_size": node.get("batch_size") or defaults[asset],
                    "samples_per_s": md.get("samples_per_s"),
                    "epochs_run": md.get("epochs_run"),
                    "train_seconds": md.get("train_seconds"),
                    "peak_gpu_memory_mb": peak_gpu_mb(),
                    "success": result["success"],
                }
                rows.append(row)
                log(f"speed: {row}")
                shutil.rmtree(data_dir, ignore_errors=True)
    return rows


def quality_summary(args, jobs, done, env, out: Path, log, started: float):
    """Writes ``seed<s>.json`` and a first ``summary.json``; returns (summary, markdown lines, all ok)."""
    from run_seeds import summarize, summary_markdown

    for s in args.seeds.split(","):
        per_seed = {v: done.get((v, int(s))) for v in args.variants.split(",")}
        (out / f"seed{s}.json").write_text(json.dumps(per_seed, indent=2, default=str))
    summary: dict = {"environment": env, "seeds": [int(s) for s in args.seeds.split(",")], "variants": {}, "bundle": args.bundle}
    md = [f"# GPU check: {env.get('gpu', args.device)}, torch {env['torch']}", ""]
    ok = True
    for v in args.variants.split(","):
        runs = [done[(v2, s)] for (v2, s) in jobs if v2 == v and "metrics" in done.get((v2, s), {})]
        missing = [s for (v2, s) in jobs if v2 == v and "metrics" not in done.get((v2, s), {})]
        ok = ok and not missing and all(r["success"] and r["rescore"]["agree"] for r in runs)
        if not runs:
            summary["variants"][v] = {"missing_seeds": missing}
            md += [f"## {v}: no run finished (missing seeds {missing})", ""]
            continue
        for r in runs:
            r["json"] = f"seed{r['seed']}.json"
            r["data_dir"] = r.get("data_dir")
        sv = summarize(v, args.dataset, [r["seed"] for r in runs], runs)
        sv["missing_seeds"] = missing
        sv["peak_gpu_memory_mb_per_run"] = [r.get("peak_gpu_memory_mb") for r in runs]
        summary["variants"][v] = sv
        md += [f"## Variant {v} (missing seeds: {missing or 'none'})", "", summary_markdown(sv).split("\n", 2)[2], ""]
    log_done = time.monotonic() - started
    log(f"quality phase done in {log_done:.0f} s")
    summary["quality_seconds"] = round(log_done, 1)
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str))

    return summary, md, ok


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="amazon-beauty", help="the bundle's dataset partition")
    parser.add_argument("--bundle", help="prepared data directory (default .gpu/<dataset>)")
    parser.add_argument("--out", default=os.environ.get("OUT", "/tmp/gpu_check_out"))
    parser.add_argument("--work", default="/tmp/gpu_check", help="scratch folder for the per-run data dirs")
    parser.add_argument("--variants", default="sasrec_ce,esasrec")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--parallel", type=int, default=6, help="graph runs at a time")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads per run")
    parser.add_argument("--cap-minutes", type=float, help="override every model's max_train_minutes (CPU dry run)")
    parser.add_argument("--epochs", type=int, help="override every model's epochs (CPU dry run)")
    parser.add_argument("--speed-minutes", type=float, default=0.25)
    parser.add_argument("--speed-batch", type=int, default=1024)
    parser.add_argument("--deadline-minutes", type=float, default=8.0, help="start no new work after this")
    parser.add_argument("--shim", default="faiss,openai", help="modules to stand in for when missing")
    parser.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--variant", help=argparse.SUPPRESS)
    parser.add_argument("--seed", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.bundle = args.bundle or str(REPO / ".gpu" / args.dataset)
    os.environ.setdefault("SEMID_NUM_THREADS", str(args.threads))
    if args.one:
        return one_run(args)

    started = time.monotonic()
    args.deadline = started + args.deadline_minutes * 60
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    work = Path(args.work)
    (work / "json").mkdir(parents=True, exist_ok=True)
    log_file = (out / "log.txt").open("a")

    def log(msg: str) -> None:
        line = f"[gpu_check {time.monotonic() - started:6.0f}s] {msg}"
        print(line, flush=True)
        log_file.write(line + "\n")
        log_file.flush()

    import torch

    env = {"torch": torch.__version__, "cuda": torch.cuda.is_available(), "device": args.device}
    if torch.cuda.is_available():
        env["gpu"] = torch.cuda.get_device_name(0)
    log(f"environment: {env}; shims for missing modules: {install_shims(args.shim.split(',') if args.shim else [])}")

    # quality: every (variant, seed) in its own process, --parallel at a time
    jobs = [(v, int(s)) for s in args.seeds.split(",") for v in args.variants.split(",")]
    pending, running, done = list(jobs), {}, {}
    while pending or running:
        while pending and len(running) < args.parallel:
            if time.monotonic() > args.deadline:
                for v, s in pending:
                    done[(v, s)] = {"variant": v, "seed": s, "skipped": "deadline"}
                    log(f"skipped {v} seed {s}: deadline")
                pending = []
                break
            v, s = pending.pop(0)
            result = work / f"{v}-seed{s}.result.json"
            cmd = [sys.executable, __file__, "--one", "--variant", v, "--seed", str(s), "--result", str(result),
                   "--bundle", args.bundle, "--dataset", args.dataset, "--work", args.work, "--device", args.device, "--shim", args.shim]
            cmd += ["--cap-minutes", str(args.cap_minutes)] if args.cap_minutes is not None else []
            cmd += ["--epochs", str(args.epochs)] if args.epochs is not None else []
            child_log = (work / f"{v}-seed{s}.log").open("w")
            running[(v, s)] = (subprocess.Popen(cmd, stdout=child_log, stderr=subprocess.STDOUT, env={**os.environ, "SEMID_NUM_THREADS": str(args.threads)}), result, child_log)
            log(f"started {v} seed {s}")
        time.sleep(2)
        for key, (proc, result, child_log) in list(running.items()):
            if proc.poll() is None:
                continue
            child_log.close()
            del running[key]
            if result.exists():
                done[key] = json.loads(result.read_text())
                r = done[key]
                test = {m: (s.get("test", {}).get("recall@10"), s.get("test", {}).get("ndcg@10")) for m, s in r["metrics"].items()}
                log(f"finished {key[0]} seed {key[1]} (rc {proc.returncode}): test R@10/N@10 {test}; rescore agree {r['rescore']['agree']}; "
                    f"peak GPU MB {r['peak_gpu_memory_mb']}; steps {r['step_seconds']}")
            else:
                tail = (work / f"{key[0]}-seed{key[1]}.log").read_text()[-3000:]
                done[key] = {"variant": key[0], "seed": key[1], "failed": True, "rc": proc.returncode, "log_tail": tail}
                log(f"FAILED {key[0]} seed {key[1]} (rc {proc.returncode}):\n{tail}")

    summary, md, ok = quality_summary(args, jobs, done, env, out, log, started)
    speed = speed_run(args, log) if any("metrics" in r for r in done.values()) else []
    summary["speed"] = speed
    summary["total_seconds"] = round(time.monotonic() - started, 1)
    md += ["## Speed, one model at a time alone on the device", "", "| variant | asset | model | batch | samples/s | epochs | peak GPU MB |", "|---|---|---|---|---|---|---|"]
    for r in speed:
        if "skipped" in r:
            md.append(f"| {r['variant']} | {r['asset']} | skipped ({r['skipped']}) | {r['batch_size']} | | | |")
        else:
            sps, gpu = r.get("samples_per_s"), r.get("peak_gpu_memory_mb")
            md.append(f"| {r['variant']} | {r['asset']} | {r['model']} | {r['batch_size']} | {sps or 0:.0f} | {r['epochs_run']} | {gpu if gpu is None else round(gpu)} |")
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    (out / "summary.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))
    log(f"all done in {summary['total_seconds']:.0f} s; all runs succeeded and rescored equal: {ok}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
