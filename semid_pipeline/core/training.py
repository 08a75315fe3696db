"""The one training loop (``fit``) and its parts, shared by every trainer: ``OptimParams``, the optimiser,
learning-rate schedules, autocast, validation-based checkpoint selection, early stopping and data
parallelism (``torch.distributed``; see "Data parallelism" below).

Data parallelism
----------------
Every trainer gets it the same way, from ``OptimParams.world_size`` (or a torchrun environment):

* Launch. ``world_size = N > 1``: the trainer's first line hands its call to :func:`launch`, which
  starts ranks ``1 .. N-1`` as ``torch.multiprocessing`` spawn processes running the same trainer
  with the same arguments (``progress`` only on rank 0), and runs rank 0 itself in the calling
  process, so the caller gets rank 0's result as from a one-process run. The ranks meet through a
  ``FileStore`` in a fresh temporary directory (no port to pick). Under ``torchrun`` (``RANK`` /
  ``WORLD_SIZE`` / ``MASTER_ADDR`` / ``MASTER_PORT`` set) every process calls the trainer as usual
  and joins the group from the environment (``world_size`` stays 1 or equals ``WORLD_SIZE``); every
  rank returns the same result. :func:`start_run` joins the process group, picks the rank's device
  (``cuda:<local rank>`` on CUDA, NCCL; CPU with gloo) and its threads (``num_threads``, else
  ``SEMID_NUM_THREADS``, else ``cores // ranks on the node``).
* Batches. Every rank draws the trainer's seeded single-process batch order; step ``s`` trains
  batches ``s*N .. s*N+N-1``, rank ``r`` taking batch ``s*N + r``; in the epoch's last step a rank
  without a batch runs a filler batch with loss weight 0, so every row is trained once per epoch and
  collectives stay matched. ``batch_size`` is the per-rank batch (global batch ``N * batch_size``;
  ``lr`` and ``warmup_steps`` unchanged, the schedule counts the N-times fewer optimiser steps).
* Gradients. The model is wrapped in ``DistributedDataParallel`` (the trainer's ``step`` runs as the
  wrapper's forward), which averages gradients over the ranks. A ``step`` may return
  ``(loss, n_samples, loss_weight)``, ``loss_weight`` being what its mean runs over (labelled
  tokens, positions; default ``n_samples``): rank ``r`` backpropagates ``loss_r * N * w_r / W``
  (``W`` the step's total weight, one scalar all-reduce), so the averaged gradient is the gradient
  of the mean over the whole global batch: one data-parallel step equals a one-process step on the
  union of the ranks' batches. Clipping acts on the synced gradient.
* Validation, checkpoint and stopping. Rank 0 alone validates; the others wait in a broadcast of
  its metrics, feed them to their own :class:`BestCheckpoint` (their weights equal rank 0's), so
  every rank makes the same early-stopping decision and ends on the same checkpoint. The
  ``max_train_minutes`` deadline is rank 0's clock, broadcast every step when a budget is set.
  After every epoch the ranks compare checksums of their weights and raise if they diverged.
* Randomness. Initial weights are the one-process ones (``start_run`` seeds ``seed`` on every rank;
  DDP also broadcasts rank 0's); once training starts rank ``r`` reseeds with ``(seed, r)`` so
  dropout masks differ.
* Failure. A rank that raises ends its process; its error (traceback) is raised in the caller;
  peers blocked in a collective fail when its connection closes, at the latest after
  ``dist_timeout_minutes``. ``world_size = 1`` without torchrun runs none of this (bit-identical).
"""


import contextlib
import datetime
import itertools
import math
import os
import tempfile
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, Iterator, List, Literal, Mapping, Optional, Sequence, Tuple, TypeVar, Union

import numpy as np
import torch
import torch.distributed as dist
import torch.multiprocessing as torch_mp
from pydantic import Field, model_validator
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from semid_pipeline.core.device import autocast_dtype, configure_threads, resolve_device, seed_everything
from semid_pipeline.core.params import StrictParams
from semid_pipeline.core.progress import ProgressFn, Throttle


class BestCheckpoint:
    """Keeps a CPU copy of the weights with the best validation key (a tuple compared
    lexicographically, e.g. ``(recall@10, ndcg@10)``) and counts validations without improvement.
    """

    def __init__(self, patience: Optional[int]):
        self.patience = patience  # None: never stop early
        self.best: Tuple[float, ...] = (float("-inf"),)
        self.best_epoch = 0
        self.stale = 0
        self._state: Dict[str, torch.Tensor] = {}

    def update(self, model: nn.Module, key: Tuple[float, ...], epoch: int) -> bool:
        """Records a validation result; returns True when training should stop (patience spent)."""
        if key > self.best:
            self.best, self.best_epoch, self.stale = key, epoch, 0
            self._state = {name: t.detach().to("cpu", copy=True) for name, t in model.state_dict().items()}
            return False
        self.stale += 1
        return self.patience is not None and self.stale >= self.patience

    def restore(self, model: nn.Module) -> nn.Module:
        """Loads the best weights (no-op if no validation ever ran) and returns the model in eval mode."""
        if self._state:
            model.load_state_dict(self._state)
        return model.eval()


def optimizer_step(
    loss: torch.Tensor,
    optimizer: torch.optim.Optimizer,
    params: Iterable[torch.Tensor],
    grad_clip: float,
    schedule: Optional[Any] = None,
) -> None:
    """One update: clear the gradients, backpropagate ``loss``, clip the global gradient norm of
    ``params`` to ``grad_clip`` (0 disables), step the optimiser, then the lr ``schedule`` if any."""
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if grad_clip > 0:
        clip_gradients(params, grad_clip)
    optimizer.step()
    if schedule is not None:
        schedule.step()


def clip_gradients(params: Iterable[torch.Tensor], max_norm: float) -> torch.Tensor:
    """Clips the global gradient norm to ``max_norm`` (``clip_grad_norm_``), sparse gradients (row-sparse
    embedding tables) included: they are coalesced and their stored values count once."""
    params = [p for p in params if p.grad is not None]
    if not any(p.grad.is_sparse for p in params):
        return nn.utils.clip_grad_norm_(params, max_norm)
    squares = []
    for p in params:
        if p.grad.is_sparse:
            p.grad = p.grad.coalesce()
            squares.append(p.grad.values().float().pow(2).sum())
        else:
            squares.append(p.grad.float().pow(2).sum())
    total = torch.stack(squares).sum().sqrt()
    coef = (max_norm / (total + 1e-6)).clamp(max=1.0)
    for p in params:
        p.grad.mul_(coef.to(p.grad.dtype))
    return total


class SparseAwareAdamW(torch.optim.Optimizer):
    """AdamW for the dense parameters and a lazy Adam (``torch.optim.SparseAdam``: only the rows a step
    touches are read and written) for embedding tables with sparse gradients, under one set of param
    groups (the lr schedule sets both). The item tables of a large catalogue then cost each step what
    the batch touches, not the catalogue; they get no weight decay (SparseAdam has none)."""

    def __init__(self, dense_groups: List[Dict[str, Any]], sparse_params: List[torch.Tensor], lr: float):
        self._dense = torch.optim.AdamW(dense_groups, lr=lr)
        self._sparse = torch.optim.SparseAdam(sparse_params, lr=lr)
        super().__init__(self._dense.param_groups + self._sparse.param_groups, {"lr": lr})

    @torch.no_grad()
    def step(self, closure=None):
        self._dense.step()
        self._sparse.step()


# ---------------------------------------------------------------------------------------------
# The one training loop
# ---------------------------------------------------------------------------------------------


class OptimParams(StrictParams):
    """Optimisation, model-selection and runtime knobs shared by every trainer.

    Each trainer's Params class subclasses this one (overriding defaults where its paper differs)
    and adds its own fields, so a knob has one name and one meaning across the project.
    """

    epochs: int = Field(200, ge=1, description="Maximum passes over the training data.")
    batch_size: int = Field(256, ge=1, description="Training rows per step.")
    lr: float = Field(1e-3, gt=0, description="Peak AdamW learning rate, reached after warmup.")
    lr_schedule: Literal["inverse_sqrt", "cosine", "constant"] = Field(
        "inverse_sqrt",
        description="After the linear warmup: inverse_sqrt (lr * sqrt(warmup/step), TIGER's shape), cosine (to 0 at the "
        "end of training: the last epoch, or max_train_minutes when that comes first) or constant.",
    )
    warmup_steps: int = Field(1000, ge=0, description="Linear warmup steps.")
    weight_decay: float = Field(0.01, ge=0, description="AdamW weight decay on weight matrices and embeddings (not on biases / norms).")
    grad_clip: float = Field(1.0, ge=0, description="Max global gradient norm (0 disables clipping).")
    eval_every_epochs: int = Field(1, ge=1, description="Validate every this many epochs.")
    patience: int = Field(10, ge=1, description="Stop after this many validations without improvement.")
    max_train_minutes: Optional[float] = Field(
        None, gt=0, description="Wall-clock budget; training stops (after a final validation) when spent."
    )
    mixed_precision: Literal["auto", "bf16", "off"] = Field(
        "auto", description="auto: bf16 autocast on CUDA, float32 on CPU; bf16: also on CPU (fast with AMX); off: float32."
    )
    seed: int = Field(0, description="Seeds initialisation, dropout and batch order.")
    device: str = Field("auto", description="auto, cpu, cuda or cuda:N.")
    num_threads: Optional[int] = Field(
        None, ge=1, description="torch intra-op threads (None: SEMID_NUM_THREADS, else all cores, divided among the node's ranks)."
    )
    world_size: int = Field(
        1,
        ge=1,
        description="Data-parallel processes (torch.distributed DDP, one per GPU or CPU share); 1: one process. Each rank "
        "trains batch_size rows per step (global batch = world_size * batch_size, lr unchanged); on CUDA rank r uses "
        "cuda:r (device 'auto' or 'cuda'). Under torchrun (RANK/WORLD_SIZE set) leave 1 or give WORLD_SIZE.",
    )
    dist_backend: Literal["auto", "nccl", "gloo"] = Field(
        "auto", description="torch.distributed backend when world_size > 1: auto = nccl on CUDA, gloo on CPU."
    )
    dist_timeout_minutes: float = Field(
        30.0, gt=0, description="Collective timeout of the data-parallel ranks (they wait for rank 0's validation)."
    )
    sparse_embeddings: bool = Field(
        False,
        description="Per-item embedding tables (SASRec's with loss 'sampled', the parallel model's item-ID input) get "
        "row-sparse gradients and a lazy Adam: a step updates the rows it touches, so its cost stops growing with the "
        "catalogue (no weight decay on those tables). For 10^5+ item catalogues; one process (world_size 1).",
    )

    @model_validator(mode="after")
    def _sparse_in_one_process(self):
        if self.sparse_embeddings and self.world_size > 1:
            raise ValueError("sparse_embeddings runs in one process: set world_size 1 (sparse gradients are not all-reduced)")
        return self


def start_run(params: OptimParams) -> torch.device:
    """Threads, seeds and device for a run: call before building the model (initialisation is seeded).

    In a data-parallel run (a rank started by :func:`launch`, or torchrun's environment) it also
    joins the process group and returns the rank's device."""
    plan = _current_plan(params)
    if plan is None:
        configure_threads(params.num_threads)
        seed_everything(params.seed)
        return resolve_device(params.device)
    env = int(os.environ.get("SEMID_NUM_THREADS", "0"))
    configure_threads(params.num_threads or env or max(1, (os.cpu_count() or 1) // plan.local_world_size))
    device = plan.device()
    _join_group(plan, device, params)
    seed_everything(params.seed)  # the one-process initialisation on every rank
    return device


def adamw(model: nn.Module, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    """AdamW with weight decay on weight matrices and embeddings only (not on biases / norms); the
    tables of ``nn.Embedding(sparse=True)`` modules go to a lazy Adam (:class:`SparseAwareAdamW`)."""
    sparse = {id(m.weight): m.weight for m in model.modules() if isinstance(m, nn.Embedding) and m.sparse and m.weight.requires_grad}
    dense = [p for p in model.parameters() if p.requires_grad and id(p) not in sparse]
    groups = [{"params": [p for p in dense if p.ndim >= 2], "weight_decay": weight_decay},
              {"params": [p for p in dense if p.ndim < 2], "weight_decay": 0.0}]
    if sparse:
        return SparseAwareAdamW(groups, list(sparse.values()), lr)
    return torch.optim.AdamW(groups, lr=lr)


def autocast(device: torch.device, mixed_precision: Union[bool, str]):
    """The autocast context for a precision setting (``core.device.autocast_dtype``), or a no-op."""
    dtype = autocast_dtype(device, mixed_precision)
    return torch.autocast(device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()


def lr_multiplier(
    schedule: str, warmup_steps: int, total_steps: Optional[int] = None, deadline_fraction: Optional[Callable[[], float]] = None
) -> Callable[[int], float]:
    """The ``LambdaLR`` multiplier of a schedule: linear warmup, then ``inverse_sqrt``, ``cosine`` or ``constant``.

    ``cosine`` decays to 0 at ``total_steps`` or, when ``deadline_fraction`` is given (the share of the
    wall-clock budget spent, 0..1), at whichever of the two comes first; a time-capped cosine run is
    therefore not bit-reproducible across machines (the step count at the cap differs).
    """
    warmup = max(1, warmup_steps)

    def multiplier(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup
        if schedule == "inverse_sqrt":
            return math.sqrt(warmup / (step + 1))
        if schedule == "constant":
            return 1.0
        done = (step - warmup_steps) / max(1, (total_steps or step + 1) - warmup_steps)
        if deadline_fraction is not None:
            done = max(done, deadline_fraction())
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, done)))

    return multiplier


@dataclass
class FitResult:
    """``model``: the best checkpoint by validation (eval mode; the last weights when nothing validated).
    ``history``: one dict per epoch: ``epoch, loss, samples_per_s, seconds, lr``, the trainer's own
    extras, and ``valid_<metric>`` on epochs that validated. ``best_epoch`` / ``best``: the
    returned checkpoint's epoch and selection key. ``seconds``: the whole fit."""

    model: nn.Module
    history: List[Dict[str, Any]]
    best_epoch: int
    best: Tuple[float, ...]
    seconds: float


def fit(
    model: nn.Module,
    epoch_batches: Callable[[int], Iterable[Any]],
    step: Callable[[Any], Tuple[Any, ...]],
    params: OptimParams,
    validate: Optional[Callable[[nn.Module], Mapping[str, float]]] = None,
    select_on: Sequence[str] = ("recall@10", "ndcg@10"),
    steps_per_epoch: Optional[int] = None,
    progress: Optional[ProgressFn] = None,
    name: str = "train",
    optimizer: Optional[torch.optim.Optimizer] = None,
    on_epoch_end: Optional[Callable[[int, Dict[str, Any]], None]] = None,
    train_mode: bool = True,
    validate_first: bool = False,
) -> FitResult:
    """The training loop every trainer uses (one process, or one data-parallel rank: module docstring).

    Args:
        model: on its training device (``start_run`` first, so its initialisation is seeded).
        epoch_batches: ``epoch (1-based) -> iterable of batches`` (the trainer's sampler; seeded per epoch,
            the same on every rank).
        step: ``batch -> (loss, n_samples)`` or ``(loss, n_samples, loss_weight)``; runs under autocast;
            moves the batch to the device itself. ``n_samples`` is what ``samples_per_s`` counts (e.g.
            next-item targets); ``loss_weight`` what the loss's mean runs over (default ``n_samples``),
            used only to weight the ranks of a data-parallel step.
        params: optimisation knobs (``OptimParams`` or a subclass).
        validate: ``model -> {metric: value}`` (model in eval mode, no grad); every
            ``eval_every_epochs`` and at the last epoch (rank 0 only). Without it the last weights are returned.
        select_on: the metrics compared, in order, to pick the checkpoint (higher is better).
        steps_per_epoch: one-process batches per epoch, for the cosine schedule's length.
        optimizer: defaults to ``adamw(model, lr, weight_decay)``.
        on_epoch_end: ``(epoch, record)`` after the epoch's validation; may add entries to ``record``.
        train_mode: ``model.train()`` every epoch; ``False`` keeps the model in eval mode (no dropout,
            e.g. RL fine-tuning that compares the policy with a frozen reference).
        validate_first: also validate the initial weights, as epoch 0 (a history entry and a
            checkpoint candidate: fine-tuning that hurts validation is rolled back).
    """
    device = next(model.parameters()).device
    rank, world = data_parallel_rank()
    parallel, main = world > 1, rank == 0
    report = Throttle(progress if main else _quiet)
    started = time.monotonic()
    budget_s = params.max_train_minutes * 60 if params.max_train_minutes is not None else None
    deadline = started + budget_s if budget_s is not None else math.inf
    optimizer = optimizer or adamw(model, params.lr, params.weight_decay)
    if params.sparse_embeddings and not isinstance(optimizer, SparseAwareAdamW):
        raise ValueError(f"{name or 'this trainer'}: sparse_embeddings is on but the model has no per-item embedding table "
                         "(SASRec with loss 'sampled', or the parallel model with item_id_embedding)")
    if parallel and isinstance(optimizer, SparseAwareAdamW):
        raise ValueError("sparse_embeddings runs in one process; this run has several ranks (torchrun?): turn one of them off")
    if steps_per_epoch and parallel:
        steps_per_epoch = math.ceil(steps_per_epoch / world)
    total_steps = params.epochs * steps_per_epoch if steps_per_epoch else None
    fraction = (lambda: (time.monotonic() - started) / budget_s) if budget_s else None
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lr_multiplier(params.lr_schedule, params.warmup_steps, total_steps, fraction)
    )
    prefix = f"{name}: " if name else ""
    history: List[Dict[str, Any]] = []
    checkpoint = BestCheckpoint(params.patience)
    run_step: Callable[[Any], Any] = step
    if parallel:
        ddp = DistributedDataParallel(
            _StepModule(model, step),
            device_ids=[device.index] if device.type == "cuda" else None,
            forward_sync_buffers=False,
            find_unused_parameters=True,
        )
        run_step = ddp
        seed_everything(rank_seed(params.seed, rank))  # dropout masks and sampling differ between ranks
        report(f"{prefix}data-parallel: {world} ranks ({dist.get_backend()}), {world} x {params.batch_size} rows per step", force=True)

    def run_validation(m: nn.Module) -> Dict[str, float]:
        metrics = dict(validate(m)) if main and validate is not None else {}
        return _broadcast_object(metrics) if parallel else metrics  # the other ranks wait here for rank 0

    if validate is not None and validate_first:
        model.eval()
        with torch.no_grad():
            metrics = run_validation(model)
        record0: Dict[str, Any] = {"epoch": 0, **{f"valid_{k}": float(v) for k, v in metrics.items()}}
        checkpoint.update(model, tuple(float(metrics[k]) for k in select_on), 0)
        record0["seconds"] = time.monotonic() - started
        history.append(record0)
        report(fit_message(prefix, record0, select_on, 0), force=True)
    next_report = time.monotonic() + report.every_s
    for epoch in range(1, params.epochs + 1):
        model.train(train_mode)
        epoch_start = time.monotonic()
        loss_sum = torch.zeros((), device=device)
        n_batches = n_samples = 0
        out_of_time = False
        batches = shard_batches(epoch_batches(epoch), rank, world) if parallel else ((b, True) for b in epoch_batches(epoch))
        for batch, own in batches:
            with autocast(device, params.mixed_precision):
                out = run_step(batch)
            loss, count = out[0], int(out[1]) if own else 0
            if parallel:  # rank r's share of the global mean: loss_r * N * w_r / W
                weight = float(out[2] if len(out) > 2 else out[1]) if own else 0.0
                total = torch.tensor([weight], dtype=torch.float64, device=device)
                dist.all_reduce(total)
                loss = loss * (world * weight / max(total.item(), 1e-12))
            optimizer_step(loss, optimizer, model.parameters(), params.grad_clip, schedule)
            loss_sum += loss.detach().float()
            n_batches += 1
            n_samples += count
            now = time.monotonic()
            if now >= next_report:  # the .item() sync only happens when a line is due
                next_report = now + report.every_s
                of = f"/{steps_per_epoch}" if steps_per_epoch else ""
                report(f"{prefix}epoch {epoch} batch {n_batches}{of} loss {loss_sum.item() / n_batches:.4f}")
            if budget_s is not None:
                out_of_time = now > deadline
                if parallel:  # rank 0's clock decides
                    flag = torch.tensor([float(out_of_time)], dtype=torch.float64, device=device)
                    dist.broadcast(flag, src=0)
                    out_of_time = bool(flag.item())
                if out_of_time:
                    break
        if parallel:  # the global mean loss (the shares sum to N step means) and every rank's samples
            totals = torch.tensor([loss_sum.item(), float(n_samples)], dtype=torch.float64, device=device)
            dist.all_reduce(totals)
            mean_loss, n_samples = totals[0].item() / world / max(n_batches, 1), int(totals[1].item())
        else:
            mean_loss = loss_sum.item() / max(n_batches, 1)
        if not math.isfinite(mean_loss):
            raise FloatingPointError(f"{prefix}epoch {epoch}: training loss is {mean_loss}; lower lr or enable grad_clip")
        record: Dict[str, Any] = {
            "epoch": epoch,
            "loss": mean_loss,
            "samples_per_s": n_samples / max(time.monotonic() - epoch_start, 1e-9),
            "lr": schedule.get_last_lr()[0],
        }
        stop = out_of_time or epoch == params.epochs
        if validate is not None and (epoch % params.eval_every_epochs == 0 or stop):
            model.eval()
            with torch.no_grad():
                metrics = run_validation(model)
            record.update({f"valid_{k}": float(v) for k, v in metrics.items()})
            stop = checkpoint.update(model, tuple(float(metrics[k]) for k in select_on), epoch) or stop
        if on_epoch_end is not None:
            on_epoch_end(epoch, record)
        if parallel:
            check_replicas(model, device)
        record["seconds"] = time.monotonic() - epoch_start
        history.append(record)
        report(fit_message(prefix, record, select_on, checkpoint.best_epoch if validate is not None else None), force=True)
        if stop:
            break
    if validate is not None:
        checkpoint.restore(model)
    else:
        model.eval()
    seconds = time.monotonic() - started
    best = checkpoint.best if validate is not None else ()
    done = f"{prefix}done in {seconds:.0f} s"
    if validate is not None:
        done += f", best epoch {checkpoint.best_epoch} " + " ".join(f"{k} {v:.4f}" for k, v in zip(select_on, best))
    report(done, force=True)
    return FitResult(model=model, history=history, best_epoch=checkpoint.best_epoch, best=best, seconds=seconds)


def _quiet(message: str) -> None:
    """The progress sink of ranks other than 0."""


def fit_message(prefix: str, record: Mapping[str, Any], select_on: Sequence[str], best_epoch: Optional[int]) -> str:
    """``"<prefix>epoch 3: loss 2.1, 640 samples/s, valid recall@10 0.0500 ndcg@10 0.0200 (best epoch 3)"``."""
    parts = [f"loss {record['loss']:.4f}, {record['samples_per_s']:.0f} samples/s"] if "loss" in record else []
    valid = [k for k in record if k.startswith("valid_")]
    if valid:
        parts.append("valid " + " ".join(f"{k[6:]} {record[k]:.4f}" for k in valid))
    msg = f"{prefix}epoch {record['epoch']}: " + ", ".join(parts)
    return msg + (f" (best epoch {best_epoch})" if best_epoch is not None else "")


# ---------------------------------------------------------------------------------------------
# Data parallelism (see the module docstring)
# ---------------------------------------------------------------------------------------------

TORCHRUN_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
T = TypeVar("T")


@dataclass(frozen=True)
class DistPlan:
    """How the ranks run. ``launch``: ``spawn`` (:func:`launch` started the ranks; ``init_method`` the
    store) or ``env`` (torchrun); ``local_rank`` picks the GPU."""

    world_size: int
    backend: str
    device_type: str
    launch: str
    rank: int = 0
    local_rank: int = 0
    local_world_size: int = 1
    init_method: str = "env://"

    def device(self) -> torch.device:
        return torch.device(f"cuda:{self.local_rank}") if self.device_type == "cuda" else torch.device("cpu")


@dataclass
class _Spawned:
    """Set in a process that runs a rank started by :func:`launch` (rank 0: the launching process)."""

    plan: DistPlan
    workdir: Path
    processes: List[Any]  # rank 0 only: the other ranks' processes, watched while they join


_SPAWNED: Optional[_Spawned] = None


def _env_int(name: str, default: Optional[int] = None) -> int:
    value = os.environ.get(name)
    if value is None:
        if default is None:
            raise ValueError(f"environment variable {name} is not set")
        return default
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"environment variable {name}={value!r} is not an integer (set by torchrun)") from None


def _env_world_size() -> int:
    """``WORLD_SIZE`` when torchrun started this process (``RANK`` and ``WORLD_SIZE`` set), else 1."""
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:
        return _env_int("WORLD_SIZE")
    return 1


def needs_launch(params: OptimParams) -> bool:
    """True when a trainer should hand its call to :func:`launch`: ``world_size > 1`` outside a rank
    (neither started by :func:`launch` nor by torchrun)."""
    return _env_world_size() == 1 and params.world_size > 1 and _SPAWNED is None


def plan_data_parallel(params: OptimParams, rank: int = 0) -> DistPlan:
    """Validates the data-parallel settings against the environment and the visible devices.

    Raises ``ValueError`` with the fix for: a ``world_size`` that disagrees with torchrun's
    ``WORLD_SIZE``; a pinned ``cuda:N`` device with several ranks; more CUDA ranks than visible GPUs;
    NCCL without CUDA.
    """
    if not dist.is_available():
        raise RuntimeError("this torch build has no torch.distributed support; use world_size=1")
    env_world = _env_world_size()
    if env_world > 1:
        if params.world_size not in (1, env_world):
            raise ValueError(
                f"world_size={params.world_size} but torchrun started WORLD_SIZE={env_world} processes; "
                f"leave world_size at 1 (the environment decides) or set it to {env_world}"
            )
        rank = _env_int("RANK")
        local_rank = _env_int("LOCAL_RANK", rank)
        local_world = _env_int("LOCAL_WORLD_SIZE", env_world)
        world, launch_kind = env_world, "env"
        if not 0 <= rank < world:
            raise ValueError(f"RANK={rank} is outside [0, WORLD_SIZE={world})")
    else:
        world, local_rank, local_world, launch_kind = params.world_size, rank, params.world_size, "spawn"

    n_gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if params.device == "auto":
        device_type = "cuda" if n_gpus else "cpu"
    elif params.device in ("cpu", "cuda"):
        device_type = params.device
    elif params.device.startswith("cuda:"):
        raise ValueError(
            f"device={params.device!r} pins one GPU, but world_size={world} runs one process per GPU: use device='cuda' "
            "(rank r uses cuda:r, r = the local rank) and choose the GPUs with CUDA_VISIBLE_DEVICES"
        )
    else:
        raise ValueError(f"device={params.device!r} is not supported with world_size={world}; use auto, cuda or cpu")
    if device_type == "cuda":
        needed = world if launch_kind == "spawn" else local_rank + 1
        if n_gpus < needed:
            raise ValueError(
                f"world_size={world} on CUDA needs {needed} visible GPU(s) (one per process on this node), torch sees {n_gpus}; "
                "lower world_size, expose more GPUs (CUDA_VISIBLE_DEVICES, the pod's nvidia.com/gpu request) or use device='cpu'"
            )
    backend = params.dist_backend if params.dist_backend != "auto" else ("nccl" if device_type == "cuda" else "gloo")
    if backend == "nccl" and device_type != "cuda":
        raise ValueError("dist_backend='nccl' needs CUDA devices; use dist_backend='gloo' (or 'auto') to train on CPU")
    if backend == "nccl" and not dist.is_nccl_available():
        raise ValueError("dist_backend='nccl' but this torch build has no NCCL; use 'gloo'")
    if backend == "gloo" and not dist.is_gloo_available():
        raise ValueError("dist_backend='gloo' but this torch build has no gloo")
    return DistPlan(world, backend, device_type, launch_kind, rank, local_rank, max(local_world, 1))


def _current_plan(params: OptimParams) -> Optional[DistPlan]:
    """This process's rank plan in a data-parallel run, else None (one process)."""
    if _SPAWNED is not None:
        return _SPAWNED.plan
    if _env_world_size() > 1:
        return plan_data_parallel(params)
    return None


def _rank_error(workdir: Path, rank: int) -> Optional[str]:
    path = workdir / f"rank{rank}.error"
    return path.read_text() if path.exists() else None


def _failed_ranks(spawned: _Spawned) -> List[str]:
    """``"rank r: <traceback or exit code>"`` of every spawned rank that ended badly."""
    failed = []
    for r, proc in enumerate(spawned.processes, start=1):
        error = _rank_error(spawned.workdir, r)
        if error is not None or proc.exitcode not in (None, 0):
            failed.append(f"rank {r}: " + (error or f"exited with code {proc.exitcode}"))
    return failed


def _join_group(plan: DistPlan, device: torch.device, params: OptimParams) -> None:
    """Joins (or checks) the process group of ``plan``. The launching process (rank 0 of a spawned
    run) first waits for every other rank to reach the store, failing fast if one died on the way."""
    if device.type == "cuda":
        torch.cuda.set_device(device)
    timeout = datetime.timedelta(minutes=params.dist_timeout_minutes)
    if dist.is_initialized():
        if dist.get_world_size() != plan.world_size or dist.get_rank() != plan.rank:
            raise ValueError(
                f"the initialised process group (rank {dist.get_rank()} of {dist.get_world_size()}) does not match "
                f"rank {plan.rank} of {plan.world_size}"
            )
        return
    if plan.launch == "env":
        dist.init_process_group(plan.backend, init_method="env://", timeout=timeout)
        return
    assert _SPAWNED is not None
    store = dist.FileStore(str(_SPAWNED.workdir / "store"), plan.world_size)
    store.set_timeout(timeout)
    store.set(f"ready{plan.rank}", "1")
    if plan.rank == 0:
        deadline = time.monotonic() + timeout.total_seconds()
        keys = [f"ready{r}" for r in range(1, plan.world_size)]
        while not store.check(keys):
            failed = _failed_ranks(_SPAWNED)
            if failed:
                raise RuntimeError("data-parallel rank failed before joining the group:\n" + "\n".join(failed))
            if time.monotonic() > deadline:
                raise RuntimeError(f"data-parallel ranks did not join within {params.dist_timeout_minutes} minutes")
            time.sleep(0.05)
    dist.init_process_group(plan.backend, store=store, rank=plan.rank, world_size=plan.world_size, timeout=timeout)


def _spawned_rank(rank: int, plan: DistPlan, workdir: str, fn: Callable[..., Any], args: tuple, kwargs: Dict[str, Any]) -> None:
    """Entry point of a rank started by :func:`launch` (``rank >= 1``); its result is discarded."""
    global _SPAWNED
    _SPAWNED = _Spawned(DistPlan(**{**plan.__dict__, "rank": rank, "local_rank": rank}), Path(workdir), [])
    try:
        fn(*args, progress=None, **kwargs)
    except BaseException:
        (Path(workdir) / f"rank{rank}.error").write_text(traceback.format_exc())
        raise SystemExit(1)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def launch(fn: Callable[..., T], params: OptimParams, *args: Any, progress: Optional[ProgressFn] = None, **kwargs: Any) -> T:
    """Runs ``fn(*args, progress=..., **kwargs)`` (a trainer) on ``params.world_size`` data-parallel ranks
    and returns rank 0's result; rank 0 is this process, ranks ``1 ..`` are spawned processes (``fn``
    and the arguments must be picklable; a script calling it needs the ``__main__`` guard). A trainer
    calls it first thing: ``if needs_launch(params): return launch(trainer, params, ...)``.

    Raises ``RuntimeError`` naming the rank and its traceback when a rank fails."""
    global _SPAWNED
    plan = plan_data_parallel(params)  # bad settings fail here, before any process starts
    if _SPAWNED is not None:
        raise RuntimeError("launch() was called inside a data-parallel rank")
    ctx = torch_mp.get_context("spawn")
    with tempfile.TemporaryDirectory(prefix="semid_ddp_") as tmp:
        workdir = Path(tmp)
        procs = [
            ctx.Process(target=_spawned_rank, args=(r, plan, tmp, fn, args, kwargs), daemon=True, name=f"semid-rank{r}")
            for r in range(1, plan.world_size)
        ]
        for proc in procs:
            proc.start()
        _SPAWNED = _Spawned(plan, workdir, procs)
        try:
            result = fn(*args, progress=progress, **kwargs)
        except BaseException as e:
            for proc in procs:  # a failing peer has written its traceback by the time it exits
                proc.join(timeout=5)
            failed = _failed_ranks(_SPAWNED)
            if failed and not isinstance(e, KeyboardInterrupt):
                raise RuntimeError("data-parallel training failed:\n" + "\n".join(failed)) from e
            raise
        finally:
            _SPAWNED = None
            if dist.is_initialized():
                dist.destroy_process_group()
            for proc in procs:
                proc.join(timeout=60)
                if proc.is_alive():
                    proc.terminate()
                    proc.join(timeout=10)
        failed = _failed_ranks(_Spawned(plan, workdir, procs))
        if failed:
            raise RuntimeError("data-parallel training failed:\n" + "\n".join(failed))
        return result


def data_parallel_rank() -> Tuple[int, int]:
    """``(rank, world_size)`` of this process in the running data-parallel group, ``(0, 1)`` outside one."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def rank_seed(seed: int, rank: int) -> int:
    """The seed of rank ``rank`` (its dropout masks and sampling), derived from ``(seed, rank)``."""
    return int(np.random.SeedSequence([seed, rank]).generate_state(1)[0])


def shard_batches(batches: Iterable[Any], rank: int, world_size: int) -> Iterator[Tuple[Any, bool]]:
    """Rank ``rank``'s ``(batch, own)`` per global step: batch ``s*N + rank`` of the single-process
    order, or, when the last step has fewer than ``N`` batches, a filler copy (``own`` False)."""
    it = iter(batches)
    while True:
        group = list(itertools.islice(it, world_size))
        if not group:
            return
        if rank < len(group):
            yield group[rank], True
        else:
            yield group[rank % len(group)], False


class _StepModule(nn.Module):
    """The trainer's ``step`` as a module's forward, so DDP syncs the gradients of ``model``."""

    def __init__(self, model: nn.Module, step: Callable[[Any], Any]):
        super().__init__()
        self.model = model
        self._step = step

    def forward(self, batch: Any) -> Any:
        return self._step(batch)


def _broadcast_object(value: Any) -> Any:
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def check_replicas(model: nn.Module, device: torch.device) -> None:
    """Raises on every rank if any rank's weights differ from rank 0's (per-tensor sums and sums of squares)."""
    params = [p.detach().double() for p in model.parameters()]
    local = torch.stack([torch.stack([p.sum(), (p * p).sum()]) for p in params]).flatten().to(device)
    ref = local.clone()
    dist.broadcast(ref, src=0)
    differs = torch.tensor([float(not torch.equal(local, ref))], dtype=torch.float64, device=device)
    dist.all_reduce(differs, op=dist.ReduceOp.MAX)
    if differs.item() > 0:
        raise RuntimeError("data-parallel replicas diverged: the ranks' weights differ")
