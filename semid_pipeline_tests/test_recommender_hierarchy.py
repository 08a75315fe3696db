"""Hierarchy-aware semantic embeddings: the (level, code) -> tag map, shapes, tied head, save/reload."""

import numpy as np
import pytest
import torch

from semid_pipeline.core.artifacts import load_artifact, save_artifact
from semid_pipeline.core.recommender.beam import constrained_beam_search
from semid_pipeline.core.recommender.data import build_inference_rows
from semid_pipeline.core.recommender.hierarchy import HierarchyInputs, LevelTags, build_level_tags, tag_embedding_table
from semid_pipeline.core.recommender.model import GenerativeRecommender, HierarchicalTokenEmbedding, RecommenderParams, TiedHead
from semid_pipeline.core.recommender.train import TrainParams, build_model, train_recommender
from semid_pipeline.core.recommender.trie import SIDTrie
from semid_pipeline.core.recommender.vocab import SIDVocab

# 5 items, SIDs of 3 RQ levels + a dedup level; tag paths of 3 levels
SIDS = np.array([[0, 1, 0, 0], [0, 1, 1, 0], [0, 0, 1, 0], [1, 0, 0, 0], [1, 0, 0, 1]])
TAGS = [
    ["Skincare", "Face", "Serums"],
    ["Skincare", "Face", "Masks"],
    ["Skincare", "Body", "Masks"],
    ["Hair", "Body", "Serums"],
    ["Hair", "Styling", "Gels"],
]


def fake_encode(texts):
    """Deterministic 6-d 'sentence embedding' from the text's characters (no model needed)."""
    out = np.zeros((len(texts), 6), dtype=np.float32)
    for i, t in enumerate(texts):
        for j, ch in enumerate(t.encode()):
            out[i, j % 6] += ch / 100.0
    return out


def test_majority_tag_map_on_hand_made_example():
    tags = build_level_tags(SIDS, TAGS, (2, 2, 2, 2))
    assert tags.texts[0] == ["Skincare", "Hair"]
    # level 1 code 0: items 2 (Body), 3 (Body), 4 (Styling) -> Body with share 2/3; code 1: items 0, 1 -> Face
    assert tags.texts[1] == ["Body", "Face"]
    assert tags.share[1][0] == pytest.approx(2 / 3)
    # level 2 code 0: items 0 Serums, 3 Serums, 4 Gels -> Serums; code 1: Masks, Masks -> Masks
    assert tags.texts[2] == ["Serums", "Masks"]
    # the dedup level has no tag; a tie picks the lexicographically smallest tag
    assert tags.texts[3] == [None, None]
    tie = build_level_tags(np.array([[0], [0]]), [["b"], ["a"]], (1,))
    assert tie.texts[0] == ["a"] and tie.share[0] == [0.5]
    assert tags.decode([1, 0, 0, 1]) == ["Hair", "Body", "Serums"]
    assert LevelTags.from_dict(tags.to_dict()) == tags
    with pytest.raises(ValueError, match="tag_paths has 4 rows"):
        build_level_tags(SIDS, TAGS[:4], (2, 2, 2, 2))


def test_tag_table_rows_follow_the_vocabulary():
    vocab = SIDVocab((2, 2, 2, 2), n_user_buckets=3)
    tags = build_level_tags(SIDS, TAGS, vocab.level_sizes)
    table, has_tag = tag_embedding_table(tags, vocab.level_offsets, vocab.vocab_size, fake_encode)
    assert table.shape == (vocab.vocab_size, 6) and has_tag.shape == (vocab.vocab_size,)
    hair = vocab.level_offsets[0] + 1
    np.testing.assert_array_equal(table[hair], fake_encode(["Hair"])[0])
    assert not has_tag[:2].any() and not has_tag[vocab.level_slice(3)].any() and not has_tag[vocab.user_offset :].any()
    assert has_tag[vocab.level_slice(0)].all()


def small_model(embedding="hierarchy", tie=True):
    vocab = SIDVocab((2, 2, 2, 2), n_user_buckets=3)
    params = RecommenderParams(
        d_model=16, n_encoder_layers=1, n_decoder_layers=1, n_heads=2, d_head=8, d_ff=32, dropout=0.0,
        max_history_items=4, n_user_buckets=3, embedding=embedding, d_id_embedding=8, d_type_embedding=4, tie_embeddings=tie,
    )
    torch.manual_seed(0)
    return build_model(params, vocab, HierarchyInputs(build_level_tags(SIDS, TAGS, vocab.level_sizes), fake_encode)), vocab


def test_hierarchy_embedding_shapes_and_tied_head():
    model, vocab = small_model()
    assert isinstance(model.embed, HierarchicalTokenEmbedding) and isinstance(model.head, TiedHead)
    assert model.embed.table().shape == (vocab.vocab_size, 16)
    tokens = torch.tensor([[1, 2, 5, vocab.user_offset]])
    assert model.embed(tokens).shape == (1, 4, 16)
    x = torch.randn(3, 16)
    torch.testing.assert_close(model.head(x), x @ model.embed.table().T)
    # the frozen sentence vectors are buffers, not parameters; no head.weight is stored twice
    assert "embed.tag_table" in dict(model.named_buffers()) and "embed.tag_table" not in dict(model.named_parameters())
    assert not any(n.startswith("head.") for n in model.state_dict())
    # gradients reach the ID embedding, the projection and the no-tag vector
    loss = model.head(torch.randn(2, 16)).logsumexp(-1).sum() + model.embed(torch.tensor([[0, 9]])).sum()
    loss.backward()
    assert model.embed.proj.weight.grad is not None and model.embed.no_tag.grad is not None


@pytest.mark.parametrize("tie", [True, False])
def test_save_reload_is_exact(tmp_path, tie):
    model, vocab = small_model(tie=tie)
    with torch.no_grad():
        for t in model.parameters():
            t.add_(torch.randn_like(t) * 0.1)
    save_artifact(model, tmp_path / "m")
    loaded = load_artifact(tmp_path / "m")
    assert isinstance(loaded, GenerativeRecommender) and loaded.level_tags == model.level_tags
    trie = SIDTrie.from_sids(SIDS, vocab.level_sizes)
    rows = build_inference_rows([np.array([0, 1]), np.array([3])], vocab.user_tokens(np.array([0, 1])), vocab.item_tokens(SIDS), 4)
    batch = rows.batch(np.arange(2))
    a = constrained_beam_search(model.eval(), batch, trie, beam_size=5, top_k=5)
    b = constrained_beam_search(loaded, batch, trie, beam_size=5, top_k=5)
    torch.testing.assert_close(a[1], b[1], rtol=0, atol=0)
    assert torch.equal(a[0], b[0])


def test_standard_model_keeps_the_tag_map_and_training_runs():
    model, vocab = small_model(embedding="standard")
    assert model.level_tags is not None and not isinstance(model.embed, HierarchicalTokenEmbedding)
    params = RecommenderParams(
        d_model=16, n_encoder_layers=1, n_decoder_layers=1, n_heads=2, d_head=8, d_ff=32, max_history_items=4,
        n_user_buckets=3, embedding="hierarchy", d_id_embedding=8, d_type_embedding=4,
    )
    train = TrainParams(epochs=2, batch_size=4, warmup_steps=2, eval_beam_size=10, device="cpu", num_threads=1)
    hist = [np.array([0, 1, 2]), np.array([3, 4, 0]), np.array([1, 2, 3])]
    with pytest.raises(ValueError, match="needs hierarchy"):
        train_recommender(SIDS, hist, np.array([3, 1, 4]), hist, np.arange(3), params, train)
    result = train_recommender(
        SIDS, hist, np.array([3, 1, 4]), hist, np.arange(3), params, train,
        hierarchy=HierarchyInputs(build_level_tags(SIDS, TAGS, (2, 2, 2, 2)), fake_encode),
    )
    assert isinstance(result.model.embed, HierarchicalTokenEmbedding) and len(result.history) == 2


def test_explanations_decode_recommended_and_history_paths():
    import pandas as pd

    from semid_pipeline.core.recommender.explain import explain_recommendations

    tags = build_level_tags(SIDS, TAGS, (2, 2, 2, 2))
    recs = pd.DataFrame({"model": "generative", "split": "test", "user_idx": [0, 0], "user_id": ["u0", "u0"],
                         "rank": [0, 1], "item_idx": [3, 1], "item_id": ["d", "b"], "score": [-1.0, -2.0]})
    titles = ["A", "B", "C", "D", "E"]
    out = explain_recommendations(recs, tags, SIDS, titles, {0: [0, 2, 4]}, {0: 1}, max_history=2)
    assert out["tag_path"].tolist() == [["Hair", "Body", "Serums"], ["Skincare", "Face", "Masks"]]
    assert out["tag_path_str"].tolist()[0] == "Hair > Body > Serums" and out["sid_str"].tolist() == ["1-0-0-0", "0-1-1-0"]
    assert out["hit"].tolist() == [False, True] and out["title"].tolist() == ["D", "B"]
    assert out["history_titles"][0] == ["C", "E"] and out["history_paths"][0] == ["Skincare > Body > Masks", "Hair > Body > Serums"]
    assert out["rank"].tolist() == [1, 2]  # ranks count from 1 in what a person reads
    shares = out["tag_path_share"].tolist()
    assert [len(s) for s in shares] == [3, 3] and all(0.0 < v <= 1.0 for s in shares for v in s)
    assert shares[0] == [tags.share[lv][int(SIDS[3][lv])] for lv in range(3)]


def test_path_source_says_how_paths_were_derived():
    from semid_pipeline.core.recommender.explain import path_source

    assert "majority" in path_source(False) and "not trained on tags" in path_source(False)
    assert "supervised" in path_source(True) and path_source(True) != path_source(False)


def test_table_memo_is_invalidated_by_updates_and_grad_mode():
    model, _ = small_model()
    emb = model.embed
    with torch.no_grad():
        a = emb.table()
        assert emb.table() is a  # shared within a pass
    b = emb.table()
    assert b is not a and b.requires_grad  # grad mode gets a table in the graph
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    b.sum().backward()
    opt.step()
    c = emb.table()
    assert c is not b and not torch.equal(c.detach(), b.detach())  # a weight update recomputes it
    state = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        emb.ids.weight.zero_()
    model.load_state_dict(state)
    torch.testing.assert_close(emb.table().detach(), c.detach())
