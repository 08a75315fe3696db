"""Training the parallel (RPG) recommender through the one training loop (``core.training.fit``).

Every user's ``train_items`` is one row: its last ``max_len + 1`` items, inputs ``seq[:-1]``, targets
``seq[1:]``, left-padded, so one forward pass trains every next-item target of the user (validation
and test items are never trained on). Batches are length-bucketed (:class:`LengthBucketSampler`,
seeded) and cut to their longest row (dynamic padding). The checkpoint is chosen on validation
(exact scoring of the whole catalogue, ``select_metric``), with the cosine learning rate decaying to
the end of training or to the ``max_train_minutes`` cap. ``world_size > 1`` trains data-parallel
(``core.training``: DDP ranks, each position weighted alike across the ranks' batches).
"""

from __future__ import annotations

from typing import Any, Dict, List, NamedTuple, Optional, Sequence, Tuple

import numpy as np
import torch

from semid_pipeline.core.metrics import ndcg_at_k, recall_at_k, sample_users
from semid_pipeline.core.progress import ProgressFn
from semid_pipeline.core.recommender.data import SCORE_BUDGET, LengthBucketSampler, ragged_arange
from semid_pipeline.core.recommender.parallel import PAD, ParallelParams, ParallelRecommender
from semid_pipeline.core.recommender.parallel_decode import recommend_exact
from semid_pipeline.core.training import fit, launch, needs_launch, start_run


class ParallelResult(NamedTuple):
    """``model``: best checkpoint by validation (eval mode); ``history``: one dict per epoch (``fit``'s);
    ``best_epoch``; ``seconds``: the whole training."""

    model: ParallelRecommender
    history: List[Dict[str, Any]]
    best_epoch: int
    seconds: float


def training_windows(histories: Sequence[np.ndarray], n_items: int, max_len: int) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(inputs [R, max_len], targets [R, max_len], n_targets [R])`` of the users with at least two
    training items: shifted items (``i + 1``, ``0`` = padding), left-padded, ``targets[:, t]`` follows
    ``inputs[:, t]``. Vectorised over the concatenated histories."""
    lengths = np.fromiter((len(h) for h in histories), dtype=np.int64, count=len(histories))
    flat = np.concatenate([np.asarray(h, dtype=np.int64).reshape(-1) for h in histories]) if lengths.sum() else np.zeros(0, np.int64)
    if flat.size and (flat.min() < 0 or flat.max() >= n_items):
        raise ValueError(f"history item indices must lie in [0, {n_items}), got [{flat.min()}, {flat.max()}]")
    keep = lengths >= 2
    if not keep.any():
        raise ValueError("no training targets: every user has fewer than two training items")
    ends = np.cumsum(lengths)[keep]
    width = max_len + 1
    take = np.minimum(lengths[keep], width)
    col = np.arange(width, dtype=np.int64)
    valid = col[None, :] >= (width - take)[:, None]
    src = np.where(valid, ends[:, None] - width + col[None, :], 0)
    window = np.where(valid, flat[src] + 1, PAD)
    return np.ascontiguousarray(window[:, :-1]), np.ascontiguousarray(window[:, 1:]), take - 1


@torch.no_grad()
def teacher_top_items(teacher: Any, inputs: np.ndarray, top_k: int, temperature: float = 1.0, batch_size: int = 256) -> Tuple[np.ndarray, np.ndarray]:
    """A next-item teacher's top items at every real position of the training windows.

    ``teacher``: a trained next-item model over the same catalogue with ``teacher(items [B, L]) ->
    hidden [B, L, h]`` and ``teacher.item_scores(hidden) -> [..., N]`` (e.g. SASRec-CE), reading the
    same shifted, left-padded windows. Returns ``(items int32 [P, M], probs float16 [P, M])`` for the
    ``P`` real positions of ``inputs`` in row-major order (``inputs[inputs != 0]``'s order): the
    ``M = top_k`` best items and their softmax probabilities (at ``temperature``) renormalised over
    those ``M``.

    Memory is bounded whatever the catalogue size: positions are scored in chunks of about
    ``SCORE_BUDGET`` scores (``SCORE_BUDGET // N`` positions at a time), as exact decoding does.
    """
    teacher.eval()
    parts_i, parts_p = [], []
    n_items = int(getattr(teacher, "n_items", 0)) or None
    for start in range(0, len(inputs), batch_size):
        x = torch.from_numpy(inputs[start : start + batch_size]).to(teacher.device)
        hidden = teacher(x)[x != PAD]
        step = max(1, SCORE_BUDGET // n_items if n_items else len(hidden))
        for lo in range(0, len(hidden), step):
            scores = teacher.item_scores(hidden[lo : lo + step]).float() / temperature
            top, idx = torch.topk(scores, min(top_k, scores.shape[1]), dim=1)
            parts_i.append(idx.to(torch.int32).cpu().numpy())
            parts_p.append(torch.softmax(top, dim=1).to(torch.float16).cpu().numpy())
    return np.concatenate(parts_i), np.concatenate(parts_p)


def position_index(n_targets: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Indices into the row-major list of real positions (see :func:`teacher_top_items`) of the rows
    ``rows``, in the order of ``inputs[rows][inputs[rows] != 0]`` (a row's real inputs are its last
    ``n_targets`` columns)."""
    offsets = np.cumsum(n_targets) - n_targets
    row, within = ragged_arange(n_targets[rows])
    return offsets[rows][row] + within


def train_parallel(
    sids: np.ndarray,
    train_histories: Sequence[np.ndarray],
    valid_targets: np.ndarray,
    params: ParallelParams,
    codebook_size: Optional[int] = None,
    progress: Optional[ProgressFn] = None,
    teacher: Any = None,
) -> ParallelResult:
    """Trains the parallel recommender on the SID matrix ``sids (N, D)`` of the catalogue.

    Args:
        sids: digit codes of every item (row = ``item_idx``), e.g. ``semantic_ids.sid``.
        train_histories: per user, the chronological training items; also the validation histories.
        valid_targets: int ``[U]`` validation item per user.
        params: model, loss and optimisation.
        codebook_size: codes per digit (default: the largest code + 1); give the tokenizer's so that
            items added later may use any code.
        progress: one-line progress callback.
        teacher: a trained next-item model over the same items (see :func:`teacher_top_items`; e.g.
            the run's SASRec-CE) whose per-digit distributions join the targets when
            ``params.distill_weight`` or ``params.distill_rank_weight > 0``.
    """
    sids = np.asarray(sids, dtype=np.int64)
    valid_targets = np.asarray(valid_targets, dtype=np.int64)
    if len(valid_targets) != len(train_histories):
        raise ValueError(f"need one validation target per user: {len(valid_targets)} targets, {len(train_histories)} histories")
    if needs_launch(params):  # data-parallel ranks (core.training's module docstring)
        args = (sids, list(train_histories), valid_targets, params, codebook_size)
        return launch(train_parallel, params, *args, progress=progress, teacher=teacher)
    k = int(codebook_size or int(sids.max()) + 1)
    device = start_run(params)
    inputs, targets, n_targets = training_windows(train_histories, len(sids), params.max_len)
    sampler = LengthBucketSampler(n_targets, params.batch_size, seed=params.seed)
    model = ParallelRecommender(torch.from_numpy(sids), k, params).to(device)
    if progress is not None:
        n_params = sum(p.numel() for p in model.parameters() if p.requires_grad)
        progress(
            f"parallel ({model.model_name}): {n_params:,} parameters, {sids.shape[1]} digits x {k} codes, {len(inputs):,} sequences, "
            f"{int(n_targets.sum()):,} targets, {len(sampler)} batches/epoch on {device}"
        )
    soft = None
    if params.uses_teacher:
        if teacher is None:
            raise ValueError("distill_weight / distill_rank_weight > 0 need a teacher model (e.g. the run's SASRec-CE)")
        if getattr(teacher, "n_items", len(sids)) != len(sids):
            raise ValueError(f"the teacher scores {teacher.n_items} items, the SID matrix has {len(sids)}")
        soft = teacher_top_items(teacher, inputs, params.distill_top_k, params.distill_temperature)
        if progress is not None:
            progress(f"parallel: teacher targets at {int(n_targets.sum()):,} positions (top {params.distill_top_k} items)")
    gen = torch.Generator(device="cpu").manual_seed(params.seed)
    eval_users = sample_users(len(train_histories), params.eval_max_users, params.seed)
    eval_hist = [train_histories[i] for i in eval_users.tolist()]

    def step(rows: np.ndarray):
        width = max(int(n_targets[rows].max()), 1)
        x = torch.from_numpy(inputs[rows, -width:]).to(device)
        y = torch.from_numpy(targets[rows, -width:]).to(device)
        t = None if soft is None else tuple(torch.from_numpy(a[position_index(n_targets, rows)]).to(device) for a in soft)
        return model.loss(x, y, generator=gen if device.type == "cpu" else None, teacher=t), int(n_targets[rows].sum())

    def validate(m: ParallelRecommender) -> Dict[str, float]:
        ranked, _ = recommend_exact(m, sids, eval_hist, 10, params.eval_batch_size)
        target = valid_targets[eval_users]
        return {"recall@10": float(recall_at_k(ranked, target, 10).mean()), "ndcg@10": float(ndcg_at_k(ranked, target, 10).mean())}

    other = "recall@10" if params.select_metric == "ndcg@10" else "ndcg@10"
    result = fit(
        model,
        sampler.epoch,
        step,
        params,
        validate=validate,
        select_on=(params.select_metric, other),
        steps_per_epoch=len(sampler),
        progress=progress,
        name=model.model_name,
    )
    return ParallelResult(result.model, result.history, result.best_epoch, result.seconds)
