"""Ablation of the generative recommender: TIGER baseline, + hierarchy-aware embeddings, + GRPO.

Rows (each selected on validation Recall@10, ties NDCG@10; test reported once for the selected
checkpoint):

1. ``tiger``: standard token embedding, supervised training.
2. ``hier``: + hierarchy-aware semantic embeddings (HiD-VAE Sec. 3.7), same budget.
3. ``hier+grpo_standard``: GRPO (DeepInterestGR Sec. III-E) from row 2's model, standard reward.
4. ``hier+grpo_qarm``: the same with the gated quality bonus. The QARM scores come from the
   ``item_quality_scores`` table when present; otherwise, with ``--quality-proxy``, from a PROXY
   (labelled as such in the JSON): the share of the item's generated tag path that agrees with its
   catalogue category path (an item whose retrieved/LLM descriptors are grounded in its real
   category gets 1), i.e. a heuristic quality label, not DeepInterestGR's LLM label.
   ``--rl-variants`` adds more reward variants (prefix, uniform_bonus, random_labels).

Inputs are the pipeline's tables (``<data>/tables/<name>/dataset=<ds>/part.parquet``):
``semantic_ids``, ``user_sequences``, ``item_tags`` (and optionally ``item_quality_scores``). The
architecture/optimisation come from a run config's ``generative_recommender`` section plus
``--set key=value`` overrides. Pure core, no Dagster: it also runs on a bare GPU machine.

    python benchmarks/recommender_ablation.py --data benchmarks/results/data/demo-cpu --dataset demo \
        --config configs/demo_tiger.yaml --minutes 3 --rl-minutes 2 --quality-proxy
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import subprocess
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np
import pandas as pd
import torch
import yaml

from semid_pipeline.core.artifacts import load_artifact, save_artifact
from semid_pipeline.core.device import resolve_device
from semid_pipeline.core.metrics import evaluate_topk
from semid_pipeline.core.recommender.hierarchy import HierarchyInputs, build_level_tags
from semid_pipeline.core.recommender.model import RecommenderParams
from semid_pipeline.core.recommender.rl import GRPOParams, train_grpo
from semid_pipeline.core.recommender.train import TrainParams, recommend, train_recommender
from semid_pipeline.core.recommender.trie import SIDTrie
from semid_pipeline.core.recommender.vocab import SIDVocab

ROOT = Path(__file__).resolve().parents[1]
log = logging.getLogger("ablation")


def read(data: Path, table: str, dataset: str) -> Optional[pd.DataFrame]:
    path = data / "tables" / table / f"dataset={dataset}" / "part.parquet"
    return pd.read_parquet(path) if path.exists() else None


def parse_value(v: str) -> Any:
    return yaml.safe_load(v)


def quality_proxy(item_tags: pd.DataFrame) -> np.ndarray:
    """PROXY quality in [0, 1]: agreeing prefix of generated vs catalogue tag path / path length."""
    out = np.zeros(len(item_tags), dtype=np.float32)
    for i, (gen, true) in enumerate(zip(item_tags["generated_path"], item_tags["true_path"])):
        gen = list(gen) if gen is not None else []
        true = list(true) if true is not None else []
        if not true:
            continue
        n = 0
        for a, b in zip(gen, true):
            if a != b:
                break
            n += 1
        out[i] = n / len(true)
    return out


class CachedEncoder:
    """Sentence encoder for tag texts with an on-disk cache (``.npz``), so a machine without the
    bundled MiniLM (or without internet) can reuse vectors encoded elsewhere."""

    def __init__(self, cache: Optional[Path]):
        self.cache = cache
        self.vectors: Dict[str, np.ndarray] = {}
        if cache is not None and cache.exists():
            z = np.load(cache, allow_pickle=False)
            self.vectors = dict(zip(z["texts"].tolist(), z["vectors"]))

    def __call__(self, texts: List[str]) -> np.ndarray:
        missing = [t for t in texts if t not in self.vectors]
        if missing:
            from semid_pipeline.core.enrich.text_encoder import TextEncoder

            vecs = TextEncoder().encode(missing)
            self.vectors.update(zip(missing, vecs))
            if self.cache is not None:
                keys = sorted(self.vectors)
                np.savez(self.cache, texts=np.asarray(keys), vectors=np.stack([self.vectors[k] for k in keys]))
        return np.stack([self.vectors[t] for t in texts]).astype(np.float32)


def test_metrics(model, sids, user_sequences, max_users: Optional[int] = None) -> Dict[str, float]:
    """Recall/NDCG@5/10 on test (history = train + valid); a seeded user sample when ``max_users`` is set."""
    if max_users is not None and max_users < len(user_sequences):
        keep = np.sort(np.random.default_rng(0).choice(len(user_sequences), max_users, replace=False))
        user_sequences = user_sequences.iloc[keep]
    train = [np.asarray(t, dtype=np.int64) for t in user_sequences["train_items"]]
    valid = user_sequences["valid_item"].to_numpy(np.int64)
    hist = [np.append(t, v) for t, v in zip(train, valid)]
    users = user_sequences["user_idx"].to_numpy(np.int64)
    items, _ = recommend(model, SIDTrie.from_sids(sids, model.vocab.level_sizes), hist, users, 20, 10, 512)
    return {k: float(v) for k, v in evaluate_topk(items, user_sequences["test_item"].to_numpy(np.int64), (5, 10)).items()}


def valid_metrics(model, sids, user_sequences) -> Dict[str, float]:
    train = [np.asarray(t, dtype=np.int64) for t in user_sequences["train_items"]]
    users = user_sequences["user_idx"].to_numpy(np.int64)
    items, _ = recommend(model, SIDTrie.from_sids(sids, model.vocab.level_sizes), train, users, 20, 10, 512)
    return {k: float(v) for k, v in evaluate_topk(items, user_sequences["valid_item"].to_numpy(np.int64), (5, 10)).items()}


def best_valid(history: List[Dict[str, Any]]) -> Optional[List[float]]:
    """(recall@10, ndcg@10) of the validation-selected epoch (on the selection sample of users)."""
    rated = [h for h in history if "valid_recall@10" in h]
    if not rated:
        return None
    best = max(rated, key=lambda h: (h["valid_recall@10"], h["valid_ndcg@10"]))
    return [best["valid_recall@10"], best["valid_ndcg@10"]]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True, help="Pipeline data folder (holds tables/).")
    ap.add_argument("--dataset", required=True, help="Partition, e.g. demo or amazon-beauty.")
    ap.add_argument("--config", help="Run config YAML; its ops.generative_recommender.config is used.")
    ap.add_argument("--set", nargs="*", default=[], help="Overrides key=value of RecommenderParams/TrainParams fields.")
    ap.add_argument("--rl-set", nargs="*", default=[], help="Overrides key=value of GRPOParams fields.")
    ap.add_argument("--minutes", type=float, default=10.0, help="Supervised training budget per row.")
    ap.add_argument("--rl-minutes", type=float, default=5.0, help="GRPO budget per RL row.")
    ap.add_argument("--rows", default="tiger,hier,grpo_standard,grpo_qarm", help="Rows to run (comma list).")
    ap.add_argument("--rl-variants", default="", help="Extra GRPO reward variants (comma list), from the hier model.")
    ap.add_argument("--rl-from", default="best", choices=["tiger", "hier", "best"],
                    help="Supervised model the GRPO rows start from (best: the better on validation).")
    ap.add_argument("--test-max-users", type=int, help="Score test on a seeded sample of this many users (same for every row).")
    ap.add_argument("--full-valid", action="store_true", help="Also score every row on the full validation split.")
    ap.add_argument("--quality-proxy", action="store_true", help="Use the PROXY quality when item_quality_scores is absent.")
    ap.add_argument("--init", nargs="*", default=[], help="row=dir: reuse a saved supervised model instead of training it.")
    ap.add_argument("--save", help="Folder to save the supervised models (row name subfolders).")
    ap.add_argument("--tag-cache", help="npz cache of tag sentence vectors.")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "recommender_ablation.json"))
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    started = time.monotonic()

    data = Path(args.data)
    sem = read(data, "semantic_ids", args.dataset).sort_values("item_idx")
    seqs = read(data, "user_sequences", args.dataset)
    tags = read(data, "item_tags", args.dataset).sort_values("item_idx")
    sids = np.stack(sem["sid"].to_numpy()).astype(np.int64)
    cfg: Dict[str, Any] = {}
    if args.config:
        cfg = dict(((yaml.safe_load(Path(args.config).read_text()) or {}).get("ops", {}).get("generative_recommender", {}) or {}).get("config", {}) or {})
    cfg.update({k: parse_value(v) for k, v in (s.split("=", 1) for s in args.set)})
    cfg["device"] = args.device
    mp = RecommenderParams(**{k: v for k, v in cfg.items() if k in RecommenderParams.model_fields})
    tp = TrainParams(**{k: v for k, v in cfg.items() if k in TrainParams.model_fields})
    tp = tp.model_copy(update={"max_train_minutes": args.minutes})
    rl_cfg = {k: parse_value(v) for k, v in (s.split("=", 1) for s in args.rl_set)}
    vocab = SIDVocab.from_sids(sids, mp.n_user_buckets)
    level_tags = build_level_tags(sids, [list(t) for t in tags["tag_path"]], vocab.level_sizes)
    hierarchy = HierarchyInputs(level_tags, CachedEncoder(Path(args.tag_cache) if args.tag_cache else None))

    train = [np.asarray(t, dtype=np.int64) for t in seqs["train_items"]]
    valid = seqs["valid_item"].to_numpy(np.int64)
    users = seqs["user_idx"].to_numpy(np.int64)
    init = dict(s.split("=", 1) for s in args.init)
    wanted = [r for r in args.rows.split(",") if r]
    result: Dict[str, Any] = {
        "dataset": args.dataset,
        "data": str(data),
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime()),
        "n_items": int(len(sids)),
        "n_users": int(len(seqs)),
        "sid_levels": list(vocab.level_sizes),
        "tag_map_purity": [float(np.mean([s for s, t in zip(sh, tx) if t is not None] or [0.0])) for sh, tx in zip(level_tags.share, level_tags.texts)],
        "recommender_params": mp.model_dump(),
        "train_params": tp.model_dump(),
        "test_users": min(args.test_max_users or len(seqs), len(seqs)),
        "rows": {},
    }
    models = {}
    for row in ("tiger", "hier"):
        need = row in wanted or (args.rl_from in (row, "best") and (any(r.startswith("grpo") for r in wanted) or args.rl_variants))
        if not need:
            continue
        row_mp = mp.model_copy(update={"embedding": "standard" if row == "tiger" else "hierarchy"})
        t0 = time.monotonic()
        if row in init:
            model = load_artifact(init[row], map_location="cpu").to(resolve_device(args.device))
            history: List[Dict[str, Any]] = []
            log.info(f"{row}: reusing {init[row]}")
        else:
            res = train_recommender(sids, train, valid, train, users, row_mp, tp, progress=log.info, hierarchy=hierarchy)
            model, history = res.model, res.history
            if args.save:
                save_artifact(model, Path(args.save) / row)
        minutes = (time.monotonic() - t0) / 60
        models[row] = model
        entry = {
            "embedding": row_mp.embedding,
            "train_minutes": minutes,
            "init": init.get(row),
            "best_epoch": max(history, key=lambda h: (h.get("valid_recall@10", -1), h.get("valid_ndcg@10", -1)))["epoch"] if history else None,
            "epochs_run": len(history),
            "history": history,
            "valid_selection_sample": "eval_max_users" if tp.eval_max_users else "all users",
            "selection_valid": best_valid(history),
            "valid": valid_metrics(model, sids, seqs) if args.full_valid else None,
            "test": test_metrics(model, sids, seqs, args.test_max_users),
            "device": str(model.device),
        }
        result["rows"][row] = entry
        log.info(f"{row}: valid {entry['valid']} test {entry['test']}")
        write(args.out, result, started)

    quality = None
    qt = read(data, "item_quality_scores", args.dataset)
    if qt is not None:
        quality = qt.sort_values("item_idx")["quality_score"].to_numpy(np.float32)
        result["quality_source"] = "item_quality_scores"
    elif args.quality_proxy:
        quality = quality_proxy(tags)
        result["quality_source"] = "PROXY: agreeing prefix of generated vs catalogue tag path (heuristic label, not an LLM label)"
    result["quality_mean"] = float(quality.mean()) if quality is not None else None

    variants = [r.removeprefix("grpo_") for r in wanted if r.startswith("grpo_")] + [v for v in args.rl_variants.split(",") if v]
    rl_from = args.rl_from
    if rl_from == "best":
        rl_from = max(models, key=lambda r: tuple(result["rows"][r]["selection_valid"] or (-1.0, -1.0)))
    result["rl_from"] = rl_from
    for variant in variants:
        base = models[rl_from]
        gp = GRPOParams(**{"reward": variant, "max_minutes": args.rl_minutes, "device": args.device,
                           "eval_max_users": tp.eval_max_users, **rl_cfg})
        t0 = time.monotonic()
        res = train_grpo(base, sids, train, valid, users, gp, quality_scores=quality, progress=log.info)
        entry = {
            "from": rl_from,
            "grpo_params": gp.model_dump(),
            "rl_minutes": (time.monotonic() - t0) / 60,
            "best_epoch": res.best_epoch,
            "history": res.history,
            "seconds_per_epoch": [h["train_seconds"] for h in res.history if "train_seconds" in h],
            "selection_valid": best_valid(res.history),
            "valid": valid_metrics(res.model, sids, seqs) if args.full_valid else None,
            "test": test_metrics(res.model, sids, seqs, args.test_max_users),
            "device": str(res.model.device),
        }
        result["rows"][f"{rl_from}+grpo_{variant}"] = entry
        log.info(f"grpo_{variant}: valid {entry['valid']} test {entry['test']}")
        write(args.out, result, started)
    write(args.out, result, started)


def write(out: str, result: Dict[str, Any], started: float) -> None:
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=ROOT).stdout.strip()
    except OSError:
        commit = ""
    result["wall_seconds"] = time.monotonic() - started
    result["git_commit"] = commit
    result["hardware"] = {
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(json.dumps(result, indent=2, default=float))
    Path(out).with_suffix(".md").write_text(markdown(result))


def markdown(result: Dict[str, Any]) -> str:
    """The ablation table (test metrics of each validation-selected row) and the GRPO epochs."""
    lines = [
        f"# Recommender ablation: {result['dataset']} ({result['n_users']} users, test on {result.get('test_users')} users)",
        "",
        "| row | minutes | best epoch | valid R@10 (selection) | test R@5 | test N@5 | test R@10 | test N@10 |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, row in result["rows"].items():
        t = row["test"]
        minutes = row.get("train_minutes", row.get("rl_minutes", 0.0))
        sel = row.get("selection_valid") or [float("nan")]
        lines.append(
            f"| {name} | {minutes:.1f} | {row.get('best_epoch')} | {sel[0]:.4f} | {t['recall@5']:.4f} | {t['ndcg@5']:.4f} "
            f"| {t['recall@10']:.4f} | {t['ndcg@10']:.4f} |"
        )
    for name, row in result["rows"].items():
        if "grpo_params" not in row:
            continue
        lines += ["", f"## {name}: per epoch (epoch 0 = the supervised start)", "",
                  "| epoch | reward | exact rate | KL | train s | queries/s | valid R@10 | valid N@10 |", "|---|---|---|---|---|---|---|---|"]
        for h in row["history"]:
            lines.append(
                f"| {h['epoch']} | {h.get('reward', float('nan')):.4f} | {h.get('exact_rate', float('nan')):.4f} | {h.get('kl', float('nan')):.5f} "
                f"| {h.get('train_seconds', 0.0):.0f} | {h.get('queries_per_s', 0.0):.1f} | {h['valid_recall@10']:.4f} | {h['valid_ndcg@10']:.4f} |"
            )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
