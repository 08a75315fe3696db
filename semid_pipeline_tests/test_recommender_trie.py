"""Vocabulary layout and prefix-trie tables of the generative recommender."""

import numpy as np
import pytest
import torch

from semid_pipeline.core.recommender.trie import SIDTrie
from semid_pipeline.core.recommender.vocab import BOS, PAD, SIDVocab


def random_sids(n: int, sizes: tuple, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    grid = np.stack(np.meshgrid(*[np.arange(s) for s in sizes], indexing="ij"), -1).reshape(-1, len(sizes))
    return grid[rng.choice(len(grid), n, replace=False)]


def test_vocab_layout_and_round_trip():
    vocab = SIDVocab((4, 5, 3), n_user_buckets=7)
    assert vocab.level_offsets == (2, 6, 11) and vocab.user_offset == 14 and vocab.vocab_size == 21
    assert vocab.level_slice(1) == slice(6, 11)
    tokens = vocab.item_tokens(np.array([[0, 0, 0], [3, 4, 2]]))
    assert tokens.tolist() == [[2, 6, 11], [5, 10, 13]]
    users = vocab.user_tokens(np.arange(1000))
    assert users.min() >= 14 and users.max() < 21 and len(np.unique(users)) == 7
    assert (vocab.user_tokens(np.arange(1000)) == users).all()
    types = vocab.token_types()
    assert types[PAD] != types[BOS] and len(set(types[vocab.level_slice(0)])) == 1
    assert SIDVocab.from_dict(vocab.to_dict()) == vocab
    with pytest.raises(ValueError, match="outside"):
        vocab.item_tokens(np.array([[0, 5, 0]]))


def test_trie_tables_are_exact():
    sizes = (3, 4, 5)
    sids = random_sids(25, sizes)
    trie = SIDTrie.from_sids(sids, sizes)
    assert [tuple(t.shape[1:]) for t in trie.children] == [(3,), (4,), (5,)]
    assert trie.memory_bytes == sum(t.numel() * 4 for t in trie.children) + 25 * 8
    # walk every prefix: the allowed codes are exactly those of items sharing the prefix
    frontier = {(): 0}
    for level in range(3):
        table = trie.children[level]
        nxt = {}
        for prefix, node in frontier.items():
            match = sids[(sids[:, :level] == np.array(prefix, dtype=np.int64)).all(1)] if level else sids
            expected = set(match[:, level].tolist())
            row = table[node]
            assert set(torch.nonzero(row >= 0).flatten().tolist()) == expected
            for c in expected:
                nxt[prefix + (c,)] = int(row[c])
        assert sorted(nxt.values()) == list(range(len(nxt)))  # dense node ids
        frontier = nxt
    for sid, leaf in frontier.items():
        item = int(trie.leaf_item[leaf])
        assert tuple(sids[item].tolist()) == sid
    # batched lookups: dead nodes give no children
    rows = trie.child_table(1, torch.tensor([[0, -1]]))
    assert rows.shape == (1, 2, 4) and (rows[0, 1] == -1).all()


def test_trie_rejects_duplicates_and_bad_codes():
    sids = np.array([[0, 1], [1, 1], [0, 1]])
    with pytest.raises(ValueError, match="items 0 and 2 share SID"):
        SIDTrie.from_sids(sids)
    with pytest.raises(ValueError, match="level size"):
        SIDTrie.from_sids(np.array([[0, 3]]), level_sizes=(2, 2))
