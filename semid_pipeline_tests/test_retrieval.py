"""Retrieval core: BM25 against hand-computed scores, dense search, Recall@k, the CAT-ID2 task
filter, and the query-to-SID generative retriever (training, constrained decoding, save/reload)."""

import math

import numpy as np
import pandas as pd
import pytest
import torch

from semid_pipeline.core.artifacts import load_artifact, save_artifact
from semid_pipeline.core.retrieval.bm25 import BM25Index, BM25Params
from semid_pipeline.core.retrieval.data import QueryVocab, build_task
from semid_pipeline.core.retrieval.dense import dense_search
from semid_pipeline.core.retrieval.metrics import recall_per_query, recall_table
from semid_pipeline.core.retrieval.query_model import (
    GenerativeRetrieverParams,
    train_generative_retriever,
    training_batch,
)


def test_bm25_matches_hand_computed_scores():
    # N = 3, avgdl = 2, k1 = 1.2, b = 0.75; "apple" has df = 2: idf = ln(1 + 1.5 / 2.5) = ln 1.6.
    # doc 0 (tf 1, dl 2): 1 * 2.2 / (1 + 1.2 * 1.0) = 1;  doc 1 (tf 2, dl 3): 4.4 / (2 + 1.2 * 1.375) = 4.4 / 3.65
    docs = ["Apple banana", "apple APPLE cherry", "cherry"]
    index = BM25Index(docs, BM25Params(k1=1.2, b=0.75))
    idf = math.log(1.6)
    expected = np.array([[idf * 1.0, idf * 4.4 / 3.65, 0.0]])
    np.testing.assert_allclose(index.scores(["apple"]), expected, rtol=1e-6)
    # a repeated query token counts twice; unknown tokens add nothing
    np.testing.assert_allclose(index.scores(["apple apple durian"]), 2 * expected, rtol=1e-6)
    idx, val = index.search(["apple", "durian"], top_k=3)
    assert idx.tolist() == [[1, 0, -1], [-1, -1, -1]]
    assert val[0, 0] == pytest.approx(idf * 4.4 / 3.65) and np.isneginf(val[0, 2]) and np.isneginf(val[1]).all()


def test_bm25_batches_give_the_same_ranking():
    rng = np.random.default_rng(0)
    words = [f"w{i}" for i in range(30)]
    docs = [" ".join(rng.choice(words, rng.integers(1, 8))) for _ in range(50)]
    queries = [" ".join(rng.choice(words, 2)) for _ in range(9)]
    a = BM25Index(docs, BM25Params(batch_size=2)).search(queries, 10)
    b = BM25Index(docs, BM25Params(batch_size=100)).search(queries, 10)
    np.testing.assert_array_equal(a[0], b[0])
    full = BM25Index(docs).scores(queries)
    best = np.where(full.max(axis=1) > 0, full.argmax(axis=1), -1)
    np.testing.assert_array_equal(a[0][:, 0], best)


def test_dense_search_is_cosine_top_k():
    docs = np.array([[1.0, 0.0], [0.0, 2.0], [1.0, 1.0]], dtype=np.float32)
    queries = np.array([[0.1, 1.0], [3.0, 0.0]], dtype=np.float32)
    idx, val = dense_search(queries, docs, top_k=4)
    assert idx.tolist() == [[1, 2, 0, -1], [0, 2, 1, -1]]
    assert val[1, 0] == pytest.approx(1.0, abs=1e-6) and val[1, 1] == pytest.approx(1 / math.sqrt(2), abs=1e-6)


def test_recall_with_several_relevant_items():
    ranked = np.array([[4, 2, 9], [5, -1, -1]])
    relevant = [np.array([2, 5]), np.array([5])]
    assert recall_per_query(ranked, relevant, 1).tolist() == [0.0, 1.0]
    assert recall_per_query(ranked, relevant, 2).tolist() == [0.5, 1.0]
    assert recall_table(ranked, relevant, [1, 3, 5]) == {1: 0.5, 3: 0.75}
    with pytest.raises(ValueError):
        recall_per_query(ranked, [np.array([1]), np.array([], dtype=np.int64)], 2)


def test_build_task_applies_cat_id2_rules():
    q = pd.DataFrame(
        [
            ("1", "red shoe", "A", "E", "train"), ("1", "red shoe", "B", "S", "train"), ("1", "red shoe", "C", "I", "train"),
            ("2", "blue hat", "C", "E", "test"), ("2", "blue hat", "A", "E", "test"), ("2", "blue hat", "B", "C", "test"),
            ("3", "green bag", "C", "E", "test"), ("4", "gift", "Z", "E", "train"),
        ],
        columns=["query_id", "query", "item_id", "esci_label", "split"],
    )
    task = build_task(q, ["A", "B", "C"])
    assert task.train_texts == ["red shoe"] and task.train_item.tolist() == [0, 1]  # I pairs never train; Z has no SID
    assert task.test_query_ids == ["2"]  # query 3's only product never appears in training
    assert [r.tolist() for r in task.test_relevant] == [[0]]  # C (untrained) dropped, the complement is not relevant
    assert task.stats["n_pairs_without_catalog_item"] == 1


def test_query_vocab_maps_unseen_wordpieces_to_unknown():
    vocab = QueryVocab.fit(["red running shoes", "red hat"], max_tokens=8)
    enc = vocab.encode(["red shoes", "zebra", ""], max_tokens=8)
    assert (enc[0] > 0).all() and enc[1].tolist() == [0] * len(enc[1]) and enc[2].tolist() == [0]
    assert vocab.encode(["red " * 20], max_tokens=5)[0].shape == (5,)


def _toy_task():
    """16 products, each named by a distinct colour + noun query (2 paraphrases for training, 1 held out)."""
    colours = ["red", "blue", "green", "black"]
    nouns = ["shoe", "hat", "bag", "scarf"]
    rows = []
    for i, (c, n) in enumerate([(c, n) for c in colours for n in nouns]):
        rows += [(f"q{i}a", f"{c} {n}", f"P{i:02d}", "E", "train"), (f"q{i}b", f"{n} in {c}", f"P{i:02d}", "E", "train"),
                 (f"q{i}c", f"{c} {n} cheap", f"P{i:02d}", "E", "test")]
    q = pd.DataFrame(rows, columns=["query_id", "query", "item_id", "esci_label", "split"])
    items = [f"P{i:02d}" for i in range(16)]
    sids = np.array([[i // 4, i % 4] for i in range(16)], dtype=np.int64)
    return build_task(q, items), sids


TINY = dict(d_model=32, n_encoder_layers=1, n_decoder_layers=1, n_heads=2, d_head=16, d_ff=64, dropout=0.0,
            epochs=60, batch_size=16, lr=3e-3, warmup_steps=5, valid_fraction=0.0, beam_size=16, top_k=16,
            eval_beam_size=16, seed=3, device="cpu", num_threads=1)


def test_training_batch_layout():
    from semid_pipeline.core.recommender.vocab import BOS, SIDVocab

    vocab = SIDVocab((4, 4), n_user_buckets=10)
    batch = training_batch([np.array([3, 1]), np.array([2])], vocab.item_tokens(np.array([[1, 2], [3, 0]])), vocab)
    assert batch.enc_tokens.tolist() == [[vocab.user_offset + 3, vocab.user_offset + 1], [vocab.user_offset + 2, 0]]
    assert batch.enc_item.tolist() == [[0, 1], [0, -2]]
    assert batch.dec_tokens[:, 0].tolist() == [BOS, BOS]
    assert batch.dec_labels.tolist() == [[3, 4 + 2 + 2], [5, 6]]
    assert batch.dec_target.tolist() == [[2, 2], [1, 1]]


def test_generative_retriever_learns_and_reloads(tmp_path):
    task, sids = _toy_task()
    result = train_generative_retriever(task, sids, GenerativeRetrieverParams(**TINY))
    retriever = result.retriever
    assert result.history[-1]["loss"] < result.history[0]["loss"] / 3
    ranked, scores = retriever.retrieve(task.test_texts)
    assert ranked.shape == (16, 16)
    # every list is the whole catalog exactly once (beam >= catalog), sorted by score
    assert all(sorted(r.tolist()) == list(range(16)) for r in ranked)
    assert (np.diff(scores, axis=1) <= 1e-6).all()
    assert recall_table(ranked, task.test_relevant, [1, 5])[1] >= 0.75  # unseen paraphrases of trained queries

    save_artifact(retriever, tmp_path / "retriever")
    again = load_artifact(tmp_path / "retriever")
    ranked2, scores2 = again.retrieve(task.test_texts)
    np.testing.assert_array_equal(ranked, ranked2)
    np.testing.assert_allclose(scores, scores2, rtol=1e-5)


def test_generative_retriever_is_reproducible_and_validates():
    task, sids = _toy_task()
    params = GenerativeRetrieverParams(**{**TINY, "epochs": 3, "valid_fraction": 0.25, "beam_size": 10, "top_k": 10})
    a = train_generative_retriever(task, sids, params)
    b = train_generative_retriever(task, sids, params)
    assert all("valid_recall@10" in h for h in a.history)
    for (k, va), vb in zip(a.retriever.model.state_dict().items(), b.retriever.model.state_dict().values()):
        assert torch.equal(va, vb), k
    ranked, _ = a.retriever.retrieve(["red shoe"], top_k=5, beam_size=5)
    assert ranked.shape == (1, 5) and len(set(ranked[0].tolist())) == 5
