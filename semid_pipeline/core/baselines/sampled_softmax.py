"""Sampled-softmax cross-entropy for next-item models over large catalogues.

The full softmax scores every item at every training position (``T x N`` logits); a sampled
softmax scores the target and ``M << N`` negatives only. With negatives ``j_1 .. j_M`` drawn
(with replacement) from a proposal ``Q``, the partition function
``Z = sum_i exp(s_i)`` is estimated by ``exp(s_y) + sum_m exp(s_{j_m}) / (M Q(j_m))``: every
negative's logit is corrected by ``- log(M Q(j))`` (the "logQ correction", Bengio & Senecal 2008,
Jean et al. 2015; Yi et al. 2019 for in-batch negatives), the target's logit is not (it is the
known term, as in Khrylchenko et al. 2025, "Correcting the LogQ correction"). A negative equal to the
row's own target (an accidental hit) is masked out. Hence with the whole catalogue as negatives,
each item once (``M = N``, ``Q = 1 / N``, correction ``log 1 = 0``) the loss *is* the full-softmax
cross-entropy (tested).

Proposals (``NegativeSampler``):

* ``uniform``: ``Q = 1 / N`` (eSASRec / RecTools use 256 uniform negatives). The correction is the
  constant ``log(M / N)``; it shifts the estimate to the full-softmax scale and is usually left off
  (``logq_correction = False``), which sharpens the loss on the sampled items instead.
* ``popularity``: ``Q(j) ∝ (count_j + 1)^power`` over training targets (harder negatives; needs the
  correction, else popular items are over-penalised).
* ``in_batch``: the batch's own targets are the negatives (``Q`` = target frequency; free on GPUs,
  popularity-biased, so the correction matters most).

Negatives are shared by every position of a batch (``per_position=False``: one ``[T, d] x [d, M]``
product, the fast choice, as in TensorFlow's ``sampled_softmax_loss``) or drawn per position
(``per_position=True``: ``[T, M]`` items, as in RecTools' SASRec; ``M`` times more gathered rows).
"""

import math
from typing import Callable, Literal, Optional, Tuple

import numpy as np
import torch

NegativeSampling = Literal["uniform", "popularity", "in_batch"]


def sampled_softmax_cross_entropy(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    negatives: torch.Tensor,
    log_q: Optional[torch.Tensor] = None,
    rows: Optional[Callable[[torch.Tensor], torch.Tensor]] = None,
) -> torch.Tensor:
    """Mean sampled-softmax cross-entropy of ``hidden [T, d]`` against ``targets [T]``.

    Args:
        hidden: ``[T, d]`` hidden states of the scored positions.
        weight: ``[N, d]`` output item embeddings (row ``i`` = item ``i``).
        targets: ``[T]`` int item of each row, in ``[0, N)``.
        negatives: ``[M]`` items shared by every row, or ``[T, M]`` per row.
        log_q: ``log(M Q(j))`` of each negative (same shape as ``negatives``), subtracted from its
            logit; ``None``: no correction.
        rows: how item rows are read (``idx -> [*idx.shape, d]``); default ``weight[idx]``. A sparse
            embedding lookup here keeps the table's gradient row-sparse.
    """
    rows = rows or (lambda idx: weight[idx])
    if hidden.shape[0] == 0:
        raise ValueError("no targets to score")
    if negatives.ndim not in (1, 2) or (negatives.ndim == 2 and negatives.shape[0] != hidden.shape[0]):
        raise ValueError(f"negatives must be [M] or [T={hidden.shape[0]}, M], got {tuple(negatives.shape)}")
    if log_q is not None and log_q.shape != negatives.shape:
        raise ValueError(f"log_q {tuple(log_q.shape)} must have the shape of negatives {tuple(negatives.shape)}")
    positive = (hidden * rows(targets)).sum(-1, keepdim=True)  # [T, 1]
    if negatives.ndim == 1:
        negative = hidden @ rows(negatives).T  # [T, M]
    else:
        negative = torch.bmm(rows(negatives), hidden.unsqueeze(-1)).squeeze(-1)  # [T, M, d] x [T, d, 1]
    negative = negative.float()
    if log_q is not None:
        negative = negative - log_q.to(negative.dtype)
    hits = negatives[None, :] == targets[:, None] if negatives.ndim == 1 else negatives == targets[:, None]
    negative = negative.masked_fill(hits, -math.inf)
    logits = torch.cat([positive.float(), negative], dim=1)
    return (torch.logsumexp(logits, dim=1) - logits[:, 0]).mean()


class NegativeSampler:
    """Draws the negatives of one batch and their ``log(M Q(j))`` (see the module docstring).

    ``counts``: ``[N]`` training-target count of each item (the ``popularity`` proposal and the
    ``in_batch`` correction); ``power``: exponent of the popularity proposal.
    """

    def __init__(
        self,
        n_items: int,
        n_negatives: int,
        sampling: NegativeSampling = "uniform",
        per_position: bool = False,
        logq_correction: bool = False,
        counts: Optional[np.ndarray] = None,
        power: float = 1.0,
        device: torch.device = torch.device("cpu"),
    ):
        if n_items < 1 or n_negatives < 1:
            raise ValueError(f"need n_items >= 1 and n_negatives >= 1, got {n_items} and {n_negatives}")
        if sampling not in ("uniform", "popularity", "in_batch"):
            raise ValueError(f"unknown negative sampling {sampling!r}: use uniform, popularity or in_batch")
        if sampling != "uniform" and (counts is None or len(counts) != n_items):
            raise ValueError(f"{sampling} negatives need one training-target count per item ({n_items})")
        self.n_items, self.n_negatives, self.sampling = n_items, n_negatives, sampling
        self.per_position, self.logq_correction, self.device = per_position, logq_correction, device
        if sampling == "uniform":
            self.log_prob = torch.full((n_items,), -math.log(n_items), device=device)
        else:
            weights = (np.asarray(counts, dtype=np.float64) + (1.0 if sampling == "popularity" else 0.0)) ** (power if sampling == "popularity" else 1.0)
            if weights.sum() <= 0:
                raise ValueError("item counts sum to zero: no proposal distribution")
            with np.errstate(divide="ignore"):
                self.log_prob = torch.from_numpy(np.log(weights / weights.sum())).float().to(device)
        self.prob = self.log_prob.exp()

    def sample(self, targets: torch.Tensor) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        """``(negatives, log_q)`` for a batch whose scored rows have ``targets [T]`` (``log_q`` None
        when the correction is off). ``in_batch``: the negatives are ``targets`` themselves (``[T]``)."""
        if self.sampling == "in_batch":
            negatives = targets
        else:
            shape = (len(targets), self.n_negatives) if self.per_position else (self.n_negatives,)
            if self.sampling == "uniform":
                negatives = torch.randint(0, self.n_items, shape, device=targets.device)
            else:
                negatives = torch.multinomial(self.prob.to(targets.device), math.prod(shape), replacement=True).view(shape)
        if not self.logq_correction:
            return negatives, None
        m = negatives.shape[-1]
        return negatives, self.log_prob.to(targets.device)[negatives] + math.log(m)
