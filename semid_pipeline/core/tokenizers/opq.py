"""Long product-quantization semantic IDs (RPG, Hou et al. KDD 2025): PCA whitening, OPQ rotation, PQ.

An item's SID is ``m`` digits of ``K`` codes each (RPG: m = 16-64, K = 256): the text embedding is

1. L2-normalised (optional) and PCA-whitened to ``pca_dim`` dimensions (faiss ``PCAMatrix`` with
   ``eigen_power = -0.5``: every principal direction gets unit variance, so no digit is wasted on
   a low-variance subspace);
2. rotated by an OPQ matrix (faiss ``OPQMatrix``, Ge et al. 2013) learned jointly with the product
   quantizer so that the ``m`` sub-spaces of ``pca_dim / m`` dimensions are balanced and
   decorrelated;
3. split into ``m`` sub-vectors, each replaced by its nearest of ``K`` centroids (faiss
   ``ProductQuantizer``): digit ``j`` is that centroid's index.

The digits are parallel, not hierarchical: no digit refines another, which is what lets the
recommender of ``core/recommender/parallel.py`` predict them all at once.

:class:`OPQ` is the quantizer artifact (``KIND = "opq"``); it has the interface of
:class:`~semid_pipeline.core.tokenizers.rqkmeans.RQKMeans` (``prepare_input``, ``quantize``,
``encode``, ``encode_latent``, ``codebooks``), so ``SIDTokenizer``, ``semantic_ids`` (collisions,
Sinkhorn last-digit distances, frozen assignment), versioning and the quality report treat it like
the other kinds. ``codebooks`` is ``(m, K, pca_dim)``: digit ``j``'s centroids written into its own
sub-space and zero elsewhere, so the sum of an item's ``m`` codewords is its reconstruction in the
rotated space. Training and encoding run faiss / torch on the configured threads; with
``SEMID_NUM_THREADS=1`` the codes are bitwise reproducible, also after save + reload (encoding is
done in torch from the saved matrices, argmin ties to the lowest index).
"""

from __future__ import annotations

from typing import Any, Dict, Optional

import faiss
import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor

from semid_pipeline.core.artifacts import register_artifact
from semid_pipeline.core.metrics import sample_users
from semid_pipeline.core.params import StrictParams
from semid_pipeline.core.progress import ProgressFn, Throttle
from semid_pipeline.core.tokenizers.kmeans import check_embeddings
from semid_pipeline.core.tokenizers.rqkmeans import CentroidQuantizer, QuantizedBatch


class OPQParams(StrictParams):
    """Sizes and training of the OPQ + PQ tokenizer (RPG's defaults: PCA-whitened text embeddings,
    ``OPQ{m},PQ{m}x8`` in faiss)."""

    pq_digits: int = Field(default=32, ge=1, description="Digits m of a PQ semantic ID (RPG: 32 on Amazon; 16 learns faster on a CPU).")
    pq_codebook_size: int = Field(default=256, ge=2, description="Codes K per PQ digit (a power of two; RPG: 256).")
    pca_dim: int = Field(default=128, ge=1, description="PCA output dimension (must be a multiple of pq_digits; 0 < pca_dim <= input dim).")
    whiten: bool = Field(default=True, description="PCA whitening (faiss eigen_power -0.5, RPG's PCA(whiten=True)); off: plain PCA.")
    opq_iters: int = Field(default=25, ge=0, description="Alternations of OPQ rotation / PQ fitting (faiss OPQMatrix.niter); 0 = no rotation.")
    pq_iters: int = Field(default=25, ge=1, description="k-means iterations of the final product quantizer per sub-space.")
    normalize_pq_input: bool = Field(default=True, description="L2-normalise the embeddings before PCA (also at encode time).")
    seed: int = Field(default=0, description="Seeds faiss k-means of the OPQ and PQ stages.")
    opq_max_train_items: Optional[int] = Field(
        default=None, ge=1,
        description="Fit PCA, rotation and codebooks on a seeded sample of at most this many items (every item still "
        "gets its codes); None = every item. Large catalogues: a few hundred points per code is what k-means needs.",
    )


@register_artifact
class OPQ(CentroidQuantizer):
    """PCA(-whitening) ``x @ pca_a.T + pca_b``, rotation ``@ rotation.T``, then ``m`` sub-space centroid
    tables ``centroids (m, K, pca_dim / m)``."""

    KIND = "opq"

    def __init__(self, pca_a: Tensor, pca_b: Tensor, rotation: Tensor, centroids: Tensor, normalize_input: bool = True):
        self.pca_a = pca_a.float().contiguous()
        self.pca_b = pca_b.float().contiguous()
        self.rotation = rotation.float().contiguous()
        self.centroids = centroids.float().contiguous()
        self.normalize_input = bool(normalize_input)

    @property
    def sub_dim(self) -> int:
        return int(self.centroids.shape[2])

    @property
    def latent_dim(self) -> int:
        return self.n_levels * self.sub_dim

    @property
    def codebooks(self) -> Tensor:
        """``(m, K, pca_dim)``: digit ``j``'s centroids placed in its own sub-space, zero elsewhere."""
        m, k, s = self.centroids.shape
        out = torch.zeros(m, k, m * s)
        for j in range(m):
            out[j, :, j * s : (j + 1) * s] = self.centroids[j]
        return out

    def prepare_input(self, x) -> Tensor:
        """The rotated, PCA-whitened latent ``(N, pca_dim)`` that the digits quantize."""
        x = torch.as_tensor(np.asarray(x) if not isinstance(x, Tensor) else x).float()
        if self.normalize_input:
            x = F.normalize(x, dim=-1)
        return (x @ self.pca_a.T + self.pca_b) @ self.rotation.T

    def quantize_batch(self, z: Tensor) -> QuantizedBatch:
        """Nearest centroid per sub-space of the prepared rows ``z``. ``quantized``/``residuals`` are in
        the full ``pca_dim`` space (zero outside a digit's sub-space); ``distances (N, m, K)``."""
        m, k, s = self.centroids.shape
        sub = z.reshape(-1, m, s)  # (B, m, s)
        d = sub.pow(2).sum(-1, keepdim=True) - 2.0 * torch.einsum("bms,mks->bmk", sub, self.centroids) + self.centroids.pow(2).sum(-1)[None]
        codes = d.argmin(dim=-1)  # (B, m)
        chosen = torch.stack([self.centroids[j][codes[:, j]] for j in range(m)], 1)  # (B, m, s)
        eye = torch.eye(m, dtype=z.dtype)
        quantized = (eye[None, :, :, None] * chosen[:, None, :, :]).reshape(-1, m, m * s)  # block-diagonal placement
        residuals = (eye[None, :, :, None] * sub[:, None, :, :]).reshape(-1, m, m * s)
        return QuantizedBatch(codes, quantized, residuals, d)

    # -- Artifact ---------------------------------------------------------------------------------
    def artifact_config(self) -> Dict[str, Any]:
        return {"normalize_input": self.normalize_input, "pq_digits": self.n_levels, "pca_dim": self.latent_dim}

    def artifact_tensors(self) -> Dict[str, Tensor]:
        return {"pca_a": self.pca_a, "pca_b": self.pca_b, "rotation": self.rotation, "centroids": self.centroids}

    @classmethod
    def from_artifact(cls, config: Dict[str, Any], tensors: Dict[str, Tensor]) -> "OPQ":
        return cls(tensors["pca_a"], tensors["pca_b"], tensors["rotation"], tensors["centroids"], config.get("normalize_input", True))


def fit_opq(embeddings: np.ndarray, params: OPQParams, progress: Optional[ProgressFn] = None) -> OPQ:
    """Fits PCA(-whitening) -> OPQ rotation -> PQ (faiss) on ``embeddings (N, dim)``; deterministic
    for a fixed seed and thread count."""
    x = check_embeddings(embeddings)
    n, dim = x.shape
    m, k = params.pq_digits, params.pq_codebook_size
    nbits = int(np.log2(k))
    if 2**nbits != k:
        raise ValueError(f"pq_codebook_size must be a power of two, got {k}")
    if params.pca_dim > dim:
        raise ValueError(f"pca_dim ({params.pca_dim}) exceeds the embedding dimension ({dim})")
    if params.pca_dim % m:
        raise ValueError(f"pca_dim ({params.pca_dim}) must be a multiple of pq_digits ({m})")
    if n < k:
        raise ValueError(f"PQ with {k} codes per digit needs at least {k} items, got {n}")
    throttle = Throttle(progress)
    if params.normalize_pq_input:
        x = np.ascontiguousarray(F.normalize(torch.from_numpy(x), dim=-1).numpy())
    if params.opq_max_train_items is not None and n > max(params.opq_max_train_items, k):
        rows = sample_users(n, max(params.opq_max_train_items, k), params.seed)  # the project's one seeded sample
        throttle(f"opq: fitting on a seeded sample of {len(rows):,} of {n:,} items (opq_max_train_items)", force=True)
        x, n = np.ascontiguousarray(x[rows]), len(rows)
    pca = faiss.PCAMatrix(dim, params.pca_dim, -0.5 if params.whiten else 0.0, False)
    pca.train(x)
    pca_a = faiss.vector_to_array(pca.A).reshape(params.pca_dim, dim).astype(np.float32)
    pca_b = faiss.vector_to_array(pca.b).astype(np.float32)
    z = x @ pca_a.T + pca_b
    if params.whiten:  # faiss whitens by the scatter matrix's eigenvalues (variance 1/N): rescale to unit variance
        scale = np.float32(1.0 / max(float(np.sqrt(z.var(axis=0).mean())), 1e-12))
        pca_a, pca_b, z = pca_a * scale, pca_b * scale, z * scale
    z = np.ascontiguousarray(z, dtype=np.float32)
    throttle(f"opq: PCA {dim} -> {params.pca_dim} (whiten={params.whiten})", force=True)
    d = params.pca_dim
    if params.opq_iters > 0:
        opq = faiss.OPQMatrix(d, m)
        opq.niter = params.opq_iters
        inner = faiss.ProductQuantizer(d, m, nbits)
        inner.cp.seed = params.seed
        opq.pq = inner
        opq.max_train_points = max(n, 1)
        opq.train(z)
        rotation = faiss.vector_to_array(opq.A).reshape(d, d).astype(np.float32)
    else:
        rotation = np.eye(d, dtype=np.float32)
    zr = np.ascontiguousarray(z @ rotation.T, dtype=np.float32)
    throttle(f"opq: rotation fitted ({params.opq_iters} iterations)", force=True)
    pq = faiss.ProductQuantizer(d, m, nbits)
    pq.cp.seed = params.seed + 1
    pq.cp.niter = params.pq_iters
    pq.cp.max_points_per_centroid = max(256, (n + k - 1) // k)  # use every item (no sub-sampling)
    pq.train(zr)
    centroids = faiss.vector_to_array(pq.centroids).reshape(m, k, d // m).astype(np.float32)
    model = OPQ(torch.from_numpy(pca_a), torch.from_numpy(pca_b), torch.from_numpy(rotation), torch.from_numpy(centroids), params.normalize_pq_input)
    sample = zr[:: max(1, len(zr) // 100_000)]  # the training error on at most ~100k points: bounded time and memory
    q = model.quantize(torch.from_numpy(np.ascontiguousarray(sample)), prepared=True)
    err = float((torch.from_numpy(sample) - q.quantized.sum(1)).pow(2).sum(-1).mean())
    throttle(f"opq: {m} digits x {k} codes, reconstruction error {err:.4f} (latent energy {float((sample ** 2).sum(1).mean()):.4f})", force=True)
    return model
