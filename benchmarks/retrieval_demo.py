"""Query-to-product retrieval on the demo's search queries: generative (query -> SID) vs BM25 vs dense.

    SEMID_NUM_THREADS=1 python benchmarks/retrieval_demo.py

Materializes the ``retrieval`` job's assets (demo catalog -> tags -> embeddings -> RQ-VAE -> SIDs,
judged demo queries, the generative retriever, the evaluation) in-process on a fresh data directory
and writes ``benchmarks/results/retrieval_demo.json``: Recall@5/10/20/50/100 of the three models on
the demo's test queries (CAT-ID2 Table 2 layout), the training history, wall time per step,
hardware, thread count and git commit. Every number is read from the assets this run produced.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

# Sizes for a 2-core CPU: the sid_tokenizer settings are configs/demo_tiger.yaml's; the generative
# retriever is a narrow 2+2-layer model (CAT-ID2 fine-tunes T5-base on 8 A100s).
RUN_CONFIG = {
    "ops": {
        "sid_tokenizer": {"config": {"codebook_size": 64}},
        "generative_retriever": {
            "config": {
                "d_model": 128, "n_encoder_layers": 2, "n_decoder_layers": 2, "n_heads": 4, "d_head": 32, "d_ff": 512,
                "dropout": 0.1, "epochs": 14, "batch_size": 64, "lr": 0.002, "warmup_steps": 100,
                "valid_fraction": 0.1, "eval_every_epochs": 2, "patience": 3, "eval_beam_size": 20,
                "beam_size": 100, "top_k": 100, "seed": 0,
            }
        },
    }
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "retrieval_demo.json"))
    parser.add_argument("--data-dir", default=None, help="Data directory (default: a fresh temporary one).")
    parser.add_argument("--n-queries", type=int, default=1500)
    parser.add_argument("--only-retrieval", action="store_true",
                        help="Materialize only generative_retriever and retrieval_evaluation, reusing the upstream "
                        "tables already in --data-dir (from an earlier run with the same options).")
    args = parser.parse_args()
    os.environ.setdefault("SEMID_NUM_THREADS", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    import torch
    from dagster import AssetSelection, DagsterEventType, DagsterInstance, materialize

    from run_pipeline import git_commit, hardware
    from semid_pipeline.core import storage
    from semid_pipeline.core.device import configure_threads
    from semid_pipeline.definitions import all_assets, build_resources

    configure_threads(None)
    data_dir = args.data_dir or tempfile.mkdtemp(prefix="retrieval_demo_")
    options = {"demo": {"n_queries": args.n_queries}}
    instance = DagsterInstance.ephemeral()
    started = time.monotonic()
    result = materialize(
        all_assets,
        selection=(AssetSelection.assets("generative_retriever", "retrieval_evaluation") if args.only_retrieval
                   else AssetSelection.groups("retrieval").upstream().required_multi_asset_neighbors()),
        partition_key="demo",
        resources=build_resources(data_dir=data_dir, datasets_options_json=json.dumps(options)),
        run_config={"ops": {"generative_retriever": RUN_CONFIG["ops"]["generative_retriever"]}} if args.only_retrieval else RUN_CONFIG,
        instance=instance,
    )
    wall = time.monotonic() - started
    steps, starts = {}, {}
    for entry in instance.all_logs(result.run_id):
        ev = entry.dagster_event
        if ev is None:
            continue
        if ev.event_type == DagsterEventType.STEP_START:
            starts[ev.step_key] = entry.timestamp
        elif ev.event_type == DagsterEventType.STEP_SUCCESS:
            steps[ev.step_key] = round(entry.timestamp - starts[ev.step_key], 1)
    ev = storage.read_table(data_dir, "retrieval_evaluation", "demo")
    table = {m: {f"recall@{int(k)}": float(v) for k, v in zip(g["k"], g["value"])} for m, g in ev.groupby("model")}
    meta = {}
    for mat in result.get_asset_materialization_events():
        key = mat.asset_key.path[-1]
        if key in ("generative_retriever", "semantic_ids", "query_examples"):
            meta[key] = {k: v.value for k, v in mat.materialization.metadata.items() if isinstance(v.value, (int, float, str)) and len(str(v.value)) < 200}
    out = {
        "what": "Recall@k on the demo's test queries (graded E/S/C/I relevance; relevant = E and S); "
        "generative = query->SID encoder-decoder with trie-constrained beam search (beam 100, top 100), "
        "bm25 = Okapi BM25 (k1 1.2, b 0.75) over title+brand+description, dense = all-MiniLM-L6-v2 + faiss IndexFlatIP (zero-shot)",
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "git_commit": git_commit(),
        "hardware": hardware(),
        "torch_threads": torch.get_num_threads(),
        "load_average_at_end": os.getloadavg(),
        "wall_seconds": round(wall, 1),
        "only_retrieval_assets": bool(args.only_retrieval),
        "step_seconds": steps,
        "n_test_queries": int(ev["n_queries"].iloc[0]),
        "recall": table,
        "asset_metadata": meta,
        "run_config": RUN_CONFIG,
        "dataset_options": options,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2, default=str))
    print(json.dumps({"recall": table, "wall_seconds": out["wall_seconds"], "steps": steps}, indent=2))


if __name__ == "__main__":
    main()
