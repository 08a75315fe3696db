"""SASRec-CE on Amazon Beauty 5-core: leave-one-out, full ranking over the catalogue.

Validation: history = ``train_items``, target = ``valid_item`` (selects the checkpoint).
Test: history = ``train_items + [valid_item]``, target = ``test_item`` (reported once, for the
validation-selected checkpoint). Every ``SASRecParams`` field is a ``--flag``; unset flags keep
the defaults. Writes a JSON summary (metrics, params, minutes, per-epoch history, hardware).

    python benchmarks/sasrec_beauty.py --num_threads 2
    python benchmarks/sasrec_beauty.py --dropout 0.3 --out benchmarks/results/sasrec_beauty_d03.json
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import time
from pathlib import Path
from typing import get_args, get_origin

import numpy as np
import torch

from semid_pipeline.core.baselines.sasrec import SASRecParams, recommend_sasrec, train_sasrec
from semid_pipeline.core.data.amazon import AmazonParams, load_amazon
from semid_pipeline.core.data.preprocess import PreprocessParams, build_tables
from semid_pipeline.core.metrics import evaluate_topk

ROOT = Path(__file__).resolve().parents[1]


def _field_type(annotation):
    """argparse type of a simple pydantic field (Optional[X] -> X)."""
    if get_origin(annotation) is not None:
        args = [a for a in get_args(annotation) if a is not type(None)]
        annotation = args[0] if args and isinstance(args[0], type) else str
    return (lambda s: s.lower() in ("1", "true", "yes")) if annotation is bool else annotation


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    shared = Path(os.environ.get("SEMID_SHARED_DIR", ROOT.parent / "shared"))
    parser.add_argument("--root", default=str(shared / "datasets" / "amazon-beauty"), help="Beauty data folder (P5 format).")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "sasrec_beauty.json"), help="JSON result path.")
    for name, field in SASRecParams.model_fields.items():
        parser.add_argument(f"--{name}", type=_field_type(field.annotation), default=None, help=field.description)
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    params = SASRecParams(**{n: getattr(args, n) for n in SASRecParams.model_fields if getattr(args, n) is not None})

    raw = load_amazon(AmazonParams(format="p5", category="Beauty", root=args.root))
    prep = build_tables(raw, PreprocessParams())
    seqs = prep.user_sequences
    n_items = len(prep.items)
    train = [np.asarray(t, dtype=np.int64) for t in seqs["train_items"]]
    valid = seqs["valid_item"].to_numpy(np.int64)
    test = seqs["test_item"].to_numpy(np.int64)

    started = time.monotonic()
    result = train_sasrec(train, valid, n_items, params, progress=print)
    minutes = (time.monotonic() - started) / 60

    valid_items, _ = recommend_sasrec(result.model, train, top_k=10)
    test_items, _ = recommend_sasrec(result.model, [np.append(t, v) for t, v in zip(train, valid)], top_k=10)
    summary = {
        "dataset": {"name": "amazon-beauty (P5 5-core)", "users": len(train), "items": n_items},
        "valid": evaluate_topk(valid_items, valid),
        "test": evaluate_topk(test_items, test),
        "best_epoch": result.best_epoch,
        "epochs_run": len(result.history),
        "train_minutes": minutes,
        "params": params.model_dump(),
        "history": result.history,
        "hardware": {
            "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(),
            "python": platform.python_version(),
            "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(),
            "device": str(result.model.device),
        },
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(summary, indent=2))
    print(json.dumps({k: summary[k] for k in ("valid", "test", "best_epoch", "epochs_run", "train_minutes")}, indent=2))


if __name__ == "__main__":
    main()
