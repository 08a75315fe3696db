"""End-to-end training of the generative recommender on a learnable synthetic rule."""

import numpy as np
import pytest
import torch

from semid_pipeline.core.metrics import recall_at_k
from semid_pipeline.core.recommender.model import RecommenderParams
from semid_pipeline.core.recommender.train import TrainParams, recommend, train_recommender
from semid_pipeline.core.recommender.trie import SIDTrie
from semid_pipeline_tests.test_recommender_trie import random_sids

N_CHAINS, CHAIN = 6, 10  # items form 6 cycles of 10: the next item is the following one in the cycle


def chain_data(n_users: int = 240, length: int = 8, seed: int = 0):
    """Leave-one-out splits of users walking a cycle from a random start: every transition of the
    validation and test targets also occurs among the training targets."""
    rng = np.random.default_rng(seed)
    chain, start = rng.integers(0, N_CHAINS, n_users), rng.integers(0, CHAIN, n_users)
    seqs = chain[:, None] * CHAIN + (start[:, None] + np.arange(length)) % CHAIN
    return [s[:-2] for s in seqs], seqs[:, -2], seqs[:, -1]


def small_params(**kw) -> tuple[RecommenderParams, TrainParams]:
    model = RecommenderParams(
        d_model=48, n_encoder_layers=1, n_decoder_layers=2, n_heads=2, d_head=24, d_ff=96, dropout=0.0,
        max_history_items=5, n_user_buckets=16,
    )
    train = TrainParams(epochs=16, batch_size=16, lr=4e-3, warmup_steps=100, eval_every_epochs=4, patience=2,
                        eval_beam_size=10, seed=0, device="cpu", num_threads=1, **kw)
    return model, train


@pytest.fixture(autouse=True)
def restore_threads():
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


def test_learns_next_item_rule():
    sids = random_sids(N_CHAINS * CHAIN, (4, 4, 4), seed=1)
    train, valid, test = chain_data()
    users = np.arange(len(train))
    model_params, train_params = small_params()
    result = train_recommender(sids, train, valid, train, users, model_params, train_params)
    evaluated = [h for h in result.history if "valid_recall@10" in h]
    assert [h["epoch"] for h in evaluated] == list(range(4, 4 * len(evaluated) + 1, 4))
    best = max(h["valid_recall@10"] for h in evaluated)
    assert best >= 0.95 and result.best_epoch in [h["epoch"] for h in evaluated if h["valid_recall@10"] == best]
    assert result.history[-1]["loss"] < result.history[0]["loss"]
    assert all(h["samples_per_s"] > 0 for h in result.history)
    # test split: the history also holds the validation item
    items, _ = recommend(result.model, SIDTrie.from_sids(sids), [np.append(t, v) for t, v in zip(train, valid)], users, 10, 10, 64)
    assert recall_at_k(items, test, 10).mean() >= 0.95


def test_training_is_deterministic_and_validates_modes():
    sids = random_sids(N_CHAINS * CHAIN, (4, 4, 4), seed=1)
    train, valid, _ = chain_data(n_users=40)
    users = np.arange(len(train))
    model_params, train_params = small_params()
    train_params = train_params.model_copy(update={"epochs": 1})
    a = train_recommender(sids, train, valid, train, users, model_params, train_params)
    b = train_recommender(sids, train, valid, train, users, model_params, train_params)
    assert a.history[0]["loss"] == b.history[0]["loss"]
    bidirectional = model_params.model_copy(update={"encoder_mask": "bidirectional"})
    with pytest.raises(ValueError, match="per_prefix"):
        train_recommender(sids, train, valid, train, users, bidirectional, train_params)
    result = train_recommender(sids, train, valid, train, users, bidirectional, train_params.model_copy(update={"mode": "per_prefix"}))
    assert result.best_epoch == 1
