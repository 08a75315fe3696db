"""Data-parallel training of the generative recommender with ``torch.distributed`` (DDP).

How to run it
-------------
* ``TrainParams.world_size = N`` (N > 1): :func:`train_recommender` starts N worker processes
  itself (``torch.multiprocessing``, spawn start method) on this machine and returns rank 0's best
  checkpoint to the caller. The ranks meet through a ``FileStore`` in a fresh temporary directory
  (no TCP port to pick); rank 0 hands its best checkpoint and history back as safetensors + JSON
  in that directory (``core/artifacts.py``); the inputs travel as spawn arguments. As with any
  spawn-based multiprocessing, a script that calls it needs the ``if __name__ == "__main__":``
  guard (the Dagster asset and the tests already run in importable modules).
* Under ``torchrun`` (``RANK`` / ``WORLD_SIZE`` / ``MASTER_ADDR`` / ``MASTER_PORT`` set, e.g.
  ``torchrun --nproc-per-node 4 my_train_script.py``), every process calls
  :func:`train_recommender` as usual: it joins the process group from the environment (or uses
  the one the script already initialised) and trains as one rank; ``world_size`` may stay 1 or
  must equal ``WORLD_SIZE``. Every rank returns the same :class:`TrainResult` (identical weights,
  checked); only rank 0 should write outputs.

Devices and backends: ``dist_backend='auto'`` is NCCL on CUDA and gloo on CPU. On CUDA, rank ``r``
(the local rank under torchrun) uses ``cuda:r``: ``device`` must be ``auto`` or ``cuda``; choose the
GPUs with ``CUDA_VISIBLE_DEVICES`` (or the pod's ``nvidia.com/gpu`` request). ``device='cpu'``
runs N CPU processes with gloo; each then uses ``num_threads`` (or ``SEMID_NUM_THREADS``, or
``cores // N``) intra-op threads.

What a step does (the choices)
------------------------------
* Batches: every rank builds the single-process :class:`LengthBucketSampler` with the same seed,
  so all ranks know the epoch's global batch order. Step ``s`` trains batches
  ``s * N .. s * N + N - 1``: rank ``r`` takes batch ``s * N + r`` (rank ``r`` trains batches
  ``r, r + N, r + 2N, ...``). Every rank therefore runs ``ceil(n_batches / N)`` steps per epoch, so
  collectives never hang; in the last step ranks without a batch of their own run a filler batch
  with loss weight 0, so every row is still trained exactly once per epoch.
* Batch size and learning rate: ``batch_size`` is the per-rank batch, the global batch is
  ``N * batch_size``, and ``lr`` / ``warmup_steps`` are used unchanged (no linear scaling: the
  schedule counts optimiser steps, of which there are N times fewer per epoch). Scale ``lr``
  yourself if you want the linear-scaling rule.
* Loss reduction: the single-process loss is the mean over a batch's labelled tokens. DDP averages
  gradients over ranks, which would make a step the mean of per-rank means (short and long batches
  weighted alike). Rank ``r`` instead backpropagates ``mean_r * N * T_r / T`` (``T_r`` its labelled
  tokens, ``T`` those of the whole step; all known on every rank from the shared sampler, so this
  costs no communication): the averaged gradient is then exactly the gradient of the mean over all
  ``T`` tokens, i.e. one data-parallel step equals a single-process step on the union of the N
  batches (tested). Gradient clipping acts on that synced global gradient.
* Validation, checkpoint selection and stopping: rank 0 alone runs the beam-search validation and
  the checkpoint selection while the other ranks wait in a broadcast of its (Recall@10, NDCG@10,
  stop decision). The other ranks feed the same numbers to their own :class:`BestCheckpoint` (their
  weights equal rank 0's), so every rank ends on rank 0's best checkpoint without shipping weights.
  The ``max_train_minutes`` deadline is rank 0's clock, broadcast every step (only when a budget
  is set).
* Randomness: the initial weights are the single-process ones (built from ``seed`` in the caller,
  or on every rank under torchrun; DDP also broadcasts rank 0's weights); dropout on rank ``r`` is
  seeded with ``(seed, r)`` so ranks draw different masks.
* After every epoch the ranks compare checksums of their live weights and raise if they ever diverged.
* The loop itself is ``core.training.fit`` (the ``agree`` hook broadcasts rank 0's time-budget flag).
"""

import datetime
import json
import math
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
import torch
import torch.distributed as dist
import torch.multiprocessing as torch_mp
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from semid_pipeline.core.artifacts import load_artifact, save_artifact
from semid_pipeline.core.device import configure_threads, seed_everything
from semid_pipeline.core.progress import ProgressFn
from semid_pipeline.core.recommender.data import SIDBatch
from semid_pipeline.core.recommender.hierarchy import HierarchyInputs
from semid_pipeline.core.recommender.model import GenerativeRecommender, RecommenderParams
from semid_pipeline.core.recommender.prepare import (
    SELECT_ON,
    TrainingData,
    TrainParams,
    TrainResult,
    build_model,
    prepare_training_data,
    validate,
)
from semid_pipeline.core.training import fit


@dataclass(frozen=True)
class DistPlan:
    """How the ranks run. ``launch``: ``spawn`` (this process starts ``world_size`` workers) or ``env``
    (torchrun started this process as rank ``rank``); ``local_rank`` picks the GPU."""

    world_size: int
    backend: str
    device_type: str
    launch: str
    rank: int = 0
    local_rank: int = 0
    local_world_size: int = 1

    def device(self, local_rank: int) -> torch.device:
        return torch.device(f"cuda:{local_rank}") if self.device_type == "cuda" else torch.device("cpu")


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
    """``WORLD_SIZE`` when this process was started by torchrun (``RANK`` and ``WORLD_SIZE`` set), else 1."""
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:
        return _env_int("WORLD_SIZE")
    return 1


def is_requested(tp: TrainParams) -> bool:
    """True when training should run data-parallel: ``world_size > 1`` or a torchrun environment with ``WORLD_SIZE > 1``."""
    return tp.world_size > 1 or _env_world_size() > 1


def plan(tp: TrainParams) -> DistPlan:
    """Validates the distributed settings against the environment and the visible devices.

    Raises ``ValueError`` with the fix for: a ``world_size`` that disagrees with torchrun's
    ``WORLD_SIZE``; a pinned ``cuda:N`` device with several ranks; more CUDA ranks than visible GPUs;
    NCCL without CUDA.
    """
    if not dist.is_available():
        raise RuntimeError("this torch build has no torch.distributed support; use world_size=1")
    env_world = _env_world_size()
    if env_world > 1:
        if tp.world_size not in (1, env_world):
            raise ValueError(
                f"world_size={tp.world_size} but torchrun started WORLD_SIZE={env_world} processes; "
                f"leave world_size at 1 (the environment decides) or set it to {env_world}"
            )
        rank = _env_int("RANK")
        local_rank = _env_int("LOCAL_RANK", rank)
        local_world = _env_int("LOCAL_WORLD_SIZE", env_world)
        world, launch = env_world, "env"
        if not 0 <= rank < world:
            raise ValueError(f"RANK={rank} is outside [0, WORLD_SIZE={world})")
    else:
        world, rank, local_rank, local_world, launch = tp.world_size, 0, 0, tp.world_size, "spawn"

    n_gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if tp.device == "auto":
        device_type = "cuda" if n_gpus else "cpu"
    elif tp.device in ("cpu", "cuda"):
        device_type = tp.device
    elif tp.device.startswith("cuda:"):
        raise ValueError(
            f"device={tp.device!r} pins one GPU, but world_size={world} runs one process per GPU: use device='cuda' "
            "(rank r uses cuda:r, r = the local rank) and choose the GPUs with CUDA_VISIBLE_DEVICES"
        )
    else:
        raise ValueError(f"device={tp.device!r} is not supported with world_size={world}; use auto, cuda or cpu")
    if device_type == "cuda":
        needed = world if launch == "spawn" else local_rank + 1
        if n_gpus < needed:
            raise ValueError(
                f"world_size={world} on CUDA needs {needed} visible GPU(s) (one per process on this node), torch sees {n_gpus}; "
                "lower world_size, expose more GPUs (CUDA_VISIBLE_DEVICES, the pod's nvidia.com/gpu request) or use device='cpu'"
            )
    backend = tp.dist_backend if tp.dist_backend != "auto" else ("nccl" if device_type == "cuda" else "gloo")
    if backend == "nccl" and device_type != "cuda":
        raise ValueError("dist_backend='nccl' needs CUDA devices; use dist_backend='gloo' (or 'auto') to train on CPU")
    if backend == "nccl" and not dist.is_nccl_available():
        raise ValueError("dist_backend='nccl' but this torch build has no NCCL; use 'gloo'")
    if backend == "gloo" and not dist.is_gloo_available():
        raise ValueError("dist_backend='gloo' but this torch build has no gloo")
    return DistPlan(world, backend, device_type, launch, rank, local_rank, max(local_world, 1))


@dataclass
class RankStep:
    """One optimisation step seen from one rank.

    ``rows``: the rank's batch (row indices; a filler batch on an idle rank); ``weight``: its loss
    multiplier ``N * T_r / T`` (0 on an idle rank); ``n_targets``: next-item targets of the whole
    step (all ranks)."""

    rows: np.ndarray
    weight: float
    n_targets: int


def rank_steps(batches: Sequence[np.ndarray], rank: int, world_size: int, tokens: np.ndarray, targets: np.ndarray) -> List[RankStep]:
    """Rank ``rank``'s share of an epoch's global batch order (see the module docstring).

    Args:
        batches: the epoch's batches in single-process order (``LengthBucketSampler.epoch``).
        tokens: labelled decoder tokens per row (the loss's mean runs over them).
        targets: next-item targets per row (for the throughput count).
    """
    steps = []
    for start in range(0, len(batches), world_size):
        group = list(batches[start : start + world_size])
        counts = [int(tokens[b].sum()) for b in group]
        total = sum(counts)
        n_targets = int(sum(int(targets[b].sum()) for b in group))
        if rank < len(group):
            weight = world_size * counts[rank] / total if total else 0.0
            steps.append(RankStep(np.asarray(group[rank]), weight, n_targets))
        else:  # idle in the epoch's last step: a zero-weighted pass keeps the collectives matched
            steps.append(RankStep(np.asarray(group[rank % len(group)]), 0.0, n_targets))
    return steps


class _LossModule(nn.Module):
    """The recommender's token loss as ``forward`` (DDP hooks gradient syncing into ``forward``)."""

    def __init__(self, model: GenerativeRecommender):
        super().__init__()
        self.model = model

    def forward(self, enc_tokens, enc_item, dec_tokens, dec_labels, dec_target, label_smoothing: float) -> torch.Tensor:
        return self.model.loss(SIDBatch(enc_tokens, enc_item, dec_tokens, dec_labels, dec_target), label_smoothing)


def _broadcast(values: List[float], device: torch.device) -> List[float]:
    """Rank 0's ``values`` on every rank (float64, exact)."""
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.broadcast(t, src=0)
    return t.tolist()


def _check_replicas(model: nn.Module, device: torch.device) -> None:
    """Raises on every rank if any rank's weights differ from rank 0's (per-tensor sums and sums of squares)."""
    params = [p.detach().double() for p in model.parameters()]
    local = torch.stack([torch.stack([p.sum(), (p * p).sum()]) for p in params]).flatten().to(device)
    ref = local.clone()
    dist.broadcast(ref, src=0)
    differs = torch.tensor([float(not torch.equal(local, ref))], dtype=torch.float64, device=device)
    dist.all_reduce(differs, op=dist.ReduceOp.MAX)
    if differs.item() > 0:
        raise RuntimeError("data-parallel replicas diverged: the ranks' weights differ after training")


def _rank_seed(seed: int, rank: int) -> int:
    return int(np.random.SeedSequence([seed, rank]).generate_state(1)[0])


def _train_rank(
    model: GenerativeRecommender,
    data: TrainingData,
    tp: TrainParams,
    dp: DistPlan,
    rank: int,
    device: torch.device,
    progress: Optional[ProgressFn],
) -> TrainResult:
    """The training loop of one rank (the process group is initialised, ``model`` is on ``device``).

    The same ``fit`` as the single-process trainer; what differs is the sharded, token-weighted steps,
    the all-reduced epoch loss, rank 0's validation broadcast and rank 0's clock for the time budget."""
    world, main = dp.world_size, rank == 0
    rows, sampler = data.rows, data.sampler
    tokens, targets = rows.dec_lengths, rows.n_targets

    seed_everything(_rank_seed(tp.seed, rank))  # dropout masks differ between ranks
    ddp = DistributedDataParallel(
        _LossModule(model), device_ids=[device.index] if device.type == "cuda" else None, forward_sync_buffers=False
    )
    steps_per_epoch = math.ceil(len(sampler) / world)
    if main and progress is not None:
        progress(
            f"recommender (data-parallel, {world} ranks, {dp.backend}): {sum(p.numel() for p in model.parameters()):,} "
            f"parameters, {rows.n_rows:,} {tp.mode} rows, {int(targets.sum()):,} targets, {steps_per_epoch} steps/epoch of "
            f"{world} x {tp.batch_size} rows on {dp.device_type}"
        )
    # this rank's share of the epoch's loss: its weighted step losses / N, summed over the ranks = the steps' mean token loss
    epoch_sum = {"loss": torch.zeros((), device=device, dtype=torch.float64), "steps": 0}

    def step(s: RankStep):
        b = rows.batch(s.rows).to(device)
        loss = ddp(b.enc_tokens, b.enc_item, b.dec_tokens, b.dec_labels, b.dec_target, tp.label_smoothing) * s.weight
        epoch_sum["loss"] += loss.detach().double() / world  # DDP averages the gradients over the ranks
        epoch_sum["steps"] += 1
        return loss, s.n_targets

    def validate_on_rank0(m: nn.Module) -> Dict[str, float]:
        values = list(validate(m, data, tp, progress)) if main else [0.0] * len(SELECT_ON)
        return dict(zip(SELECT_ON, _broadcast(values, device)))  # the other ranks wait here for rank 0

    def end_epoch(epoch: int, record: Dict[str, Any]) -> None:
        """The epoch's mean token loss over all ranks (fit's own mean is this rank's share); replicas still equal."""
        total = epoch_sum["loss"]
        dist.all_reduce(total)
        record["loss"] = total.item() / max(epoch_sum["steps"], 1)
        epoch_sum.update(loss=torch.zeros((), device=device, dtype=torch.float64), steps=0)
        _check_replicas(model, device)

    result = fit(
        model,
        lambda epoch: rank_steps(sampler.epoch(epoch), rank, world, tokens, targets),
        step,
        tp,
        validate=validate_on_rank0,
        select_on=SELECT_ON,
        steps_per_epoch=steps_per_epoch,
        progress=progress if main else None,
        name="recommender",
        on_epoch_end=end_epoch,
        agree=lambda out_of_time: bool(_broadcast([float(out_of_time)], device)[0]),  # rank 0's clock decides
    )
    return TrainResult(model=result.model, history=result.history, best_epoch=result.best_epoch)


def _rank_threads(tp: TrainParams, local_world_size: int) -> int:
    env = int(os.environ.get("SEMID_NUM_THREADS", "0"))
    return tp.num_threads or env or max(1, (os.cpu_count() or 1) // max(local_world_size, 1))


def _init_group(dp: DistPlan, rank: int, device: torch.device, tp: TrainParams, init_method: str) -> None:
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(
        dp.backend,
        init_method=init_method,
        rank=rank,
        world_size=dp.world_size,
        timeout=datetime.timedelta(minutes=tp.dist_timeout_minutes),
    )


def _spawn_worker(
    rank: int,
    dp: DistPlan,
    inputs: tuple,
    mp: RecommenderParams,
    tp: TrainParams,
    init_config: Dict[str, Any],
    init_tensors: Dict[str, torch.Tensor],
    workdir: str,
    messages,
) -> None:
    """Entry point of a spawned rank: trains, and rank 0 writes the result for the parent."""
    configure_threads(_rank_threads(tp, dp.world_size))
    device = dp.device(rank)
    _init_group(dp, rank, device, tp, f"file://{Path(workdir) / 'store'}")
    try:
        data = prepare_training_data(*inputs, mp, tp, device)
        model = GenerativeRecommender.from_artifact(init_config, init_tensors).to(device)
        result = _train_rank(model, data, tp, dp, rank, device, messages.put if rank == 0 else None)
        if rank == 0:
            save_artifact(result.model, Path(workdir) / "model")
            (Path(workdir) / "history.json").write_text(json.dumps({"history": result.history, "best_epoch": result.best_epoch}))
    finally:
        dist.destroy_process_group()


def _drain(messages, progress: Optional[ProgressFn]) -> None:
    while True:
        try:
            msg = messages.get_nowait()
        except Exception:  # queue.Empty
            return
        if progress is not None:
            progress(msg)


def train_data_parallel(
    sids: np.ndarray,
    train_histories: Sequence[np.ndarray],
    valid_targets: np.ndarray,
    valid_histories: Sequence[np.ndarray],
    user_ids: np.ndarray,
    mp: RecommenderParams,
    tp: TrainParams,
    progress: Optional[ProgressFn] = None,
    hierarchy: Optional[HierarchyInputs] = None,
) -> TrainResult:
    """Data-parallel ``train_recommender`` (same arguments; called by it when :func:`is_requested`).

    Spawn mode returns rank 0's best checkpoint on rank 0's device; torchrun mode returns this rank's
    result (the same weights on every rank). See the module docstring for the semantics."""
    dp = plan(tp)
    inputs = (sids, list(train_histories), np.asarray(valid_targets), list(valid_histories), np.asarray(user_ids))
    if dp.launch == "env":
        configure_threads(_rank_threads(tp, dp.local_world_size))
        device = dp.device(dp.local_rank)
        own_group = not dist.is_initialized()
        if own_group:
            _init_group(dp, dp.rank, device, tp, "env://")
        elif dist.get_world_size() != dp.world_size or dist.get_rank() != dp.rank:
            raise ValueError(
                f"the initialised process group (rank {dist.get_rank()} of {dist.get_world_size()}) does not match "
                f"RANK={dp.rank} / WORLD_SIZE={dp.world_size}"
            )
        try:
            seed_everything(tp.seed)  # the single-process initialisation, on every rank
            data = prepare_training_data(*inputs, mp, tp, device)
            model = build_model(mp, data.vocab, hierarchy).to(device)
            return _train_rank(model, data, tp, dp, dp.rank, device, progress)
        finally:
            if own_group:
                dist.destroy_process_group()

    # spawn mode: the initial weights are built here (exactly as the single-process trainer does;
    # the hierarchy embedding's sentence encoder stays in this process) and shipped to the ranks
    from semid_pipeline.core.recommender.vocab import SIDVocab

    seed_everything(tp.seed)
    init = build_model(mp, SIDVocab.from_sids(sids, mp.n_user_buckets), hierarchy)
    init_config, init_tensors = init.artifact_config(), init.artifact_tensors()
    ctx = torch_mp.get_context("spawn")
    messages = ctx.Queue()
    with tempfile.TemporaryDirectory(prefix="semid_ddp_") as workdir:
        procs = torch_mp.start_processes(
            _spawn_worker,
            args=(dp, inputs, mp, tp, init_config, init_tensors, workdir, messages),
            nprocs=dp.world_size,
            join=False,
            daemon=True,
            start_method="spawn",
        )
        try:
            while not procs.join(timeout=0.5):
                _drain(messages, progress)
        except (torch_mp.ProcessRaisedException, torch_mp.ProcessExitedException) as e:
            raise RuntimeError(f"data-parallel training failed in a worker process: {e}") from e
        except BaseException:  # interrupted (Ctrl-C, run termination): take the ranks down with us
            for proc in procs.processes:
                if proc.is_alive():
                    proc.terminate()
            raise
        finally:
            _drain(messages, progress)
        saved = json.loads((Path(workdir) / "history.json").read_text())
        model = load_artifact(Path(workdir) / "model")
    device = dp.device(0)
    return TrainResult(model=model.to(device).eval(), history=saved["history"], best_epoch=int(saved["best_epoch"]))
