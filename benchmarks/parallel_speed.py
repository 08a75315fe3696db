"""Speed of the parallel (RPG) recommender against SASRec-CE and TIGER, side by side in one run.

    python benchmarks/parallel_speed.py --data-dir <run data dir> --model-dir <data dir>/models/generative_recommender/amazon-beauty

* Training: samples (next-item targets) per second of a full optimiser step (forward, backward, AdamW)
  of the parallel model (per-digit loss and item loss) and of SASRec-CE **on the same batches** of users
  (length-bucketed, batch ``--batch-size``), interleaved batch by batch so machine load hits all alike.
* Decoding: users per second of exact scoring and graph-constrained decoding of the trained parallel
  model (``--model-dir``, e.g. the ``generative_recommender`` of a ``run_pipeline.py`` run), and of
  TIGER's trie-constrained beam search (beam 20) with a TIGER model (``--tiger-dir``; without one, a
  randomly initialised TIGER of ``beauty_cpu_best.yaml``'s shape: speed only); the top-10 overlap of
  each pair on the same test users.

Writes ``benchmarks/results/parallel_speed-<name>.json`` (threads and load average included).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def overlap(a: np.ndarray, b: np.ndarray) -> float:
    return round(float(np.mean([len(set(x) & set(y)) / a.shape[1] for x, y in zip(a.tolist(), b.tolist())])), 4)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", required=True)
    ap.add_argument("--dataset", default="amazon-beauty")
    ap.add_argument("--model-dir", help="saved ParallelRecommender (generative_recommender of a kind: parallel run)")
    ap.add_argument("--tiger-dir", help="saved TIGER generative_recommender trained on --tiger-sids-from's SIDs")
    ap.add_argument("--tiger-data-dir", help="data dir whose semantic_ids the TIGER model uses (default --data-dir)")
    ap.add_argument("--tiger-sids", help="npz with a 'sids' matrix for TIGER (e.g. parallel_beauty.py's RQ-VAE cache); overrides --tiger-data-dir")
    ap.add_argument("--name", default="beauty")
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--train-batches", type=int, default=20)
    ap.add_argument("--decode-users", type=int, default=4000)
    args = ap.parse_args(argv)

    import torch

    from semid_pipeline.core import storage
    from semid_pipeline.core.artifacts import load_artifact
    from semid_pipeline.core.baselines.sasrec import SASRec, SASRecParams
    from semid_pipeline.core.recommender.data import LengthBucketSampler
    from semid_pipeline.core.recommender.parallel import ParallelRecommender
    from semid_pipeline.core.recommender.parallel_decode import item_graph, recommend_exact, recommend_graph
    from semid_pipeline.core.recommender.parallel_train import training_windows
    from semid_pipeline.core.training import adamw, autocast

    threads = int(os.environ.get("SEMID_NUM_THREADS") or torch.get_num_threads())
    torch.set_num_threads(threads)
    sem = storage.read_table(args.data_dir, "semantic_ids", args.dataset).sort_values("item_idx")
    sids = np.stack(sem["sid"].to_numpy()).astype(np.int64)
    seqs = storage.read_table(args.data_dir, "user_sequences", args.dataset).sort_values("user_idx")
    train = [np.asarray(t, dtype=np.int64) for t in seqs["train_items"]]
    n_items = len(sids)
    trained = load_artifact(args.model_dir) if args.model_dir else None
    if trained is not None and not isinstance(trained, ParallelRecommender):
        raise SystemExit(f"{args.model_dir} holds a {type(trained).__name__}, not a ParallelRecommender")
    base = trained.params if trained is not None else None
    out = {
        "name": args.name,
        "threads": threads,
        "load_avg_start": os.getloadavg(),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}",
        "sid_shape": list(sids.shape),
        "batch_size": args.batch_size,
    }

    # -- training throughput on the same batches -------------------------------------------------
    inputs, targets, n_targets = training_windows(train, n_items, 50)
    batches = LengthBucketSampler(n_targets, args.batch_size, seed=0).epoch(1)[: args.train_batches + 3]
    torch.manual_seed(0)
    models = {}
    for loss in ("per_digit", "item"):
        p = base.model_copy(update={"loss": loss}) if base is not None else None
        if p is None:
            from semid_pipeline.core.recommender.parallel import ParallelParams

            p = ParallelParams(loss=loss, item_id_embedding=True, mixed_precision="bf16")
        models[f"parallel_{loss}"] = (ParallelRecommender(torch.from_numpy(sids), int(sids.max()) + 1, p), p.mixed_precision)
        models[f"parallel_{loss}_fp32"] = (ParallelRecommender(torch.from_numpy(sids), int(sids.max()) + 1, p), "off")
    sp = SASRecParams()
    models["sasrec_ce"] = (SASRec(n_items, sp), "off")  # SASRec-CE trains in float32 on a CPU (its asset's setting)
    models["sasrec_ce_bf16"] = (SASRec(n_items, sp), "bf16")
    opts = {k: adamw(m, 1e-3, 0.0) for k, (m, _) in models.items()}
    seconds = {k: 0.0 for k in models}
    samples = 0
    cpu = torch.device("cpu")
    for i, rows in enumerate(batches):
        width = max(int(n_targets[rows].max()), 1)
        x = torch.from_numpy(inputs[rows, -width:])
        y = torch.from_numpy(targets[rows, -width:])
        for key, (model, mp) in models.items():
            model.train()
            t0 = time.perf_counter()
            with autocast(cpu, mp):
                loss = model.loss(x, y)
            opts[key].zero_grad(set_to_none=True)
            loss.backward()
            opts[key].step()
            if i >= 3:
                seconds[key] += time.perf_counter() - t0
        if i >= 3:
            samples += int(n_targets[rows].sum())
    out["train_samples_per_s"] = {k: round(samples / s, 1) for k, s in seconds.items()}
    out["train_samples_timed"] = samples
    print(json.dumps(out["train_samples_per_s"]))

    # -- decoding throughput and overlap ----------------------------------------------------------
    valid = seqs["valid_item"].to_numpy(np.int64)
    hist = [np.append(t, v) for t, v in zip(train, valid)][: args.decode_users]
    users = seqs["user_idx"].to_numpy(np.int64)[: args.decode_users]
    model = trained if trained is not None else models["parallel_item"][0].eval()
    lists, decode = {}, {}
    t0 = time.perf_counter()
    lists["exact"], _ = recommend_exact(model, sids, hist, 10, 512)
    decode["exact"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    graph = item_graph(model, sids, 100)
    out["graph_build_seconds"] = round(time.perf_counter() - t0, 2)
    for beam, steps in ((50, 3), (20, 2)):
        t0 = time.perf_counter()
        lists[f"graph_b{beam}_s{steps}"], _ = recommend_graph(model, sids, hist, graph, 10, beam, steps, 512)
        decode[f"graph_b{beam}_s{steps}"] = time.perf_counter() - t0
    from semid_pipeline.core.recommender.model import GenerativeRecommender, RecommenderParams
    from semid_pipeline.core.recommender.train import recommend
    from semid_pipeline.core.recommender.trie import SIDTrie
    from semid_pipeline.core.recommender.vocab import SIDVocab

    if args.tiger_sids:
        tsids = np.load(args.tiger_sids)["sids"].astype(np.int64)
    else:
        tsem = storage.read_table(args.tiger_data_dir or args.data_dir, "semantic_ids", args.dataset).sort_values("item_idx")
        tsids = np.stack(tsem["sid"].to_numpy()).astype(np.int64)
    if args.tiger_dir:
        tiger = load_artifact(args.tiger_dir)
        out["tiger"] = f"trained ({args.tiger_dir}), SIDs {list(tsids.shape)}"
    else:  # the shape of configs/beauty_cpu_best.yaml, random weights: speed only
        mp = RecommenderParams(d_model=64, n_encoder_layers=1, n_decoder_layers=1, n_heads=2, d_head=32, d_ff=256, n_user_buckets=1)
        tiger = GenerativeRecommender(mp, SIDVocab.from_sids(tsids, 1)).eval()
        out["tiger"] = f"random weights, beauty_cpu_best shape, SIDs {list(tsids.shape)} (speed only)"
    t0 = time.perf_counter()
    lists["tiger_beam20"], _ = recommend(tiger, SIDTrie.from_sids(tsids), hist, users, 20, 10, 512)
    decode["tiger_beam20"] = time.perf_counter() - t0
    from semid_pipeline.core.metrics import evaluate_topk

    test_t = seqs["test_item"].to_numpy(np.int64)[: args.decode_users]
    out["decode_test_metrics"] = {k: {m: round(v, 5) for m, v in evaluate_topk(v_, test_t, (5, 10)).items()} for k, v_ in lists.items()}
    out["decode_users"] = len(hist)
    out["decode_users_per_s"] = {k: round(len(hist) / s, 1) for k, s in decode.items()}
    names = list(lists)
    out["top10_overlap"] = {f"{a} vs {b}": overlap(lists[a], lists[b]) for i, a in enumerate(names) for b in names[i + 1 :]}
    out["load_avg_end"] = os.getloadavg()
    path = REPO / "benchmarks" / "results" / f"parallel_speed-{args.name}.json"
    path.write_text(json.dumps(out, indent=1))
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
