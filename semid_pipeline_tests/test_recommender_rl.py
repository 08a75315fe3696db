"""GRPO stage: constrained sampling, reward variants (gated quality bonus), advantages, and learning."""

import numpy as np
import pytest
import torch

from semid_pipeline.core.recommender.data import build_inference_rows
from semid_pipeline.core.recommender.model import GenerativeRecommender, RecommenderParams
from semid_pipeline.core.recommender.rl import (
    GRPOParams,
    compute_rewards,
    group_advantages,
    grpo_loss,
    item_quality,
    sample_sids,
    sequence_log_probs,
    train_grpo,
)
from semid_pipeline.core.recommender.trie import SIDTrie
from semid_pipeline.core.recommender.vocab import SIDVocab
from semid_pipeline_tests.test_recommender_train import N_CHAINS, CHAIN, chain_data, small_params
from semid_pipeline_tests.test_recommender_trie import random_sids


@pytest.fixture(autouse=True)
def restore_threads():
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


def tiny_model(level_sizes, seed=0):
    vocab = SIDVocab(level_sizes, n_user_buckets=4)
    params = RecommenderParams(d_model=16, n_encoder_layers=1, n_decoder_layers=1, n_heads=2, d_head=8, d_ff=32,
                               dropout=0.0, max_history_items=4, n_user_buckets=4)
    torch.manual_seed(seed)
    return GenerativeRecommender(params, vocab).eval()


def inputs(model, sids, histories):
    vocab = model.vocab
    rows = build_inference_rows(histories, vocab.user_tokens(np.arange(len(histories))), vocab.item_tokens(sids), 4)
    return rows.batch(np.arange(len(histories)))


def test_constrained_sampling_never_emits_an_invalid_sid():
    # a sparse catalogue: 12 items in a 6 x 6 x 6 space, so most code paths are invalid
    sids = random_sids(12, (6, 6, 6), seed=3)
    model = tiny_model((6, 6, 6))
    with torch.no_grad():  # make the unconstrained policy prefer invalid codes strongly
        model.head.weight.add_(torch.randn_like(model.head.weight) * 3)
    trie = SIDTrie.from_sids(sids, (6, 6, 6))
    batch = inputs(model, sids, [np.array([0, 1]), np.array([5]), np.array([2, 3, 4])])
    gen = torch.Generator().manual_seed(0)
    s = sample_sids(model, batch.enc_tokens, batch.enc_item, trie, group_size=200, temperature=2.0, generator=gen)
    assert s.codes.shape == (3, 200, 3) and (s.items >= 0).all()
    np.testing.assert_array_equal(sids[s.items.numpy()], s.codes.numpy())
    assert len(np.unique(s.items.numpy())) > 3  # it does sample, not just the argmax
    # the recorded masks are the trie's, and sampled log-probs are finite
    lp = sequence_log_probs(model, batch.enc_tokens, batch.enc_item, s)
    assert torch.isfinite(lp).all() and (lp <= 0).all()


SAMPLED = torch.tensor([[[1, 2, 3], [1, 2, 0], [0, 2, 3], [1, 0, 3]]])  # [B=1, G=4, D=3]
ITEMS = torch.tensor([[7, 5, 2, -1]])  # item 7 = target; the last sample is not a valid SID
TARGET_SID, TARGET = torch.tensor([[1, 2, 3]]), torch.tensor([7])


@pytest.mark.parametrize(
    "variant,expected",
    [
        # exact + w_valid * valid + w_prefix * lcp / 3
        ("standard", [1 + 0.1 + 0.1, 0.1 + 0.1 * 2 / 3, 0.1 + 0.0, 0.1 * 1 / 3]),
        ("prefix", [1 + 0.1 + 0.1 + 0.5, 0.1 + (0.1 + 0.5) * 2 / 3, 0.1, (0.1 + 0.5) / 3]),
        ("uniform_bonus", [1 + 0.1 + 0.1 + 0.5, 0.1 + 0.1 * 2 / 3, 0.1, 0.1 / 3]),
        ("qarm", [1 + 0.1 + 0.1 + 0.5 * 0.25, 0.1 + 0.1 * 2 / 3, 0.1, 0.1 / 3]),
    ],
)
def test_reward_values_and_gating(variant, expected):
    p = GRPOParams(reward=variant)
    scores = np.full(10, 0.9, dtype=np.float32)
    scores[7] = 0.25  # the target's quality; every wrong item has a high score that must not count
    q = item_quality(p, 10, scores if variant == "qarm" else None)
    r = compute_rewards(SAMPLED, ITEMS, TARGET_SID, TARGET, p, torch.from_numpy(q) if q is not None else None)
    torch.testing.assert_close(r, torch.tensor([expected]))


def test_quality_variants():
    with pytest.raises(ValueError, match="reward='qarm' needs per-item quality scores"):
        item_quality(GRPOParams(reward="qarm"), 5, None)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        item_quality(GRPOParams(reward="qarm"), 2, np.array([0.5, 2.0]))
    labels = item_quality(GRPOParams(reward="random_labels", seed=1), 1000, None)
    assert set(np.unique(labels)) == {0.0, 1.0} and 0.4 < labels.mean() < 0.6
    np.testing.assert_array_equal(labels, item_quality(GRPOParams(reward="random_labels", seed=1), 1000, None))
    assert item_quality(GRPOParams(reward="standard"), 5, np.ones(5)) is None


def test_group_normalised_advantages():
    r = torch.tensor([[1.0, 0.0, 0.0, 0.0], [0.3, 0.3, 0.3, 0.3]])
    a = group_advantages(r, eps=1e-4)
    std = np.sqrt(0.1875)
    torch.testing.assert_close(a[0], torch.tensor([0.75, -0.25, -0.25, -0.25]) / (std + 1e-4))
    assert torch.equal(a[1], torch.zeros(4))  # identical rewards -> no signal
    torch.testing.assert_close(a[0].sum(), torch.tensor(0.0), atol=1e-6, rtol=0)


def test_grpo_loss_terms():
    lp = torch.log(torch.tensor([[[0.5, 0.5]]]))
    loss, policy, kl = grpo_loss(lp, lp, lp, torch.tensor([[2.0]]), 0.2, 0.1)
    assert kl.item() == pytest.approx(0.0) and policy.item() == pytest.approx(-2.0)
    # the clip bounds the gain of a ratio far above 1 + eps
    _, clipped, _ = grpo_loss(lp + 1.0, lp, lp, torch.tensor([[1.0]]), 0.2, 0.0)
    assert clipped.item() == pytest.approx(-1.2)
    _, _, kl = grpo_loss(lp, lp, lp + 0.5, torch.tensor([[0.0]]), 0.2, 1.0)
    assert kl.item() == pytest.approx(np.exp(0.5) - 0.5 - 1)


def test_grpo_steps_raise_the_probability_of_the_rewarded_item():
    sids = random_sids(8, (2, 2, 2), seed=0)
    model = tiny_model((2, 2, 2), seed=1)
    trie = SIDTrie.from_sids(sids, (2, 2, 2))
    batch = inputs(model, sids, [np.array([0, 1])])
    target = 5
    target_samples = sample_sids(model, batch.enc_tokens, batch.enc_item, trie, 1)
    target_samples.codes[:] = torch.from_numpy(sids[target])
    target_samples.items[:] = target

    def target_log_prob():
        with torch.no_grad():
            return float(sequence_log_probs(model, batch.enc_tokens, batch.enc_item, target_samples).sum())

    p = GRPOParams(reward="standard", group_size=32)
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    gen = torch.Generator().manual_seed(0)
    before = target_log_prob()
    mean_rewards = []
    for _ in range(5):
        s = sample_sids(model, batch.enc_tokens, batch.enc_item, trie, p.group_size, generator=gen)
        r = compute_rewards(s.codes, s.items, torch.from_numpy(sids[[target]]), torch.tensor([target]), p)
        mean_rewards.append(float(r.mean()))
        lp = sequence_log_probs(model, batch.enc_tokens, batch.enc_item, s)
        loss, _, _ = grpo_loss(lp, lp.detach(), lp.detach(), group_advantages(r, p.adv_eps), p.clip_eps, p.kl_beta)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert target_log_prob() > before + 0.5
    assert mean_rewards[-1] > mean_rewards[0]


def test_train_grpo_keeps_the_best_validated_policy():
    from semid_pipeline.core.recommender.train import train_recommender

    sids = random_sids(N_CHAINS * CHAIN, (4, 4, 4), seed=1)
    train, valid, _ = chain_data(n_users=120)
    users = np.arange(len(train))
    mp, tp = small_params()
    tp = tp.model_copy(update={"epochs": 4})
    sft = train_recommender(sids, train, valid, train, users, mp, tp).model
    before = {k: v.clone() for k, v in sft.state_dict().items()}
    p = GRPOParams(group_size=8, batch_size=32, epochs=2, lr=1e-3, reward="random_labels", eval_beam_size=10,
                   device="cpu", num_threads=1)
    res = train_grpo(sft, sids, train, valid, users, p)
    assert [h["epoch"] for h in res.history] == [0, 1, 2]
    assert all("valid_recall@10" in h for h in res.history)
    assert all(h["queries"] == 120 and h["queries_per_s"] > 0 and 0 <= h["exact_rate"] <= 1 for h in res.history[1:])
    best = max(res.history, key=lambda h: (h["valid_recall@10"], h["valid_ndcg@10"]))
    assert res.best_epoch == best["epoch"]
    for k, v in sft.state_dict().items():  # the supervised model (the reference) is untouched
        assert torch.equal(v, before[k])
    with pytest.raises(ValueError, match="needs per-item quality scores"):
        train_grpo(sft, sids, train, valid, users, p.model_copy(update={"reward": "qarm"}))
