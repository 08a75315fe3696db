"""The retrieval task as arrays: queries, their training products and their relevant test products,
plus the query tokenizer of the generative retriever.

Query tokenizer (choice; CAT-ID2 fine-tunes T5, whose SentencePiece vocabulary is not available
offline): the WordPiece tokenizer shipped with the bundled all-MiniLM-L6-v2 (``bert-base-uncased``
vocabulary, lower-casing, accent stripping, CJK characters split one per token). Only the wordpieces
seen at least ``min_count`` times in the training queries get an embedding (compact ids ``1..V``);
every other wordpiece maps to id 0 (unknown). This keeps the embedding table proportional to the data
instead of 30,522 rows, and works for the us / es / jp locales without a language-specific splitter.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np
import pandas as pd

from semid_pipeline.core.errors import InputError

UNK = 0
_TOKENIZER = None
_LOCK = threading.Lock()


def wordpiece_tokenizer():
    """The bundled MiniLM's fast WordPiece tokenizer (loaded once per process, offline)."""
    global _TOKENIZER
    with _LOCK:
        if _TOKENIZER is None:
            from transformers import AutoTokenizer

            from semid_pipeline.core.enrich.text_encoder import DEFAULT_MODEL, resolve_model_path

            _TOKENIZER = AutoTokenizer.from_pretrained(resolve_model_path(DEFAULT_MODEL), local_files_only=True)
        return _TOKENIZER


def wordpiece_ids(texts: Sequence[str], max_tokens: int) -> list[np.ndarray]:
    """WordPiece ids of every text (no special tokens), cut to ``max_tokens``."""
    enc = wordpiece_tokenizer()(list(texts), add_special_tokens=False, truncation=False)["input_ids"]
    return [np.asarray(ids[:max_tokens], dtype=np.int64) for ids in enc]


@dataclass
class QueryVocab:
    """Compact query-token ids: ``wordpiece[i]`` is the WordPiece id of compact id ``i + 1`` (0 = unknown)."""

    wordpiece: np.ndarray

    @property
    def size(self) -> int:
        return len(self.wordpiece) + 1

    @classmethod
    def fit(cls, texts: Sequence[str], max_tokens: int, min_count: int = 1) -> "QueryVocab":
        ids = wordpiece_ids(texts, max_tokens)
        flat = np.concatenate(ids) if ids else np.zeros(0, dtype=np.int64)
        uniq, counts = np.unique(flat, return_counts=True)
        return cls(uniq[counts >= min_count].astype(np.int64))

    def encode(self, texts: Sequence[str], max_tokens: int) -> list[np.ndarray]:
        """Compact ids per text; an empty text (or one of only unknown pieces) keeps one unknown token."""
        out = []
        for ids in wordpiece_ids(texts, max_tokens):
            pos = np.searchsorted(self.wordpiece, ids)
            pos = np.minimum(pos, max(len(self.wordpiece) - 1, 0))
            known = (len(self.wordpiece) > 0) & (self.wordpiece[pos] == ids) if len(ids) else np.zeros(0, dtype=bool)
            compact = np.where(known, pos + 1, UNK).astype(np.int64)
            out.append(compact if len(compact) else np.array([UNK], dtype=np.int64))
        return out


@dataclass
class RetrievalTask:
    """Train pairs and test queries over a catalog (item index = row of the catalog's SID table).

    Attributes:
        train_query, train_item: int ``[P]`` one row per training (query, product) pair.
        train_texts: the distinct training query texts (``train_query`` indexes them).
        test_texts: test query texts; ``test_relevant[q]``: int array of relevant catalog items.
        test_query_ids: the source's query ids of the test queries.
        stats: counts for metadata (pairs dropped for products without a SID, ...).
    """

    train_texts: list[str]
    train_query: np.ndarray
    train_item: np.ndarray
    test_texts: list[str]
    test_query_ids: list[str]
    test_relevant: list[np.ndarray]
    stats: dict


def build_task(
    queries: pd.DataFrame,
    catalog_item_ids: Sequence[str],
    train_labels: Sequence[str] = ("E", "S"),
    relevant_labels: Sequence[str] = ("E", "S"),
    source: str = "query_examples",
) -> RetrievalTask:
    """Maps a judged query table (``query_id, query, item_id, esci_label, split``) onto a catalog.

    Pairs whose product is not in the catalog (e.g. no SID) are dropped and counted; then CAT-ID2's
    rule is re-applied (relevant test products must have a training pair), since dropping may
    remove training pairs.
    """
    from semid_pipeline.core.data.esci import QUERY_COLUMNS, cat_id2_filter

    missing = [c for c in QUERY_COLUMNS if c not in queries.columns]
    if missing:
        raise InputError(source, None, f"query table misses columns {missing}")
    index = pd.Index(pd.Series(list(catalog_item_ids), dtype=object))
    pos = index.get_indexer(queries["item_id"].astype(str))
    n_without = int((pos < 0).sum())
    q = queries[pos >= 0].copy()
    q["item_idx"] = pos[pos >= 0]
    q = cat_id2_filter(q, list(train_labels), list(relevant_labels))
    train = q[q["split"] == "train"]
    if train.empty:
        raise InputError(source, None, "no training (query, product) pairs with a catalog product")
    train_codes, train_texts = pd.factorize(train["query"].astype(str))
    test = q[(q["split"] == "test") & q["esci_label"].isin(list(relevant_labels))]
    groups = test.groupby("query_id", sort=True)
    test_ids = [str(k) for k in groups.groups]
    test_texts = [str(g["query"].iloc[0]) for _, g in groups]
    relevant = [np.unique(g["item_idx"].to_numpy(dtype=np.int64)) for _, g in groups]
    stats = {
        "n_train_pairs": int(len(train)),
        "n_train_queries": int(len(train_texts)),
        "n_test_queries": int(len(test_ids)),
        "n_test_relevant_pairs": int(sum(len(r) for r in relevant)),
        "n_pairs_without_catalog_item": n_without,
    }
    return RetrievalTask(
        train_texts=list(train_texts),
        train_query=train_codes.astype(np.int64),
        train_item=train["item_idx"].to_numpy(dtype=np.int64),
        test_texts=test_texts,
        test_query_ids=test_ids,
        test_relevant=relevant,
        stats=stats,
    )


def product_texts(items: pd.DataFrame, max_chars: Optional[int] = 2000) -> list[str]:
    """The document text of every catalog item for BM25 / dense retrieval: title, brand, description."""
    out = []
    for title, brand, desc in zip(items["title"], items["brand"], items["description"]):
        parts = [v for v in (title, brand, desc) if isinstance(v, str) and v.strip()]
        out.append(" ".join(parts)[:max_chars])
    return out
