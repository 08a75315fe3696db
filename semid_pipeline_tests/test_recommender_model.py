"""Generative recommender: exact per-user packing, beam search vs exhaustive scoring, artifacts."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from semid_pipeline.core.artifacts import load_artifact, save_artifact
from semid_pipeline.core.recommender.beam import constrained_beam_search
from semid_pipeline.core.recommender.data import (
    IGNORE_LABEL,
    LengthBucketSampler,
    SIDBatch,
    build_inference_rows,
    build_training_rows,
)
from semid_pipeline.core.recommender.model import GenerativeRecommender, RecommenderParams
from semid_pipeline.core.recommender.train import recommend
from semid_pipeline.core.recommender.trie import SIDTrie
from semid_pipeline.core.recommender.vocab import BOS, SIDVocab
from semid_pipeline_tests.test_recommender_trie import random_sids

SIZES = (3, 4, 5)
H = 6


def tiny_model(
    vocab: SIDVocab, encoder_mask: str = "causal_items", weight_std: float = 0.0, output_vocab: str = "sid_codes"
) -> GenerativeRecommender:
    torch.manual_seed(0)
    params = RecommenderParams(
        d_model=32, n_encoder_layers=2, n_decoder_layers=2, n_heads=2, d_head=16, d_ff=64,
        max_history_items=H, n_user_buckets=vocab.n_user_buckets, encoder_mask=encoder_mask, output_vocab=output_vocab,
    )
    model = GenerativeRecommender(params, vocab)
    if weight_std:  # a peaked random model, so item scores are well separated
        for p in model.parameters():
            p.data.normal_(0.0, weight_std)
    return model.eval()


def setup(n_items=25, lengths=(2, 4, 7, 3, 0, 12), seed=0):
    rng = np.random.default_rng(seed)
    sids = random_sids(n_items, SIZES, seed)
    vocab = SIDVocab(SIZES, n_user_buckets=5)
    histories = [rng.integers(0, n_items, n) for n in lengths]
    return sids, vocab, histories


def token_nll(model: GenerativeRecommender, batch: SIDBatch) -> torch.Tensor:
    """Negative log-likelihood of every labelled decoder token, in row-major order."""
    logp = F.log_softmax(model(batch), dim=-1)
    keep = batch.dec_labels != IGNORE_LABEL
    return -logp.gather(-1, batch.dec_labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)[keep]


def test_rows_cover_every_target_once_and_bound_long_users():
    sids, vocab, histories = setup(lengths=(2, 30, 1, 7))
    args = (histories, vocab.user_tokens(np.arange(4)), vocab.item_tokens(sids), H)
    per_user, per_prefix = build_training_rows(*args, targets_per_row=H), build_training_rows(*args, targets_per_row=1)
    assert per_prefix.n_rows == 1 + 29 + 6 and per_user.n_rows == 1 + 5 + 1
    assert per_user.n_targets.sum() == per_prefix.n_targets.sum() == 36
    assert per_user.enc_lengths.max() <= 1 + (2 * H - 1) * 3
    b_user, b_prefix = per_user.batch(np.arange(per_user.n_rows)), per_prefix.batch(np.arange(per_prefix.n_rows))
    for b in (b_user, b_prefix):  # same (target, label) sequence in both layouts
        keep = b.dec_labels != IGNORE_LABEL
        assert b.dec_tokens[keep].view(-1, 3)[:, 0].eq(BOS).all()
    assert torch.equal(b_user.dec_labels[b_user.dec_labels != IGNORE_LABEL], b_prefix.dec_labels[b_prefix.dec_labels != IGNORE_LABEL])
    # a per_prefix row holds the target's window [t - H, t)
    row = b_prefix.enc_item[per_prefix.n_rows - 1]
    assert sorted(set(row[row >= 0].tolist())) == list(range(0, 6))


def test_length_bucket_sampler_is_seeded_and_complete():
    lengths = np.random.default_rng(0).integers(1, 50, 1000)
    sampler = LengthBucketSampler(lengths, batch_size=32, seed=3, pool_batches=4)
    epoch = sampler.epoch(1)
    assert len(epoch) == len(sampler) and max(len(b) for b in epoch) == 32
    assert np.array_equal(np.sort(np.concatenate(epoch)), np.arange(1000))
    assert all(np.array_equal(a, b) for a, b in zip(epoch, LengthBucketSampler(lengths, 32, seed=3, pool_batches=4).epoch(1)))
    assert not all(np.array_equal(a, b) for a, b in zip(epoch, sampler.epoch(2)))
    spread = np.mean([np.ptp(lengths[b]) for b in epoch])
    assert spread < 0.25 * np.ptp(lengths)  # batches hold rows of similar length


def test_per_user_loss_equals_per_prefix_losses():
    sids, vocab, histories = setup(lengths=(2, 4, 7, 3, 5))  # all n <= H + 1: packing is exact
    model = tiny_model(vocab, weight_std=0.2)
    args = (histories, vocab.user_tokens(np.arange(len(histories))), vocab.item_tokens(sids), H)
    per_user = build_training_rows(*args, targets_per_row=H)
    per_prefix = build_training_rows(*args, targets_per_row=1)
    assert per_user.n_rows == len(histories)
    with torch.no_grad():
        nll_user = token_nll(model, per_user.batch(np.arange(per_user.n_rows)))
        nll_prefix = token_nll(model, per_prefix.batch(np.arange(per_prefix.n_rows)))
        torch.testing.assert_close(nll_user, nll_prefix, atol=1e-5, rtol=1e-5)
        # the mean loss of a user equals the mean of its per-prefix losses
        one_user = model.loss(per_user.batch(np.array([2])))
        prefix_losses = [model.loss(per_prefix.batch(np.array([r]))) for r in range(1 + 3, 1 + 3 + 6)]
        torch.testing.assert_close(one_user, torch.stack(prefix_losses).mean(), atol=1e-5, rtol=1e-5)


def test_bidirectional_encoder_runs_per_prefix():
    sids, vocab, histories = setup()
    model = tiny_model(vocab, encoder_mask="bidirectional")
    rows = build_training_rows(histories, vocab.user_tokens(np.arange(6)), vocab.item_tokens(sids), H, targets_per_row=1)
    assert torch.isfinite(model.loss(rows.batch(np.arange(rows.n_rows)))).item()


def exhaustive_scores(model: GenerativeRecommender, sids: np.ndarray, histories, user_ids) -> torch.Tensor:
    """``[U, N]`` teacher-forced log-probability of every item's full SID."""
    vocab = model.vocab
    rows = build_inference_rows(histories, vocab.user_tokens(user_ids), vocab.item_tokens(sids), H)
    enc = rows.batch(np.arange(rows.n_rows))
    n_users, n_items = len(histories), len(sids)
    tokens = torch.from_numpy(vocab.item_tokens(sids))
    dec_in = torch.cat([torch.full((n_items, 1), BOS), tokens[:, :-1]], dim=1)
    lengths = torch.tensor([len(h) for h in histories])
    batch = SIDBatch(
        enc_tokens=enc.enc_tokens.repeat_interleave(n_items, 0),
        enc_item=enc.enc_item.repeat_interleave(n_items, 0),
        dec_tokens=dec_in.repeat(n_users, 1),
        dec_labels=tokens.repeat(n_users, 1),
        dec_target=lengths.repeat_interleave(n_items).unsqueeze(1).expand(-1, sids.shape[1]).contiguous(),
    )
    with torch.no_grad():
        logp = F.log_softmax(model(batch), dim=-1)
    return logp.gather(-1, batch.dec_labels.unsqueeze(-1)).squeeze(-1).sum(-1).view(n_users, n_items)


@pytest.mark.parametrize("output_vocab", ["sid_codes", "full"])
def test_beam_search_matches_exhaustive_scoring(output_vocab):
    sids, vocab, histories = setup()
    model = tiny_model(vocab, weight_std=0.3, output_vocab=output_vocab)
    trie = SIDTrie.from_sids(sids, SIZES)
    users = np.arange(len(histories))
    exact = exhaustive_scores(model, sids, histories, users)
    batch = build_inference_rows(histories, vocab.user_tokens(users), vocab.item_tokens(sids), H).batch(users)

    items, scores = constrained_beam_search(model, batch, trie, beam_size=len(sids), top_k=10)  # exhaustive beam
    best, best_items = exact.topk(10, dim=1)
    torch.testing.assert_close(scores, best, atol=1e-4, rtol=0)
    torch.testing.assert_close(exact.gather(1, items), scores, atol=1e-4, rtol=0)
    separated = torch.ones_like(best, dtype=torch.bool)
    separated[:, 1:] &= (best[:, :-1] - best[:, 1:]) > 1e-4
    separated[:, :-1] &= (best[:, :-1] - best[:, 1:]) > 1e-4
    assert torch.equal(items[separated], best_items[separated])

    narrow, narrow_scores = constrained_beam_search(model, batch, trie, beam_size=4, top_k=4)
    assert ((narrow >= 0) & (narrow < len(sids))).all()
    assert all(len(set(r)) == 4 for r in narrow.tolist())
    torch.testing.assert_close(exact.gather(1, narrow), narrow_scores, atol=1e-4, rtol=0)
    assert (narrow_scores[:, :-1] >= narrow_scores[:, 1:]).all()


def test_beam_search_pads_small_catalogues():
    sids, vocab, histories = setup(n_items=5)
    model = tiny_model(vocab)
    trie = SIDTrie.from_sids(sids, SIZES)
    items, scores = recommend(model, trie, histories, np.arange(len(histories)), beam_size=10, top_k=10, batch_size=4)
    assert items.shape == (6, 10)
    assert (np.sort(items[:, :5], axis=1) == np.arange(5)).all()
    assert (items[:, 5:] == -1).all() and np.isneginf(scores[:, 5:]).all() and np.isfinite(scores[:, :5]).all()


@pytest.mark.parametrize("output_vocab", ["sid_codes", "full"])
def test_output_vocabulary(output_vocab):
    """``sid_codes``: the softmax runs over the SID code tokens only (PAD, BOS and user tokens get
    ``-inf``); the training loss is the mean NLL of that distribution, for both settings."""
    sids, vocab, histories = setup(lengths=(2, 4, 7, 3, 5))
    model = tiny_model(vocab, weight_std=0.2, output_vocab=output_vocab)
    rows = build_training_rows(histories, vocab.user_tokens(np.arange(len(histories))), vocab.item_tokens(sids), H, targets_per_row=H)
    batch = rows.batch(np.arange(rows.n_rows))
    with torch.no_grad():
        logits = model(batch)
        outside = torch.cat([logits[..., :2], logits[..., vocab.user_offset :]], dim=-1)
        assert logits.shape[-1] == vocab.vocab_size
        if output_vocab == "sid_codes":
            assert torch.isneginf(outside).all() and torch.isfinite(logits[..., 2 : vocab.user_offset]).all()
        else:
            assert torch.isfinite(logits).all()
        torch.testing.assert_close(model.loss(batch), token_nll(model, batch).mean(), atol=1e-5, rtol=1e-5)


def test_model_saved_without_output_vocab_loads_as_full(tmp_path):
    """Artifacts written before ``output_vocab`` existed were trained with the full-vocabulary softmax."""
    import json

    _, vocab, _ = setup()
    save_artifact(tiny_model(vocab, output_vocab="full"), tmp_path / "old")
    config_files = [f for f in (tmp_path / "old").iterdir() if f.suffix == ".json"]
    for path in config_files:
        text = json.loads(path.read_text())
        params = text.get("config", text).get("params") if isinstance(text.get("config", text), dict) else None
        if params and "output_vocab" in params:
            del params["output_vocab"]
            text.pop("content_sha256", None)  # such artifacts predate content hashes (format 1)
            text["format_version"] = 1
            path.write_text(json.dumps(text))
            break
    else:
        raise AssertionError(f"no saved params in {config_files}")
    with pytest.warns(UserWarning, match="without a content hash"):
        assert load_artifact(tmp_path / "old").params.output_vocab == "full"


def test_save_load_round_trip(tmp_path):
    sids, vocab, histories = setup()
    model = tiny_model(vocab, weight_std=0.3)
    trie = SIDTrie.from_sids(sids, SIZES)
    users = np.arange(len(histories))
    before = recommend(model, trie, histories, users, beam_size=8, top_k=5, batch_size=4)
    save_artifact(model, tmp_path / "tiger")
    loaded = load_artifact(tmp_path / "tiger")
    assert isinstance(loaded, GenerativeRecommender) and loaded.vocab == vocab and loaded.params == model.params
    after = recommend(loaded, trie, histories, users, beam_size=8, top_k=5, batch_size=4)
    assert np.array_equal(before[0], after[0]) and np.array_equal(before[1], after[1])


def test_beam_search_rejects_mismatched_inputs():
    sids, vocab, histories = setup()
    model = tiny_model(vocab)
    batch = build_inference_rows(histories, vocab.user_tokens(np.arange(6)), vocab.item_tokens(sids), H).batch(np.arange(6))
    with pytest.raises(ValueError, match="beam_size"):
        constrained_beam_search(model, batch, SIDTrie.from_sids(sids, SIZES), beam_size=3, top_k=5)
    with pytest.raises(ValueError, match="level sizes"):
        constrained_beam_search(model, batch, SIDTrie.from_sids(sids, (3, 4, 6)), beam_size=5, top_k=5)
