"""Data parallelism of the one training loop (``core.training``): 2 CPU ranks (gloo) for every trainer.

For each trainer: the run completes, the ranks end with identical weights, and one data-parallel
step (2 ranks x batch B) equals the one-process step on the union batch (1 x 2B). A rank that fails
surfaces as an error in the caller, quickly. (TIGER: test_recommender_distributed.py.)"""

import json
import multiprocessing
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from semid_pipeline.core.baselines.sasrec import SASRecParams, train_sasrec
from semid_pipeline.core.recommender.parallel import ParallelParams
from semid_pipeline.core.recommender.parallel_train import train_parallel
from semid_pipeline.core.training import OptimParams, data_parallel_rank, fit, launch, shard_batches, start_run

from semid_pipeline_tests.test_recommender_distributed import clean_env  # noqa: F401,E402  (autouse: no torchrun variables)

pytestmark = pytest.mark.timeout(240)  # a hung collective fails the test instead of the suite

N_ITEMS = 24


def histories(n_users: int = 16, seed: int = 0):
    """Users walking the item cycle, 3..8 training items each (batches differ in target count)."""
    rng = np.random.default_rng(seed)
    lengths = 3 + np.arange(n_users) % 6
    starts = rng.integers(0, N_ITEMS, n_users)
    seqs = [(s + np.arange(n + 1)) % N_ITEMS for s, n in zip(starts, lengths)]
    return [q[:-1] for q in seqs], np.array([q[-1] for q in seqs], dtype=np.int64)


def sids(seed: int = 3):
    rng = np.random.default_rng(seed)
    while True:
        s = rng.integers(0, 4, (N_ITEMS, 3))
        if len({tuple(r) for r in s.tolist()}) == N_ITEMS:
            return s


OPTIM = dict(epochs=2, lr=4e-3, warmup_steps=2, eval_every_epochs=2, patience=5, seed=0, device="cpu", num_threads=1,
             dist_timeout_minutes=2.0)


def sasrec_params(**kw) -> SASRecParams:
    return SASRecParams(**{"hidden": 16, "n_layers": 1, "n_heads": 2, "dropout": 0.0, "max_len": 8, **OPTIM, **kw})


def parallel_params(**kw) -> ParallelParams:
    base = dict(d_model=16, n_layers=1, n_heads=2, d_ff=32, dropout=0.0, max_len=8, temperature=0.1, item_temperature=0.1)
    return ParallelParams(**{**base, **OPTIM, **kw})


def run_trainer(kind: str, params, progress=None):
    train, valid = histories()
    if kind == "sasrec":
        return train_sasrec(train, valid, N_ITEMS, params, progress=progress)
    return train_parallel(sids(), train, valid, params, codebook_size=4, progress=progress)


def dump_rank(kind: str, params, out_dir: str, progress=None):
    """What every rank trains, written per rank (safetensors + JSON) so the test can compare the replicas."""
    result = run_trainer(kind, params)
    rank, world = data_parallel_rank()
    save_file({k: v.contiguous() for k, v in result.model.state_dict().items()}, str(Path(out_dir) / f"rank{rank}.safetensors"))
    strip = [{k: v for k, v in r.items() if k not in ("seconds", "samples_per_s")} for r in result.history]
    (Path(out_dir) / f"rank{rank}.json").write_text(json.dumps({"world": world, "history": strip, "best_epoch": result.best_epoch}))
    return result


def assert_same_state(a, b, rtol=1e-4, atol=1e-5):
    assert a.keys() == b.keys()
    for name, value in a.items():
        torch.testing.assert_close(b[name], value, rtol=rtol, atol=atol, msg=lambda m: f"{name}: {m}")


def test_shard_batches_gives_each_rank_its_share_and_fillers():
    batches = [[0, 1], [2], [3, 4, 5], [6]]
    shards = [list(shard_batches(batches, r, 3)) for r in range(3)]
    assert shards[0] == [([0, 1], True), ([6], True)]
    assert shards[1] == [([2], True), ([6], False)]  # idle in the last step: a filler the loss weights 0
    assert shards[2] == [([3, 4, 5], True), ([6], False)]
    assert sorted(b for s in shards for b, own in s if own) == batches  # every batch once


@pytest.mark.parametrize("kind", ["sasrec", "parallel"])
def test_two_ranks_equal_one_process_on_the_union_batch_and_replicas_match(kind, tmp_path):
    """16 users, one epoch = one global step: 2 ranks x batch 8 vs 1 process x batch 16. The sampler
    sorts by length, so the two halves hold different target counts: the models agree only if the
    step is weighted by targets (the mean over the union), not a mean of the ranks' means."""
    make = sasrec_params if kind == "sasrec" else parallel_params
    single = run_trainer(kind, make(batch_size=16))
    ddp = launch(dump_rank, make(batch_size=8, world_size=2), kind, make(batch_size=8, world_size=2), str(tmp_path))
    assert ddp.best_epoch == single.best_epoch and len(ddp.history) == len(single.history) == 2
    for a, b in zip(single.history, ddp.history):
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-5)
        assert {k for k in b if k.startswith("valid_")} == {k for k in a if k.startswith("valid_")}
    assert_same_state(single.model.state_dict(), ddp.model.state_dict())
    states = [load_file(str(tmp_path / f"rank{r}.safetensors")) for r in range(2)]
    runs = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert [r["world"] for r in runs] == [2, 2]
    for name, value in states[0].items():
        assert torch.equal(value, states[1][name]), f"{name} differs between ranks"
    assert runs[0]["history"] == runs[1]["history"] and runs[0]["best_epoch"] == runs[1]["best_epoch"]
    assert not ddp.model.training


def test_one_process_run_is_untouched_by_the_data_parallel_code():
    """world_size=1: no process group, and two runs are bit-identical."""
    a = run_trainer("sasrec", sasrec_params(batch_size=8))
    b = run_trainer("sasrec", sasrec_params(batch_size=8))
    assert not torch.distributed.is_initialized()
    for name, value in a.model.state_dict().items():
        assert torch.equal(value, b.model.state_dict()[name])


def toy_trainer(params: OptimParams, fail_rank: int, fail_at: str, progress=None):
    """A linear model through fit; rank ``fail_rank`` raises at ``fail_at``: ``join`` (before joining the
    group), ``start`` (after), ``step`` (its third step) or ``never``."""
    if fail_at == "join" and multiprocessing.current_process().name == f"semid-rank{fail_rank}":
        raise ImportError("rank cannot import its data reader")
    device = start_run(params)
    rank = data_parallel_rank()[0]
    if fail_at == "start" and rank == fail_rank:
        raise ValueError(f"rank {rank} cannot read its shard")
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 4, generator=g)
    y = x @ torch.tensor([1.0, -2.0, 0.5, 3.0])
    model = nn.Linear(4, 1).to(device)
    calls = {"n": 0}

    def step(idx):
        calls["n"] += 1
        if fail_at == "step" and rank == fail_rank and calls["n"] == 3:
            raise FloatingPointError(f"rank {rank}: bad batch")
        return ((model(x[idx]).squeeze(-1) - y[idx]) ** 2).mean(), len(idx)

    batches = lambda epoch: [torch.arange(i, i + 8) for i in range(0, 64, 8)]  # noqa: E731
    return fit(model, batches, step, params, progress=progress, name="toy").model


@pytest.mark.parametrize("fail_at", ["join", "start", "step"])
def test_a_failing_rank_surfaces_as_an_error_without_hanging(fail_at):
    params = OptimParams(epochs=3, lr=0.01, warmup_steps=0, device="cpu", num_threads=1, world_size=2, dist_timeout_minutes=1.0)
    started = time.monotonic()
    with pytest.raises(RuntimeError, match=r"(?s)rank 1:.*(cannot import|cannot read its shard|bad batch)") as err:
        launch(toy_trainer, params, params, 1, fail_at)
    assert time.monotonic() - started < 50, "the failure took as long as the collective timeout"
    assert "Traceback" in str(err.value)
    assert not torch.distributed.is_initialized()
    model = launch(toy_trainer, params, params, 1, "never")  # the launcher is reusable after a failure
    assert isinstance(model, nn.Linear)
