"""RQ-KMeans: residual k-means with faiss, the fast non-neural SID tokenizer.

Level ``l`` clusters the residuals ``r_{l-1}`` left by levels ``< l`` (``r_0 = x``, optionally L2
normalised) into ``K`` centroids; an item's code at level ``l`` is its nearest centroid and
``r_l = r_{l-1} - centroid``. This is residual quantization without an encoder (as in the
RQ-KMeans tokenizers of OneRec / GRID). faiss k-means is seeded with ``seed + l``; with
``SEMID_NUM_THREADS`` fixed the result is bitwise reproducible, and encoding a saved and reloaded
model gives identical codes (argmin with ties to the lowest index, in torch).
"""

from __future__ import annotations

from typing import Any, Dict, NamedTuple, Optional

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor

from semid_pipeline.core.artifacts import Artifact, register_artifact
from semid_pipeline.core.params import StrictParams
from semid_pipeline.core.progress import ProgressFn, Throttle
from semid_pipeline.core.tokenizers.kmeans import check_embeddings, faiss_kmeans


class RQKMeansParams(StrictParams):
    """Residual k-means settings (same code shape as the RQ-VAE: 3 levels x 256 codes)."""

    n_levels: int = Field(default=3, ge=1, description="Number L of residual levels (SID length before dedup).")
    codebook_size: int = Field(default=256, ge=2, description="Centroids K per level.")
    kmeans_iters: int = Field(default=25, ge=1, description="Lloyd iterations per level.")
    normalize_input: bool = Field(default=True, description="L2-normalise inputs before quantizing (also at encode time).")
    seed: int = Field(default=0, description="faiss k-means seed (level l uses seed + l).")


class QuantizedBatch(NamedTuple):
    codes: Tensor  # (N, L) int64
    quantized: Tensor  # (N, L, D) selected centroids
    residuals: Tensor  # (N, L, D) input of each level
    distances: Tensor  # (N, L, K) squared distances to every centroid of each level


class CentroidQuantizer(Artifact):
    """What the centroid-table quantizers (RQ-KMeans, OPQ) share: ``centroids (L, K, ...)`` gives the
    number of levels / digits and the codebook size; ``encode`` is ``quantize(...).codes`` and
    ``encode_latent`` the prepared input (neither has a learned encoder). Subclasses define
    ``prepare_input``, ``quantize_batch`` (one batch of prepared rows) and ``latent_dim``."""

    centroids: Tensor

    @property
    def n_levels(self) -> int:
        return int(self.centroids.shape[0])

    @property
    def codebook_size(self) -> int:
        return int(self.centroids.shape[1])

    def prepare_input(self, x) -> Tensor:
        raise NotImplementedError

    def quantize_batch(self, z: Tensor) -> QuantizedBatch:
        raise NotImplementedError

    @torch.no_grad()
    def quantize(self, x, batch_size: int = 8192, prepared: bool = False) -> QuantizedBatch:
        """:meth:`quantize_batch` over batches of rows; ties go to the lowest centroid index.
        ``prepared``: ``x`` already went through :meth:`prepare_input` (e.g. from :meth:`encode_latent`)."""
        z = torch.as_tensor(x).float() if prepared else self.prepare_input(x)
        parts = [self.quantize_batch(z[start : start + batch_size]) for start in range(0, max(z.shape[0], 1), batch_size)]
        return QuantizedBatch(*(torch.cat([getattr(p, f) for p in parts]) for f in QuantizedBatch._fields))

    @torch.no_grad()
    def encode(self, x, batch_size: int = 8192) -> Tensor:
        """Codes ``(N, L)`` int64; only the codes of each batch are kept (memory linear in ``N * L``)."""
        z = self.prepare_input(x)
        return torch.cat([self.quantize_batch(z[start : start + batch_size]).codes for start in range(0, max(z.shape[0], 1), batch_size)])

    def encode_latent(self, x, batch_size: int = 8192) -> Tensor:
        """The prepared input itself: these quantizers have no learned encoder."""
        return self.prepare_input(x)


@register_artifact
class RQKMeans(CentroidQuantizer):
    """Residual k-means codebooks ``centroids`` ``(L, K, D)``."""

    KIND = "rqkmeans"

    def __init__(self, centroids: Tensor, normalize_input: bool = True):
        self.centroids = centroids.float().contiguous()
        self.normalize_input = bool(normalize_input)

    @property
    def latent_dim(self) -> int:
        return int(self.centroids.shape[2])

    @property
    def codebooks(self) -> Tensor:
        return self.centroids

    def prepare_input(self, x) -> Tensor:
        x = torch.as_tensor(np.asarray(x) if not isinstance(x, Tensor) else x).float()
        return F.normalize(x, dim=-1) if self.normalize_input else x

    def quantize_batch(self, r: Tensor) -> QuantizedBatch:
        """Greedy residual assignment of every row of ``r`` (prepared input), level by level."""
        codes, quantized, residuals, distances = [], [], [], []
        for level in range(self.n_levels):
            c = self.centroids[level]
            d = r.pow(2).sum(-1, keepdim=True) - 2.0 * (r @ c.T) + c.pow(2).sum(-1)
            code = d.argmin(dim=-1)
            e = c[code]
            codes.append(code)
            quantized.append(e)
            residuals.append(r)
            distances.append(d)
            r = r - e
        return QuantizedBatch(torch.stack(codes, 1), torch.stack(quantized, 1), torch.stack(residuals, 1), torch.stack(distances, 1))

    # -- Artifact ---------------------------------------------------------------------------------
    def artifact_config(self) -> Dict[str, Any]:
        return {"normalize_input": self.normalize_input}

    def artifact_tensors(self) -> Dict[str, Tensor]:
        return {"centroids": self.centroids}

    @classmethod
    def from_artifact(cls, config: Dict[str, Any], tensors: Dict[str, Tensor]) -> "RQKMeans":
        return cls(tensors["centroids"], normalize_input=config.get("normalize_input", True))


def fit_rqkmeans(embeddings: np.ndarray, params: RQKMeansParams, progress: Optional[ProgressFn] = None) -> RQKMeans:
    """Fits ``params.n_levels`` levels of seeded faiss k-means on successive residuals of ``embeddings``."""
    x = check_embeddings(embeddings)
    t = torch.from_numpy(x)
    if params.normalize_input:
        t = F.normalize(t, dim=-1)
    r = t.numpy().astype(np.float32)
    throttle = Throttle(progress)
    centroids = []
    for level in range(params.n_levels):
        c = faiss_kmeans(np.ascontiguousarray(r), params.codebook_size, params.kmeans_iters, params.seed + level)
        ct = torch.from_numpy(c)
        rt = torch.from_numpy(r)
        d = rt.pow(2).sum(-1, keepdim=True) - 2.0 * (rt @ ct.T) + ct.pow(2).sum(-1)
        r = (rt - ct[d.argmin(dim=-1)]).numpy()
        centroids.append(c)
        throttle(f"rq-kmeans level {level + 1}/{params.n_levels}: residual norm {float(np.linalg.norm(r, axis=1).mean()):.4f}",
                 force=level == params.n_levels - 1)
    return RQKMeans(torch.from_numpy(np.stack(centroids)), normalize_input=params.normalize_input)
