"""SID tokenizers on Amazon Beauty: collision rates, tag accuracy, Sinkhorn resolution, determinism.

Items are the 12,101 Beauty items after the pipeline's preprocessing; their text (``items.text``,
the same text the pipeline embeds: title, brand, categories) is embedded with the bundled MiniLM
and cached in ``benchmarks/results/data/beauty_minilm.npz`` (git-ignored). Tag supervision uses the
dataset's own category paths (``category_path``, the ``true_path`` of ``item_tags``), truncated to 3
levels; tags with fewer than ``--min_tag_items`` items (default 30, as HiD-VAE appendix E) count as
missing. Tag accuracy is measured on the deterministic held-out 10% of items whose tags training
never saw.

For each variant: collision rate before resolution, after Sinkhorn re-assignment (no extra
token) and after TIGER's appended token, per-level utilisation/perplexity, reconstruction error,
held-out tag accuracy, wall time; then determinism checks (retrain with the same seed; save,
reload and assign again).

    SEMID_NUM_THREADS=1 python benchmarks/tokenizers_beauty.py --variants rqvae,hidvae
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from semid_pipeline.core.artifacts import load_artifact, save_artifact
from semid_pipeline.core.tokenizers.base import TokenizerParams, train_tokenizer
from semid_pipeline.core.tokenizers.collisions import resolve_collisions
from semid_pipeline.core.tokenizers.quality import tokenizer_quality
from semid_pipeline.core.tokenizers.variants import BEAUTY_SCHEDULE, VARIANTS

ROOT = Path(__file__).resolve().parents[1]


def load_beauty(root: str, cache: Path):
    """(item ids, texts, category paths, embeddings), embeddings cached in ``cache``."""
    from semid_pipeline.core.data.amazon import AmazonParams, load_amazon
    from semid_pipeline.core.data.preprocess import PreprocessParams, build_tables

    raw = load_amazon(AmazonParams(format="p5", category="Beauty", root=root))
    items = build_tables(raw, PreprocessParams()).items.sort_values("item_idx")
    ids = items["item_id"].astype(str).to_numpy()
    paths = [list(p)[:3] for p in items["category_path"]]
    if cache.exists():
        z = np.load(cache, allow_pickle=False)
        if list(z["item_id"]) == list(ids):
            return ids, paths, z["embedding"]
    from semid_pipeline.core.enrich.text_encoder import TextEncoder

    t = time.time()
    emb = TextEncoder().encode(items["text"].astype(str).tolist(), progress=print)
    print(f"embedded {len(ids)} items in {time.time() - t:.0f}s")
    cache.parent.mkdir(parents=True, exist_ok=True)
    np.savez(cache, item_id=np.asarray(ids, dtype=str), embedding=emb)
    return ids, paths, emb


def merge(files, out: str) -> None:
    """Merges per-process result files; variants trained in two processes are compared code by code."""
    merged: dict = {}
    determinism = []
    for f in files:
        r = json.loads(Path(f).read_text())
        if "determinism" in r:
            determinism.append(r["determinism"])
        for name, entry in r.get("variants", {}).items():
            if name in merged.get("variants", {}):
                a, b = merged["variants"][name].get("codes_file"), entry.get("codes_file")
                same = bool(a and b and np.array_equal(np.load(a), np.load(b)))
                determinism.append({"variant": name, "retrain_identical_codes_separate_processes": same, "runs": [a, b]})
                continue
            merged.setdefault("variants", {})[name] = entry
        merged.update({k: v for k, v in r.items() if k not in ("variants", "determinism")})
    merged["determinism"] = determinism
    Path(out).write_text(json.dumps(merged, indent=2, default=float))
    print(json.dumps(determinism, indent=1))


def main() -> None:
    shared = Path(os.environ.get("SEMID_SHARED_DIR", ROOT.parent / "shared"))
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--root", default=str(shared / "datasets" / "amazon-beauty"))
    ap.add_argument("--cache", default=str(ROOT / "benchmarks" / "results" / "data" / "beauty_minilm.npz"))
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "tokenizers_beauty.json"))
    ap.add_argument("--variants", default="rqvae,hidvae,rqkmeans", help="Comma-separated names from core/tokenizers/variants.py, or 'all'.")
    ap.add_argument("--schedule", default="beauty", choices=["beauty", "defaults"], help="RQ-VAE training schedule: variants.BEAUTY_SCHEDULE or the TokenizerParams defaults.")
    ap.add_argument("--epochs", type=int, default=None, help="Override RQ-VAE epochs (default: the schedule's).")
    ap.add_argument("--min_tag_items", type=int, default=30)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--determinism", default="hidvae", help="Variant whose tokenizer is saved, reloaded and re-assigned ('' = skip).")
    ap.add_argument("--retrain_check", action="store_true", help="Also retrain that variant with the same seed and compare SIDs.")
    ap.add_argument("--save_codes", default="", help="Folder for each variant's codes/SIDs (.npy), to compare runs of separate processes.")
    ap.add_argument("--merge", default="", help="Comma-separated result JSONs to merge into --out (codes compared when saved).")
    ap.add_argument("--embed_only", action="store_true")
    args = ap.parse_args()
    threads = int(os.environ.get("SEMID_NUM_THREADS", "1"))
    torch.set_num_threads(threads)

    if args.merge:
        merge(args.merge.split(","), args.out)
        return
    ids, paths, x = load_beauty(args.root, Path(args.cache))
    if args.embed_only:
        return
    from semid_pipeline.core.enrich.text_encoder import TextEncoder

    encoder = TextEncoder()
    tag_cache: dict = {}

    def embed_texts(texts):
        missing = [t for t in texts if t not in tag_cache]
        if missing:
            tag_cache.update(zip(missing, encoder.encode(missing)))
        return np.stack([tag_cache[t] for t in texts])

    result = {
        "dataset": "amazon-beauty",
        "n_items": int(len(ids)),
        "tags": "true category paths (items.category_path) truncated to 3 levels",
        "min_tag_items": args.min_tag_items,
        "threads": threads,
        "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count(), "torch": torch.__version__},
        "git_commit": subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip(),
        "published": {"hid-vae_collision_rqvae": 0.187, "hid-vae_collision_full": 0.021, "hid-vae_tag_accuracy": [0.9638, 0.9273, 0.8561]},
        "variants": {},
    }
    trained = {}
    names = list(VARIANTS) if args.variants == "all" else [v for v in args.variants.split(",") if v]
    for name in names:
        overrides = {**BEAUTY_SCHEDULE, **VARIANTS[name]} if args.schedule == "beauty" else dict(VARIANTS[name])
        if args.epochs is not None:
            overrides["epochs"] = args.epochs
        params = TokenizerParams(seed=args.seed, min_tag_items=args.min_tag_items, **overrides)
        load_before = os.getloadavg()[0]
        t, c = time.time(), time.process_time()
        res = train_tokenizer(x, params, paths, embed_texts, progress=print)
        train_s, train_cpu = time.time() - t, time.process_time() - c
        q = tokenizer_quality(res.tokenizer, x, res.vocab, res.heldout, ids, strategy="sinkhorn", seed=args.seed)
        entry = {
            "params": {k: v for k, v in overrides.items()},
            "train_seconds": round(train_s, 1),
            "train_cpu_seconds": round(train_cpu, 1),  # process CPU time (all threads): wall time on idle cores x threads
            "loadavg_1min_before_after": [round(load_before, 2), round(os.getloadavg()[0], 2)],
            **q.summary,
            "levels": q.levels.to_dict(orient="records"),
            "sample_paths": q.sample_paths.head(10).to_dict(orient="records"),
        }
        result["variants"][name] = entry
        trained[name] = (params, res)
        if args.save_codes:
            enc = res.tokenizer.encode_full(x)
            sids = resolve_collisions(enc.codes, enc.last_distances, "sinkhorn", seed=args.seed)[0]
            Path(args.save_codes).mkdir(parents=True, exist_ok=True)
            np.save(Path(args.save_codes) / f"{name}_codes.npy", enc.codes)
            np.save(Path(args.save_codes) / f"{name}_sids.npy", sids)
            entry["codes_file"] = str(Path(args.save_codes) / f"{name}_codes.npy")
        print(name, json.dumps({k: v for k, v in q.summary.items()}, default=float))
        Path(args.out).write_text(json.dumps(result, indent=2, default=float))

    if args.determinism and args.determinism in trained:
        params, res = trained[args.determinism]
        codes_a = res.tokenizer.encode(x).numpy()
        with tempfile.TemporaryDirectory() as tmp:
            save_artifact(res.tokenizer, Path(tmp) / "tok")
            reloaded = load_artifact(Path(tmp) / "tok")
            codes_b = reloaded.encode(x).numpy()
            paths_equal = reloaded.decode_paths(codes_a[:200]) == res.tokenizer.decode_paths(codes_a[:200])
        result["determinism"] = {
            "variant": args.determinism,
            "reload_identical_codes": bool(np.array_equal(codes_a, codes_b)),
            "reload_identical_paths": bool(paths_equal),
        }
        if args.retrain_check:
            t = time.time()
            again = train_tokenizer(x, params, paths, embed_texts)
            result["determinism"]["retrain_identical_codes"] = bool(np.array_equal(codes_a, again.tokenizer.encode(x).numpy()))
            result["determinism"]["retrain_seconds"] = round(time.time() - t, 1)
        print("determinism", result["determinism"])
    Path(args.out).write_text(json.dumps(result, indent=2, default=float))
    print("wrote", args.out)


if __name__ == "__main__":
    main()
