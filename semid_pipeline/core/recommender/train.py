"""Training loop and batched inference for the generative recommender.

Optimiser: AdamW (no weight decay on biases / layer norms). Learning-rate schedule: linear warmup
over ``warmup_steps`` to ``lr``, then inverse square-root decay ``lr * sqrt(warmup_steps / step)``
(TIGER's schedule shape; TIGER itself used a constant 0.01 for 10k steps, then inverse-sqrt, with
Adafactor). Model selection: after every ``eval_every_epochs`` epochs the model recommends for the
validation users (train items -> valid item, constrained beam search) and the checkpoint with the
best validation Recall@10 (ties: NDCG@10) is returned; training stops after ``patience``
evaluations without improvement, after ``epochs``, or when ``max_train_minutes`` is spent. Test
data are never touched here.

Several processes / GPUs: ``world_size > 1`` (or a torchrun environment) hands the run to the
data-parallel trainer in ``distributed.py`` (DDP; per-rank batch = ``batch_size``, same ``lr``); with
``world_size = 1`` the single-process loop below runs unchanged.

A *sample* in ``samples_per_s`` is one next-item target (= one per-prefix example), so the number
is comparable between the ``per_user`` and ``per_prefix`` formulations.
"""


import contextlib
import math
import time
from dataclasses import dataclass
from typing import Any, Dict, List, Literal, Optional, Sequence, Tuple

import numpy as np
import torch
from pydantic import Field

from semid_pipeline.core.params import StrictParams
from semid_pipeline.core.training import BestCheckpoint, epoch_message, optimizer_step
from semid_pipeline.core.device import autocast_dtype, configure_threads, resolve_device, seed_everything
from semid_pipeline.core.metrics import ndcg_at_k, recall_at_k
from semid_pipeline.core.progress import ProgressFn, Throttle
from semid_pipeline.core.recommender.beam import constrained_beam_search
from semid_pipeline.core.recommender.data import (
    LengthBucketSampler,
    PackedRows,
    build_inference_rows,
    build_training_rows,
    sorted_batches,
)
from semid_pipeline.core.recommender.hierarchy import HierarchyInputs, tag_embedding_table
from semid_pipeline.core.recommender.model import GenerativeRecommender, RecommenderParams
from semid_pipeline.core.recommender.trie import SIDTrie
from semid_pipeline.core.recommender.vocab import SIDVocab

EVAL_K = 10


class TrainParams(StrictParams):
    """Optimisation and model-selection settings of the generative recommender."""

    mode: Literal["per_user", "per_prefix"] = Field(
        "per_user",
        description="per_user: one pass per user trains all its next-item targets (needs encoder_mask=causal_items); "
        "per_prefix: one example per target (classic TIGER; required for the bidirectional encoder).",
    )
    epochs: int = Field(200, ge=1, description="Maximum passes over the training users.")
    batch_size: int = Field(256, ge=1, description="Rows per batch: users (per_user) or (user, target) examples (per_prefix).")
    lr: float = Field(1e-3, gt=0, description="Peak AdamW learning rate, reached after warmup.")
    warmup_steps: int = Field(1000, ge=0, description="Linear warmup steps; inverse-sqrt decay afterwards.")
    weight_decay: float = Field(0.01, ge=0, description="AdamW weight decay on weight matrices and embeddings.")
    label_smoothing: float = Field(0.0, ge=0, lt=1, description="Label smoothing of the token cross-entropy.")
    grad_clip: float = Field(1.0, ge=0, description="Max global gradient norm (0 disables clipping).")
    eval_every_epochs: int = Field(1, ge=1, description="Validate every this many epochs.")
    patience: int = Field(10, ge=1, description="Stop after this many validations without a better Recall@10.")
    eval_beam_size: int = Field(20, ge=10, description="Beam size of the validation beam search (>= 10, the evaluated list length).")
    eval_batch_size: int = Field(512, ge=1, description="Users per validation beam-search batch.")
    eval_max_users: Optional[int] = Field(
        None, ge=1, description="Validate on a fixed seeded sample of this many users (None: all users); speeds up CPU runs."
    )
    mixed_precision: Literal["auto", "bf16", "off"] = Field(
        "auto", description="auto: bf16 autocast on CUDA, float32 on CPU; bf16: also on CPU (fast with AMX); off: float32."
    )
    max_train_minutes: Optional[float] = Field(None, gt=0, description="Wall-clock budget; training stops (after a final validation) when spent.")
    seed: int = Field(0, description="Seeds initialisation, dropout and batch order.")
    device: str = Field("auto", description="auto, cpu, cuda or cuda:N.")
    num_threads: Optional[int] = Field(None, ge=1, description="torch intra-op threads (None: SEMID_NUM_THREADS or all cores).")
    world_size: int = Field(
        1,
        ge=1,
        description="Data-parallel processes (torch.distributed DDP, core/recommender/distributed.py); 1: one process. "
        "Each rank trains batch_size rows per step (global batch = world_size * batch_size, lr unchanged); on CUDA "
        "rank r uses cuda:r (device 'auto' or 'cuda'). Under torchrun (RANK/WORLD_SIZE set) leave 1 or give WORLD_SIZE.",
    )
    dist_backend: Literal["auto", "nccl", "gloo"] = Field(
        "auto", description="torch.distributed backend when world_size > 1: auto = nccl on CUDA, gloo on CPU."
    )
    dist_timeout_minutes: float = Field(
        30.0, gt=0, description="Collective timeout of the data-parallel ranks (they wait for rank 0's validation)."
    )


@dataclass
class TrainResult:
    """``model``: best checkpoint by validation Recall@10 (eval mode, on the training device).
    ``history``: one dict per epoch: ``epoch, loss, samples_per_s, seconds, lr``, plus
    ``valid_recall@10`` / ``valid_ndcg@10`` on epochs that ran a validation (absent otherwise).
    ``best_epoch``: the epoch of the returned checkpoint."""

    model: GenerativeRecommender
    history: List[Dict[str, Any]]
    best_epoch: int


def _inverse_sqrt(warmup_steps: int):
    warmup = max(1, warmup_steps)
    return lambda step: min((step + 1) / warmup, math.sqrt(warmup / (step + 1)))


def _optimizer(model: torch.nn.Module, lr: float, weight_decay: float) -> torch.optim.AdamW:
    decay = [p for p in model.parameters() if p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.ndim < 2]
    return torch.optim.AdamW(
        [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}], lr=lr
    )


def _autocast(device: torch.device, mixed_precision: bool):
    dtype = autocast_dtype(device, mixed_precision)
    return torch.autocast(device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()


@torch.no_grad()
def recommend(
    model: GenerativeRecommender,
    trie: SIDTrie,
    histories: Sequence[np.ndarray],
    user_ids: np.ndarray,
    beam_size: int = 20,
    top_k: int = 10,
    batch_size: int = 512,
    progress: Optional[ProgressFn] = None,
) -> Tuple[np.ndarray, np.ndarray]:
    """Top-``top_k`` items for every user by trie-constrained beam search.

    Args:
        model: trained recommender (switched to eval mode here); runs on its current device.
        trie: catalogue trie (``SIDTrie.from_sids(sids, model.vocab.level_sizes)``), any device;
            its SIDs also give the history items' tokens.
        histories: per user, the chronological item indices the model may see (``train_items``
            for validation, ``train_items + [valid_item]`` for test); the last
            ``max_history_items`` are used.
        user_ids: int ``[U]`` user indices (hashed into user tokens).
        beam_size, top_k, batch_size: beams per user, items returned, users per batch.
        progress: optional one-line progress callback (throttled to every ~10 s).

    Returns:
        ``(items int64 [U, top_k], scores float32 [U, top_k])`` in input order; ``-1`` / ``-inf``
        pad lists when the catalogue has fewer than ``top_k`` items.
    """
    model.eval()
    device = model.device
    trie = trie.to(device)
    vocab = model.vocab
    rows = build_inference_rows(
        histories, vocab.user_tokens(user_ids), vocab.item_tokens(trie.sids), model.params.max_history_items
    )
    items = np.full((rows.n_rows, top_k), -1, dtype=np.int64)
    scores = np.full((rows.n_rows, top_k), -np.inf, dtype=np.float32)
    report = Throttle(progress)
    done = 0
    for idx in sorted_batches(rows.enc_lengths, batch_size):
        top_items, top_scores = constrained_beam_search(model, rows.batch(idx).to(device), trie, beam_size, top_k)
        items[idx] = top_items.cpu().numpy()
        scores[idx] = top_scores.cpu().numpy()
        done += len(idx)
        report(f"recommend: {done:,}/{rows.n_rows:,} users")
    return items, scores


def build_model(mp: RecommenderParams, vocab: SIDVocab, hierarchy: Optional[HierarchyInputs] = None) -> GenerativeRecommender:
    """A freshly initialised recommender; the hierarchy embedding's tag table is encoded here."""
    if hierarchy is None:
        return GenerativeRecommender(mp, vocab)
    if hierarchy.level_tags.n_levels != vocab.n_levels or any(
        len(t) != k for t, k in zip(hierarchy.level_tags.texts, vocab.level_sizes)
    ):
        raise ValueError("hierarchy.level_tags does not match the SID vocabulary's level sizes")
    if mp.embedding != "hierarchy":
        return GenerativeRecommender(mp, vocab, level_tags=hierarchy.level_tags)
    table, has_tag = tag_embedding_table(hierarchy.level_tags, vocab.level_offsets, vocab.vocab_size, hierarchy.encode)
    return GenerativeRecommender(mp, vocab, torch.from_numpy(table), torch.from_numpy(has_tag), hierarchy.level_tags)


@dataclass
class TrainingData:
    """What the training loop derives from its inputs; shared by the single-process trainer and the
    data-parallel ranks (``distributed.py``), so both see the same rows, batches and validation users."""

    vocab: SIDVocab
    trie: SIDTrie  # on the training device
    user_ids: np.ndarray
    rows: PackedRows
    sampler: LengthBucketSampler
    eval_users: np.ndarray
    eval_histories: List[np.ndarray]
    eval_targets: np.ndarray


def prepare_training_data(
    sids: np.ndarray,
    train_histories: Sequence[np.ndarray],
    valid_targets: np.ndarray,
    valid_histories: Sequence[np.ndarray],
    user_ids: np.ndarray,
    mp: RecommenderParams,
    tp: TrainParams,
    device: torch.device,
) -> TrainingData:
    """Vocabulary, trie, packed training rows, the seeded batch sampler and the validation users."""
    n_users = len(train_histories)
    vocab = SIDVocab.from_sids(sids, mp.n_user_buckets)
    item_tokens = vocab.item_tokens(sids)
    trie = SIDTrie.from_sids(sids, vocab.level_sizes).to(device)
    user_ids = np.asarray(user_ids, dtype=np.int64)
    rows = build_training_rows(
        train_histories,
        vocab.user_tokens(user_ids),
        item_tokens,
        mp.max_history_items,
        targets_per_row=mp.max_history_items if tp.mode == "per_user" else 1,
    )
    if rows.n_rows == 0:
        raise ValueError("no training targets: every user has fewer than two training items")
    sampler = LengthBucketSampler(rows.lengths, tp.batch_size, seed=tp.seed)

    eval_users = np.arange(n_users)
    if tp.eval_max_users is not None and tp.eval_max_users < n_users:
        eval_users = np.sort(np.random.default_rng(tp.seed).choice(n_users, tp.eval_max_users, replace=False))
    eval_histories = [valid_histories[u] for u in eval_users]
    eval_targets = np.asarray(valid_targets, dtype=np.int64)[eval_users]
    return TrainingData(vocab, trie, user_ids, rows, sampler, eval_users, eval_histories, eval_targets)


def validate(model: GenerativeRecommender, data: TrainingData, tp: TrainParams, progress: Optional[ProgressFn]) -> Tuple[float, float]:
    """Validation ``(Recall@10, NDCG@10)`` of ``model`` on ``data``'s validation users (constrained beam search)."""
    ranked, _ = recommend(
        model, data.trie, data.eval_histories, data.user_ids[data.eval_users], tp.eval_beam_size, EVAL_K, tp.eval_batch_size, progress
    )
    return float(recall_at_k(ranked, data.eval_targets, EVAL_K).mean()), float(ndcg_at_k(ranked, data.eval_targets, EVAL_K).mean())


def epoch_record(epoch: int, mean_loss: float, n_samples: int, train_seconds: float, lr: float) -> Dict[str, Any]:
    """One epoch's history entry (validation metrics and ``seconds`` are added by the caller); raises on a non-finite loss."""
    if not math.isfinite(mean_loss):
        raise FloatingPointError(f"epoch {epoch}: training loss is {mean_loss}; lower lr or enable grad_clip")
    return {"epoch": epoch, "loss": mean_loss, "samples_per_s": n_samples / max(train_seconds, 1e-9), "lr": lr}


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
    from semid_pipeline.core.recommender import distributed  # imports this module: no top-level cycle

    if distributed.is_requested(tp):
        return distributed.train_data_parallel(
            sids, train_histories, valid_targets, valid_histories, user_ids, mp, tp, progress, hierarchy
        )
    configure_threads(tp.num_threads)
    seed_everything(tp.seed)
    device = resolve_device(tp.device)
    report = Throttle(progress)
    started = time.monotonic()
    deadline = started + tp.max_train_minutes * 60 if tp.max_train_minutes is not None else math.inf

    data = prepare_training_data(sids, train_histories, valid_targets, valid_histories, user_ids, mp, tp, device)
    vocab, rows, sampler = data.vocab, data.rows, data.sampler

    model = build_model(mp, vocab, hierarchy).to(device)
    optimizer = _optimizer(model, tp.lr, tp.weight_decay)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, _inverse_sqrt(tp.warmup_steps))
    report(
        f"recommender: {sum(p.numel() for p in model.parameters()):,} parameters, {rows.n_rows:,} {tp.mode} rows, "
        f"{int(rows.n_targets.sum()):,} targets, {len(sampler)} batches/epoch on {device}",
        force=True,
    )

    history: List[Dict[str, Any]] = []
    checkpoint = BestCheckpoint(tp.patience)
    next_report = time.monotonic() + report.every_s
    for epoch in range(1, tp.epochs + 1):
        model.train()
        epoch_start = time.monotonic()
        loss_sum = torch.zeros((), device=device)
        n_batches = n_samples = 0
        out_of_time = False
        for idx in sampler.epoch(epoch):
            batch = rows.batch(idx).to(device)
            with _autocast(device, tp.mixed_precision):
                loss = model.loss(batch, tp.label_smoothing)
            optimizer_step(loss, optimizer, model.parameters(), tp.grad_clip, schedule)
            loss_sum += loss.detach()
            n_batches += 1
            n_samples += int(rows.n_targets[idx].sum())
            now = time.monotonic()
            if now >= next_report:  # the .item() sync only happens when a line is due
                next_report = now + report.every_s
                report(f"epoch {epoch} batch {n_batches}/{len(sampler)} loss {loss_sum.item() / n_batches:.4f}")
            if now > deadline:
                out_of_time = True
                break
        record = epoch_record(epoch, loss_sum.item() / max(n_batches, 1), n_samples, time.monotonic() - epoch_start, schedule.get_last_lr()[0])
        stop = out_of_time or epoch == tp.epochs
        if epoch % tp.eval_every_epochs == 0 or stop:
            recall, ndcg = validate(model, data, tp, progress)
            record.update({"valid_recall@10": recall, "valid_ndcg@10": ndcg})
            stop = checkpoint.update(model, (recall, ndcg), epoch) or stop
        record["seconds"] = time.monotonic() - epoch_start
        history.append(record)
        report(epoch_message("", epoch, record, checkpoint.best_epoch), force=True)
        if stop:
            break

    checkpoint.restore(model)
    report(f"recommender: done in {time.monotonic() - started:.0f} s, best epoch {checkpoint.best_epoch} recall@10 {checkpoint.best[0]:.4f}", force=True)
    return TrainResult(model=model, history=history, best_epoch=checkpoint.best_epoch)
