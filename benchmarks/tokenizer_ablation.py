"""Tokenizer ablation (HiD-VAE Tables 2/3 shape): the recommender trained on each tokenizer variant.

For ``--dataset demo`` (the synthetic catalogue) or ``amazon-beauty``: embed item texts with the
bundled MiniLM (cached under ``benchmarks/results/data/``), take each item's category path
(truncated to 3 levels) as its tags, then for every variant train the tokenizer, resolve
collisions, train the recommender under a fixed budget and evaluate Recall/NDCG@5/10 on the test
split. Writes JSON (and a Markdown table) under ``benchmarks/results/``.

    SEMID_NUM_THREADS=1 python benchmarks/tokenizer_ablation.py --dataset demo

On Beauty the recommender is the small CPU config (``configs/beauty_cpu_small.yaml``: d_model 64,
1+1 layers, batch 32, lr 3e-3, warmup 300, bf16 autocast) under a fixed wall-clock budget per
variant (``--rec_minutes``), recorded in the JSON. Variants can run in separate processes (one
thread each) and be merged:

    SEMID_NUM_THREADS=1 python benchmarks/tokenizer_ablation.py --dataset amazon-beauty --rec_minutes 6 \
        --variants rqvae,rqvae+align,rqvae+pred --out /tmp/abl_a.json
    python benchmarks/tokenizer_ablation.py --merge /tmp/abl_a.json,/tmp/abl_b.json --dataset amazon-beauty
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import time
from pathlib import Path

import numpy as np
import torch

from semid_pipeline.core.recommender.model import RecommenderParams
from semid_pipeline.core.recommender.train import TrainParams
from semid_pipeline.core.experiments.tokenizer_ablation import AblationParams, run_tokenizer_ablation
from semid_pipeline.core.tokenizers.base import TokenizerParams
from semid_pipeline.core.tokenizers.variants import BEAUTY_SCHEDULE, VARIANTS

ROOT = Path(__file__).resolve().parents[1]


def load(dataset: str, cache: Path, root: str, demo_items: int = 3000, demo_users: int = 4000):
    from semid_pipeline.core.data.preprocess import PreprocessParams, build_tables

    if dataset == "demo":
        from semid_pipeline.core.data.demo import DemoParams, generate_demo

        raw = generate_demo(DemoParams(n_items=demo_items, n_users=demo_users))
    else:
        from semid_pipeline.core.data.amazon import AmazonParams, load_amazon

        raw = load_amazon(AmazonParams(format="p5", category="Beauty", root=root))
    prep = build_tables(raw, PreprocessParams())
    items = prep.items.sort_values("item_idx")
    ids = np.asarray(items["item_id"].astype(str).to_numpy(), dtype=str)
    paths = [list(p)[:3] for p in items["category_path"]]
    if cache.exists():
        z = np.load(cache, allow_pickle=False)
        if list(z["item_id"]) == list(ids):
            return prep.user_sequences, paths, z["embedding"]
    from semid_pipeline.core.enrich.text_encoder import TextEncoder

    emb = TextEncoder().encode(items["text"].astype(str).tolist(), progress=print)
    cache.parent.mkdir(parents=True, exist_ok=True)
    np.savez(cache, item_id=ids, embedding=emb)
    return prep.user_sequences, paths, emb


def merge(files, out: Path) -> None:
    """One table from runs of disjoint variant subsets (rows in VARIANTS order); settings from the first file."""
    results = [json.loads(f.read_text()) for f in files]
    merged = dict(results[0])
    rows = [r for res in results for r in res["rows"]]
    order = {v: i for i, v in enumerate(VARIANTS)}
    merged["rows"] = sorted(rows, key=lambda r: order.get(r["variant"], len(order)))
    merged["variant_overrides"] = {k: v for res in results for k, v in res.get("variant_overrides", {}).items()}
    merged["wall_seconds"] = [res.get("wall_seconds") for res in results]
    merged["merged_from"] = [str(f) for f in files]
    merged["processes"] = len(results)
    out.write_text(json.dumps(merged, indent=2, default=float))
    import pandas as pd

    out.with_suffix(".md").write_text(pd.DataFrame(merged["rows"]).to_markdown(index=False, floatfmt=".4f") + "\n")
    print("wrote", out)


def main() -> None:
    shared = Path(os.environ.get("SEMID_SHARED_DIR", ROOT.parent / "shared"))
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", default="demo", choices=["demo", "amazon-beauty"])
    ap.add_argument("--root", default=str(shared / "datasets" / "amazon-beauty"))
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--collision_strategy", default="append_token", choices=["append_token", "sinkhorn"])
    ap.add_argument("--codebook_size", type=int, default=None, help="Tokenizer K (default 64 on demo, 256 on Beauty).")
    ap.add_argument("--tokenizer_epochs", type=int, default=None, help="Base tokenizer epochs (default: TokenizerParams; variants may override).")
    ap.add_argument("--tokenizer_batch", type=int, default=None, help="Base tokenizer batch size (default: TokenizerParams; variants may override).")
    ap.add_argument("--rec_epochs", type=int, default=10, help="Recommender epochs per variant (the budget).")
    ap.add_argument("--rec_minutes", type=float, default=None, help="Optional wall-clock budget per variant.")
    ap.add_argument("--eval_max_users", type=int, default=1000)
    ap.add_argument("--min_tag_items", type=int, default=30)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--demo_items", type=int, default=3000)
    ap.add_argument("--demo_users", type=int, default=4000)
    ap.add_argument("--out", default=None)
    ap.add_argument("--merge", default="", help="Comma-separated result JSONs (same dataset/budget) to merge into one table at --out.")
    args = ap.parse_args()
    threads = int(os.environ.get("SEMID_NUM_THREADS", "1"))
    torch.set_num_threads(threads)
    tag = (f"demo{args.demo_items}" if args.demo_items != 3000 else "demo") if args.dataset == "demo" else "beauty"
    out = Path(args.out or ROOT / "benchmarks" / "results" / f"tokenizer_ablation_{tag}.json")
    if args.merge:
        merge([Path(f) for f in args.merge.split(",")], out)
        return
    seqs, paths, x = load(args.dataset, ROOT / "benchmarks" / "results" / "data" / f"{tag}_minilm.npz", args.root, args.demo_items, args.demo_users)
    from semid_pipeline.core.enrich.text_encoder import TextEncoder

    encoder = TextEncoder()
    k = args.codebook_size or (64 if args.dataset == "demo" else 256)
    base = dict(BEAUTY_SCHEDULE) if args.dataset == "amazon-beauty" else {}  # the tuned schedule of every RQ-VAE variant
    base.update({k_: v for k_, v in {"epochs": args.tokenizer_epochs, "batch_size": args.tokenizer_batch}.items() if v is not None})
    tok = TokenizerParams(codebook_size=k, min_tag_items=args.min_tag_items, seed=args.seed, **base)
    # the small recommender of configs/demo_tiger.yaml / configs/beauty_cpu_small.yaml, a fixed budget per variant
    model = RecommenderParams(d_model=64, n_encoder_layers=1, n_decoder_layers=1, n_heads=2, d_head=32, d_ff=256)
    if args.dataset == "demo":
        train = TrainParams(
            epochs=args.rec_epochs, warmup_steps=100, batch_size=16, lr=0.003, eval_max_users=args.eval_max_users, patience=5,
            max_train_minutes=args.rec_minutes, num_threads=threads,
        )
    else:  # configs/beauty_cpu_small.yaml
        train = TrainParams(
            epochs=args.rec_epochs, warmup_steps=300, batch_size=32, lr=0.003, eval_max_users=args.eval_max_users, patience=4,
            mixed_precision="bf16", max_train_minutes=args.rec_minutes, num_threads=threads,
        )
    params = AblationParams(variants=args.variants.split(","), collision_strategy=args.collision_strategy, seed=args.seed)
    t = time.time()
    table = run_tokenizer_ablation(x, paths, seqs, params, tok, model, train, encoder.encode, progress=print)
    result = {
        "dataset": args.dataset,
        "n_items": int(len(x)),
        "n_users": int(len(seqs)),
        "tokenizer_base": tok.model_dump(),
        "variant_overrides": {v: VARIANTS[v] for v in params.variants},
        "recommender_budget": {"max_epochs": args.rec_epochs, "max_train_minutes": args.rec_minutes, "threads": threads},
        "tags": "category paths truncated to 3 levels",
        "collision_strategy": args.collision_strategy,
        "recommender": {**model.model_dump(), **train.model_dump()},
        "threads": threads,
        "wall_seconds": round(time.time() - t, 1),
        "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count(), "torch": torch.__version__},
        "git_commit": subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip(),
        "rows": table.to_dict(orient="records"),
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2, default=float))
    out.with_suffix(".md").write_text(table.to_markdown(index=False, floatfmt=".4f") + "\n")
    print(table.to_string())
    print("wrote", out)


if __name__ == "__main__":
    main()
