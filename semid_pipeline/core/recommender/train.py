"""Training loop and batched inference for the generative recommender.

Optimiser: AdamW (no weight decay on biases / layer norms). Learning-rate schedule: linear warmup
over ``warmup_steps`` to ``lr``, then inverse square-root decay ``lr * sqrt(warmup_steps / step)``
(TIGER's schedule shape; TIGER itself used a constant 0.01 for 10k steps, then inverse-sqrt, with
Adafactor). Model selection: after every ``eval_every_epochs`` epochs the model recommends for the
validation users (train items -> valid item, constrained beam search) and the checkpoint with the
best validation Recall@10 (ties: NDCG@10) is returned; training stops after ``patience``
evaluations without improvement, after ``epochs``, or when ``max_train_minutes`` is spent. Test
data are never touched here.

Several processes / GPUs: ``world_size > 1`` (or a torchrun environment) runs the same trainer on
every rank through ``core.training.launch`` / ``fit`` (DDP; per-rank batch = ``batch_size``, same
``lr``; a step's ranks are weighted by their labelled tokens, so it equals the one-process step on
the union of their batches).

A *sample* in ``samples_per_s`` is one next-item target (= one per-prefix example), so the number
is comparable between the ``per_user`` and ``per_prefix`` formulations.
"""

from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from semid_pipeline.core.progress import ProgressFn
from semid_pipeline.core.recommender.beam import recommend
from semid_pipeline.core.recommender.hierarchy import HierarchyInputs
from semid_pipeline.core.recommender.model import RecommenderParams
from semid_pipeline.core.recommender.prepare import (
    EVAL_K,
    SELECT_ON,
    TrainParams,
    TrainResult,
    build_model,
    prepare_training_data,
    validate,
)
from semid_pipeline.core.training import fit, launch, needs_launch, start_run

# the recommender's public training API (each name has its home in the module imported from)
__all__ = ["EVAL_K", "TrainParams", "TrainResult", "build_model", "recommend", "train_recommender"]


def train_recommender(
    sids: np.ndarray,
    train_histories: Sequence[np.ndarray],
    valid_targets: np.ndarray,
    valid_histories: Sequence[np.ndarray],
    user_ids: np.ndarray,
    model_params: RecommenderParams,
    train_params: TrainParams,
    progress: Optional[ProgressFn] = None,
    hierarchy: Optional[HierarchyInputs] = None,
) -> TrainResult:
    """Trains a :class:`GenerativeRecommender` and returns the best checkpoint on validation.

    Args:
        sids: int ``[N, D]`` unique SID of every item (row = item index).
        train_histories: per user, the chronological training items (targets ``1 .. n-1`` are trained).
        valid_targets: int ``[U]`` validation item of every user.
        valid_histories: per user, the history to recommend from for validation (normally the
            same ``train_items``).
        user_ids: int ``[U]`` user indices (same order as the histories).
        model_params, train_params: architecture and optimisation settings.
        progress: optional one-line progress callback (throttled to every ~10 s).
        hierarchy: the ``(level, code) -> tag`` map and a sentence encoder; required when
            ``model_params.embedding == 'hierarchy'``; with the standard embedding only the map is
            kept (saved with the model, for explanations).
    """
    tp, mp = train_params, model_params
    if mp.embedding == "hierarchy" and hierarchy is None:
        raise ValueError("embedding='hierarchy' needs hierarchy=HierarchyInputs(level_tags, encode) (item tags)")
    if tp.mode == "per_user" and mp.encoder_mask == "bidirectional":
        raise ValueError("per_user training needs encoder_mask='causal_items'; use mode='per_prefix' for a bidirectional encoder")
    n_users = len(train_histories)
    if not (len(valid_targets) == len(valid_histories) == len(user_ids) == n_users):
        raise ValueError("train_histories, valid_targets, valid_histories and user_ids must have one entry per user")
    if needs_launch(tp):  # the ranks rebuild the model themselves: hand them the encoded tags, not the encoder
        portable = None if hierarchy is None else HierarchyInputs(hierarchy.level_tags, EncodedTexts.of(hierarchy))
        args = (sids, list(train_histories), valid_targets, list(valid_histories), user_ids, mp, tp)
        return launch(train_recommender, tp, *args, progress=progress, hierarchy=portable)
    device = start_run(tp)
    data = prepare_training_data(sids, train_histories, valid_targets, valid_histories, user_ids, mp, tp, device)
    rows, sampler = data.rows, data.sampler
    model = build_model(mp, data.vocab, hierarchy).to(device)
    if progress is not None:
        progress(
            f"recommender: {sum(p.numel() for p in model.parameters()):,} parameters, {rows.n_rows:,} {tp.mode} rows, "
            f"{int(rows.n_targets.sum()):,} targets, {len(sampler)} batches/epoch on {device}"
        )

    def step(idx: np.ndarray) -> Tuple[torch.Tensor, int, int]:  # the loss is the mean over labelled tokens
        loss = model.loss(rows.batch(idx).to(device), tp.label_smoothing)
        return loss, int(rows.n_targets[idx].sum()), int(rows.dec_lengths[idx].sum())

    result = fit(
        model,
        sampler.epoch,
        step,
        tp,
        validate=lambda m: dict(zip(SELECT_ON, validate(m, data, tp, progress))),
        select_on=SELECT_ON,
        steps_per_epoch=len(sampler),
        progress=progress,
        name="recommender",
    )
    return TrainResult(model=result.model, history=result.history, best_epoch=result.best_epoch)


class EncodedTexts:
    """A picklable stand-in for a sentence encoder over a fixed set of texts (the hierarchy's tags),
    encoded once in the launching process so the data-parallel ranks need no encoder."""

    def __init__(self, texts: List[str], vectors: np.ndarray):
        self.row: Dict[str, int] = {t: i for i, t in enumerate(texts)}
        self.vectors = np.asarray(vectors, dtype=np.float32)

    @classmethod
    def of(cls, hierarchy: HierarchyInputs) -> "EncodedTexts":
        texts = sorted({t for level in hierarchy.level_tags.texts for t in level if t is not None} | {"tag"})
        return cls(texts, hierarchy.encode(texts))

    def __call__(self, texts: List[str]) -> np.ndarray:
        return self.vectors[[self.row[t] for t in texts]]
