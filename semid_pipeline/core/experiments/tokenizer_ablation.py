"""Tokenizer ablation: train the recommender on each tokenizer variant and tabulate the result.

One row per variant, in the shape of HiD-VAE Tables 2 and 3: collision rate before/after
resolution, held-out tag accuracy per level, reconstruction error, and the recommender's
Recall/NDCG@10 on the test split (leave-one-out; the checkpoint is selected on validation by
:func:`~semid_pipeline.core.recommender.train.train_recommender`). Every variant uses the same
recommender architecture, optimisation budget and seeds; only the SIDs differ.
"""

from __future__ import annotations

import time
from typing import Any, Callable, Dict, List, Optional, Sequence

import numpy as np
import pandas as pd
from pydantic import Field

from semid_pipeline.core.frames import split_inputs
from semid_pipeline.core.metrics import evaluate_topk
from semid_pipeline.core.params import StrictParams, check_limit
from semid_pipeline.core.progress import ProgressFn
from semid_pipeline.core.recommendations import check_top_k
from semid_pipeline.core.recommender.model import RecommenderParams
from semid_pipeline.core.recommender.train import TrainParams, recommend, train_recommender
from semid_pipeline.core.recommender.trie import SIDTrie
from semid_pipeline.core.tokenizers.base import CODEBOOK_LIMIT, TokenizerParams, train_tokenizer
from semid_pipeline.core.tokenizers.collisions import collision_rate, resolve_collisions
from semid_pipeline.core.tokenizers.quality import tokenizer_quality
from semid_pipeline.core.tokenizers.variants import VARIANTS


class AblationParams(StrictParams):
    """Which variants, and the shared settings every variant gets."""

    variants: List[str] = Field(default=list(VARIANTS), description=f"Variant names from core/tokenizers/variants.py: {list(VARIANTS)}.")
    collision_strategy: str = Field(default="append_token", description="append_token (HiD-VAE's ablation protocol, TIGER's token) or sinkhorn.")
    beam_size: int = Field(default=20, ge=10, description="Beam size of the test-time constrained beam search.")
    top_k: int = Field(default=10, ge=1, description="Recommendation list length (metrics @5 and @10).")
    seed: int = Field(default=0, description="Seed of tokenizer, SID resolution and recommender.")


def run_tokenizer_ablation(
    embeddings: np.ndarray,
    tag_paths: Sequence[Any],
    user_sequences: pd.DataFrame,
    params: AblationParams,
    tokenizer_params: TokenizerParams,
    model_params: RecommenderParams,
    train_params: TrainParams,
    embed_texts: Optional[Callable[[List[str]], np.ndarray]] = None,
    progress: Optional[ProgressFn] = None,
) -> pd.DataFrame:
    """Returns one row per variant (columns in the module docstring, plus timings).

    ``tokenizer_params`` is the base every variant's overrides (``VARIANTS[name]``) apply to;
    ``embeddings`` and ``tag_paths`` are in ``item_idx`` order, matching ``user_sequences``.
    """
    unknown = [v for v in params.variants if v not in VARIANTS]
    if unknown:
        raise ValueError(f"unknown tokenizer variants {unknown}; known: {list(VARIANTS)}")
    check_top_k(params.top_k, len(embeddings), beam_size=params.beam_size)  # before any variant trains
    check_limit("codebook_size", tokenizer_params.codebook_size, high=len(embeddings), high_reason=CODEBOOK_LIMIT)
    say = progress or (lambda _m: None)
    valid_hist, valid_target = split_inputs(user_sequences, "valid")
    test_hist, test_target = split_inputs(user_sequences, "test")
    user_idx = user_sequences["user_idx"].to_numpy(np.int64)
    item_ids = [str(i) for i in range(len(embeddings))]
    rows: List[Dict[str, Any]] = []
    for name in params.variants:
        tp = TokenizerParams(**{**tokenizer_params.model_dump(), **VARIANTS[name], "seed": params.seed})
        t0 = time.monotonic()
        res = train_tokenizer(embeddings, tp, tag_paths, embed_texts)
        tok_s = time.monotonic() - t0
        q = tokenizer_quality(res.tokenizer, embeddings, res.vocab, res.heldout, item_ids, strategy=params.collision_strategy, seed=params.seed, n_samples=0, n_projection=2)
        enc = res.tokenizer.encode_full(embeddings)
        sids, _ = resolve_collisions(enc.codes, enc.last_distances, strategy=params.collision_strategy, seed=params.seed)
        t1 = time.monotonic()
        trained = train_recommender(sids, valid_hist, valid_target, valid_hist, user_idx, model_params, train_params.model_copy(update={"seed": params.seed}))
        trie = SIDTrie.from_sids(sids)
        items, _ = recommend(trained.model, trie, test_hist, user_idx, params.beam_size, params.top_k)
        metrics = evaluate_topk(items, test_target, ks=(5, 10))
        rec_s = time.monotonic() - t1
        row: Dict[str, Any] = {
            "variant": name,
            "kind": tp.kind,
            "collision_rate_before": q.summary["collision_rate_before"],
            "collision_rate_after": collision_rate(sids),
            "sid_length": int(sids.shape[1]),
            "recon_error": q.summary["recon_error"],
        }
        accs = [q.summary.get(f"tag_accuracy_l{lv}", float("nan")) for lv in range(1, tp.tag_levels + 1)]
        row.update({f"tag_accuracy_l{lv}": a for lv, a in enumerate(accs, start=1)})
        row["tag_heads"] = q.summary["tag_heads"]
        row.update({k.replace("@", "_at_"): float(v) for k, v in metrics.items()})
        row.update({"tokenizer_seconds": tok_s, "recommender_seconds": rec_s, "recommender_epochs": len(trained.history)})
        rows.append(row)
        say(f"ablation {name}: collisions {row['collision_rate_before']:.2%}, " + ", ".join(f"{k} {v:.4f}" for k, v in metrics.items()))
    return pd.DataFrame(rows)
