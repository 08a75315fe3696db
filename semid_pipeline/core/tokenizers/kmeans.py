"""What the quantizers share: the input check of item embeddings and seeded faiss k-means
(RQ-VAE's codebook initialisation, RQ-KMeans' levels)."""

import faiss
import numpy as np


def check_embeddings(embeddings: np.ndarray) -> np.ndarray:
    """``embeddings`` as a C-contiguous float32 ``(items, dim)`` array; ValueError on a bad shape or NaN/inf rows."""
    arr = np.asarray(embeddings)
    if arr.ndim != 2 or arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ValueError(f"embeddings must be a non-empty 2-D (items, dim) array, got shape {arr.shape}")
    arr = np.ascontiguousarray(arr, dtype=np.float32)
    if not np.isfinite(arr).all():
        bad = np.flatnonzero(~np.isfinite(arr).all(axis=1))
        raise ValueError(f"embeddings contain NaN/inf in {bad.size} rows (first item index {int(bad[0])})")
    return arr


def faiss_kmeans(points: np.ndarray, k: int, n_iter: int, seed: int) -> np.ndarray:
    """Seeded faiss k-means returning exactly ``k`` centroids of ``points`` (float32, C-contiguous).

    With fewer points than ``k`` every point becomes a centroid and the remaining rows repeat
    seeded random points; those duplicates lose every argmin tie (lowest index wins), stay unused
    and are recycled by dead-code restarts.
    """
    n, dim = points.shape
    k_fit = min(k, n)
    km = faiss.Kmeans(dim, k_fit, niter=n_iter, seed=seed, verbose=False, min_points_per_centroid=1, max_points_per_centroid=256)
    km.train(points)
    centroids = km.centroids.reshape(k_fit, dim)
    if k_fit < k:
        extra = points[np.random.default_rng(seed).integers(0, n, size=k - k_fit)]
        centroids = np.concatenate([centroids, extra], axis=0)
    return np.ascontiguousarray(centroids, dtype=np.float32)
