"""Dense retrieval baseline (CAT-ID2 Table 2's DR rows): sentence embeddings of queries and product texts,
exact inner-product search (faiss ``IndexFlatIP`` over L2-normalised vectors = cosine similarity).

The encoder is the pipeline's :class:`TextEncoder` (offline all-MiniLM-L6-v2 by default), used
zero-shot: no fine-tuning on the training pairs (the paper's DPR is fine-tuned; this is the
off-the-shelf sentence-embedding variant, closer to its MPNet row).
"""

from __future__ import annotations

from typing import Optional, Sequence, Tuple

import faiss
import numpy as np

from semid_pipeline.core.enrich.text_encoder import TextEncoder, unit_rows
from semid_pipeline.core.progress import ProgressFn


def dense_search(
    query_vecs: np.ndarray, doc_vecs: np.ndarray, top_k: int = 100
) -> Tuple[np.ndarray, np.ndarray]:
    """Exact cosine top-``top_k`` documents per query; ``-1`` / ``-inf`` pad when fewer documents exist."""
    docs = unit_rows(doc_vecs)
    index = faiss.IndexFlatIP(docs.shape[1])
    index.add(docs)
    k = min(top_k, len(docs))
    sims, ids = index.search(unit_rows(query_vecs), k)
    idx = np.full((len(query_vecs), top_k), -1, dtype=np.int64)
    val = np.full((len(query_vecs), top_k), -np.inf, dtype=np.float32)
    idx[:, :k], val[:, :k] = ids, sims
    return idx, val


def dense_retrieve(
    encoder: TextEncoder,
    queries: Sequence[str],
    docs: Sequence[str],
    top_k: int = 100,
    doc_vecs: Optional[np.ndarray] = None,
    progress: Optional[ProgressFn] = None,
) -> Tuple[np.ndarray, np.ndarray]:
    """Embeds ``queries`` (and ``docs`` unless ``doc_vecs`` are given) and searches."""
    if doc_vecs is None:
        doc_vecs = encoder.encode(list(docs), progress)
    return dense_search(encoder.encode(list(queries), progress), doc_vecs, top_k)
