"""Shared fixtures: a tiny demo, a temp data dir, and small model configs for fast in-process runs."""

import json
import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

TINY_DEMO = {"n_items": 240, "n_users": 300, "seed": 7}

# Small models so the whole graph materializes in well under a minute on 2 cores.
TINY_RUN_CONFIG = {
    "ops": {
        "sid_tokenizer": {"config": {"hidden_dims": [128, 64], "latent_dim": 16, "codebook_size": 16, "epochs": 30, "batch_size": 128}},
        "generative_recommender": {
            "config": {
                "d_model": 32, "n_encoder_layers": 1, "n_decoder_layers": 1, "n_heads": 2, "d_head": 16, "d_ff": 64,
                "n_user_buckets": 16, "epochs": 4, "warmup_steps": 5, "batch_size": 64, "eval_beam_size": 10, "patience": 4,
            }
        },
        "generative_recommendations": {"config": {"beam_size": 10, "top_k": 10, "batch_size": 128}},
        "sasrec_model": {"config": {"hidden": 16, "n_layers": 1, "epochs": 3, "max_len": 20, "batch_size": 64}},
        "generative_retriever": {
            "config": {
                "d_model": 32, "n_encoder_layers": 1, "n_decoder_layers": 1, "n_heads": 2, "d_head": 16, "d_ff": 64,
                "epochs": 2, "warmup_steps": 5, "batch_size": 256, "eval_beam_size": 10, "beam_size": 100, "top_k": 100,
            }
        },
    }
}


def shared_dir() -> Path:
    return Path(os.environ.get("SEMID_SHARED_DIR", Path(__file__).resolve().parents[2] / "shared"))


def beauty_dir() -> Path:
    return shared_dir() / "datasets" / "amazon-beauty"


def require_beauty() -> Path:
    path = beauty_dir()
    if not (path / "user_sequence.txt").exists():
        pytest.skip(f"Amazon Beauty benchmark not found at {path} (set SEMID_SHARED_DIR to the folder holding datasets/)")
    return path


def tiny_resources(data_dir: Path, dataset_options: dict | None = None) -> dict:
    from semid_pipeline.definitions import build_resources

    options = {"demo": TINY_DEMO, **(dataset_options or {})}
    return build_resources(data_dir=str(data_dir), datasets_options_json=json.dumps(options))


def write_untrained_sasrec(data_dir, dataset: str, n_items: int) -> None:
    """A ``sasrec_model`` artifact for tests that write the recommender's inputs by hand: a tiny, untrained
    SASRec over ``n_items`` (``generative_recommender`` reads it; only ``distill_weight > 0`` uses it)."""
    import torch

    from semid_pipeline.core import storage
    from semid_pipeline.core.artifacts import save_artifact
    from semid_pipeline.core.baselines.sasrec import SASRec, SASRecParams

    torch.manual_seed(0)
    save_artifact(SASRec(n_items, SASRecParams(hidden=8, n_layers=1)), storage.model_dir(data_dir, "sasrec_model", dataset))


def write_collaborative_placeholder(data_dir, dataset: str, items) -> None:
    """An ``item_collaborative_embeddings`` table for tests that write the tokenizer's inputs by hand: zero
    vectors, no occurrences (a text-only tokenizer, ``collaborative_dims: 0``, reads but ignores it)."""
    import numpy as np

    from semid_pipeline.core import storage

    frame = items[["item_idx", "item_id"]].copy()
    frame["embedding"] = [np.zeros(4, np.float32)] * len(frame)
    frame["n_occurrences"] = 0
    storage.write_table(data_dir, "item_collaborative_embeddings", dataset, frame)
