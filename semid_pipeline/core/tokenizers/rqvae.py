"""RQ-VAE item tokenizer (TIGER), the backbone that HiD-VAE and CAT-ID2 add supervised losses to.

Model (HiD-VAE section 3.5 / Algorithm 1 lines 11-19, CAT-ID2 section 3)::

    z_e = r_0 = E(x)                                   MLP encoder, input_dim -> hidden_dims -> latent_dim
    for l = 1..L:
        d_l[k] = ||r_{l-1} - e^l_k||^2                 squared distances to codebook l   (CAT-ID2 p_l = softmax(-d_l))
        c_l    = argmin_k d_l[k]                       nearest codeword                  (HiD-VAE eq. 1)
        e^(l)  = e^l_{c_l}
        r_l    = r_{l-1} - e^(l)                       residual for the next level        (HiD-VAE sec. 3.5)
        z_q^(l) = sum_{j<=l} e^(j)                     cumulative quantized embedding     (HiD-VAE sec. 3.1)
    x_hat = D(z_e + sg[z_q^(L) - z_e])                 straight-through estimator (VQ-VAE)

Objective (CAT-ID2 eqs. 1-3, the TIGER RQ-VAE loss; HiD-VAE eqs. 10-11 with ``beta = beta_commit``)::

    L = ||x - x_hat||^2 + sum_l ( ||sg[r_{l-1}] - e^(l)||^2 + beta * ||r_{l-1} - sg[e^(l)]||^2 )

Training (:func:`train_rqvae`) adds k-means codebook initialisation (faiss, seeded, level by level
on the residuals of the encoded catalogue, as in TIGER / HiD-VAE "initialized via K-Means") and
dead-code restarts (codes unused for ``dead_code_window`` steps are reset to random current
residuals of their level). Supervised losses (HiD-VAE eqs. 5-7, CAT-ID2 eqs. 4-7) plug in through
``extra_loss``; :class:`RQVAEOutput` exposes every intermediate they need.
"""

from __future__ import annotations

import time
from typing import Any, Callable, Dict, List, Literal, NamedTuple, Optional, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from semid_pipeline.core.artifacts import Artifact, register_artifact
from semid_pipeline.core.device import resolve_device, seed_everything
from semid_pipeline.core.params import StrictParams
from semid_pipeline.core.progress import ProgressFn, Throttle
from semid_pipeline.core.tokenizers.collisions import codebook_stats, collision_rate
from semid_pipeline.core.tokenizers.kmeans import check_embeddings, faiss_kmeans

Activation = Literal["silu", "relu", "gelu"]
_ACTIVATIONS: Dict[str, Callable[[], nn.Module]] = {"silu": nn.SiLU, "relu": nn.ReLU, "gelu": nn.GELU}


class RQVAEParams(StrictParams):
    """Hyperparameters of the RQ-VAE tokenizer and its training loop.

    Architecture and loss defaults follow TIGER (hidden 512-256-128, latent 32, 3 levels x 256
    codes, beta 0.25). TIGER trains for 20k epochs with Adagrad on GPU; here AdamW at 1e-3 with
    batch 1024, k-means initialisation and dead-code restarts converges in far fewer passes. On a
    12k x 384 catalogue (12 steps per epoch) the reconstruction loss, codebook use and collision
    rate plateau after 30-40 epochs; ``epochs = 50`` leaves margin and takes ~35 s on an idle
    2-core CPU (~80 s when the cores are shared). Larger catalogues take more steps per epoch and
    need proportionally fewer epochs.

    ``dead_code_window`` is counted in steps, i.e. in assignments (window x batch_size): 20 steps
    of 1024 items is ~1.7 epochs on Beauty, about 80 expected hits per code at level 0, so a code
    with none is genuinely unused rather than unlucky.
    """

    hidden_dims: list[int] = Field(default=[512, 256, 128], description="Encoder hidden layer widths (the decoder mirrors them).")
    latent_dim: int = Field(default=32, ge=1, description="Dimension D of the latent z_e and of every codeword.")
    n_levels: int = Field(default=3, ge=1, description="Number L of residual quantization levels (semantic-ID length before dedup).")
    codebook_size: int = Field(default=256, ge=2, description="Codewords K per level.")
    beta: float = Field(default=0.25, ge=0.0, description="Commitment weight beta in ||r - sg[e]||^2 (TIGER / VQ-VAE: 0.25).")
    activation: Activation = Field(default="silu", description="Hidden-layer nonlinearity of encoder and decoder (HiD-VAE uses gelu).")
    dropout: float = Field(default=0.0, ge=0.0, lt=1.0, description="Dropout after every hidden activation (training only).")
    normalize_input: bool = Field(
        default=True,
        description="L2-normalise each input row inside the model (idempotent for the pipeline's normalised text embeddings; "
        "protects against unnormalised inputs). Stored with the model, so encode() applies it too.",
    )
    lr: float = Field(default=1e-3, gt=0.0, description="AdamW learning rate.")
    lr_schedule: Literal["constant", "cosine"] = Field(
        default="constant",
        description="'constant', or 'cosine': lr decays from lr to 0 over all steps, so the last epochs settle the code "
        "assignment instead of reshuffling it (the final codes then keep the separations the uniqueness loss made).",
    )
    weight_decay: float = Field(default=0.0, ge=0.0, description="AdamW weight decay for encoder/decoder weights (never applied to codebooks).")
    batch_size: int = Field(default=1024, ge=1, description="Items per optimisation step.")
    epochs: int = Field(default=50, ge=1, description="Passes over the catalogue (50: converged on 12k items, ~35 s on 2 idle CPU cores).")
    kmeans_init: bool = Field(default=True, description="Initialise each level's codebook by k-means on the residuals of the encoded catalogue before the first step.")
    kmeans_iters: int = Field(default=25, ge=1, description="Lloyd iterations of the k-means initialisation.")
    dead_code_restart: bool = Field(default=True, description="Reset codewords that no item used during the last window to random current residuals.")
    dead_code_window: int = Field(
        default=20,
        ge=1,
        description="Steps per usage window: a code unused in all of them counts as dead and is restarted (checked every window steps).",
    )
    collision_batches: bool = Field(
        default=False,
        description="From the second epoch on, items that shared a full SID in the previous epoch are batched together "
        "(colliding groups contiguous, group order shuffled), so an in-batch loss over colliding pairs (HiD-VAE eq. 7) "
        "sees every pair, not only the ~B/N that random batches hold. Off = plain random shuffling.",
    )
    seed: int = Field(default=0, description="Seed for weights, k-means, shuffling, dropout and restarts.")
    device: str = Field(default="auto", description="'auto', 'cpu', 'cuda' or 'cuda:N' (see core.device.resolve_device).")


class RQVAEOutput(NamedTuple):
    """Everything one forward pass computes, for the TIGER loss and the supervised losses.

    Shapes: B items, L levels, D latent dim, K codebook size. Gradient routes are noted per field.
    """

    x_hat: Tensor  # (B, input_dim) decoder output D(z_q)
    z_e: Tensor  # (B, D) encoder output z_0 = r_0 (HiD-VAE eq. 7 uniqueness loss input)
    z_q: Tensor  # (B, D) straight-through quantized latent: value z_q^(L), gradient to the encoder
    codes: Tensor  # (B, L) int64 selected code per level
    quantized: Tensor  # (B, L, D) selected codewords e^(l); gradient to the codebooks
    cumulative: Tensor  # (B, L, D) z_q^(l) = sum_{j<=l} e^(j); gradient to the codebooks (HiD-VAE eqs. 5-6)
    residuals: Tensor  # (B, L, D) r_{l-1}, the input of level l; gradient to the encoder (CAT-ID2 eq. 4)
    distances: Tensor  # (B, L, K) ||r_{l-1} - e^l_k||^2; gradient to encoder and codebooks (CAT-ID2 eq. 5)


class RQVAELosses(NamedTuple):
    total: Tensor
    recon: Tensor
    codebook: Tensor
    commitment: Tensor


ExtraLoss = Callable[["RQVAE", Tensor, Tensor, RQVAEOutput], Tuple[Tensor, Dict[str, float]]]


class TrainResult(NamedTuple):
    model: "RQVAE"
    history: List[Dict[str, Any]]


def _mlp(dims: List[int], activation: str, dropout: float) -> nn.Sequential:
    """Linear layers through ``dims`` with activation (+ dropout) between them, none after the last."""
    layers: List[nn.Module] = []
    for i, (d_in, d_out) in enumerate(zip(dims[:-1], dims[1:])):
        layers.append(nn.Linear(d_in, d_out))
        if i < len(dims) - 2:
            layers.append(_ACTIVATIONS[activation]())
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
    return nn.Sequential(*layers)


@register_artifact
class RQVAE(nn.Module, Artifact):
    """Residual-quantized autoencoder: MLP encoder, ``n_levels`` codebooks ``(K, D)``, mirrored MLP decoder.

    Codebooks are one parameter ``codebooks`` of shape ``(L, K, D)``. Saved with
    :func:`~semid_pipeline.core.artifacts.save_artifact`; a reloaded model encodes bitwise
    identically.
    """

    KIND = "rqvae"

    def __init__(
        self,
        input_dim: int,
        hidden_dims: List[int],
        latent_dim: int,
        n_levels: int,
        codebook_size: int,
        beta: float = 0.25,
        activation: Activation = "silu",
        dropout: float = 0.0,
        normalize_input: bool = True,
    ):
        super().__init__()
        self.input_dim = int(input_dim)
        self.hidden_dims = [int(h) for h in hidden_dims]
        self.latent_dim = int(latent_dim)
        self.n_levels = int(n_levels)
        self.codebook_size = int(codebook_size)
        self.beta = float(beta)
        self.activation = activation
        self.dropout = float(dropout)
        self.normalize_input = bool(normalize_input)
        self.encoder = _mlp([self.input_dim, *self.hidden_dims, self.latent_dim], activation, self.dropout)
        self.decoder = _mlp([self.latent_dim, *reversed(self.hidden_dims), self.input_dim], activation, self.dropout)
        # VQ-VAE style uniform init; replaced by k-means in train_rqvae when params.kmeans_init.
        bound = 1.0 / self.codebook_size
        self.codebooks = nn.Parameter(torch.empty(self.n_levels, self.codebook_size, self.latent_dim).uniform_(-bound, bound))

    @classmethod
    def from_params(cls, input_dim: int, params: RQVAEParams) -> "RQVAE":
        return cls(
            input_dim=input_dim,
            hidden_dims=params.hidden_dims,
            latent_dim=params.latent_dim,
            n_levels=params.n_levels,
            codebook_size=params.codebook_size,
            beta=params.beta,
            activation=params.activation,
            dropout=params.dropout,
            normalize_input=params.normalize_input,
        )

    @property
    def device(self) -> torch.device:
        return self.codebooks.device

    def prepare_input(self, x: Tensor) -> Tensor:
        """The reconstruction target: ``x`` as float32, L2-normalised per row when ``normalize_input``."""
        x = x.to(device=self.device, dtype=torch.float32)
        return F.normalize(x, dim=-1) if self.normalize_input else x

    def level_distances(self, r: Tensor, level: int) -> Tensor:
        """``(B, K)`` squared distances ``||r||^2 - 2 r.C^T + ||C||^2`` from residuals to codebook ``level``."""
        codebook = self.codebooks[level]
        return r.pow(2).sum(-1, keepdim=True) - 2.0 * (r @ codebook.T) + codebook.pow(2).sum(-1)

    def quantize(self, z_e: Tensor) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
        """Residual quantization of ``z_e`` (HiD-VAE sec. 3.5, eq. 1 per level).

        Returns ``(codes (B,L), quantized (B,L,D), residuals (B,L,D), distances (B,L,K))``. The
        residual passed on is ``r_l = r_{l-1} - sg[e^(l)]`` (numerically ``r_{l-1} - e^(l)``), so
        codewords are trained only by the codebook term and later levels do not pull earlier
        codewords. ``argmin`` returns the first minimum, i.e. ties go to the lowest code index.
        """
        r = z_e
        codes, quantized, residuals, distances = [], [], [], []
        for level in range(self.n_levels):
            dist = self.level_distances(r, level)
            code = dist.argmin(dim=-1)
            e = F.embedding(code, self.codebooks[level])  # its backward is deterministic on CPU, [code] indexing's is not
            codes.append(code)
            quantized.append(e)
            residuals.append(r)
            distances.append(dist)
            r = r - e.detach()
        return torch.stack(codes, 1), torch.stack(quantized, 1), torch.stack(residuals, 1), torch.stack(distances, 1)

    def forward(self, x: Tensor) -> RQVAEOutput:
        x = self.prepare_input(x)
        z_e = self.encoder(x)
        codes, quantized, residuals, distances = self.quantize(z_e)
        cumulative = quantized.cumsum(dim=1)
        z_q = z_e + (cumulative[:, -1] - z_e).detach()  # straight-through: decoder gradient flows to the encoder
        return RQVAEOutput(
            x_hat=self.decoder(z_q),
            z_e=z_e,
            z_q=z_q,
            codes=codes,
            quantized=quantized,
            cumulative=cumulative,
            residuals=residuals,
            distances=distances,
        )

    def loss(self, x: Tensor, out: RQVAEOutput) -> RQVAELosses:
        """TIGER / CAT-ID2 eqs. (1)-(3): ``recon + sum_l ||sg[r_{l-1}] - e^(l)||^2 + beta * ||r_{l-1} - sg[e^(l)]||^2``.

        Every term is a squared L2 norm **summed over its vector dimensions** (input_dim for
        ``recon``, D for the quantization terms, and summed over the L levels), then **averaged over
        the batch**. This is the paper's ``||.||_2^2`` literally (HiD-VAE eq. 10 calls it MSE but
        writes the squared norm). A per-element mean would divide the reconstruction by input_dim
        (384) and the latent terms by D (32), silently re-weighting quantization ~12x against
        reconstruction and making the balance depend on the embedding model. ``codebook`` and
        ``commitment`` have the same value (``sum_l ||r_l||^2``); they differ in where the gradient goes
        (codebooks vs encoder).
        """
        target = self.prepare_input(x)
        recon = (out.x_hat - target).pow(2).sum(-1).mean()
        codebook = (out.residuals.detach() - out.quantized).pow(2).sum(dim=(1, 2)).mean()
        commitment = (out.residuals - out.quantized.detach()).pow(2).sum(dim=(1, 2)).mean()
        return RQVAELosses(total=recon + codebook + self.beta * commitment, recon=recon, codebook=codebook, commitment=commitment)

    @torch.no_grad()
    def encode_latent(self, x: Union[Tensor, np.ndarray], batch_size: int = 8192) -> Tensor:
        """``z_e`` for every row of ``x`` in eval mode (no dropout), batched; on the model's device."""
        x = torch.as_tensor(x)
        was_training = self.training
        self.eval()
        try:
            starts = range(0, max(x.shape[0], 1), batch_size)  # one (empty) chunk for empty input
            return torch.cat([self.encoder(self.prepare_input(x[i : i + batch_size])) for i in starts])
        finally:
            self.train(was_training)

    @torch.no_grad()
    def encode(self, x: Union[Tensor, np.ndarray], batch_size: int = 8192) -> Tensor:
        """Semantic-ID codes ``(N, L)`` int64 on CPU: eval mode, deterministic argmin, ties to the lowest index."""
        z_e = self.encode_latent(x, batch_size)
        starts = range(0, max(z_e.shape[0], 1), batch_size)
        return torch.cat([self.quantize(z_e[i : i + batch_size])[0] for i in starts]).cpu()

    @torch.no_grad()
    def kmeans_init_(self, x: Union[Tensor, np.ndarray], seed: int, n_iter: int = 25) -> None:
        """Sets codebook ``l`` to the k-means centroids of the level-``l`` residuals of ``x`` (l = 0..L-1 in turn).

        Level 0 clusters ``z_e = E(x)``; level ``l`` clusters ``r_l = r_{l-1} - e^(l)`` under the freshly
        initialised codebooks above it. faiss k-means is seeded with ``seed + l`` and samples at most
        256 points per centroid, so the result is deterministic and cheap on large catalogues.
        """
        r = self.encode_latent(x)
        for level in range(self.n_levels):
            centroids = faiss_kmeans(r.float().cpu().numpy(), self.codebook_size, n_iter, seed + level)
            self.codebooks[level].copy_(torch.from_numpy(centroids).to(self.device))
            r = r - self.codebooks[level][self.level_distances(r, level).argmin(dim=-1)]

    # -- Artifact ---------------------------------------------------------------------------------
    def artifact_config(self) -> Dict[str, Any]:
        return {
            "input_dim": self.input_dim,
            "hidden_dims": self.hidden_dims,
            "latent_dim": self.latent_dim,
            "n_levels": self.n_levels,
            "codebook_size": self.codebook_size,
            "beta": self.beta,
            "activation": self.activation,
            "dropout": self.dropout,
            "normalize_input": self.normalize_input,
        }

    def artifact_tensors(self) -> Dict[str, Tensor]:
        return dict(self.state_dict())

    @classmethod
    def from_artifact(cls, config: Dict[str, Any], tensors: Dict[str, Tensor]) -> "RQVAE":
        model = cls(**config)
        model.load_state_dict(tensors)
        return model.eval()


def _reset_dead_codes(
    model: RQVAE,
    optimizer: torch.optim.Optimizer,
    dead: Tensor,
    residuals: Tensor,
    generator: torch.Generator,
) -> List[int]:
    """Resets every dead code ``dead[l, k]`` to a random residual ``r_{l-1}`` of the current batch.

    Residuals are drawn without replacement (with replacement only when more codes are dead than
    the batch has items) from a seeded CPU generator; the codewords' AdamW moments are zeroed so
    stale momentum does not drag them straight back. Returns the number of restarted codes per level.
    """
    batch = residuals.shape[0]
    state = optimizer.state.get(model.codebooks, {})
    restarted = []
    with torch.no_grad():
        for level in range(model.n_levels):
            idx = dead[level].nonzero().squeeze(1)
            n_dead = idx.numel()
            restarted.append(n_dead)
            if n_dead == 0:
                continue
            if n_dead <= batch:
                pick = torch.randperm(batch, generator=generator)[:n_dead]
            else:
                pick = torch.randint(batch, (n_dead,), generator=generator)
            model.codebooks[level, idx] = residuals[pick.to(residuals.device), level].detach()
            for moment in ("exp_avg", "exp_avg_sq"):
                if moment in state:
                    state[moment][level, idx] = 0.0
    return restarted


def _collision_grouped_order(codes: np.ndarray, perm: Tensor, generator: torch.Generator) -> Tensor:
    """Reorders the shuffled items ``perm`` so that items with the same code tuple are contiguous;
    groups (singletons included) appear in a seeded random order, items inside a group in ``perm`` order."""
    _, inverse = np.unique(codes, axis=0, return_inverse=True)
    inverse = inverse.reshape(-1)
    group_rank = torch.randperm(int(inverse.max()) + 1, generator=generator).numpy()
    p = perm.numpy()
    order = np.argsort(group_rank[inverse[p]], kind="stable")
    return torch.from_numpy(p[order].copy())


def train_rqvae(
    embeddings: np.ndarray,
    params: RQVAEParams,
    progress: Optional[ProgressFn] = None,
    extra_loss: Optional[ExtraLoss] = None,
) -> TrainResult:
    """Trains an RQ-VAE on ``embeddings`` (N items x dim) and returns the model (eval mode) and per-epoch history.

    Loop: seed everything (``params.seed``), build the model on ``resolve_device(params.device)``,
    k-means-initialise the codebooks on the whole encoded catalogue (``kmeans_init``), then for
    each epoch shuffle the items with a seeded CPU generator and take AdamW steps on
    :meth:`RQVAE.loss` ``(+ extra_loss)``. Every ``dead_code_window`` steps, codes that no item in
    the window selected are restarted (:func:`_reset_dead_codes`). Same seed + same data gives
    bitwise-identical models and codes on CPU for the same torch thread count (float reductions
    are split per thread, so changing ``torch.set_num_threads`` / ``SEMID_NUM_THREADS`` changes
    the last bits and possibly a few codes); on CUDA, atomics in the backward pass make runs agree
    only approximately.

    ``extra_loss(model, batch_idx, x, out) -> (loss, logs)`` is added to the objective:
    ``batch_idx`` are the rows of ``embeddings`` in the batch (int64, on the training device, to
    look up labels), ``x`` the raw batch and ``out`` the :class:`RQVAEOutput`. ``logs`` values are
    averaged per epoch into the history under their own keys. When ``extra_loss`` is an
    ``nn.Module`` (tag projectors, classifiers), it is moved to the device, switched to train mode
    and its parameters are optimised jointly with the RQ-VAE.

    History, one dict per epoch: ``epoch`` (1-based), ``step`` (global steps so far), the epoch
    means of ``total`` (the optimised loss, extra included), ``recon``, ``codebook``,
    ``commitment`` (and ``extra`` plus the extra logs when given), then ``used_codes_l{l}`` and
    ``perplexity_l{l}`` (levels ``l`` numbered from 1) for the codes the items received during the epoch, ``restarted_l{l}``
    (dead codes reset in the epoch), ``collision_rate`` of those codes, and ``seconds`` (epoch
    wall time; the first epoch includes the k-means initialisation).
    """
    data_np = check_embeddings(embeddings)
    n_items = data_np.shape[0]
    device = resolve_device(params.device)
    shuffle_gen = seed_everything(params.seed)
    restart_gen = torch.Generator().manual_seed(params.seed + 1)
    model = RQVAE.from_params(data_np.shape[1], params).to(device)
    data = torch.from_numpy(data_np).to(device)

    net_params = [p for name, p in model.named_parameters() if name != "codebooks"]
    if isinstance(extra_loss, nn.Module):
        extra_loss.to(device).train()
        net_params += list(extra_loss.parameters())
    optimizer = torch.optim.AdamW(
        [{"params": net_params, "weight_decay": params.weight_decay}, {"params": [model.codebooks], "weight_decay": 0.0}],
        lr=params.lr,
        foreach=True,  # one multi-tensor update instead of ~10 small ops per parameter (the classifiers have many)
    )

    total_steps = params.epochs * ((n_items + params.batch_size - 1) // params.batch_size)
    scheduler = None
    if params.lr_schedule == "cosine":
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: float(0.5 * (1.0 + np.cos(np.pi * min(s, total_steps) / total_steps))))
    throttle = Throttle(progress)
    started = time.monotonic()
    if params.kmeans_init:
        model.kmeans_init_(data, seed=params.seed, n_iter=params.kmeans_iters)
    level_offsets = torch.arange(model.n_levels, device=device) * model.codebook_size
    window_counts = torch.zeros(model.n_levels * model.codebook_size, dtype=torch.int64, device=device)
    history: List[Dict[str, Any]] = []
    prev_codes: Optional[np.ndarray] = None
    step = 0
    for epoch in range(1, params.epochs + 1):
        model.train()
        perm = torch.randperm(n_items, generator=shuffle_gen)
        if params.collision_batches and prev_codes is not None:
            perm = _collision_grouped_order(prev_codes, perm, shuffle_gen)
        perm = perm.to(device)
        epoch_codes = torch.empty(n_items, model.n_levels, dtype=torch.int64, device=device)
        sums = torch.zeros(4 + (extra_loss is not None), dtype=torch.float64, device=device)
        extra_sums: Dict[str, float] = {}
        restarted = np.zeros(model.n_levels, dtype=np.int64)
        for start in range(0, n_items, params.batch_size):
            idx = perm[start : start + params.batch_size]
            x = data[idx]
            out = model(x)
            losses = model.loss(x, out)
            total = losses.total
            terms = [losses.recon, losses.codebook, losses.commitment]
            if extra_loss is not None:
                extra, logs = extra_loss(model, idx, x, out)
                total = total + extra
                terms.append(extra)
                for key, value in logs.items():
                    extra_sums[key] = extra_sums.get(key, 0.0) + float(value) * idx.numel()
            optimizer.zero_grad(set_to_none=True)
            total.backward()
            optimizer.step()
            if scheduler is not None:
                scheduler.step()
            step += 1

            sums += torch.stack([total.detach(), *(t.detach() for t in terms)]).double() * idx.numel()
            epoch_codes[idx] = out.codes
            window_counts += torch.bincount((out.codes + level_offsets).flatten(), minlength=window_counts.numel())
            if params.dead_code_restart and step % params.dead_code_window == 0:
                dead = (window_counts == 0).view(model.n_levels, model.codebook_size)
                restarted += _reset_dead_codes(model, optimizer, dead, out.residuals, restart_gen)
                window_counts.zero_()

        means = (sums / n_items).tolist()
        names = ["total", "recon", "codebook", "commitment"] + (["extra"] if extra_loss is not None else [])
        record: Dict[str, Any] = {"epoch": epoch, "step": step, **dict(zip(names, means))}
        record.update({key: value / n_items for key, value in extra_sums.items()})
        codes_np = epoch_codes.cpu().numpy()
        for level_stats in codebook_stats(codes_np, model.codebook_size):
            level = level_stats["level"]
            record[f"used_codes_l{level}"] = level_stats["used_codes"]
            record[f"perplexity_l{level}"] = level_stats["perplexity"]
            record[f"restarted_l{level}"] = int(restarted[level - 1])
        record["collision_rate"] = collision_rate(codes_np)
        prev_codes = codes_np
        now = time.monotonic()
        record["seconds"] = now - started
        started = now
        history.append(record)
        used = "/".join(str(record[f"used_codes_l{lv}"]) for lv in range(1, model.n_levels + 1))
        throttle(
            f"rqvae epoch {epoch}/{params.epochs}: loss {record['total']:.4f} (recon {record['recon']:.4f}, "
            f"codebook {record['codebook']:.4f}), codes used {used} of {model.codebook_size}, "
            f"collisions {record['collision_rate']:.1%}",
            force=epoch == params.epochs,
        )
    if isinstance(extra_loss, nn.Module):
        extra_loss.eval()
    return TrainResult(model=model.eval(), history=history)
