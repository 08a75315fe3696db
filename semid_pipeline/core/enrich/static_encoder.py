"""A static (bag-of-tokens) sentence encoder distilled from a sentence-transformers model.

For catalogues of 10^5 items and more the transformer is the slowest step of the whole graph on a
CPU (all-MiniLM-L6-v2 embeds about 150 short item texts per second on one core here: two hours for
10^6 items, twice, since tagging and the item embeddings both embed every item). The static encoder
follows Model2Vec (Tulkens & van Dongen, 2024):

1. *Distil* once per model: every token of the model's vocabulary (special tokens and the
   ``[unusedN]`` slots excluded) is run through the model alone (``[CLS] token [SEP]``) and the
   model's own pooled sentence embedding becomes that token's vector (30,522 forward passes of
   3 tokens for MiniLM: seconds).
2. *Weight* each token vector by a smooth inverse frequency, ``a / (a + p(token))``, with ``p``
   estimated from the token's rank in the vocabulary by Zipf's law (``p(r) ∝ 1 / (r + 1)``; WordPiece
   vocabularies list frequent pieces first) and ``a = 1e-4`` (``sif_coefficient``). This is the
   choice Model2Vec makes where no corpus counts are at hand; corpus counts would make an item's
   vector depend on which other items are embedded with it, which a living catalogue must not.
3. *Encode* a text as the sum of its (weighted) token vectors, then L2-normalise: one tokenizer call
   and one ``embedding_bag`` per chunk, tens of thousands of texts per second on one core.

Choices where the paper leaves room: no PCA (the 384 dimensions stay, so the rest of the graph is
unchanged whichever kind is configured); pooling is the model's own (mean over the three output
positions for MiniLM); texts are truncated to ``max_tokens`` word pieces.

The distilled table is cached as safetensors + JSON under ``cache_dir``, keyed by the model
directory, the sizes and modification times of its files and this module's ``DISTILL_VERSION``, so
a changed model is distilled again and a process that finds the cache never loads the transformer.
Speed and quality against the transformer on Amazon Beauty's item texts are measured by
``benchmarks/text_encoder_speed.py`` (docs/usage.md has the numbers): use it where the transformer
would not finish, not where it would.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch

from semid_pipeline.core.progress import ProgressFn, Throttle

DISTILL_VERSION = 1
SIF_COEFFICIENT = 1e-4
DEFAULT_CACHE_DIR = "~/.cache/semid_pipeline/static_text_encoders"

_TABLES: dict[str, "StaticTable"] = {}
_LOCK = threading.Lock()


class StaticTable:
    """The distilled ``(vocab, dim)`` token table (SIF weights already applied) and its tokenizer."""

    def __init__(self, vectors: np.ndarray, tokenizer, meta: dict):
        self.vectors = torch.from_numpy(np.ascontiguousarray(vectors, dtype=np.float32))
        self.tokenizer = tokenizer
        self.meta = meta

    @property
    def dim(self) -> int:
        return int(self.vectors.shape[1])


def _model_fingerprint(model_dir: Path) -> str:
    """A key for the model's files: names, sizes and modification times (no reading of weights)."""
    h = hashlib.sha256(f"v{DISTILL_VERSION}|{model_dir.resolve()}".encode())
    if model_dir.is_dir():
        for path in sorted(p for p in model_dir.rglob("*") if p.is_file()):
            st = path.stat()
            h.update(f"|{path.relative_to(model_dir)}:{st.st_size}:{int(st.st_mtime)}".encode())
    return h.hexdigest()[:20]


def sif_weights(n: int, coefficient: float = SIF_COEFFICIENT) -> np.ndarray:
    """``a / (a + p(r))`` for ranks ``r = 0..n-1`` under Zipf's law ``p(r) = (1 / (r + 1)) / H_n``."""
    ranks = np.arange(n, dtype=np.float64)
    p = 1.0 / (ranks + 1.0)
    p /= p.sum()
    return (coefficient / (coefficient + p)).astype(np.float32)


def distill(model, batch_size: int = 512, progress: Optional[ProgressFn] = None) -> tuple[np.ndarray, dict]:
    """Token table of a loaded ``SentenceTransformer`` (see the module docstring, steps 1 and 2)."""
    tok = model.tokenizer
    vocab = tok.get_vocab()
    special = set(tok.all_special_ids)
    ids = np.array(
        sorted(i for t, i in vocab.items() if i not in special and not (t.startswith("[") and t.endswith("]"))), dtype=np.int64
    )
    size = max(vocab.values()) + 1
    dim = int((getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension)())
    table = np.zeros((size, dim), dtype=np.float32)
    cls = tok.cls_token_id if tok.cls_token_id is not None else tok.bos_token_id
    sep = tok.sep_token_id if tok.sep_token_id is not None else tok.eos_token_id
    device = next(model.parameters()).device
    report = Throttle(progress)
    start = time.monotonic()
    with torch.inference_mode():
        for lo in range(0, len(ids), batch_size):
            chunk = torch.from_numpy(ids[lo : lo + batch_size])
            cols = [chunk[:, None]]
            if cls is not None:
                cols.insert(0, torch.full_like(chunk[:, None], cls))
            if sep is not None:
                cols.append(torch.full_like(chunk[:, None], sep))
            input_ids = torch.cat(cols, dim=1).to(device)
            features = {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids)}
            if "token_type_ids" in getattr(tok, "model_input_names", ()):
                features["token_type_ids"] = torch.zeros_like(input_ids)
            out = model(features)["sentence_embedding"].float().cpu().numpy()
            table[ids[lo : lo + batch_size]] = out
            done = min(lo + batch_size, len(ids))
            report(f"static text encoder: distilled {done:,}/{len(ids):,} tokens ({done / max(time.monotonic() - start, 1e-9):,.0f}/s)")
    weights = np.zeros(size, dtype=np.float32)
    weights[ids] = sif_weights(len(ids))
    table *= weights[:, None]
    meta = {
        "distill_version": DISTILL_VERSION,
        "tokens": int(len(ids)),
        "vocab_size": int(size),
        "dim": dim,
        "sif_coefficient": SIF_COEFFICIENT,
        "distill_seconds": round(time.monotonic() - start, 2),
    }
    return table, meta


def load_table(
    model_dir: str, cache_dir: Optional[str], load_model: Callable[[], object], progress: Optional[ProgressFn] = None
) -> StaticTable:
    """The process-wide table for ``model_dir``: from memory, else from ``cache_dir``, else distilled
    from ``load_model()`` and written there (atomically: a killed run never leaves half a file)."""
    from safetensors.numpy import load_file, save_file
    from transformers import AutoTokenizer

    root = Path(os.path.expanduser(cache_dir or DEFAULT_CACHE_DIR))
    key = _model_fingerprint(Path(model_dir))
    with _LOCK:
        if key in _TABLES:
            return _TABLES[key]
        weights, meta_path = root / f"{key}.safetensors", root / f"{key}.json"
        tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
        if weights.exists() and meta_path.exists():
            vectors = load_file(str(weights))["token_vectors"]
            meta = json.loads(meta_path.read_text())
            meta["cache"] = "hit"
        else:
            vectors, meta = distill(load_model(), progress=progress)
            meta["model"] = str(model_dir)
            root.mkdir(parents=True, exist_ok=True)
            tmp = weights.with_suffix(f".tmp{os.getpid()}")
            save_file({"token_vectors": vectors}, str(tmp))
            os.replace(tmp, weights)
            tmp_meta = meta_path.with_suffix(f".tmp{os.getpid()}")
            tmp_meta.write_text(json.dumps(meta, indent=2) + "\n")
            os.replace(tmp_meta, meta_path)
            meta["cache"] = "written"
        meta["cache_file"] = str(weights)
        table = StaticTable(vectors, tokenizer, meta)
        _TABLES[key] = table
        return table


def encode_static(
    table: StaticTable,
    texts: list[str],
    max_tokens: int = 256,
    normalize: bool = True,
    chunk: int = 16384,
    progress: Optional[ProgressFn] = None,
) -> tuple[np.ndarray, int]:
    """``(embeddings float32 (n, dim), texts without a single known token)``: step 3 of the module docstring.
    A text with no token (empty, or only characters the vocabulary lacks) gets the zero vector and is counted."""
    n = len(texts)
    out = np.zeros((n, table.dim), dtype=np.float32)
    empty = 0
    report = Throttle(progress)
    start = time.monotonic()
    for lo in range(0, n, chunk):
        batch = texts[lo : lo + chunk]
        ids = table.tokenizer(batch, add_special_tokens=False, truncation=True, max_length=max_tokens)["input_ids"]
        lengths = np.fromiter((len(x) for x in ids), dtype=np.int64, count=len(ids))
        empty += int((lengths == 0).sum())
        flat = torch.from_numpy(np.fromiter((t for x in ids for t in x), dtype=np.int64, count=int(lengths.sum())))
        offsets = torch.from_numpy(np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64))
        emb = torch.nn.functional.embedding_bag(flat, table.vectors, offsets, mode="sum").numpy()
        if normalize:
            norms = np.linalg.norm(emb, axis=1, keepdims=True)
            emb = np.divide(emb, norms, out=np.zeros_like(emb), where=norms > 0)
        out[lo : lo + len(batch)] = emb
        done = lo + len(batch)
        report(f"static text encoder: {done:,}/{n:,} texts embedded ({done / max(time.monotonic() - start, 1e-9):,.0f}/s)", force=done == n and n > chunk)
    return out, empty
