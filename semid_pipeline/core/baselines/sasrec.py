"""SASRec trained with full-softmax cross-entropy ("SASRec-CE"), the strong sequential baseline.

Model (Kang & McAuley 2018, with the pre-LN block layout of later re-implementations)
-------------------------------------------------------------------------------------
* Item embedding with ``n_items + 1`` rows: row 0 is padding, item ``i`` is row ``i + 1``.
* Learned absolute positional embedding over the ``max_len`` columns of a **left-padded** window:
  the most recent item always sits in column ``max_len - 1``, so a position counts "steps back
  from the newest item", identical in training and at inference. A batch is cut to its longest
  row (the columns ``max_len - L .. max_len - 1``), which saves work and changes nothing.
* ``n_layers`` pre-LN blocks: ``x + Dropout(Attn(LN(x)))`` then ``x + Dropout(FFN(LN(x)))`` with a
  ReLU FFN of width ``hidden`` (as in SASRec), then a final LayerNorm.
* Attention goes through ``F.scaled_dot_product_attention`` with one boolean mask: causal, and
  padding keys are hidden. A query may always attend to itself, so a padding query (all of whose
  earlier keys are padding) still has one allowed key and never yields NaN; a real position never
  sees a padding key, hence left padding does not change any real position's output.
* Scores are tied: ``hidden_state @ item_embedding[1:]^T``, one score per catalogue item.

Training (Klenitskiy & Vasilev, RecSys 2023)
--------------------------------------------
Every user's ``train_items`` (validation and test items are never trained on) is one row: the
last ``max_len + 1`` items, inputs ``seq[:-1]``, targets ``seq[1:]``, left-padded. The loss is the
cross-entropy of the full softmax over the catalogue at every real (non-padding) input position.
The output projection is the hot spot (``T x n_items`` logits, 12k items on Beauty), so the hidden
states of the real positions are gathered first (``T`` real targets, not ``B * L`` slots) and
:func:`full_softmax_cross_entropy` scores them in row chunks with a fused softmax/gradient
(~2x faster than ``F.cross_entropy`` on CPU, no ``[T, N]`` matrix). Batches are length-bucketed
(:class:`LengthBucketSampler`, seeded) to keep padding low; AdamW (no decay on biases / norms),
constant learning rate, gradient clipping, bf16 autocast on CUDA only.

CPU threads: on a shared machine whose cores are busy with other work, ``num_threads=1`` can be
several times faster than one thread per core (the intra-op pool waits on descheduled threads);
measured on 2 busy cores: 22 s/epoch with 1 thread, 130 s with 2 (Beauty, default settings).

Model selection uses the validation split only: after every ``eval_every_epochs`` epochs the model
ranks the whole catalogue for every user, or a seeded sample of ``eval_max_users`` (history = ``train_items``, target = ``valid_item``), and
the checkpoint with the best ``select_metric`` (NDCG@10 by default, the smoother of the two; ties
go to the other metric) is returned. Training stops after ``patience`` validations without
improvement, after ``epochs``, or when ``max_train_minutes`` is spent.
"""


import math
from typing import Any, Dict, List, Literal, NamedTuple, Optional, Sequence, Tuple

import numpy as np
import torch
from pydantic import Field, model_validator
from torch import nn

from semid_pipeline.core.artifacts import Artifact, register_artifact
from semid_pipeline.core.baselines.sampled_softmax import NegativeSampler, NegativeSampling, sampled_softmax_cross_entropy
from semid_pipeline.core.blocks import GatedBlock, PreLNBlock
from semid_pipeline.core.metrics import ndcg_at_k, recall_at_k, sample_users
from semid_pipeline.core.progress import ProgressFn, Throttle
from semid_pipeline.core.recommender.data import SCORE_BUDGET, LengthBucketSampler, ragged_arange, sorted_batches
from semid_pipeline.core.training import OptimParams, fit, launch, needs_launch, start_run

EVAL_K = 10
PAD = 0  # item-embedding row of padding; item i is row i + 1


class SASRecParams(OptimParams):
    """Architecture, optimisation and model selection of SASRec-CE.

    The defaults are tuned on Amazon Beauty 5-core (leave-one-out, full ranking, selection on
    validation NDCG@10): test Recall@10 0.079 / NDCG@10 0.038, best epoch 13 of 18, ~10 min with
    ``num_threads=1`` on a busy 2-core CPU (``benchmarks/sasrec_beauty.py``). Dropout 0.5 reaches
    the same quality (0.080 / 0.039) but needs ~28 epochs; lr 2e-3 was worse than 1e-3.
    """

    hidden: int = Field(64, ge=1, description="Width of item/position embeddings, of the residual stream and of the FFN.")
    n_layers: int = Field(2, ge=1, description="Transformer blocks.")
    n_heads: int = Field(1, ge=1, description="Attention heads (must divide hidden).")
    dropout: float = Field(
        0.3, ge=0, lt=1, description="Dropout on the input embeddings, the attention probabilities and every residual branch."
    )
    max_len: int = Field(50, ge=1, description="Most recent items the model reads (training rows hold max_len + 1 items).")
    lr: float = Field(1e-3, gt=0, description="AdamW learning rate (constant by default).")
    lr_schedule: Literal["inverse_sqrt", "cosine", "constant"] = Field("constant", description="As OptimParams.lr_schedule.")
    warmup_steps: int = Field(0, ge=0, description="Linear warmup steps.")
    weight_decay: float = Field(0.0, ge=0, description="AdamW decoupled weight decay on weight matrices and embeddings.")
    batch_size: int = Field(128, ge=1, description="Users (training sequences) per batch.")
    patience: int = Field(5, ge=1, description="Stop after this many validations without a better select_metric.")
    select_metric: Literal["ndcg@10", "recall@10"] = Field(
        "ndcg@10", description="Validation metric that picks the checkpoint and drives early stopping (ties: the other one)."
    )
    eval_batch_size: int = Field(1024, ge=1, description="Users per full-ranking batch during validation.")
    eval_max_users: Optional[int] = Field(
        None, ge=1, description="Validate on a fixed seeded sample of this many users (None: all); a large catalogue's "
        "validation ranks every item for every validated user.",
    )
    mixed_precision: bool = Field(True, description="bf16 autocast on CUDA (CPU always trains in float32).")
    block: Literal["pre_ln", "gated"] = Field(
        "pre_ln",
        description="pre_ln: SASRec's block (ReLU FFN); gated: LiGR-style block of eSASRec (sigmoid-gated residual branches, SwiGLU FFN).",
    )
    d_ff: Optional[int] = Field(None, ge=1, description="FFN width (None: hidden, as in SASRec; eSASRec uses 4 x hidden).")
    loss: Literal["full", "sampled"] = Field(
        "full", description="full: softmax over the whole catalogue (SASRec-CE); sampled: the target against n_negatives sampled items."
    )
    n_negatives: int = Field(256, ge=1, description="loss sampled: negatives per batch (or per position, negatives_per_position).")
    negative_sampling: NegativeSampling = Field(
        "uniform",
        description="loss sampled: uniform over the catalogue, popularity (proportional to (training-target count + 1)^popularity_power) "
        "or in_batch (the batch's own targets; n_negatives unused).",
    )
    negatives_per_position: bool = Field(
        False, description="loss sampled: draw negatives per position (RecTools' SASRec) instead of one set shared by the batch."
    )
    logq_correction: bool = Field(
        False, description="loss sampled: subtract log(M Q(j)) from each negative's logit (the unbiased sampled-softmax estimate)."
    )
    popularity_power: float = Field(1.0, ge=0, description="negative_sampling popularity: exponent of the proposal (0: uniform).")

    @model_validator(mode="after")
    def _check_sampling(self) -> "SASRecParams":
        if self.negatives_per_position and self.negative_sampling == "in_batch":
            raise ValueError("negatives_per_position does not apply to in_batch negatives (they are the batch's targets)")
        if self.sparse_embeddings and self.loss != "sampled":
            raise ValueError("sparse_embeddings needs loss 'sampled': the full softmax reads every item row at every step")
        return self


class _LinearCrossEntropy(torch.autograd.Function):
    """Fused, row-chunked ``cross_entropy(hidden @ weight^T, targets)`` (mean over rows).

    The gradients are computed in the forward pass, chunk by chunk, while a chunk's ``[c, N]``
    logits are still in cache: they become the softmax in place (max, ``exp``, sum, one scaling),
    ``(softmax - onehot) / T`` is multiplied straight into ``grad_hidden`` and into the transposed
    ``grad_weight^T [d, N]`` (the faster GEMM layout for ``N >> d``). No ``[T, N]`` matrix, no
    log-softmax backward and no one-hot fill; on a 2-core CPU this is ~2x faster than
    ``F.cross_entropy`` on the full logit matrix, with the same value and gradients (tested).
    """

    @staticmethod
    def forward(ctx, hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, chunk: int, with_grad: bool):
        n_rows = hidden.shape[0]
        dtype = torch.promote_types(weight.dtype, torch.float32)  # softmax / accumulation dtype (>= fp32)
        total = torch.zeros((), dtype=dtype, device=hidden.device)
        grad_hidden = torch.empty_like(hidden) if with_grad else None
        grad_weight_t = torch.zeros(weight.shape[1], weight.shape[0], dtype=dtype, device=weight.device) if with_grad else None
        for start in range(0, n_rows, chunk):
            h, y = hidden[start : start + chunk], targets[start : start + chunk]
            logits = (h @ weight.T).to(dtype)  # [c, N]; bf16 matmul under CUDA autocast, fp32 softmax
            target_logit = logits.gather(1, y[:, None])
            row_max = logits.amax(dim=1, keepdim=True)
            probs = logits.sub_(row_max).exp_()  # unnormalised, in place
            norm = probs.sum(dim=1, keepdim=True)
            total += (row_max + norm.log() - target_logit).sum()
            if with_grad:
                probs.div_(norm * n_rows)
                probs[torch.arange(len(y), device=y.device), y] -= 1.0 / n_rows
                grad_hidden[start : start + chunk] = probs @ weight
                grad_weight_t.addmm_(h.T.to(probs.dtype), probs)
        ctx.save_for_backward(grad_hidden, grad_weight_t.T.to(weight.dtype) if with_grad else None)
        return total / max(n_rows, 1)

    @staticmethod
    def backward(ctx, grad_loss: torch.Tensor):
        grad_hidden, grad_weight = ctx.saved_tensors
        return grad_hidden * grad_loss, grad_weight * grad_loss, None, None, None


def full_softmax_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of ``hidden [T, d] @ weight [N, d]^T`` against ``targets [T]`` (int in ``[0, N)``).

    Equals ``F.cross_entropy(hidden @ weight.T, targets)`` in value and gradient, without holding
    the ``[T, N]`` logits: rows go in chunks of 64 on CPU (a chunk's logits stay in L2 cache),
    4096 on GPUs.
    """
    if hidden.shape[0] == 0:
        raise ValueError("no targets to score")
    chunk = 64 if hidden.device.type == "cpu" else 4096
    with_grad = torch.is_grad_enabled() and (hidden.requires_grad or weight.requires_grad)
    return _LinearCrossEntropy.apply(hidden, weight, targets, chunk, with_grad)


@register_artifact
class SASRec(nn.Module, Artifact):
    """Causal self-attentive sequential recommender with tied item embeddings.

    Inputs are item matrices ``[B, L]`` (``L <= max_len``) of shifted item ids (``item + 1``, ``0`` =
    padding), left-padded so that column ``L - 1`` holds the newest item.
    """

    KIND = "sasrec"

    def __init__(self, n_items: int, params: SASRecParams):
        super().__init__()
        if n_items < 1:
            raise ValueError(f"n_items must be >= 1, got {n_items}")
        if params.hidden % params.n_heads:
            raise ValueError(f"hidden ({params.hidden}) must be divisible by n_heads ({params.n_heads})")
        self.n_items, self.params = n_items, params
        h = params.hidden
        self.item_emb = nn.Embedding(n_items + 1, h, padding_idx=PAD, sparse=params.sparse_embeddings)
        self.pos_emb = nn.Embedding(params.max_len, h)
        self.emb_drop = nn.Dropout(params.dropout)
        d_ff = params.d_ff or h
        if params.block == "gated":
            self.blocks = nn.ModuleList(GatedBlock(h, params.n_heads, d_ff, params.dropout) for _ in range(params.n_layers))
        else:
            self.blocks = nn.ModuleList(PreLNBlock(h, params.n_heads, d_ff, params.dropout, "relu") for _ in range(params.n_layers))
        self.final_norm = nn.LayerNorm(h)
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        """Normal(0, 0.02) embeddings and linear weights, zero biases (padding row stays zero)."""
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)
        if isinstance(module, nn.Embedding) and module.padding_idx is not None:
            with torch.no_grad():
                module.weight[module.padding_idx].zero_()

    @property
    def device(self) -> torch.device:
        return self.item_emb.weight.device

    def forward(self, items: torch.Tensor) -> torch.Tensor:
        """Hidden states ``[B, L, hidden]`` of shifted, left-padded items ``[B, L]``; position ``t``
        depends on columns ``<= t`` only (padding positions hold meaningless values)."""
        length = items.shape[1]
        if length > self.params.max_len:
            raise ValueError(f"sequences must hold at most max_len={self.params.max_len} items, got {length}")
        positions = torch.arange(self.params.max_len - length, self.params.max_len, device=items.device)
        x = self.emb_drop(self.item_emb(items) + self.pos_emb(positions))
        real = items != PAD
        eye = torch.eye(length, dtype=torch.bool, device=items.device)
        causal = torch.ones(length, length, dtype=torch.bool, device=items.device).tril()
        mask = (causal & (real[:, None, :] | eye))[:, None]  # [B, 1, L(query), L(key)]
        for block in self.blocks:
            x = block(x, mask)
        return self.final_norm(x)

    def item_embeddings(self) -> np.ndarray:
        """``[n_items, hidden]`` float32: the learned (tied input/output) vector of each item, row = ``item_idx``."""
        return self.item_emb.weight[1:].detach().float().cpu().numpy()

    def item_scores(self, hidden: torch.Tensor) -> torch.Tensor:
        """Tied output layer: ``hidden [..., d] -> scores [..., n_items]`` (column ``i`` = item ``i``)."""
        return hidden @ self.item_emb.weight[1:].T

    @property
    def model_name(self) -> str:
        """Evaluation row: ``sasrec`` (SASRec-CE), ``esasrec`` (gated blocks + sampled softmax), else
        ``sasrec`` + ``_gated`` / ``_ss`` (sampled softmax) for the one ingredient used."""
        gated, sampled = self.params.block == "gated", self.params.loss == "sampled"
        if gated and sampled:
            return "esasrec"
        return "sasrec" + ("_gated" if gated else "") + ("_ss" if sampled else "")

    def loss(self, inputs: torch.Tensor, targets: torch.Tensor, sampler: Optional[NegativeSampler] = None) -> torch.Tensor:
        """Mean cross-entropy over the real positions of a batch.

        ``inputs``, ``targets``: shifted items ``[B, L]`` (``targets[:, t]`` follows ``inputs[:, t]``).
        Only positions whose *input* is a real item are scored: their hidden states ``[T, d]`` are
        gathered, then :func:`full_softmax_cross_entropy` scores them against every item, or, with a
        ``sampler``, :func:`sampled_softmax_cross_entropy` against the target and the sampler's negatives.
        """
        real = inputs != PAD
        hidden, y = self(inputs)[real], targets[real] - 1
        if sampler is None:
            return full_softmax_cross_entropy(hidden, self.item_emb.weight[1:], y)
        negatives, log_q = sampler.sample(y)
        rows = None
        if self.item_emb.sparse:  # row-sparse gradient: read the target and negative rows by a sparse lookup
            rows = lambda idx: nn.functional.embedding(idx + 1, self.item_emb.weight, sparse=True)  # noqa: E731
        return sampled_softmax_cross_entropy(hidden, self.item_emb.weight[1:], y, negatives, log_q, rows)

    def artifact_config(self) -> Dict[str, Any]:
        return {"n_items": self.n_items, "params": self.params.model_dump()}

    def artifact_tensors(self) -> Dict[str, torch.Tensor]:
        return dict(self.state_dict())

    @classmethod
    def from_artifact(cls, config: Dict[str, Any], tensors: Dict[str, torch.Tensor]) -> "SASRec":
        model = cls(int(config["n_items"]), SASRecParams(**config["params"]))
        model.load_state_dict(tensors)
        return model.eval()


class SASRecResult(NamedTuple):
    """``model``: best checkpoint by validation ``select_metric`` (eval mode, on the training device).
    ``history``: one dict per epoch: ``epoch, loss, samples_per_s, seconds`` (the epoch's wall
    time, validation included), plus ``valid_recall@10`` / ``valid_ndcg@10`` on validated epochs.
    ``best_epoch``: the epoch of the returned checkpoint."""

    model: SASRec
    history: List[Dict[str, Any]]
    best_epoch: int


class _Sequences:
    """All histories concatenated (``flat`` int64, ``lengths [U]``, ``ends [U]``) with vectorised
    left-padded windows."""

    def __init__(self, histories: Sequence[np.ndarray], n_items: int):
        self.lengths = np.fromiter((len(h) for h in histories), dtype=np.int64, count=len(histories))
        self.ends = np.cumsum(self.lengths)
        parts = [np.asarray(h, dtype=np.int64).reshape(-1) for h in histories]
        self.flat = np.concatenate(parts) if self.lengths.sum() else np.zeros(0, dtype=np.int64)
        if self.flat.size and (self.flat.min() < 0 or self.flat.max() >= n_items):
            raise ValueError(f"history item indices must lie in [0, {n_items}), got [{self.flat.min()}, {self.flat.max()}]")

    def left_padded(self, width: int) -> np.ndarray:
        """``[U, width]`` shifted items: each history's last ``width`` items, right-aligned, 0-padded."""
        keep = np.minimum(self.lengths, width)
        col = np.arange(width, dtype=np.int64)
        valid = col[None, :] >= (width - keep)[:, None]
        src = np.where(valid, self.ends[:, None] - width + col[None, :], 0)
        return np.where(valid, self.flat[src] + 1, PAD) if self.flat.size else np.zeros((len(keep), width), np.int64)

    def user_item_pairs(self, users: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
        """(row within ``users``, item) of every history item of ``users``."""
        counts = self.lengths[users]
        row, within = ragged_arange(counts)
        return row, self.flat[(self.ends[users] - counts)[row] + within]


def _trim(matrix: np.ndarray, rows: np.ndarray, lengths: np.ndarray) -> torch.Tensor:
    """Rows of a left-padded matrix, cut to the longest of them (at least one column)."""
    width = max(int(lengths[rows].max()), 1)
    return torch.from_numpy(matrix[rows, matrix.shape[1] - width :])


@torch.no_grad()
def recommend_sasrec(
    model: SASRec,
    histories: Sequence[np.ndarray],
    top_k: int = 10,
    batch_size: int = 1024,
    exclude_history: bool = False,
    progress: Optional[ProgressFn] = None,
) -> Tuple[np.ndarray, np.ndarray]:
    """Top-``top_k`` items of every user by full ranking over the catalogue.

    Args:
        model: trained SASRec (switched to eval mode here); runs on its current device.
        histories: per user, the chronological item indices the model may see (``train_items``
            for validation, ``train_items + [valid_item]`` for test); the last ``max_len`` are read.
            An empty history yields the position-only (popularity-like) ranking.
        top_k, batch_size: items returned per user, users per forward pass (fewer when ``batch_size``
            users' scores over the catalogue would pass ``SCORE_BUDGET``: memory bounded at any size).
        exclude_history: drop every item of the user's (full) history from the ranking. Off by
            default: the evaluation protocol scores the whole catalogue, like the generative model.
        progress: optional one-line progress callback (throttled to every ~10 s).

    Returns:
        ``(items int64 [U, top_k], scores float32 [U, top_k])`` in input order, best first; ``-1`` /
        ``-inf`` pad the lists when fewer than ``top_k`` items can be ranked.
    """
    model.eval()
    device = model.device
    seqs = _Sequences(histories, model.n_items)
    windows = seqs.left_padded(model.params.max_len)
    lengths = np.minimum(seqs.lengths, model.params.max_len)
    k = min(top_k, model.n_items)
    items = np.full((len(histories), top_k), -1, dtype=np.int64)
    scores = np.full((len(histories), top_k), -np.inf, dtype=np.float32)
    report = Throttle(progress)
    done = 0
    batch_size = max(1, min(batch_size, SCORE_BUDGET // max(model.n_items, 1)))
    for rows in sorted_batches(lengths, batch_size):
        batch = _trim(windows, rows, lengths).to(device)
        logits = model.item_scores(model(batch)[:, -1]).float()
        if exclude_history:
            row, item = seqs.user_item_pairs(rows)
            logits[torch.from_numpy(row).to(device), torch.from_numpy(item).to(device)] = -math.inf
        top_scores, top_items = torch.topk(logits, k, dim=1)
        top_items = torch.where(torch.isfinite(top_scores), top_items, -1)
        items[rows, :k] = top_items.cpu().numpy()
        scores[rows, :k] = top_scores.cpu().numpy()
        done += len(rows)
        report(f"sasrec recommend: {done:,}/{len(histories):,} users")
    return items, scores


def _silent(message: str) -> None:
    """Progress sink for the per-epoch validation ranking (the epoch line already reports it)."""


def train_sasrec(
    train_histories: Sequence[np.ndarray],
    valid_targets: np.ndarray,
    n_items: int,
    params: SASRecParams,
    progress: Optional[ProgressFn] = None,
) -> SASRecResult:
    """Trains SASRec-CE and returns the best checkpoint on validation.

    Args:
        train_histories: per user, the chronological training items (``train_items``); every
            item after the first is a training target. Also the validation histories.
        valid_targets: int ``[U]`` validation item of every user (same order).
        n_items: catalogue size; items are ``0 .. n_items - 1``.
        params: architecture, optimisation and selection settings.
        progress: optional one-line progress callback (throttled to every ~10 s).
    """
    p = params
    valid_targets = np.asarray(valid_targets, dtype=np.int64)
    if len(valid_targets) != len(train_histories):
        raise ValueError(f"need one validation target per user: {len(valid_targets)} targets, {len(train_histories)} histories")
    if needs_launch(p):  # data-parallel ranks (core.training's module docstring)
        return launch(train_sasrec, p, list(train_histories), valid_targets, n_items, p, progress=progress)
    device = start_run(p)
    seqs = _Sequences(train_histories, n_items)
    trainable = np.flatnonzero(seqs.lengths >= 2)
    if len(trainable) == 0:
        raise ValueError("no training targets: every user has fewer than two training items")
    window = seqs.left_padded(p.max_len + 1)[trainable]  # [R, max_len + 1]
    inputs, targets = np.ascontiguousarray(window[:, :-1]), np.ascontiguousarray(window[:, 1:])
    n_targets = np.minimum(seqs.lengths[trainable] - 1, p.max_len)  # real input positions per row
    sampler = LengthBucketSampler(n_targets, p.batch_size, seed=p.seed)

    model = SASRec(n_items, p).to(device)
    negatives = None
    if p.loss == "sampled":
        counts = np.bincount(targets[inputs != PAD] - 1, minlength=n_items)  # training-target count per item
        negatives = NegativeSampler(
            n_items, p.n_negatives, p.negative_sampling, p.negatives_per_position, p.logq_correction, counts, p.popularity_power, device
        )
    if progress is not None:
        progress(
            f"sasrec: {sum(q.numel() for q in model.parameters()):,} parameters, {len(trainable):,} sequences, "
            f"{int(n_targets.sum()):,} targets, {len(sampler)} batches/epoch on {device}"
        )

    def step(rows: np.ndarray) -> Tuple[torch.Tensor, int]:
        x = _trim(inputs, rows, n_targets).to(device)
        y = _trim(targets, rows, n_targets).to(device)
        return model.loss(x, y, negatives), int(n_targets[rows].sum())

    eval_users = sample_users(len(train_histories), p.eval_max_users, p.seed)
    eval_histories = [train_histories[u] for u in eval_users.tolist()]
    eval_targets = valid_targets[eval_users]

    def validate(m: SASRec) -> Dict[str, float]:
        ranked, _ = recommend_sasrec(m, eval_histories, EVAL_K, p.eval_batch_size, progress=_silent)
        return {
            "recall@10": float(recall_at_k(ranked, eval_targets, EVAL_K).mean()),
            "ndcg@10": float(ndcg_at_k(ranked, eval_targets, EVAL_K).mean()),
        }

    other = "recall@10" if p.select_metric == "ndcg@10" else "ndcg@10"
    result = fit(
        model, sampler.epoch, step, p, validate=validate, select_on=(p.select_metric, other),
        steps_per_epoch=len(sampler), progress=progress, name="sasrec",
    )
    return SASRecResult(model=result.model, history=result.history, best_epoch=result.best_epoch)
