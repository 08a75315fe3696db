"""Our constrained beam search returns what Hugging Face ``generate`` + ``prefix_allowed_tokens_fn`` returns."""

import numpy as np
import pytest
import torch

from semid_pipeline.core.recommender import beam
from semid_pipeline.core.recommender.beam import constrained_beam_search
from semid_pipeline.core.recommender.data import build_inference_rows
from semid_pipeline.devtools.hf_adapter import HFRecommender, TriePrefixAllowedTokens, hf_beam_search
from semid_pipeline.core.recommender.model import GenerativeRecommender, RecommenderParams
from semid_pipeline.core.recommender.trie import SIDTrie
from semid_pipeline.core.recommender.vocab import BOS, PAD, SIDVocab
from semid_pipeline.core.tokenizers.collisions import append_dedup_token

H = 6
TIE = 1e-5


@pytest.fixture(scope="module")
def setup():
    """600 items on an 8 x 8 x 8 code grid (so codes collide) + an appended dedup level, a peaked random
    model (well separated scores) and 24 users with 0..12 history items."""
    rng = np.random.default_rng(0)
    sids, dedup = append_dedup_token(rng.integers(0, 8, (600, 3)))
    assert dedup.max() >= 2  # the dedup level is really used
    vocab = SIDVocab.from_sids(sids, n_user_buckets=16)
    torch.manual_seed(0)
    params = RecommenderParams(
        d_model=32, n_encoder_layers=2, n_decoder_layers=2, n_heads=2, d_head=16, d_ff=64, max_history_items=H, n_user_buckets=16
    )
    model = GenerativeRecommender(params, vocab)
    for p in model.parameters():
        p.data.normal_(0.0, 0.3)
    model.eval()
    histories = [rng.integers(0, len(sids), n) for n in rng.integers(0, 13, 24)]
    users = np.arange(len(histories))
    batch = build_inference_rows(histories, vocab.user_tokens(users), vocab.item_tokens(sids), H).batch(users)
    return sids, vocab, model, SIDTrie.from_sids(sids, vocab.level_sizes), batch


def assert_same_up_to_ties(items_a, scores_a, items_b, scores_b):
    """Per-rank scores agree; items may differ only at ranks tied (within ``TIE``) with a neighbouring
    rank, or at the last rank (its tie partner may be rank ``k + 1``, outside the list)."""
    torch.testing.assert_close(scores_a, scores_b, atol=TIE, rtol=0)
    gap = (scores_a[:, :-1] - scores_a[:, 1:]).abs() <= TIE
    tied = torch.zeros_like(scores_a, dtype=torch.bool)
    tied[:, 1:] |= gap
    tied[:, :-1] |= gap
    tied[:, -1] = True
    assert torch.equal(items_a[~tied], items_b[~tied])
    assert (items_a == items_b).float().mean() > 0.9  # a random peaked model rarely ties


@pytest.mark.parametrize("use_cache", [True, False])
def test_hf_generate_matches_constrained_beam_search(setup, use_cache):
    sids, vocab, model, trie, batch = setup
    ours_items, ours_scores = constrained_beam_search(model, batch, trie, beam_size=20, top_k=10)
    hf = HFRecommender(model).eval()
    assert hf.recommender is model  # same weights, not a copy
    hf_items, hf_scores = hf_beam_search(hf, batch, trie, TriePrefixAllowedTokens(trie, vocab), 20, 10, use_cache=use_cache)
    assert_same_up_to_ties(ours_items, ours_scores, hf_items, hf_scores)
    # every HF output is a catalogue item (its SID walks the trie to a leaf), distinct within a list
    assert ((hf_items >= 0) & (hf_items < len(sids))).all()
    assert all(len(set(row)) == 10 for row in hf_items.tolist())
    assert (hf_scores[:, :-1] >= hf_scores[:, 1:]).all()


def test_cpu_blocks_match_one_batch(setup, monkeypatch):
    """CPU batches are decoded in blocks of users, each trimmed to its longest history: same lists."""
    _, vocab, model, trie, batch = setup
    whole = constrained_beam_search(model, batch, trie, beam_size=20, top_k=10)
    monkeypatch.setattr(beam, "CPU_BLOCK_BYTES", 5 * 20 * vocab.vocab_size * 4)  # blocks of 5 users
    blocked = constrained_beam_search(model, batch, trie, beam_size=20, top_k=10)
    assert_same_up_to_ties(*whole, *blocked)


def test_last_step_skips_beams_that_cannot_reach_the_top_k(setup, monkeypatch):
    """The last step expands the best ``top_k`` beams, then only the beams scoring at least their
    ``top_k``-th candidate: fewer decoder rows, the same lists as expanding every beam."""
    _, _, model, trie, batch = setup
    last_rows = []
    step = beam._BeamDecoder.step

    def spy(self, tokens, ancestors, keep=True, users=None):
        if not keep:
            last_rows.append(tokens.numel())
        return step(self, tokens, ancestors, keep, users)

    monkeypatch.setattr(beam._BeamDecoder, "step", spy)
    level_log_probs = beam._level_log_probs

    def trained_like(model, states, level):
        """A random model's last token costs ~4 nats, a trained model's (mostly a forced
        de-duplication token) little: scale the last level's log-probabilities by 0.1 (any values
        <= 0 keep the skipping exact)."""
        log_probs = level_log_probs(model, states, level)
        return 0.1 * log_probs if level == model.vocab.n_levels - 1 else log_probs

    monkeypatch.setattr(beam, "_level_log_probs", trained_like)
    pruned_items, pruned_scores = constrained_beam_search(model, batch, trie, beam_size=20, top_k=10)
    n_users = batch.enc_tokens.shape[0]
    assert 10 * n_users < sum(last_rows) < 20 * n_users  # some, not all, of beams 10..19 were skipped

    def expand_all(expand, scores, top_k):
        candidates, children = expand(torch.arange(scores.shape[1]))
        top, flat = candidates.flatten(1).topk(top_k, dim=1)
        return top, torch.where(torch.isfinite(top), children.flatten(1).gather(1, flat).long(), -1)

    monkeypatch.setattr(beam, "_last_level", expand_all)
    full_items, full_scores = constrained_beam_search(model, batch, trie, beam_size=20, top_k=10)
    assert torch.equal(pruned_items, full_items)
    torch.testing.assert_close(pruned_scores, full_scores, atol=1e-6, rtol=0)


def test_prefix_allowed_tokens_walk_the_trie(setup):
    sids, vocab, _, trie, _ = setup
    allowed = TriePrefixAllowedTokens(trie, vocab)
    tokens = vocab.item_tokens(sids)
    for level in range(vocab.n_levels):
        for item in range(0, len(sids), 37):
            prefix = tokens[item, :level]
            share = (tokens[:, :level] == prefix).all(axis=1)
            got = allowed(0, torch.tensor([BOS, *prefix.tolist()]))
            assert got == sorted(set(tokens[share, level].tolist()))
    assert allowed(3, torch.tensor([BOS, PAD])) == [PAD]  # off the trie: the dead beam stays dead


def test_hf_beam_search_rejects_bad_arguments(setup):
    _, vocab, model, trie, batch = setup
    hf = HFRecommender(model)
    with pytest.raises(ValueError, match="beam_size"):
        hf_beam_search(hf, batch, trie, TriePrefixAllowedTokens(trie, vocab), beam_size=5, top_k=10)
    with pytest.raises(ValueError, match="level sizes"):
        TriePrefixAllowedTokens(SIDTrie.from_sids(trie.sids), SIDVocab((9, 9, 9, 9), 16))
