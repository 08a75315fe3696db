"""Okapi BM25 (Robertson & Zaragoza 2009), vectorised with scipy sparse matrices: the sparse baseline
of CAT-ID2 Table 2.

score(q, d) = sum over query tokens t of  idf(t) * tf(t, d) * (k1 + 1) / (tf(t, d) + k1 * (1 - b + b * |d| / avgdl))
with idf(t) = ln(1 + (N - df(t) + 0.5) / (df(t) + 0.5)) (Lucene's non-negative idf). A token repeated
in the query counts once per occurrence (as ``rank_bm25`` does); tokens unseen in the corpus add
nothing. Tokens are lower-cased runs of Unicode letters/digits (``\\w+``), so a Japanese query is
matched on whole runs of characters (no segmentation; a known weakness, as for BM25 in the paper).
"""

from __future__ import annotations

import re
from typing import Sequence, Tuple

import numpy as np
import scipy.sparse as sp
from pydantic import Field

from semid_pipeline.core.params import StrictParams

_TOKEN = re.compile(r"\w+", re.UNICODE)


class BM25Params(StrictParams):
    k1: float = Field(1.2, ge=0, description="Term-frequency saturation.")
    b: float = Field(0.75, ge=0, le=1, description="Document-length normalisation.")
    batch_size: int = Field(256, ge=1, description="Queries scored per sparse product (bounds memory: docs x batch floats).")


def tokenize(text: str) -> list[str]:
    return _TOKEN.findall(text.lower()) if isinstance(text, str) else []


class BM25Index:
    """``BM25Index(docs, params).search(queries, top_k) -> (doc indices [Q, top_k], scores)``."""

    def __init__(self, docs: Sequence[str], params: BM25Params | None = None):
        self.params = params or BM25Params()
        vocab: dict[str, int] = {}
        rows, cols = [], []
        for d, text in enumerate(docs):
            for tok in tokenize(text):
                rows.append(d)
                cols.append(vocab.setdefault(tok, len(vocab)))
        self.vocab = vocab
        n = len(docs)
        tf = sp.csr_matrix((np.ones(len(rows), dtype=np.float32), (rows, cols)), shape=(n, len(vocab)))
        tf.sum_duplicates()
        dl = np.asarray(tf.sum(axis=1)).ravel()
        avgdl = float(dl.mean()) if n and dl.mean() > 0 else 1.0
        df = np.bincount(tf.indices, minlength=len(vocab)).astype(np.float64)
        self.idf = np.log1p((n - df + 0.5) / (df + 0.5)).astype(np.float32)
        k1, b = self.params.k1, self.params.b
        norm = (k1 * (1.0 - b + b * dl / avgdl)).astype(np.float32)
        w = tf.copy()
        w.data = (tf.data * (k1 + 1.0) / (tf.data + np.repeat(norm, np.diff(tf.indptr)))) * self.idf[tf.indices]
        self.weights = w.tocsc()  # docs x terms
        self.n_docs = n

    def query_matrix(self, queries: Sequence[str]) -> sp.csr_matrix:
        """Query-token counts ``[Q, terms]`` (unknown tokens dropped)."""
        rows, cols = [], []
        for q, text in enumerate(queries):
            for tok in tokenize(text):
                j = self.vocab.get(tok)
                if j is not None:
                    rows.append(q)
                    cols.append(j)
        m = sp.csr_matrix((np.ones(len(rows), dtype=np.float32), (rows, cols)), shape=(len(queries), len(self.vocab)))
        m.sum_duplicates()
        return m

    def scores(self, queries: Sequence[str]) -> np.ndarray:
        """Dense ``[Q, docs]`` BM25 scores (for small inputs and tests)."""
        return np.asarray((self.query_matrix(queries) @ self.weights.T).todense(), dtype=np.float32)

    def search(self, queries: Sequence[str], top_k: int = 100) -> Tuple[np.ndarray, np.ndarray]:
        """Top ``top_k`` documents per query by score (ties: lower index first); ``-1`` / ``-inf`` pad
        when fewer documents score above zero."""
        qm = self.query_matrix(queries)
        k = min(top_k, self.n_docs)
        idx = np.full((len(queries), top_k), -1, dtype=np.int64)
        val = np.full((len(queries), top_k), -np.inf, dtype=np.float32)
        wt = self.weights.T.tocsr()  # terms x docs
        for start in range(0, len(queries), self.params.batch_size):
            block = np.asarray((qm[start : start + self.params.batch_size] @ wt).todense(), dtype=np.float32)
            order = np.argsort(-block, axis=1, kind="stable")[:, :k]
            top = np.take_along_axis(block, order, axis=1)
            hit = top > 0
            idx[start : start + len(block), :k] = np.where(hit, order, -1)
            val[start : start + len(block), :k] = np.where(hit, top, -np.inf)
        return idx, val
