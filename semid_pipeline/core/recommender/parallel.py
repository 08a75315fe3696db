"""The parallel semantic-ID recommender (RPG, Hou et al. KDD 2025): every SID digit of the next item at once.

Model
-----
* A decoder-only, causal transformer over the user's item sequence (SASRec-shaped: pre-LN blocks,
  learned positions over a **left-padded** window whose last column is the newest item, trained at
  every position in one pass).
* An item's input embedding is pooled from the embeddings of its ``D`` SID digits:
  ``sum_k E[k, code_k] / sqrt(D)`` (= ``sqrt(D) * mean``; a plain mean is drowned by the position
  embedding). ``E`` is one table ``(D, K, d)``: digit ``k``'s code ``c`` is row ``E[k, c]``. An optional
  learned item-ID embedding is added at the input only; an item the model was not trained on (a new
  item of a frozen re-tokenization) uses the shared zero row, so it is represented by its digits.
* One light head per digit (RPG's ``ResBlock``: ``h + SiLU(W_k h + b_k)``, ``W_k`` initialised to zero),
  all ``D`` heads as one batched product.
* Cosine logits: ``logit[k, c] = cos(head_k(h), E[k, c]) / temperature``. The output side is the same
  digit table as the input side and purely SID-based: a new item is scored through its digits alone.

Losses (``loss``)
-----------------
* ``per_digit`` (the paper's): the mean over digits of the cross-entropy of each digit's softmax over
  its ``K`` codes.
* ``item``: a softmax over the catalogue of item scores ``mean_k cos(head_k(h), E[k, code_ik]) /
  item_temperature`` (a separate, optionally learned temperature: ``D`` cosines each divided by the
  digit temperature make the item scores far too sharp). It costs ``O(catalogue * D)`` per position
  (an ``embedding_bag`` over the cosine table, no ``[N, D*d]`` matrix); ``item_negatives > 0`` samples
  that many uniform negatives per batch (shared, plus the batch's own targets) for catalogues far
  larger than Amazon's.

Teacher distribution (``distill_weight``, row ``rpg_kd``)
--------------------------------------------------------
With ``loss: per_digit`` and ``distill_weight = w > 0`` each digit's target is ``(1 - w) * onehot(code) +
w * q_k``, where ``q_k`` is a trained next-item teacher's distribution (the run's SASRec-CE; its top
``distill_top_k`` items at ``distill_temperature``, renormalised) summed onto digit ``k``'s codes:
``q_k[c] = sum of p(i) over the items i whose digit k is c``. The SID model then learns, per digit, which
codes the *plausible* next items share instead of one code per target; on Beauty this lifted test R@10
from .0705 to .0750 in 10-minute runs (issue 14 note). The output side stays SID-only (the teacher is
read at training time only). Our choice, not RPG's: the paper trains on hard labels only.

``distill_rank_weight = r > 0`` adds ``r`` times a listwise term on the teacher's same top items
(:meth:`ParallelRecommender.rank_distillation`): the student's decoding score of each (its summed digit
log-probabilities) divided by ``distill_rank_temperature`` and softmaxed over those items, against the
teacher's renormalised probabilities. The per-digit targets say which codes; this term says which items,
in the order exact scoring ranks them. At temperature 1 it flattens the digits against the hard labels and
learns slowly; at 4 the student's product distribution follows the teacher's to the 4th power (its order,
kept sharp). On Beauty it lifted test R@10 from .0750 to .0812 in 10-minute runs and took the model past
SASRec-CE in the 30-minute-budget run (.0835 / .0418 vs .0786 / .0382, issue 14 note). Also our addition.

``item_id_dropout`` replaces an input's learned item-ID row by the shared new-item row with that
probability during training, which regularises the ID table and trains the row that new items use.

Heads and losses run at labelled positions only (the hidden states of real inputs are gathered
first). Decoding (exact scoring and RPG's graph-constrained walk) lives in ``parallel_decode.py``,
training in ``parallel_train.py``.
"""

from __future__ import annotations

import math
from typing import Any, Dict, Literal, Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import nn

from semid_pipeline.core.artifacts import Artifact, register_artifact
from semid_pipeline.core.blocks import PreLNBlock
from semid_pipeline.core.training import OptimParams

PAD = 0  # shifted item id of padding; item i is i + 1


class ParallelParams(OptimParams):
    """Architecture, loss and training of the parallel (RPG) recommender.

    Optimisation defaults: AdamW lr 3e-3, cosine decay to the end of training (the last epoch or the
    ``max_train_minutes`` cap), batch 256 users, selection on validation.
    """

    d_model: int = Field(128, ge=8, description="Width of digit/position embeddings, residual stream and heads.")
    n_layers: int = Field(2, ge=1, description="Transformer blocks.")
    n_heads: int = Field(2, ge=1, description="Attention heads (must divide d_model).")
    d_ff: int = Field(256, ge=1, description="Hidden width of the GELU feed-forward layers.")
    dropout: float = Field(0.2, ge=0, lt=1, description="Dropout on the input embeddings, attention and every residual branch.")
    max_len: int = Field(50, ge=1, description="Most recent items the model reads.")
    temperature: float = Field(0.05, gt=0, description="Temperature of the per-digit cosine logits (RPG: 0.03-0.07).")
    loss: Literal["per_digit", "item"] = Field(
        "per_digit",
        description="per_digit: RPG's independent cross-entropy per digit; item: softmax over the catalogue of the summed digit cosines.",
    )
    item_temperature: float = Field(0.05, gt=0, description="Temperature of the item-level scores (mean digit cosine / item_temperature).")
    learn_item_temperature: bool = Field(False, description="Learn the item temperature (initialised at item_temperature).")
    item_negatives: int = Field(
        0, ge=0, description="item loss: 0 = full softmax over the catalogue; > 0 = that many uniform negatives per batch plus the batch's targets."
    )
    item_id_embedding: bool = Field(False, description="Add a learned item-ID embedding at the input (new items: a shared zero row).")
    item_id_dropout: float = Field(
        0.0, ge=0, lt=1, description="Training: replace an input's item-ID embedding by the shared new-item row with this probability."
    )
    label_smoothing: float = Field(0.0, ge=0, lt=1, description="Label smoothing of the per-digit cross-entropy.")
    distill_weight: float = Field(
        0.0, ge=0, le=1, description="per_digit: weight of the teacher's per-digit distribution in each digit's target (0: off; needs a teacher)."
    )
    distill_rank_weight: float = Field(
        0.0,
        ge=0,
        description="per_digit: weight of a listwise term matching the student's item distribution (its summed digit "
        "log-probabilities) to the teacher's over the teacher's top items (0: off; needs a teacher).",
    )
    distill_rank_temperature: float = Field(
        1.0, gt=0, description="Divides the student's summed digit log-probabilities in the listwise term (1: its own product distribution)."
    )
    distill_top_k: int = Field(64, ge=1, description="Teacher items kept per position (their probabilities renormalised).")
    distill_temperature: float = Field(1.0, gt=0, description="Temperature of the teacher's item softmax.")
    select_metric: Literal["recall@10", "ndcg@10"] = Field("ndcg@10", description="Validation metric that picks the checkpoint (ties: the other).")
    eval_max_users: Optional[int] = Field(None, ge=1, description="Validate on a fixed seeded sample of this many users (None: all).")
    eval_batch_size: int = Field(512, ge=1, description="Users per exact-scoring batch during validation.")

    # OptimParams defaults that differ for this model
    lr: float = Field(3e-3, gt=0, description="Peak AdamW learning rate, reached after warmup.")
    lr_schedule: Literal["inverse_sqrt", "cosine", "constant"] = Field("cosine", description="See OptimParams.")
    warmup_steps: int = Field(100, ge=0, description="Linear warmup steps.")
    batch_size: int = Field(256, ge=1, description="Users (training sequences) per step.")
    patience: int = Field(10, ge=1, description="Stop after this many validations without improvement.")

    @property
    def uses_teacher(self) -> bool:
        """Whether training needs a teacher (either distillation term is on)."""
        return self.distill_weight > 0 or self.distill_rank_weight > 0

    @model_validator(mode="after")
    def _distill_needs_per_digit(self) -> "ParallelParams":
        if self.uses_teacher and self.loss != "per_digit":
            raise ValueError(
                f"distill_weight / distill_rank_weight > 0 need loss: per_digit (got loss: {self.loss}, "
                f"distill_weight {self.distill_weight}, distill_rank_weight {self.distill_rank_weight})"
            )
        return self


class _ComposedCrossEntropy(torch.autograd.Function):
    """Fused, target-chunked ``cross_entropy(S, targets)`` with ``S[t, i] = sum_k table[t, codes[i, k]]``.

    ``table [T, D*K]`` holds each target position's (already scaled) digit scores, ``codes [N, D]`` the
    catalogue's flattened digit rows. For a chunk of ``c`` positions the ``[D*K, c]`` slice of the table
    fits in cache, the ``[N, c]`` item scores are built by one ``embedding_bag``, turned into the
    softmax in place, and ``(softmax - onehot) / T`` is scattered straight back onto the digit codes
    (``index_add`` per digit): no ``[T, N]`` matrix and no autograd graph over it. Same value and
    gradient as the unfused composition (tested).
    """

    @staticmethod
    def forward(ctx, table: torch.Tensor, codes: torch.Tensor, targets: torch.Tensor, chunk: int, with_grad: bool):
        n_rows = table.shape[0]
        weight_t = table.detach().float().T.contiguous()  # [D*K, T]
        grad = torch.empty_like(weight_t) if with_grad else None
        total = torch.zeros((), dtype=torch.float32, device=table.device)
        for start in range(0, n_rows, chunk):
            w = weight_t[:, start : start + chunk].contiguous()
            y = targets[start : start + chunk]
            cols = torch.arange(len(y), device=y.device)
            scores = F.embedding_bag(codes, w, mode="sum")  # [N, c]
            target_score = scores[y, cols]
            col_max = scores.amax(dim=0)
            probs = scores.sub_(col_max).exp_()
            norm = probs.sum(dim=0)
            total += (col_max + norm.log() - target_score).sum()
            if with_grad:
                probs.div_(norm * n_rows)
                probs[y, cols] -= 1.0 / n_rows
                g = torch.zeros_like(w)
                for k in range(codes.shape[1]):
                    g.index_add_(0, codes[:, k], probs)
                grad[:, start : start + chunk] = g
        ctx.save_for_backward(grad.T.to(table.dtype) if with_grad else None)
        return total / max(n_rows, 1)

    @staticmethod
    def backward(ctx, grad_loss: torch.Tensor):
        (grad,) = ctx.saved_tensors
        return grad * grad_loss, None, None, None, None


def composed_cross_entropy(table: torch.Tensor, codes: torch.Tensor, targets: torch.Tensor, chunk: int = 64) -> torch.Tensor:
    """Mean cross-entropy of the item scores ``S[t, i] = sum_k table[t, codes[i, k]]`` (``table [T, D*K]``,
    ``codes [N, D]`` flattened digit rows, ``targets [T]`` in ``[0, N)``), fused and chunked over targets."""
    if table.shape[0] == 0:
        raise ValueError("no targets to score")
    with_grad = torch.is_grad_enabled() and table.requires_grad
    return _ComposedCrossEntropy.apply(table, codes, targets, chunk, with_grad)


def flat_codes(sids: torch.Tensor, codebook_size: int) -> torch.Tensor:
    """``(N, D)`` digit codes -> rows of the flattened ``(D * K, ...)`` digit table (``k * K + code``)."""
    return sids + torch.arange(sids.shape[1], device=sids.device) * codebook_size


@register_artifact
class ParallelRecommender(nn.Module, Artifact):
    """RPG-style recommender over ``D``-digit SIDs with ``K`` codes per digit (see the module doc).

    ``sids`` (the training catalogue's SID matrix) is kept as a buffer for the item-level loss and as
    the default catalogue; decoding may pass a larger catalogue (new items) with the same digits.
    """

    KIND = "parallel_recommender"

    def __init__(self, sids: torch.Tensor, codebook_size: int, params: ParallelParams):
        super().__init__()
        sids = torch.as_tensor(sids, dtype=torch.long)
        if sids.ndim != 2 or sids.shape[0] < 1:
            raise ValueError(f"sids must be a non-empty (items, digits) matrix, got shape {tuple(sids.shape)}")
        if int(sids.min()) < 0 or int(sids.max()) >= codebook_size:
            raise ValueError(f"SID codes must lie in [0, {codebook_size}), got [{int(sids.min())}, {int(sids.max())}]")
        if params.d_model % params.n_heads:
            raise ValueError(f"d_model ({params.d_model}) must be divisible by n_heads ({params.n_heads})")
        self.params = params
        self.n_items, self.n_digits = int(sids.shape[0]), int(sids.shape[1])
        self.codebook_size = int(codebook_size)
        d = params.d_model
        self.register_buffer("sids", sids.clone())
        self.digit_emb = nn.Parameter(torch.randn(self.n_digits, self.codebook_size, d) * 0.02)
        self.item_emb = (
            nn.Embedding(self.n_items + 1, d, padding_idx=PAD, sparse=params.sparse_embeddings) if params.item_id_embedding else None
        )
        self.pos_emb = nn.Embedding(params.max_len, d)
        self.emb_drop = nn.Dropout(params.dropout)
        self.blocks = nn.ModuleList(PreLNBlock(d, params.n_heads, params.d_ff, params.dropout, "gelu") for _ in range(params.n_layers))
        self.final_norm = nn.LayerNorm(d)
        self.head_w = nn.Parameter(torch.zeros(self.n_digits, d, d))  # RPG's ResBlock: identity at init
        self.head_b = nn.Parameter(torch.zeros(self.n_digits, d))
        self.log_item_tau = nn.Parameter(torch.tensor(math.log(params.item_temperature)), requires_grad=params.learn_item_temperature)
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, std=0.02)
            if isinstance(module, nn.Linear) and module.bias is not None:
                nn.init.zeros_(module.bias)
        if self.item_emb is not None:
            with torch.no_grad():
                self.item_emb.weight[PAD].zero_()

    @property
    def device(self) -> torch.device:
        return self.digit_emb.device

    @property
    def model_name(self) -> str:
        """The row name in the evaluation table: ``rpg`` (per-digit loss), ``rpg_kd`` (per-digit loss with a
        teacher: ``distill_weight`` or ``distill_rank_weight > 0``) or ``rpg_item`` (item-level loss)."""
        if self.params.loss == "item":
            return "rpg_item"
        return "rpg_kd" if self.params.uses_teacher else "rpg"

    # -- encoder ----------------------------------------------------------------------------------
    def forward(self, items: torch.Tensor, sids: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Hidden states ``[B, L, d]`` of shifted, left-padded items ``[B, L]`` (``0`` = padding, item
        ``i`` = ``i + 1``); ``sids`` is the catalogue the item indices refer to (default: training's)."""
        sids = self.sids if sids is None else sids
        length = items.shape[1]
        if length > self.params.max_len:
            raise ValueError(f"sequences must hold at most max_len={self.params.max_len} items, got {length}")
        real = items != PAD
        idx = (items - 1).clamp_min(0)
        codes = flat_codes(sids[idx.reshape(-1)], self.codebook_size)  # [B*L, D]
        x = F.embedding_bag(codes, self.digit_emb.reshape(-1, self.digit_emb.shape[-1]), mode="sum")
        x = (x / math.sqrt(self.n_digits)).view(*items.shape, -1)
        if self.item_emb is not None:
            known = items.where(items <= self.n_items, torch.zeros_like(items))  # new items: the shared zero row
            if self.training and self.params.item_id_dropout > 0:
                known = known.masked_fill(torch.rand(known.shape, device=known.device) < self.params.item_id_dropout, PAD)
            x = x + self.item_emb(known)
        x = x * real[..., None]
        positions = torch.arange(self.params.max_len - length, self.params.max_len, device=items.device)
        x = self.emb_drop(x + self.pos_emb(positions))
        eye = torch.eye(length, dtype=torch.bool, device=items.device)
        causal = torch.ones(length, length, dtype=torch.bool, device=items.device).tril()
        mask = (causal & (real[:, None, :] | eye))[:, None]
        for block in self.blocks:
            x = block(x, mask)
        return self.final_norm(x)

    # -- digit heads ------------------------------------------------------------------------------
    def digit_cosines(self, hidden: torch.Tensor) -> torch.Tensor:
        """``hidden [T, d] -> [T, D, K]`` cosine of every digit head's output with every code embedding."""
        h = hidden[:, None, :] + F.silu(torch.einsum("td,kde->tke", hidden, self.head_w.transpose(1, 2)) + self.head_b)
        h = F.normalize(h, dim=-1)
        e = F.normalize(self.digit_emb, dim=-1)
        return torch.einsum("tkd,kcd->tkc", h, e.to(h.dtype))

    def digit_log_probs(self, hidden: torch.Tensor) -> torch.Tensor:
        """``[T, D, K]`` per-digit log-softmax of the cosine logits (RPG's decoding scores)."""
        return F.log_softmax(self.digit_cosines(hidden).float() / self.params.temperature, dim=-1)

    @property
    def item_tau(self) -> torch.Tensor:
        return self.log_item_tau.exp()

    def composed_scores(self, table: torch.Tensor, sids: torch.Tensor) -> torch.Tensor:
        """``[T, N]`` = ``sum_k table[t, k, sids[n, k]]`` for a per-digit table ``[T, D, K]`` (an
        ``embedding_bag`` over the transposed table: ``O(N * D * T)``, no ``[N, D * d]`` matrix)."""
        t = table.shape[0]
        weight = table.reshape(t, -1).T.contiguous()  # [D*K, T]
        return F.embedding_bag(flat_codes(sids, self.codebook_size), weight, mode="sum").T

    def item_logits(self, hidden: torch.Tensor, sids: Optional[torch.Tensor] = None) -> torch.Tensor:
        """``[T, N]`` item-level logits ``mean_k cos_k / item_tau`` over a catalogue (default: training's)."""
        sids = self.sids if sids is None else sids
        return self.composed_scores(self.digit_cosines(hidden).float(), sids) / (self.n_digits * self.item_tau)

    # -- training loss ----------------------------------------------------------------------------
    def teacher_digit_targets(self, items: torch.Tensor, probs: torch.Tensor) -> torch.Tensor:
        """``[T, D, K]`` per-digit distributions of a teacher's next-item distribution over (top) items
        ``items [T, M]`` (``-1`` = none) with probabilities ``probs [T, M]``: ``q[t, k, c] = sum of the
        probabilities of the items whose digit k is c``."""
        probs = probs.float() * (items >= 0)
        codes = self.sids[items.clamp_min(0).long()].transpose(1, 2)  # [T, D, M]
        q = torch.zeros(items.shape[0], self.n_digits, self.codebook_size, device=probs.device)
        return q.scatter_add_(2, codes, probs[:, None, :].expand(-1, self.n_digits, -1))

    def rank_distillation(self, log_probs: torch.Tensor, items: torch.Tensor, probs: torch.Tensor) -> torch.Tensor:
        """Listwise distillation onto the decoding score: cross-entropy between the teacher's distribution over
        its top items ``items [T, M]`` (``-1`` = none; ``probs [T, M]``, renormalised) and the student's item
        distribution restricted to the same items, ``softmax_m(sum_k log_probs[t, k, sid(items[t, m])_k])``.

        ``log_probs [T, D, K]`` are the per-digit log-probabilities that exact scoring sums, so this term
        trains the ranking the model is evaluated on (the product of its digit marginals, renormalised over
        the teacher's candidates), which the per-digit targets alone cannot express. Our addition, not in
        RPG. ``distill_rank_temperature`` divides the summed scores (1: the student's own product distribution;
        ``D``: the geometric mean of its digit probabilities, much flatter).
        """
        valid = items >= 0
        codes = self.sids[items.clamp_min(0).long()].transpose(1, 2)  # [T, D, M]
        scores = log_probs.gather(2, codes).sum(1) / self.params.distill_rank_temperature
        scores = scores.masked_fill(~valid, float("-inf"))  # [T, M]
        p = probs.float() * valid
        p = p / p.sum(-1, keepdim=True).clamp_min(1e-12)
        return -(p * F.log_softmax(scores, dim=-1).masked_fill(~valid, 0.0)).sum(-1).mean()

    def loss(
        self,
        inputs: torch.Tensor,
        targets: torch.Tensor,
        generator: Optional[torch.Generator] = None,
        teacher: Optional[Tuple[torch.Tensor, torch.Tensor]] = None,
    ) -> torch.Tensor:
        """Mean loss over the real positions of a batch; ``inputs``/``targets`` shifted ``[B, L]``.
        ``teacher``: ``(items, probs)`` ``[T, M]``, a teacher's top items and probabilities at each real
        position, in ``inputs[inputs != 0]`` order (used by ``per_digit`` when ``distill_weight`` or
        ``distill_rank_weight > 0``)."""
        real = inputs != PAD
        hidden = self(inputs)[real]  # [T, d]: heads only at labelled positions
        target = targets[real] - 1
        cos = self.digit_cosines(hidden).float()  # [T, D, K]
        if self.params.loss == "per_digit":
            labels = self.sids[target]  # [T, D]
            logits = (cos / self.params.temperature).reshape(-1, self.codebook_size)
            hard = F.cross_entropy(logits, labels.reshape(-1), label_smoothing=self.params.label_smoothing)
            if not self.params.uses_teacher or teacher is None:
                return hard
            w, r = self.params.distill_weight, self.params.distill_rank_weight
            log_probs = F.log_softmax(logits, dim=-1)  # [T*D, K]
            total = (1 - w) * hard
            if w > 0:
                q = self.teacher_digit_targets(*teacher).reshape(-1, self.codebook_size)
                total = total + w * -(q * log_probs).sum(-1).mean()
            if r > 0:
                total = total + r * self.rank_distillation(log_probs.view(len(target), self.n_digits, -1), *teacher)
            return total
        if self.params.item_negatives > 0:
            neg = torch.randint(0, self.n_items, (self.params.item_negatives,), device=inputs.device, generator=generator)
            cand, inverse = torch.unique(torch.cat([target, neg]), return_inverse=True)
            logits = self.composed_scores(cos, self.sids[cand]) / (self.n_digits * self.item_tau)
            return F.cross_entropy(logits, inverse[: len(target)])
        table = (cos / (self.n_digits * self.item_tau)).reshape(len(target), -1)
        return composed_cross_entropy(table, flat_codes(self.sids, self.codebook_size), target)

    # -- Artifact ---------------------------------------------------------------------------------
    def artifact_config(self) -> Dict[str, Any]:
        return {"codebook_size": self.codebook_size, "params": self.params.model_dump()}

    def artifact_tensors(self) -> Dict[str, torch.Tensor]:
        return {k: v.detach().cpu() for k, v in self.state_dict().items()}

    @classmethod
    def from_artifact(cls, config: Dict[str, Any], tensors: Dict[str, torch.Tensor]) -> "ParallelRecommender":
        model = cls(tensors["sids"], int(config["codebook_size"]), ParallelParams(**config["params"]))
        model.load_state_dict(tensors)
        return model.eval()


def catalog_tensor(sids: np.ndarray, device: torch.device) -> torch.Tensor:
    """An ``(N, D)`` int64 SID matrix as a tensor on ``device``."""
    return torch.as_tensor(np.asarray(sids, dtype=np.int64), device=device)
