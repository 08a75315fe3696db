"""The one training loop: optimisation, checkpoint selection, patience, schedules."""

import math

import pytest
import torch
from torch import nn

from semid_pipeline.core.training import OptimParams, fit, lr_multiplier, start_run


def _problem(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(256, 4, generator=g)
    y = x @ torch.tensor([1.0, -2.0, 0.5, 3.0])
    return x, y


def _batches(x, y, size=32):
    def epoch_batches(epoch: int):
        order = torch.randperm(len(x), generator=torch.Generator().manual_seed(epoch))
        for i in range(0, len(x), size):
            idx = order[i : i + size]
            yield x[idx], y[idx]

    return epoch_batches


def test_fit_learns_and_keeps_the_best_validated_weights():
    x, y = _problem()
    params = OptimParams(epochs=30, lr=0.05, warmup_steps=0, lr_schedule="constant", weight_decay=0.0, patience=50)
    start_run(params)
    model = nn.Linear(4, 1)
    step = lambda b: (((model(b[0]).squeeze(-1) - b[1]) ** 2).mean(), len(b[1]))
    seen = []

    def validate(m):
        # a key that peaks at epoch 5, whatever the weights: the returned model must be epoch 5's
        seen.append({k: v.clone() for k, v in m.state_dict().items()})
        return {"score": -abs(len(seen) - 5)}

    result = fit(model, _batches(x, y), step, params, validate=validate, select_on=("score",), steps_per_epoch=8)
    assert result.best_epoch == 5
    assert torch.equal(result.model.weight, seen[4]["weight"])
    assert result.history[0]["loss"] > 10 * result.history[-1]["loss"]
    assert [r["epoch"] for r in result.history] == list(range(1, 31))
    assert all("valid_score" in r and r["samples_per_s"] > 0 for r in result.history)
    assert not result.model.training


def test_fit_stops_on_patience_and_on_the_time_budget():
    x, y = _problem()
    model = nn.Linear(4, 1)
    step = lambda b: (((model(b[0]).squeeze(-1) - b[1]) ** 2).mean(), len(b[1]))
    params = OptimParams(epochs=100, lr=0.01, warmup_steps=0, patience=3)
    result = fit(model, _batches(x, y), step, params, validate=lambda m: {"k": 1.0}, select_on=("k",))
    assert result.best_epoch == 1 and len(result.history) == 4  # 1 best + 3 stale validations

    params = OptimParams(epochs=10_000, lr=0.01, warmup_steps=0, max_train_minutes=0.02)
    result = fit(model, _batches(x, y), step, params)
    assert len(result.history) < 10_000 and result.seconds < 30


def test_fit_rejects_a_diverging_loss():
    x, y = _problem()
    model = nn.Linear(4, 1)
    step = lambda b: (torch.tensor(float("nan"), requires_grad=True) * model.weight.sum(), 1)
    with pytest.raises(FloatingPointError, match="epoch 1"):
        fit(model, _batches(x, y), step, OptimParams(epochs=2, grad_clip=0.0))


def test_lr_schedules():
    inv = lr_multiplier("inverse_sqrt", warmup_steps=100)
    assert inv(0) == pytest.approx(0.01) and inv(99) == pytest.approx(1.0) and inv(399) == pytest.approx(0.5)
    cos = lr_multiplier("cosine", warmup_steps=10, total_steps=110)
    assert cos(10) == pytest.approx(1.0) and cos(60) == pytest.approx(0.5) and cos(110) == pytest.approx(0.0)
    capped = lr_multiplier("cosine", warmup_steps=0, total_steps=1000, deadline_fraction=lambda: 0.5)
    assert capped(1) == pytest.approx(0.5)  # the time budget is half spent: halfway down the cosine
    assert lr_multiplier("constant", warmup_steps=0)(12345) == 1.0
    assert not math.isnan(cos(10_000))


def test_fit_validate_first_rolls_back_and_train_mode_off_keeps_eval():
    x, y = _problem()
    model = nn.Sequential(nn.Linear(4, 1), nn.Dropout(0.5))
    start = {k: v.clone() for k, v in model.state_dict().items()}
    modes = []

    def step(b):
        modes.append(model.training)
        return ((model(b[0]).squeeze(-1) - b[1]) ** 2).mean(), len(b[1])

    params = OptimParams(epochs=3, lr=0.05, warmup_steps=0)
    # every later validation scores worse than the initial weights: the initial weights come back
    scores = iter([1.0, 0.5, 0.4, 0.3])
    result = fit(model, _batches(x, y), step, params, validate=lambda m: {"k": next(scores)}, select_on=("k",),
                 train_mode=False, validate_first=True)
    assert [r["epoch"] for r in result.history] == [0, 1, 2, 3]
    assert set(result.history[0]) == {"epoch", "valid_k", "seconds"}
    assert result.best_epoch == 0 and result.best == (1.0,)
    assert all(torch.equal(result.model.state_dict()[k], v) for k, v in start.items())
    assert modes and not any(modes)  # dropout stayed off


# -- row-sparse item tables (sparse_embeddings) ----------------------------------------------------


class _Lookup(nn.Module):
    def __init__(self, sparse: bool):
        super().__init__()
        torch.manual_seed(0)
        self.table = nn.Embedding(50, 4, sparse=sparse)
        self.head = nn.Linear(4, 1)

    def forward(self, idx):
        return self.head(self.table(idx)).squeeze(-1)


def test_sparse_tables_update_only_touched_rows_and_match_adam_when_every_row_is_touched():
    from semid_pipeline.core.training import SparseAwareAdamW, adamw, optimizer_step

    model = _Lookup(sparse=True)
    opt = adamw(model, lr=0.1, weight_decay=0.0)
    assert isinstance(opt, SparseAwareAdamW)
    before = model.table.weight.detach().clone()
    idx = torch.tensor([3, 7, 7])
    optimizer_step(model(idx).pow(2).sum(), opt, model.parameters(), grad_clip=0.5)
    changed = (model.table.weight.detach() != before).any(1).nonzero().flatten().tolist()
    assert changed == [3, 7]  # the lazy update: a step costs what the batch touches, not the catalogue
    # every row touched at every step, no weight decay: the same trajectory as dense Adam(W)
    dense, sparse = _Lookup(sparse=False), _Lookup(sparse=True)
    opt_d, opt_s = adamw(dense, 0.05, 0.0), adamw(sparse, 0.05, 0.0)
    schedule = torch.optim.lr_scheduler.LambdaLR(opt_s, lambda step: 1.0 / (1 + step))
    schedule_d = torch.optim.lr_scheduler.LambdaLR(opt_d, lambda step: 1.0 / (1 + step))
    every = torch.arange(50)
    for step in range(5):
        target = torch.linspace(-1, 1, 50) * (step + 1)
        optimizer_step((dense(every) - target).pow(2).mean(), opt_d, dense.parameters(), 0.3, schedule_d)
        optimizer_step((sparse(every) - target).pow(2).mean(), opt_s, sparse.parameters(), 0.3, schedule)
    # SparseAdam adds eps to sqrt(v) before the bias correction, AdamW after: rows with near-zero gradients
    # differ by a small fraction of one step (lr 0.05); everything else agrees to float precision
    torch.testing.assert_close(sparse.table.weight, dense.table.weight, rtol=0, atol=5e-4)
    torch.testing.assert_close(sparse.head.weight, dense.head.weight, rtol=0, atol=5e-5)
    assert (sparse.table.weight - dense.table.weight).abs().median() < 1e-5
    assert opt_s.param_groups[0]["lr"] == pytest.approx(0.05 / 6)  # the schedule reaches both inner optimisers


def test_sparse_embeddings_is_refused_where_it_cannot_apply():
    from semid_pipeline.core.baselines.sasrec import SASRecParams

    with pytest.raises(ValueError, match="world_size 1"):
        OptimParams(sparse_embeddings=True, world_size=2)
    with pytest.raises(ValueError, match="loss 'sampled'"):
        SASRecParams(sparse_embeddings=True, loss="full")
    x, y = _problem()
    model = nn.Linear(4, 1)
    with pytest.raises(ValueError, match="no per-item embedding table"):
        fit(model, _batches(x, y), lambda batch: (nn.functional.mse_loss(model(batch[0]).squeeze(-1), batch[1]), len(batch[0])),
            OptimParams(sparse_embeddings=True, epochs=1))
