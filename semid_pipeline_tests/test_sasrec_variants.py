"""eSASRec ingredients of the SASRec baseline: sampled softmax (uniform / popularity / in-batch, logQ
correction), the gated LiGR-style block, their config, training and artifacts."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from pydantic import ValidationError

from semid_pipeline.core.artifacts import load_artifact, save_artifact
from semid_pipeline.core.baselines.sampled_softmax import NegativeSampler, sampled_softmax_cross_entropy
from semid_pipeline.core.baselines.sasrec import SASRec, SASRecParams, recommend_sasrec, train_sasrec
from semid_pipeline.core.blocks import GatedBlock
from semid_pipeline.core.metrics import recall_at_k
from semid_pipeline_tests.test_sasrec import N_ITEMS, restore_threads, rule_data  # noqa: F401  (restore_threads: autouse fixture)


def test_sampled_loss_with_every_item_as_negative_is_the_full_softmax():
    torch.manual_seed(0)
    hidden = torch.randn(7, 5, requires_grad=True)
    weight = torch.randn(11, 5, requires_grad=True)
    targets = torch.randint(0, 11, (7,))
    reference = F.cross_entropy(hidden @ weight.T, targets)
    everything = torch.arange(11)
    # uniform proposal over all N items with M = N draws: log(M Q) = log(N / N) = 0
    for negatives, log_q in ((everything, None), (everything, torch.zeros(11)), (everything.expand(7, 11), torch.zeros(7, 11))):
        got = sampled_softmax_cross_entropy(hidden, weight, targets, negatives, log_q)
        torch.testing.assert_close(got, reference)
        for a, b in zip(torch.autograd.grad(got, (hidden, weight)), torch.autograd.grad(reference, (hidden, weight), retain_graph=True)):
            torch.testing.assert_close(a, b)


def test_accidental_hits_are_masked_and_logq_is_subtracted_from_negatives_only():
    hidden = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    weight = torch.tensor([[2.0, 0.0], [0.0, 3.0], [1.0, 1.0]])
    targets = torch.tensor([0, 1])
    negatives = torch.tensor([0, 2])  # item 0 is row 0's own target: masked there
    log_q = torch.tensor([math.log(0.5), math.log(2.0)])
    got = sampled_softmax_cross_entropy(hidden, weight, targets, negatives, log_q)
    # row 0: target logit 2; negatives: item 0 masked, item 2 logit 1 - log 2
    row0 = math.log(math.exp(2.0) + math.exp(1.0 - math.log(2.0))) - 2.0
    # row 1: target logit 3; negatives: item 0 logit 0 - log .5, item 2 logit 1 - log 2
    row1 = math.log(math.exp(3.0) + math.exp(0.0 - math.log(0.5)) + math.exp(1.0 - math.log(2.0))) - 3.0
    assert got.item() == pytest.approx((row0 + row1) / 2, rel=1e-6)


def test_logq_corrected_estimate_is_unbiased_for_the_partition_function():
    """E[sum_m exp(s_j_m - log(M Q(j_m)))] = sum_j exp(s_j): the popularity proposal's correction."""
    counts = np.array([50, 30, 10, 5, 3, 1, 1, 0])
    sampler = NegativeSampler(8, 64, "popularity", logq_correction=True, counts=counts)
    torch.manual_seed(0)
    scores = torch.randn(8)
    estimates = []
    for _ in range(400):
        negatives, log_q = sampler.sample(torch.tensor([0]))
        assert negatives.shape == (64,) and log_q.shape == (64,)
        estimates.append(torch.exp(scores[negatives] - log_q).sum())
    assert torch.stack(estimates).mean().item() == pytest.approx(scores.exp().sum().item(), rel=0.03)
    q = np.exp(sampler.log_prob.numpy())
    np.testing.assert_allclose(q, (counts + 1) / (counts + 1).sum(), rtol=1e-6)


def test_sampler_shapes_and_proposals():
    targets = torch.tensor([3, 1, 4, 1, 5])
    uniform = NegativeSampler(10, 6, "uniform")
    negatives, log_q = uniform.sample(targets)
    assert negatives.shape == (6,) and log_q is None and int(negatives.max()) < 10
    per_position = NegativeSampler(10, 6, "uniform", per_position=True, logq_correction=True)
    negatives, log_q = per_position.sample(targets)
    assert negatives.shape == (5, 6)
    torch.testing.assert_close(log_q, torch.full((5, 6), math.log(6 / 10)))
    in_batch = NegativeSampler(10, 6, "in_batch", logq_correction=True, counts=np.bincount([3, 1, 1, 4, 5, 1], minlength=10))
    negatives, log_q = in_batch.sample(targets)
    torch.testing.assert_close(negatives, targets)  # the batch's own targets
    torch.testing.assert_close(log_q, torch.log(torch.tensor([1, 3, 1, 3, 1]) / 6.0) + math.log(5))
    with pytest.raises(ValueError, match="count per item"):
        NegativeSampler(10, 6, "popularity")
    with pytest.raises(ValueError, match="unknown negative sampling"):
        NegativeSampler(10, 6, "hard")


def test_gated_block_shapes_gradients_and_causality():
    torch.manual_seed(0)
    block = GatedBlock(8, 2, 32, 0.0)
    x = torch.randn(3, 5, 8, requires_grad=True)
    mask = torch.ones(5, 5, dtype=torch.bool).tril()[None, None].expand(3, 1, 5, 5)
    y = block(x, mask)
    assert y.shape == x.shape
    y.sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0 for p in block.parameters())
    changed = x.detach().clone()
    changed[:, 3] += 1.0
    with torch.no_grad():
        torch.testing.assert_close(block(changed, mask)[:, :3], y[:, :3].detach())


def test_config_validation_and_names():
    assert SASRec(N_ITEMS, SASRecParams()).model_name == "sasrec"
    assert SASRec(N_ITEMS, SASRecParams(block="gated", loss="sampled")).model_name == "esasrec"
    assert SASRec(N_ITEMS, SASRecParams(loss="sampled")).model_name == "sasrec_ss"
    assert SASRec(N_ITEMS, SASRecParams(block="gated")).model_name == "sasrec_gated"
    gated = SASRec(N_ITEMS, SASRecParams(hidden=16, block="gated", d_ff=64))
    assert isinstance(gated.blocks[0], GatedBlock) and gated.blocks[0].ffn.down.in_features == 64
    with pytest.raises(ValidationError, match="in_batch"):
        SASRecParams(loss="sampled", negative_sampling="in_batch", negatives_per_position=True)
    with pytest.raises(ValidationError):
        SASRecParams(block="ligr")
    with pytest.raises(ValidationError):
        SASRecParams(n_negatives=0)
    with pytest.raises(ValidationError):
        SASRecParams(sampled=True)  # unknown keys are errors


def test_default_config_keeps_the_full_softmax_model_bit_for_bit():
    """A default SASRecParams builds the same parameters, in the same order, as explicit full / pre_ln."""
    torch.manual_seed(0)
    a = SASRec(N_ITEMS, SASRecParams(hidden=16))
    torch.manual_seed(0)
    b = SASRec(N_ITEMS, SASRecParams(hidden=16, block="pre_ln", loss="full", d_ff=16))
    assert list(a.state_dict()) == list(b.state_dict())
    for t, u in zip(a.state_dict().values(), b.state_dict().values()):
        torch.testing.assert_close(t, u, rtol=0, atol=0)


@pytest.mark.parametrize(
    "variant",
    [
        {"block": "gated", "loss": "sampled", "n_negatives": 16},
        {"loss": "sampled", "negative_sampling": "popularity", "logq_correction": True, "n_negatives": 16, "negatives_per_position": True},
        {"loss": "sampled", "negative_sampling": "in_batch", "logq_correction": True},
        {"loss": "sampled", "negative_sampling": "in_batch", "logq_correction": True, "sparse_embeddings": True},
    ],
)
def test_variants_learn_the_next_item_rule_and_round_trip(variant, tmp_path):
    train, valid, test = rule_data()
    params = SASRecParams(
        hidden=32, n_layers=1, n_heads=1, dropout=0.0, max_len=8, lr=1e-2, batch_size=32,
        epochs=8, eval_every_epochs=2, patience=2, seed=0, device="cpu", num_threads=1, **variant,
    )
    result = train_sasrec(train, valid, N_ITEMS, params)
    assert max(h["valid_recall@10"] for h in result.history if "valid_recall@10" in h) >= 0.9
    items, _ = recommend_sasrec(result.model, [np.append(t, v) for t, v in zip(train, valid)], top_k=10)
    assert recall_at_k(items, test, 10).mean() >= 0.9
    save_artifact(result.model, tmp_path / "m")
    loaded = load_artifact(tmp_path / "m")
    assert loaded.params == result.model.params and loaded.model_name == result.model.model_name
    np.testing.assert_array_equal(recommend_sasrec(loaded, train, top_k=5)[0], recommend_sasrec(result.model, train, top_k=5)[0])
    again = train_sasrec(train, valid, N_ITEMS, params)  # the negatives come from the seeded generator
    assert [h["loss"] for h in again.history] == [h["loss"] for h in result.history]


def test_an_esasrec_model_serves_as_rpg_kd_teacher():
    from semid_pipeline.core.recommender.parallel_train import teacher_top_items

    torch.manual_seed(0)
    teacher = SASRec(30, SASRecParams(hidden=16, block="gated", loss="sampled", d_ff=64)).eval()
    windows = np.array([[0, 0, 3, 4, 5], [1, 2, 3, 4, 5]])  # shifted items, left-padded
    items, probs = teacher_top_items(teacher, windows, 8)
    assert items.shape == probs.shape == (8, 8)  # one row per real position (3 + 5)
    assert ((items >= 0) & (items < 30)).all()
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)
