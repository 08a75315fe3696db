"""The two text-encoder kinds side by side on real item texts: texts/s, and how much of the
transformer's neighbourhood structure the static (distilled bag-of-tokens) table keeps.

    taskset -c 0 env SEMID_NUM_THREADS=1 python benchmarks/text_encoder_speed.py --dataset amazon-beauty

Texts: the dataset's tagging texts (title, brand, description; never the category path), the first
``--items`` items. Per kind: seconds and texts/s of ``TextEncoder.encode`` (the static kind's one-off
distillation timed apart: its cache is written to a fresh folder), and the process's peak RSS after
it. Quality without labels of our own making: (1) leaf purity, the share of each item's 10 nearest
neighbours (cosine) that share its leaf category, averaged over items; (2) the overlap of the static
kind's 10 neighbours with the transformer's. Writes ``<out>/text-encoder-<dataset>.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def neighbours(emb: np.ndarray, k: int = 10, chunk: int = 2048) -> np.ndarray:
    """``(n, k)`` indices of each row's k nearest other rows by inner product (rows are unit vectors)."""
    out = np.empty((len(emb), k), dtype=np.int64)
    for lo in range(0, len(emb), chunk):
        sims = emb[lo : lo + chunk] @ emb.T
        sims[np.arange(len(sims)), np.arange(lo, lo + len(sims))] = -np.inf
        part = np.argpartition(-sims, k, axis=1)[:, :k]
        order = np.argsort(-np.take_along_axis(sims, part, 1), axis=1)
        out[lo : lo + chunk] = np.take_along_axis(part, order, 1)
    return out


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="amazon-beauty")
    parser.add_argument("--items", type=int, default=12_101)
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "scale"))
    args = parser.parse_args(argv)

    from semid_pipeline.core.data.registry import load_raw
    from semid_pipeline.core.enrich.tags import tagging_texts
    from semid_pipeline.core.enrich.text_encoder import TextEncoder, TextEncoderParams
    from semid_pipeline.core.device import configure_threads
    from semid_pipeline.paths import default_shared_dir

    configure_threads(int(os.environ.get("SEMID_NUM_THREADS", "1")))
    items = load_raw(args.dataset, os.environ.get("SEMID_SHARED_DIR", default_shared_dir())).items.head(args.items).reset_index(drop=True)
    texts = tagging_texts(items)
    paths = items["category_path"] if "category_path" in items.columns else items["categories"]
    leaf = np.array([str(p[-1]) if p is not None and len(p) else "" for p in paths], dtype=object)
    result: dict = {"dataset": args.dataset, "texts": len(texts), "distinct_texts": len(set(texts)),
                    "mean_chars": round(float(np.mean([len(t) for t in texts])), 1),
                    "threads": os.environ.get("SEMID_NUM_THREADS"), "affinity": sorted(os.sched_getaffinity(0)),
                    "load_at_start": os.getloadavg(), "kinds": {}}
    embs = {}
    with tempfile.TemporaryDirectory() as cache:
        for kind in ("transformer", "static"):
            encoder = TextEncoder(TextEncoderParams(device="cpu", kind=kind, static_cache_dir=cache))
            t0 = time.perf_counter()
            encoder.encode(["warm-up"])  # model load (and the static table's distillation) timed apart
            setup = time.perf_counter() - t0
            t0 = time.perf_counter()
            embs[kind] = encoder.encode(texts)
            seconds = time.perf_counter() - t0
            nn = neighbours(embs[kind])
            purity = float(np.mean([(leaf[row] == leaf[i]).mean() for i, row in enumerate(nn) if leaf[i]]))
            result["kinds"][kind] = {"setup_seconds": round(setup, 2), "seconds": round(seconds, 2), "texts_per_s": round(len(texts) / seconds, 1),
                                     "leaf_purity_at_10": round(purity, 4), "peak_rss_mb_so_far": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024,
                                     "stats": encoder.last_stats}
            result["kinds"][kind]["_nn"] = nn
            print(kind, {k: v for k, v in result["kinds"][kind].items() if k not in ("_nn", "stats")}, flush=True)
    a, b = result["kinds"]["transformer"].pop("_nn"), result["kinds"]["static"].pop("_nn")
    result["neighbour_overlap_at_10"] = round(float(np.mean([len(set(x) & set(y)) / 10 for x, y in zip(a, b)])), 4)
    result["speedup"] = round(result["kinds"]["static"]["texts_per_s"] / result["kinds"]["transformer"]["texts_per_s"], 1)
    result["load_at_end"] = os.getloadavg()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"text-encoder-{args.dataset}.json").write_text(json.dumps(result, indent=2, default=str) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "kinds"}, default=str))
    return result


if __name__ == "__main__":
    main()
