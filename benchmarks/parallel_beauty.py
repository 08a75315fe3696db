"""One parallel (RPG) recommender run on a materialized dataset: tokenizer -> SIDs -> training -> test scores.

    python benchmarks/parallel_beauty.py --data-dir <run data dir> --name rpg-m16 \\
        --tok kind=opq --tok pq_digits=16 --set loss=item --set max_train_minutes=10 --decode exact,graph

Reads ``items``, ``user_sequences`` and ``item_text_embeddings`` of ``--dataset`` from ``--data-dir`` (e.g.
the data dir of ``run_pipeline.py``), fits the tokenizer given by ``--tok key=value`` (``TokenizerParams``;
SIDs cached under ``--cache``), resolves collisions (``--collisions``), trains ``ParallelParams``
(``--set key=value``) through ``core.training.fit`` with selection on validation, and scores validation
and test (full ranking, leave-one-out) with each decoder of ``--decode``. Writes
``benchmarks/results/parallel/<name>.json`` with the metrics, the per-epoch history, the decoders'
users/s, threads and the machine's load average. ``--model tiger`` trains the TIGER encoder-decoder
(``--set`` then sets ``RecommenderParams`` / ``TrainParams``) on the same SIDs for the ablation table.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def parse_sets(pairs):
    out = {}
    for pair in pairs or []:
        key, _, value = pair.partition("=")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def load_sids(data_dir: str, dataset: str, tok: dict, collisions: str, cache: Path, tags: bool):
    """SID matrix of the catalogue for tokenizer settings ``tok`` (``TokenizerParams``; the hybrid SID is
    ``residual_pq_digits > 0``), cached by content."""
    from semid_pipeline.core import storage
    from semid_pipeline.core.tokenizers.base import TokenizerParams, train_tokenizer
    from semid_pipeline.core.tokenizers.collisions import collision_rate, resolve_collisions

    key = hashlib.sha1(json.dumps([data_dir, dataset, tok, collisions], sort_keys=True).encode()).hexdigest()[:12]
    path = cache / f"sids-{key}.npz"
    if path.exists():
        z = np.load(path)
        return z["sids"], json.loads(str(z["info"]))
    emb = storage.read_table(data_dir, "item_text_embeddings", dataset).sort_values("item_idx")
    x = np.stack(emb["embedding"].to_numpy()).astype(np.float32)
    paths = None
    if tags:
        it = storage.read_table(data_dir, "item_tags", dataset)
        by = dict(zip(it["item_idx"].tolist(), it["tag_path"].tolist()))
        paths = [list(by[i]) if by.get(i) is not None else [] for i in emb["item_idx"].tolist()]
    t0 = time.time()
    params = TokenizerParams(**tok)
    embed = None
    if params.tag_alignment:
        from semid_pipeline.core.enrich.text_encoder import TextEncoder, TextEncoderParams

        embed = TextEncoder(TextEncoderParams(device="cpu")).encode
    collab = None
    if params.collaborative_dims > 0:  # [text ; SASRec item vector] input (needs item_collaborative_embeddings in --data-dir)
        from semid_pipeline.core.tokenizers.collaborative import collaborative_matrix

        table = storage.read_table(data_dir, "item_collaborative_embeddings", dataset)
        collab = collaborative_matrix(table, emb["item_idx"].to_numpy(np.int64))
    res = train_tokenizer(x, params, paths, embed, progress=print, collaborative=collab)
    enc = res.tokenizer.encode_full(x if collab is None else np.concatenate([x, collab], 1))
    codes = enc.codes
    sids, _ = resolve_collisions(codes, enc.last_distances, strategy=collisions, seed=0)
    info = {
        "tokenizer_seconds": round(time.time() - t0, 1),
        "collision_rate_before": collision_rate(codes),
        "collision_rate_after": collision_rate(sids),
        "recon_error": float(enc.recon_error.mean()),
        "codes_used_per_digit": [int(len(np.unique(codes[:, j]))) for j in range(codes.shape[1])],
    }
    cache.mkdir(parents=True, exist_ok=True)
    np.savez(path, sids=sids, info=json.dumps(info))
    return sids, info


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", required=True)
    ap.add_argument("--dataset", default="amazon-beauty")
    ap.add_argument("--name", required=True)
    ap.add_argument("--model", choices=["parallel", "tiger"], default="parallel")
    ap.add_argument("--tok", action="append", help="TokenizerParams key=value (default kind=opq pq_digits=16 pca_dim=128)")
    ap.add_argument("--tok-json", help="TokenizerParams as one JSON object (instead of --tok)")
    ap.add_argument("--tags", action="store_true", help="pass item_tags to the tokenizer (HiD-VAE losses, tag probe)")
    ap.add_argument("--collisions", default="sinkhorn", choices=["sinkhorn", "append_token"])
    ap.add_argument("--set", action="append", help="model/training params key=value")
    ap.add_argument("--decode", default="exact", help="comma list of exact, graph (parallel) ")
    ap.add_argument("--graph", action="append", help="DecodeParams key=value for graph decoding")
    ap.add_argument("--cache", default=str(REPO / "benchmarks" / "results" / "data" / "sid_cache"))
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "parallel"))
    args = ap.parse_args(argv)

    import torch

    from semid_pipeline.core import storage
    from semid_pipeline.core.metrics import evaluate_topk

    tok = json.loads(args.tok_json) if args.tok_json else (parse_sets(args.tok) or {"kind": "opq", "pq_digits": 16, "pca_dim": 128})
    sids, tok_info = load_sids(args.data_dir, args.dataset, tok, args.collisions, Path(args.cache), args.tags)
    seqs = storage.read_table(args.data_dir, "user_sequences", args.dataset).sort_values("user_idx")
    train = [np.asarray(t, dtype=np.int64) for t in seqs["train_items"]]
    valid_t = seqs["valid_item"].to_numpy(np.int64)
    test_hist = [np.append(t, v) for t, v in zip(train, valid_t)]
    test_t = seqs["test_item"].to_numpy(np.int64)
    sets = parse_sets(args.set)
    result = {
        "name": args.name,
        "dataset": args.dataset,
        "model": args.model,
        "tokenizer": tok,
        "collisions": args.collisions,
        "tokenizer_info": tok_info,
        "sid_shape": list(sids.shape),
        "params": sets,
        "threads": int(os.environ.get("SEMID_NUM_THREADS") or torch.get_num_threads()),
        "load_avg_start": os.getloadavg(),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    t0 = time.time()
    decoders = {}
    if args.model == "parallel":
        from semid_pipeline.core.recommender.parallel import ParallelParams
        from semid_pipeline.core.recommender.parallel_decode import DecodeParams, item_graph, recommend_exact, recommend_graph
        from semid_pipeline.core.recommender.parallel_train import train_parallel

        params = ParallelParams(**sets)
        teacher = None
        if params.uses_teacher:  # the data dir's SASRec-CE (sasrec_model) is the teacher
            from semid_pipeline.core.artifacts import load_artifact

            teacher = load_artifact(storage.model_dir(args.data_dir, "sasrec_model", args.dataset))
        res = train_parallel(sids, train, valid_t, params, progress=print, teacher=teacher)
        model, history, best_epoch = res.model, res.history, res.best_epoch
        result["train_seconds"] = round(res.seconds, 1)
        gp = DecodeParams(**parse_sets(args.graph))
        for dec in args.decode.split(","):
            if dec == "exact":
                decoders["exact"] = lambda h: recommend_exact(model, sids, h, 10, 512)
            elif dec == "graph":
                tg = time.time()
                graph = item_graph(model, sids, gp.n_edges)
                result["graph_build_seconds"] = round(time.time() - tg, 2)
                result["graph"] = gp.model_dump()
                decoders["graph"] = lambda h, g=graph: recommend_graph(model, sids, h, g, 10, gp.beam_size, gp.steps, 512, gp.score, gp.seed)
    else:
        from semid_pipeline.core.recommender.model import RecommenderParams
        from semid_pipeline.core.recommender.train import TrainParams, recommend, train_recommender
        from semid_pipeline.core.recommender.trie import SIDTrie

        mp = RecommenderParams(**{k: v for k, v in sets.items() if k in RecommenderParams.model_fields})
        tp = TrainParams(**{k: v for k, v in sets.items() if k in TrainParams.model_fields})
        user_idx = seqs["user_idx"].to_numpy(np.int64)
        res = train_recommender(sids, train, valid_t, train, user_idx, mp, tp, progress=print)
        model, history = res.model, res.history
        best_epoch = max(history, key=lambda h: h.get("valid_recall@10", -1.0)).get("epoch", -1) if history else -1
        trie = SIDTrie.from_sids(sids)
        decoders["beam"] = lambda h: recommend(model, trie, h, user_idx, 20, 10, 512)
    result["wall_train_seconds"] = round(time.time() - t0, 1)
    result["best_epoch"] = int(best_epoch)
    result["history"] = [{k: (round(v, 5) if isinstance(v, float) else v) for k, v in h.items()} for h in history]
    result["metrics"] = {}
    lists = {}
    for dec, rank in decoders.items():
        out = {}
        for split, hist, target in (("valid", train, valid_t), ("test", test_hist, test_t)):
            ts = time.time()
            items, _ = rank(hist)
            secs = time.time() - ts
            out[split] = {k: round(v, 5) for k, v in evaluate_topk(items, target, (5, 10)).items()}
            out[split]["users_per_s"] = round(len(hist) / secs, 1)
            lists[(dec, split)] = items
        result["metrics"][dec] = out
        print(dec, json.dumps(out))
    if len(decoders) > 1:
        names = list(decoders)
        a, b = lists[(names[0], "test")], lists[(names[1], "test")]
        result["top10_overlap_test"] = round(float(np.mean([len(set(x) & set(y)) / 10 for x, y in zip(a.tolist(), b.tolist())])), 4)
    result["load_avg_end"] = os.getloadavg()
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f"{args.name}.json").write_text(json.dumps(result, indent=1, default=str))
    print(json.dumps({k: result[k] for k in ("name", "metrics", "best_epoch", "wall_train_seconds")}, default=str))
    return result


if __name__ == "__main__":
    main()
