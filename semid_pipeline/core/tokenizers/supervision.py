"""Tag supervision for RQ-VAE tokenizers: HiD-VAE (sections 3.5-3.6, appendix C/E) and CAT-ID2 (section 3).

Both papers add losses to the TIGER RQ-VAE objective; here they form one ``nn.Module``
(:class:`SupervisedLoss`) that plugs into :func:`~semid_pipeline.core.tokenizers.rqvae.train_rqvae`
through its ``extra_loss`` hook, with every term switched on/off and weighted by
:class:`SupervisionParams` (an ablation is a config change).

HiD-VAE (weights ``beta_sup`` for align + pred, ``beta_unique``):

- **Tag alignment** (eq. 5), per level ``l``: InfoNCE between the cumulative quantized vector
  ``z_q^(l) = sum_{j<=l} e^(j)`` and the projected tag embeddings ``P_l(t_j^(l))`` of the batch,
  cosine similarity over temperature ``tau``; the item's own tag is the positive. ``t`` is the
  sentence embedding of the tag's path text ("Skin Care > Face"), ``P_l`` a learned linear layer.
- **Tag prediction** (eq. 6, appendix E.1): a classifier ``C_l`` per level on the concatenated
  codewords ``[e^(1), ..., e^(l)]`` ("the cumulative quantized embedding ... concatenates
  embeddings from all preceding layers"), cross-entropy or focal loss (gamma 2). Its width grows
  with depth: hidden = 2 x input dim = 2 x D x (l+1) (:class:`TagClassifier`).
- **Gradient route** (our choice; the paper writes the losses on ``z_q^(l)`` and codewords without
  saying where their gradient goes): with ``supervise_encoder`` (default) every codeword fed to the
  alignment and prediction losses is ``e^(l) + r_{l-1} - sg[r_{l-1}]``, VQ-VAE's straight-through
  estimator per level: the value is the codeword, the gradient reaches both the codebook and the
  encoder. Codebook-only supervision (``False``) can move codewords but never moves an item to
  another code, so on Beauty it left the codes barely more tag-pure than plain RQ-VAE (held-out
  tag accuracy 80.2/64.9/53.2% vs 93.5/82.5/67.6% with the encoder route, same 20-epoch run).
- **Uniqueness** (eq. 7): ``mean_{(i,j) in P} max(0, cos(z_0,i, z_0,j) - m)`` over distinct
  batch pairs whose full SIDs collide; zero when there is no such pair.

CAT-ID2 (eq. 8 weights ``alpha`` dispersion, ``beta`` HCC, ``gamma`` CSC):

- **Hierarchical class constraint** (eq. 4): InfoNCE on the level-``l`` residuals ``r_{l}`` (the
  quantizer's input), positives = other batch items of the same level-``l`` class, negatives from
  level 2 on = items of the same parent class but a different class at this level (hard
  negatives). Our choices where the paper is silent: every positive of an anchor counts (the loss
  is averaged over anchor-positive pairs); an anchor without a hard negative in the batch falls
  back to all different-class negatives; anchors without a positive are skipped. Applied to the
  first ``min(H, L - 1)`` levels by default, since "the maximum depth H of the category tree must be
  smaller than the maximum depth L of the RQ-VAE".
- **Cluster scale constraint** (eq. 5): ``KL(mean_i p_i || U) + KL(U || mean_i p_i)`` with
  ``p_i = softmax(-||r - e_k||^2)`` per level.
- **Dispersion** (eq. 7): InfoNCE between reconstructions ``x_hat_i`` and inputs ``x_j`` of the batch
  (cosine / tau), added to (not replacing) the reconstruction loss.

Labels: ``labels[i, l]`` is the level-``l`` tag id of item ``i`` or ``-1`` (missing level, rare tag,
or held out for the accuracy measurement); ``-1`` entries are left out of every tag loss.
"""

from __future__ import annotations

import copy
from typing import Any, Dict, List, NamedTuple, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from semid_pipeline.core.params import StrictParams

SEP = " > "


class SupervisionParams(StrictParams):
    """Switches and weights of the supervised losses (defaults: the papers' values, all terms off)."""

    tag_alignment: bool = Field(default=False, description="HiD-VAE eq. 5 contrastive tag alignment per level.")
    tag_prediction: bool = Field(default=False, description="HiD-VAE eq. 6 tag classifier per level.")
    uniqueness: bool = Field(default=False, description="HiD-VAE eq. 7 uniqueness margin loss on colliding pairs.")
    hcc: bool = Field(default=False, description="CAT-ID2 eq. 4 hierarchical class-constraint InfoNCE.")
    csc: bool = Field(default=False, description="CAT-ID2 eq. 5 cluster-scale constraint (bidirectional KL to uniform).")
    dispersion: bool = Field(default=False, description="CAT-ID2 eq. 7 dispersion InfoNCE.")
    beta_sup: float = Field(default=1.0, ge=0.0, description="HiD-VAE beta_sup: weight of sum_l (align + pred).")
    beta_align: float = Field(default=1.0, ge=0.0, description="Extra factor on the alignment term (1 = paper).")
    beta_pred: float = Field(default=1.0, ge=0.0, description="Extra factor on the prediction term (1 = paper).")
    beta_unique: float = Field(default=2.0, ge=0.0, description="HiD-VAE beta_unique.")
    tau: float = Field(default=0.07, gt=0.0, description="HiD-VAE alignment temperature.")
    margin: float = Field(default=0.9, description="HiD-VAE uniqueness margin m on the cosine similarity.")
    focal_gamma: float = Field(default=2.0, ge=0.0, description="Focal-loss gamma for tag prediction (0 = plain cross-entropy).")
    classifier_dropout: float = Field(default=0.1, ge=0.0, lt=1.0, description="Dropout of level-1 classifiers; +0.1 per deeper level (capped 0.5).")
    alpha_dispersion: float = Field(default=0.1, ge=0.0, description="CAT-ID2 alpha (dispersion).")
    beta_hcc: float = Field(default=1e-4, ge=0.0, description="CAT-ID2 beta (HCC).")
    gamma_csc: float = Field(default=1.0, ge=0.0, description="CAT-ID2 gamma (CSC).")
    catid2_tau: float = Field(default=0.07, gt=0.0, description="Temperature of CAT-ID2's InfoNCE terms (not given in the paper; HiD-VAE's 0.07).")
    hcc_levels: Optional[int] = Field(default=None, ge=1, description="Quantizer levels that get HCC; None = min(tag levels, L - 1).")
    hard_negatives: bool = Field(default=True, description="CAT-ID2 hard negatives (same parent, different class) from level 2 on.")
    supervise_encoder: bool = Field(
        default=True,
        description="Tag alignment / prediction gradients reach the encoder through a straight-through estimator per level "
        "(e^(l) + r_{l-1} - sg[r_{l-1}]) as well as the codebooks; False = codebooks only (see SupervisedLoss).",
    )

    @property
    def any_tags(self) -> bool:
        return self.tag_alignment or self.tag_prediction or self.hcc

    @property
    def any(self) -> bool:
        return self.any_tags or self.uniqueness or self.csc or self.dispersion


class HiDVAELosses(NamedTuple):
    total: Tensor
    align: Tensor  # sum over levels
    pred: Tensor  # sum over levels
    unique: Tensor


class CATID2Losses(NamedTuple):
    total: Tensor
    hcc: Tensor  # sum over levels
    csc: Tensor  # sum over levels
    dispersion: Tensor


# -- tag vocabulary ---------------------------------------------------------------------------------


class TagVocab(NamedTuple):
    """Per-level tag keys ("A > B"), the items' label matrix and each tag's parent id."""

    keys: List[List[str]]  # keys[l][v]: the path text of tag v at level l
    labels: np.ndarray  # (N, L) int64, -1 = no tag
    parents: List[np.ndarray]  # parents[l][v]: id of the level l-1 tag (-1 at level 0)


def build_tag_vocab(tag_paths: Sequence[Any], n_levels: int, min_items: int = 1) -> TagVocab:
    """Label matrix of ``tag_paths`` (one list of names per item, root first).

    A level-``l`` tag is the path prefix ``names[:l+1]``; tags used by fewer than ``min_items`` items
    become ``-1`` (HiD-VAE appendix E filters categories with fewer than 30 samples), as do all
    levels below a missing or filtered one. Keys are sorted, so ids are deterministic.
    """
    n = len(tag_paths)
    prefixes: List[List[Optional[str]]] = []
    for path in tag_paths:
        names = [] if path is None else [str(p).strip() for p in list(path)]
        row: List[Optional[str]] = []
        for level in range(n_levels):
            if level < len(names) and names[level] and (level == 0 or row[-1] is not None):
                row.append(SEP.join(names[: level + 1]))
            else:
                row.append(None)
        prefixes.append(row)
    keys: List[List[str]] = []
    labels = np.full((n, n_levels), -1, dtype=np.int64)
    parents: List[np.ndarray] = []
    for level in range(n_levels):
        counts: Dict[str, int] = {}
        for i, row in enumerate(prefixes):
            if row[level] is not None and (level == 0 or labels[i, level - 1] >= 0):
                counts[row[level]] = counts.get(row[level], 0) + 1
        level_keys = sorted(k for k, c in counts.items() if c >= min_items)
        index = {k: i for i, k in enumerate(level_keys)}
        for i, row in enumerate(prefixes):
            if row[level] in index and (level == 0 or labels[i, level - 1] >= 0):
                labels[i, level] = index[row[level]]
        if level == 0:
            parents.append(np.full(len(level_keys), -1, dtype=np.int64))
        else:
            prev = {k: i for i, k in enumerate(keys[level - 1])}
            parents.append(np.array([prev.get(SEP.join(k.split(SEP)[:-1]), -1) for k in level_keys], dtype=np.int64))
        keys.append(level_keys)
    return TagVocab(keys=keys, labels=labels, parents=parents)


def heldout_mask(n_items: int, fraction: float, seed: int) -> np.ndarray:
    """Deterministic ``(N,)`` bool: the items held out from tag supervision to measure tag accuracy."""
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"heldout fraction must be in [0, 1), got {fraction}")
    return np.random.default_rng(seed + 7919).random(n_items) < fraction


# -- loss functions -----------------------------------------------------------------------------------


def info_nce(queries: Tensor, keys: Tensor, tau: float) -> Tensor:
    """``-mean_i log softmax_j(cos(q_i, k_j) / tau)[i]``: the i-th key is query i's positive."""
    logits = F.normalize(queries, dim=-1) @ F.normalize(keys, dim=-1).T / tau
    return F.cross_entropy(logits, torch.arange(queries.shape[0], device=queries.device))


def tag_alignment_loss(zq_level: Tensor, projected_tags: Tensor, labels: Tensor, tau: float) -> Tensor:
    """HiD-VAE eq. 5 for one level over the batch items with a label (``labels >= 0``); 0 without any."""
    keep = labels >= 0
    if int(keep.sum()) < 1:
        return zq_level.sum() * 0.0
    return info_nce(zq_level[keep], projected_tags[keep], tau)


def focal_cross_entropy(logits: Tensor, target: Tensor, gamma: float) -> Tensor:
    """Mean focal loss ``-(1 - p_t)^gamma log p_t`` (gamma 0 = cross-entropy) over ``target >= 0``."""
    keep = target >= 0
    if int(keep.sum()) == 0:
        return logits.sum() * 0.0
    logp = F.log_softmax(logits[keep], dim=-1).gather(1, target[keep][:, None]).squeeze(1)
    if gamma == 0:
        return -logp.mean()
    return (-(1.0 - logp.exp()).pow(gamma) * logp).mean()


def uniqueness_loss(z0: Tensor, codes: Tensor, margin: float) -> Tensor:
    """HiD-VAE eq. 7: mean over distinct colliding pairs of ``max(0, cos(z0_i, z0_j) - m)``; 0 without pairs."""
    same = (codes[:, None, :] == codes[None, :, :]).all(-1)
    same.fill_diagonal_(False)
    if not bool(same.any()):
        return z0.sum() * 0.0
    zn = F.normalize(z0, dim=-1)
    cos = zn @ zn.T
    return F.relu(cos[same] - margin).mean()


def hierarchical_class_constraint_loss(
    r: Tensor, labels: Tensor, parent_labels: Optional[Tensor], tau: float, hard_negatives: bool = True
) -> Tensor:
    """CAT-ID2 eq. 4 for one level (choices in the module docstring). ``parent_labels`` None = level 1."""
    keep = labels >= 0
    r, labels = r[keep], labels[keep]
    if parent_labels is not None:
        parent_labels = parent_labels[keep]
    b = r.shape[0]
    if b < 2:
        return r.sum() * 0.0
    rn = F.normalize(r, dim=-1)
    sim = rn @ rn.T / tau
    eye = torch.eye(b, dtype=torch.bool, device=r.device)
    pos = (labels[:, None] == labels[None, :]) & ~eye
    neg = labels[:, None] != labels[None, :]
    if hard_negatives and parent_labels is not None:
        hard = neg & (parent_labels[:, None] == parent_labels[None, :])
        has_hard = hard.any(1, keepdim=True)
        neg = torch.where(has_hard, hard, neg)
    if not bool(pos.any()):
        return r.sum() * 0.0
    neg_lse = torch.logsumexp(sim.masked_fill(~neg, float("-inf")), dim=1, keepdim=True)  # (b, 1), -inf if none
    denom = torch.logaddexp(sim, neg_lse)  # log(exp(s_ap) + sum_n exp(s_an)) per pair
    per_pair = denom - sim
    return per_pair[pos].mean()


def cluster_scale_constraint_loss(distances: Tensor) -> Tensor:
    """CAT-ID2 eq. 5 for one level: ``KL(q || U) + KL(U || q)``, ``q = mean_i softmax(-d_i)``."""
    q = F.softmax(-distances, dim=-1).mean(0).clamp_min(1e-12)
    k = q.shape[0]
    u = torch.full_like(q, 1.0 / k)
    return (q * (q / u).log()).sum() + (u * (u / q).log()).sum()


def dispersion_loss(x_hat: Tensor, x: Tensor, tau: float) -> Tensor:
    """CAT-ID2 eq. 7: InfoNCE between each reconstruction and the batch inputs."""
    return info_nce(x_hat, x, tau)


# -- modules ------------------------------------------------------------------------------------------


class _ResBlock(nn.Module):
    def __init__(self, dim: int, dropout: float):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(dim, dim), nn.LayerNorm(dim), nn.ReLU(), nn.Dropout(dropout), nn.Linear(dim, dim))

    def forward(self, h: Tensor) -> Tensor:
        return F.relu(h + self.net(h))


class TagClassifier(nn.Module):
    """HiD-VAE appendix E.1 level-``l`` tag predictor (0-based ``level``), input ``(l+1) x D``.

    Feature layer ``Linear(in, h) -> LayerNorm -> ReLU -> Dropout`` with ``h = 2 x D x (l+1)``
    (twice the input size, scaled with depth), two residual blocks, head
    ``Linear(h, h/2) -> LayerNorm -> ReLU -> Dropout/2 -> Linear(h/2, n_classes)``; dropout grows by
    0.1 per level. The appendix's leading "self-attention to weigh input features" is omitted: on
    a single input vector it reduces to a learned linear map, which the feature layer already is.
    """

    def __init__(self, latent_dim: int, level: int, n_classes: int, dropout: float, max_hidden: Optional[int] = None):
        super().__init__()
        d_in = latent_dim * (level + 1)
        hidden = 2 * d_in if max_hidden is None else min(2 * d_in, int(max_hidden))
        p = min(dropout + 0.1 * level, 0.5)
        self.feature = nn.Sequential(nn.Linear(d_in, hidden), nn.LayerNorm(hidden), nn.ReLU(), nn.Dropout(p))
        self.blocks = nn.Sequential(_ResBlock(hidden, p), _ResBlock(hidden, p))
        self.head = nn.Sequential(
            nn.Linear(hidden, hidden // 2), nn.LayerNorm(hidden // 2), nn.ReLU(), nn.Dropout(p / 2), nn.Linear(hidden // 2, max(n_classes, 1))
        )

    def forward(self, h: Tensor) -> Tensor:
        return self.head(self.blocks(self.feature(h)))


class TagHeads(nn.Module):
    """Per-level tag projectors ``P_l`` and classifiers ``C_l`` plus the tag embeddings (buffers)."""

    def __init__(self, latent_dim: int, n_classes: List[int], tag_dim: int, dropout: float = 0.1, max_hidden: Optional[int] = None):
        super().__init__()
        self.latent_dim = latent_dim
        self.n_classes = list(n_classes)
        self.tag_dim = tag_dim
        self.dropout = dropout
        self.max_hidden = max_hidden  # None: the paper's 2 x input width (probes on wide codewords cap it)
        self.projectors = nn.ModuleList([nn.Linear(tag_dim, latent_dim) for _ in n_classes])
        self.classifiers = nn.ModuleList([TagClassifier(latent_dim, lv, k, dropout, max_hidden) for lv, k in enumerate(n_classes)])
        for lv, k in enumerate(n_classes):
            self.register_buffer(f"tag_emb_{lv}", torch.zeros(max(k, 1), tag_dim))

    def tag_embeddings(self, level: int) -> Tensor:
        return getattr(self, f"tag_emb_{level}")

    def logits(self, quantized: Tensor, level: int) -> Tensor:
        """Classifier logits from the codewords ``quantized`` ``(B, L, D)`` of levels ``0..level``."""
        return self.classifiers[level](quantized[:, : level + 1].flatten(1))

    @torch.no_grad()
    def predict(self, quantized: Tensor) -> Tensor:
        """``(B, T)`` predicted tag id per tag level (T = number of tag levels <= L)."""
        was = self.training
        self.eval()
        try:
            return torch.stack([self.logits(quantized, lv).argmax(-1) for lv in range(len(self.n_classes))], 1)
        finally:
            self.train(was)


class SupervisedLoss(nn.Module):
    """The ``extra_loss`` of :func:`train_rqvae`: HiD-VAE and CAT-ID2 terms per ``params``.

    ``labels`` ``(N, T)`` (rows of the training embeddings; ``-1`` = unsupervised), ``parents`` per
    tag level, ``tag_embeddings`` per level ``(V_l, E)``. Tag levels beyond the quantizer's L are
    ignored. Calling it returns ``(total, logs)``; :meth:`terms` returns the NamedTuples.
    """

    def __init__(
        self,
        params: SupervisionParams,
        latent_dim: int,
        n_levels: int,
        labels: Optional[np.ndarray] = None,
        parents: Optional[List[np.ndarray]] = None,
        tag_embeddings: Optional[List[np.ndarray]] = None,
        n_classes: Optional[List[int]] = None,
    ):
        super().__init__()
        self.params = params
        self.n_levels = n_levels
        if params.any_tags and labels is None:
            raise ValueError("tag losses (tag_alignment / tag_prediction / hcc) need item tag labels")
        lab = np.zeros((0, 0), dtype=np.int64) if labels is None else np.asarray(labels, dtype=np.int64)[:, :n_levels]
        self.n_tag_levels = lab.shape[1]
        self.register_buffer("labels", torch.from_numpy(lab.copy()))
        self.heads: Optional[TagHeads] = None
        if params.tag_alignment or params.tag_prediction:
            if tag_embeddings is None and params.tag_alignment:
                raise ValueError("tag_alignment needs tag_embeddings (sentence embeddings of the tag texts)")
            if n_classes is None:
                n_classes = [int(max(lab[:, lv].max(initial=-1) + 1, len(tag_embeddings[lv]) if tag_embeddings else 0)) for lv in range(self.n_tag_levels)]
            n_classes = list(n_classes)[: self.n_tag_levels]
            tag_dim = int(tag_embeddings[0].shape[1]) if tag_embeddings else 1
            self.heads = TagHeads(latent_dim, n_classes, tag_dim, params.classifier_dropout)
            if tag_embeddings:
                for lv in range(self.n_tag_levels):
                    emb = torch.as_tensor(np.asarray(tag_embeddings[lv], dtype=np.float32))
                    self.heads.tag_embeddings(lv)[: emb.shape[0]] = emb
        par = [torch.as_tensor(np.asarray(p, dtype=np.int64)) for p in (parents or [])][: self.n_tag_levels]
        for lv, p in enumerate(par):
            self.register_buffer(f"parents_{lv}", p)
        self.hcc_levels = min(params.hcc_levels or max(n_levels - 1, 1), self.n_tag_levels, n_levels)

    def hidvae_terms(self, idx: Tensor, out) -> HiDVAELosses:
        p = self.params
        zero = out.z_e.sum() * 0.0
        align, pred, unique = zero, zero, zero
        if self.heads is not None:
            lab = self.labels[idx]
            quantized, cumulative = out.quantized, out.cumulative
            if p.supervise_encoder:
                quantized = out.quantized + (out.residuals - out.residuals.detach())
                cumulative = quantized.cumsum(dim=1)
            for lv in range(self.n_tag_levels):
                y = lab[:, lv]
                if p.tag_alignment:
                    tags = self.heads.projectors[lv](self.heads.tag_embeddings(lv)[y.clamp_min(0)])
                    align = align + tag_alignment_loss(cumulative[:, lv], tags, y, p.tau)
                if p.tag_prediction:
                    pred = pred + focal_cross_entropy(self.heads.logits(quantized, lv), y, p.focal_gamma)
        if p.uniqueness:
            unique = uniqueness_loss(out.z_e, out.codes, p.margin)
        total = p.beta_sup * (p.beta_align * align + p.beta_pred * pred) + p.beta_unique * unique
        return HiDVAELosses(total=total, align=align, pred=pred, unique=unique)

    def catid2_terms(self, idx: Tensor, x: Tensor, out) -> CATID2Losses:
        p = self.params
        zero = out.z_e.sum() * 0.0
        hcc, csc, disp = zero, zero, zero
        if p.hcc:
            lab = self.labels[idx]
            for lv in range(self.hcc_levels):
                parent = lab[:, lv - 1] if lv > 0 else None
                hcc = hcc + hierarchical_class_constraint_loss(out.residuals[:, lv], lab[:, lv], parent, p.catid2_tau, p.hard_negatives)
        if p.csc:
            for lv in range(self.n_levels):
                csc = csc + cluster_scale_constraint_loss(out.distances[:, lv])
        if p.dispersion:
            disp = dispersion_loss(out.x_hat, x, p.catid2_tau)
        total = p.beta_hcc * hcc + p.gamma_csc * csc + p.alpha_dispersion * disp
        return CATID2Losses(total=total, hcc=hcc, csc=csc, dispersion=disp)

    def forward(self, model, idx: Tensor, x: Tensor, out) -> Tuple[Tensor, Dict[str, float]]:
        target = model.prepare_input(x) if hasattr(model, "prepare_input") else x
        h = self.hidvae_terms(idx, out)
        c = self.catid2_terms(idx, target, out)
        logs = {
            "align": float(h.align.detach()), "pred": float(h.pred.detach()), "unique": float(h.unique.detach()),
            "hcc": float(c.hcc.detach()), "csc": float(c.csc.detach()), "dispersion": float(c.dispersion.detach()),
        }
        return h.total + c.total, logs


def fit_probe_heads(
    quantized: Tensor, labels: np.ndarray, latent_dim: int, epochs: int = 30, lr: float = 1e-3, batch_size: int = 512,
    dropout: float = 0.1, seed: int = 0, n_classes: Optional[List[int]] = None, init: Optional[TagHeads] = None,
    max_hidden: Optional[int] = None,
) -> TagHeads:
    """Trains tag classifiers on frozen codewords ``quantized`` ``(N, L, D)`` (rows with labels ``-1``
    are skipped per level): a probe of how much tag information a tokenizer's codes carry, used for
    tokenizers trained without the tag-prediction loss (plain RQ-VAE, CAT-ID2, RQ-KMeans). With
    ``init`` (heads trained jointly with HiD-VAE's eq. 6) training continues from them: their inputs
    moved while the codebooks trained, so they are refitted to the final, frozen codewords."""
    lab = torch.as_tensor(np.asarray(labels, dtype=np.int64))
    if n_classes is None:
        n_classes = [int(lab[:, lv].max().item()) + 1 if lab.shape[0] else 1 for lv in range(lab.shape[1])]
    n_classes = list(n_classes)[: lab.shape[1]]
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    if init is not None:  # continue from jointly trained heads (their projectors / tag embeddings are kept)
        heads = copy.deepcopy(init).cpu()
    else:
        heads = TagHeads(latent_dim, n_classes, 1, dropout, max_hidden)
    opt = torch.optim.AdamW(heads.classifiers.parameters(), lr=lr, foreach=True)
    q = quantized.detach().float().cpu()
    n = q.shape[0]
    heads.train()
    for _ in range(epochs):
        perm = torch.randperm(n, generator=gen)
        for s in range(0, n, batch_size):
            b = perm[s : s + batch_size]
            loss = sum(focal_cross_entropy(heads.logits(q[b], lv), lab[b, lv], 0.0) for lv in range(lab.shape[1]))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    return heads.eval()
