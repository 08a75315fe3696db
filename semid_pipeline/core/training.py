"""The one training loop (``fit``) and its parts, shared by every trainer: ``OptimParams``, the optimiser,
learning-rate schedules, autocast, validation-based checkpoint selection and early stopping."""


import contextlib
import math
import time
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterable, List, Literal, Mapping, Optional, Sequence, Tuple, Union

import torch
from pydantic import Field
from torch import nn

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
        nn.utils.clip_grad_norm_(params, grad_clip)
    optimizer.step()
    if schedule is not None:
        schedule.step()


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
    num_threads: Optional[int] = Field(None, ge=1, description="torch intra-op threads (None: SEMID_NUM_THREADS or all cores).")


def start_run(params: OptimParams) -> torch.device:
    """Threads, seeds and device for a run: call before building the model (initialisation is seeded)."""
    configure_threads(params.num_threads)
    seed_everything(params.seed)
    return resolve_device(params.device)


def adamw(model: nn.Module, lr: float, weight_decay: float) -> torch.optim.AdamW:
    """AdamW with weight decay on weight matrices and embeddings only (not on biases / norms)."""
    decay = [p for p in model.parameters() if p.requires_grad and p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.ndim < 2]
    return torch.optim.AdamW([{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}], lr=lr)


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
    step: Callable[[Any], Tuple[torch.Tensor, int]],
    params: OptimParams,
    validate: Optional[Callable[[nn.Module], Mapping[str, float]]] = None,
    select_on: Sequence[str] = ("recall@10", "ndcg@10"),
    steps_per_epoch: Optional[int] = None,
    progress: Optional[ProgressFn] = None,
    name: str = "train",
    optimizer: Optional[torch.optim.Optimizer] = None,
    on_epoch_end: Optional[Callable[[int, Dict[str, Any]], None]] = None,
    agree: Optional[Callable[[bool], bool]] = None,
    train_mode: bool = True,
    validate_first: bool = False,
) -> FitResult:
    """The training loop every trainer uses.

    Args:
        model: on its training device (``start_run`` first, so its initialisation is seeded).
        epoch_batches: ``epoch (1-based) -> iterable of batches`` (the trainer's sampler; seeded per epoch).
        step: ``batch -> (loss, n_samples)``; runs under autocast; moves the batch to the device itself.
            ``n_samples`` is what ``samples_per_s`` counts (e.g. next-item targets).
        params: optimisation knobs (``OptimParams`` or a subclass).
        validate: ``model -> {metric: value}`` (model in eval mode, no grad); every
            ``eval_every_epochs`` and at the last epoch. Without it the last weights are returned.
        select_on: the metrics compared, in order, to pick the checkpoint (higher is better).
        steps_per_epoch: for the cosine schedule's length (``epochs * steps_per_epoch``).
        optimizer: defaults to ``adamw(model, lr, weight_decay)``.
        on_epoch_end: ``(epoch, record)`` after the epoch's validation; may add entries to ``record``.
        agree: for data-parallel ranks: turns a local stop flag (time budget spent) into one every
            rank agrees on (e.g. an all-reduce max); called once per batch when a budget is set.
        train_mode: ``model.train()`` every epoch; ``False`` keeps the model in eval mode (no dropout,
            e.g. RL fine-tuning that compares the policy with a frozen reference).
        validate_first: also validate the initial weights, as epoch 0 (a history entry and a
            checkpoint candidate: fine-tuning that hurts validation is rolled back).
    """
    device = next(model.parameters()).device
    report = Throttle(progress)
    started = time.monotonic()
    budget_s = params.max_train_minutes * 60 if params.max_train_minutes is not None else None
    deadline = started + budget_s if budget_s is not None else math.inf
    optimizer = optimizer or adamw(model, params.lr, params.weight_decay)
    total_steps = params.epochs * steps_per_epoch if steps_per_epoch else None
    fraction = (lambda: (time.monotonic() - started) / budget_s) if budget_s else None
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lr_multiplier(params.lr_schedule, params.warmup_steps, total_steps, fraction)
    )
    prefix = f"{name}: " if name else ""
    history: List[Dict[str, Any]] = []
    checkpoint = BestCheckpoint(params.patience)
    if validate is not None and validate_first:
        model.eval()
        with torch.no_grad():
            metrics = dict(validate(model))
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
        for batch in epoch_batches(epoch):
            with autocast(device, params.mixed_precision):
                loss, count = step(batch)
            optimizer_step(loss, optimizer, model.parameters(), params.grad_clip, schedule)
            loss_sum += loss.detach().float()
            n_batches += 1
            n_samples += int(count)
            now = time.monotonic()
            if now >= next_report:  # the .item() sync only happens when a line is due
                next_report = now + report.every_s
                of = f"/{steps_per_epoch}" if steps_per_epoch else ""
                report(f"{prefix}epoch {epoch} batch {n_batches}{of} loss {loss_sum.item() / n_batches:.4f}")
            if budget_s is not None:
                out_of_time = now > deadline
                if agree is not None:
                    out_of_time = agree(out_of_time)
                if out_of_time:
                    break
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
                metrics = dict(validate(model))
            record.update({f"valid_{k}": float(v) for k, v in metrics.items()})
            stop = checkpoint.update(model, tuple(float(metrics[k]) for k in select_on), epoch) or stop
        if on_epoch_end is not None:
            on_epoch_end(epoch, record)
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


def fit_message(prefix: str, record: Mapping[str, Any], select_on: Sequence[str], best_epoch: Optional[int]) -> str:
    """``"<prefix>epoch 3: loss 2.1, 640 samples/s, valid recall@10 0.0500 ndcg@10 0.0200 (best epoch 3)"``."""
    parts = [f"loss {record['loss']:.4f}, {record['samples_per_s']:.0f} samples/s"] if "loss" in record else []
    valid = [k for k in record if k.startswith("valid_")]
    if valid:
        parts.append("valid " + " ".join(f"{k[6:]} {record[k]:.4f}" for k in valid))
    msg = f"{prefix}epoch {record['epoch']}: " + ", ".join(parts)
    return msg + (f" (best epoch {best_epoch})" if best_epoch is not None else "")
