"""Collaborative tokenizer input: the item's text embedding next to its SASRec-CE item vector.

Why
---
A parallel (RPG) recommender scores an item by the sum of its digits' scores, so items that share a
digit share that part of their score. With digits from text alone, two items bought by different
people but described alike are pushed together; with part of the input from the interactions, the
digits group items that are *used* alike, which is what the next-item scores need. LETTER (Wang et
al. 2024) and ETEGRec make the same point with a learned collaborative regulariser; we use the item
table of the SASRec-CE baseline that the pipeline trains anyway (``sasrec_model``: trained on the
training sequences only, checkpoint chosen on validation; test items are never read).

Measured on Amazon Beauty (issue 14; parallel model, 1 thread, test R@10 / N@10): 5-minute ablation rows
(``benchmarks/results/parallel/abl-opq16collab-digit-id.json`` vs ``tune-digit-id-bf16-5min.json``) .0650 /
.0377 with the collaborative half vs .0606 / .0342 on text alone; the 30-minute ``run_pipeline.py`` rows
.0688 / .0416 vs .0620 / .0384. In exploratory 10-minute runs the SASRec vectors alone did as well as
``[text ; SASRec]``, and a PPMI-SVD co-occurrence embedding (window 5, 64 dims, no model needed) did worse
than text alone, so neither is offered.

What
----
* :class:`CollaborativeInput`: the tokenizer's input stage. It PCA-whitens the text embedding to
  ``text_dims`` and the collaborative one to ``collaborative_dims`` (each block whitened on its own,
  so neither drowns the other) and concatenates them. An item without a collaborative vector (a new
  item of a frozen re-tokenization, or one that never occurs in a training sequence) gets its block
  **predicted from its text** by a ridge regression fitted on the items that have one, so every item
  still gets a SID from its text alone, and the tokenizer counts those rows.
* The tokenizer's input is ``[text ; collaborative]`` with the collaborative part ``NaN`` for items
  without one (:func:`tokenizer_input` builds it from the ``item_collaborative_embeddings`` table).
"""

from __future__ import annotations

from typing import Any, Dict, Optional, Sequence, Tuple

import numpy as np
import pandas as pd
import torch
from pydantic import Field
from torch import Tensor

from semid_pipeline.core.params import StrictParams


class CollaborativeParams(StrictParams):
    """The collaborative part of the tokenizer input (off by default: TIGER / RPG tokenize text only)."""

    collaborative_dims: int = Field(
        default=0,
        ge=0,
        description="Whitened SASRec item-vector dimensions appended to the whitened text (0 = text only; at most "
        "SASRec's hidden size). Beauty, OPQ 16 x 256: 64 (+ text_dims 64).",
    )
    text_dims: int = Field(default=64, ge=1, description="PCA-whitened text dimensions next to the collaborative ones (only with collaborative_dims > 0).")
    collaborative_ridge: float = Field(
        default=1.0, gt=0, description="Ridge of the text -> collaborative regression that fills items without interactions."
    )


def item_occurrences(histories: Sequence[np.ndarray], n_items: int) -> np.ndarray:
    """``[n_items]`` int64: how often each item occurs in the (training) ``histories``."""
    flat = np.concatenate([np.asarray(h, dtype=np.int64).reshape(-1) for h in histories]) if len(histories) else np.zeros(0, np.int64)
    if flat.size and (flat.min() < 0 or flat.max() >= n_items):
        raise ValueError(f"history item indices must lie in [0, {n_items}), got [{flat.min()}, {flat.max()}]")
    return np.bincount(flat, minlength=n_items).astype(np.int64)


EXACT_SVD_MAX_ROWS = 200_000
"""Up to this many rows the whitening is an SVD of the centred matrix; above it, an eigendecomposition of the
covariance accumulated in row chunks (:func:`_pca_by_covariance`): the same directions and variances up to
float error, without the SVD's copies of an ``[N, d]`` matrix (at 10^6 x 384 the SVD path took the tokenizer
step to 19 GB). The threshold keeps the SIDs of every catalogue measured so far bit-identical."""


def _pca_by_covariance(x: np.ndarray, chunk: int = 65_536) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(mean [d], singular values [d], right singular vectors [d, d])`` of centred ``x``, descending, from
    its float64 covariance accumulated ``chunk`` rows at a time (memory: one chunk plus ``d x d``)."""
    mean = np.zeros(x.shape[1])
    for start in range(0, len(x), chunk):
        mean += x[start : start + chunk].sum(0, dtype=np.float64)
    mean /= len(x)
    gram = np.zeros((x.shape[1], x.shape[1]))
    for start in range(0, len(x), chunk):
        c = x[start : start + chunk].astype(np.float64) - mean
        gram += c.T @ c
    eigval, eigvec = np.linalg.eigh(gram)
    order = np.argsort(eigval)[::-1]
    return mean, np.sqrt(np.clip(eigval[order], 0.0, None)), eigvec[:, order].T


def _whitening(x: np.ndarray, dims: int, what: str) -> Tuple[np.ndarray, np.ndarray]:
    """``(mean [d], projection [d, dims])`` that PCA-whitens ``x`` to ``dims`` unit-variance directions."""
    if dims > x.shape[1]:
        raise ValueError(f"{what}: cannot whiten {x.shape[1]}-dimensional vectors to {dims} dims")
    if x.shape[0] <= dims:
        raise ValueError(f"{what}: need more than {dims} items to whiten to {dims} dims, got {x.shape[0]}")
    if len(x) <= EXACT_SVD_MAX_ROWS:
        mean = x.mean(0)
        _, s, vt = np.linalg.svd(x - mean, full_matrices=False)
    else:
        mean, s, vt = _pca_by_covariance(x)
    scale = s[:dims] / np.sqrt(len(x))
    scale = np.where(scale > 1e-8, scale, 1.0)
    proj = vt[:dims].T / scale[None, :]
    flip = np.sign(proj[np.abs(proj).argmax(axis=0), np.arange(dims)])  # deterministic signs
    return mean.astype(np.float32), (proj * np.where(flip == 0, 1.0, flip)[None, :]).astype(np.float32)


class CollaborativeInput:
    """The fitted input stage ``[text ; collaborative | NaN] -> [whiten(text) ; whiten(collaborative)]``.

    Tensors: ``text_mean``, ``text_proj``, ``collab_mean``, ``collab_proj`` and ``ridge`` (``[text_dims
    + 1, collaborative_dims]``, bias last: predicts the whitened collaborative block from the whitened
    text for rows whose collaborative part is ``NaN``).
    """

    def __init__(self, text_dim: int, collab_dim: int, tensors: Dict[str, Tensor]):
        self.text_dim, self.collab_dim = int(text_dim), int(collab_dim)
        self.tensors = {k: v.float() for k, v in tensors.items()}

    @property
    def input_dim(self) -> int:
        return self.text_dim + self.collab_dim

    @property
    def output_dim(self) -> int:
        return int(self.tensors["text_proj"].shape[1] + self.tensors["collab_proj"].shape[1])

    @classmethod
    def fit(cls, text: np.ndarray, collab: np.ndarray, params: CollaborativeParams) -> "CollaborativeInput":
        """Fits the whitening of both blocks and the ridge on the rows that have a collaborative part."""
        text = np.asarray(text, dtype=np.float32)
        collab = np.asarray(collab, dtype=np.float32)
        if collab.ndim != 2 or collab.shape[0] != text.shape[0]:
            raise ValueError(f"collaborative embeddings must be one row per item: {collab.shape} vs {text.shape[0]} items")
        known = ~np.isnan(collab).any(axis=1)
        if known.sum() <= max(params.collaborative_dims, params.text_dims):
            raise ValueError(
                f"only {int(known.sum())} of {len(known)} items have a collaborative embedding; need more than "
                f"{max(params.collaborative_dims, params.text_dims)} (collaborative_dims / text_dims)"
            )
        t_mean, t_proj = _whitening(text, params.text_dims, "text embeddings (text_dims)")
        c_mean, c_proj = _whitening(collab[known], params.collaborative_dims, "collaborative embeddings (collaborative_dims)")
        tw = (text[known] - t_mean) @ t_proj
        cw = (collab[known] - c_mean) @ c_proj
        design = np.concatenate([tw, np.ones((len(tw), 1), np.float32)], 1).astype(np.float64)
        reg = params.collaborative_ridge * np.eye(design.shape[1])
        reg[-1, -1] = 0.0  # no penalty on the bias
        ridge = np.linalg.solve(design.T @ design + reg, design.T @ cw.astype(np.float64)).astype(np.float32)
        tensors = {
            "text_mean": torch.from_numpy(t_mean), "text_proj": torch.from_numpy(t_proj),
            "collab_mean": torch.from_numpy(c_mean), "collab_proj": torch.from_numpy(c_proj),
            "ridge": torch.from_numpy(ridge),
        }
        return cls(text.shape[1], collab.shape[1], tensors)

    def __call__(self, x: Tensor) -> Tensor:
        """``[N, text_dim + collab_dim]`` (collaborative part ``NaN`` where missing) -> whitened ``[N, output_dim]``."""
        x = torch.as_tensor(x).float()
        if x.ndim != 2 or x.shape[1] != self.input_dim:
            raise ValueError(
                f"this tokenizer reads [text ; collaborative] rows of {self.text_dim} + {self.collab_dim} = {self.input_dim} "
                f"values (tokenizer_input builds them), got shape {tuple(x.shape)}"
            )
        t = self.tensors
        text, collab = x[:, : self.text_dim], x[:, self.text_dim :]
        if torch.isnan(text).any():
            raise ValueError("text embeddings contain NaN")
        tw = (text - t["text_mean"]) @ t["text_proj"]
        missing = torch.isnan(collab).any(dim=1)
        cw = (torch.nan_to_num(collab) - t["collab_mean"]) @ t["collab_proj"]
        if missing.any():
            pred = tw[missing] @ t["ridge"][:-1] + t["ridge"][-1]
            cw = cw.clone()
            cw[missing] = pred
        return torch.cat([tw, cw], 1)

    def n_predicted(self, x) -> int:
        """Rows of ``x`` whose collaborative part is missing (predicted from text)."""
        x = torch.as_tensor(np.asarray(x) if not isinstance(x, Tensor) else x)
        return int(torch.isnan(x[:, self.text_dim :]).any(dim=1).sum())

    def artifact_config(self) -> Dict[str, Any]:
        return {"text_dim": self.text_dim, "collab_dim": self.collab_dim}

    def artifact_tensors(self) -> Dict[str, Tensor]:
        return dict(self.tensors)

    @classmethod
    def from_artifact(cls, config: Dict[str, Any], tensors: Dict[str, Tensor]) -> "CollaborativeInput":
        return cls(int(config["text_dim"]), int(config["collab_dim"]), tensors)


def collaborative_matrix(table, item_idx: Sequence[int], dims: Optional[int] = None) -> np.ndarray:
    """``[N, d]`` float32 rows of an ``item_collaborative_embeddings`` table (``item_idx``, ``embedding``,
    ``n_occurrences``) for each ``item_idx`` in order; ``NaN`` rows for items it lacks or that never occurred
    in training (SASRec only ever pushed those away as negatives)."""
    idx = np.asarray(item_idx, dtype=np.int64)
    if not len(table):
        return np.full((len(idx), int(dims or 1)), np.nan, np.float32)
    emb = np.stack(table["embedding"].to_numpy()).astype(np.float32, copy=False)
    row = pd.Index(table["item_idx"].to_numpy(np.int64)).get_indexer(idx)  # -1: not in the table
    usable = row >= 0
    usable[usable] = table["n_occurrences"].to_numpy(np.int64)[row[usable]] > 0
    out = np.full((len(idx), emb.shape[1]), np.nan, np.float32)
    out[usable] = emb[row[usable]]
    return out


def tokenizer_input(tokenizer, text: np.ndarray, collab_table=None, item_idx: Optional[Sequence[int]] = None) -> np.ndarray:
    """What ``tokenizer`` encodes: the text embeddings, or ``[text ; collaborative]`` when it was trained
    with a collaborative part (``collab_table`` then required, rows looked up by ``item_idx``)."""
    inputs = getattr(tokenizer, "inputs", None)
    if inputs is None:
        return np.asarray(text, dtype=np.float32)
    if collab_table is None or item_idx is None:
        raise ValueError("this tokenizer was trained with collaborative input: pass item_collaborative_embeddings")
    return np.concatenate([np.asarray(text, dtype=np.float32), collaborative_matrix(collab_table, item_idx, inputs.collab_dim)], 1)
