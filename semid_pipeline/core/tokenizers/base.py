"""The common SID-tokenizer interface: one artifact for every quantizer, plus its tag heads.

:class:`SIDTokenizer` wraps a quantizer (:class:`~semid_pipeline.core.tokenizers.rqvae.RQVAE` or
:class:`~semid_pipeline.core.tokenizers.rqkmeans.RQKMeans`) and, when the catalogue has tags, the
per-level tag classifiers (trained jointly with HiD-VAE's tag-prediction loss, or fitted
afterwards on the frozen codewords as a probe). It saves/loads as one safetensors + JSON artifact
and exposes what the pipeline needs:

- ``encode(x) -> (N, L) codes`` (what ``semantic_ids`` calls),
- :meth:`SIDTokenizer.encode_full` -> codes, last-level distances (for Sinkhorn collision
  resolution), latents, codewords and per-item reconstruction error,
- :meth:`SIDTokenizer.decode_paths`: the human-readable tag path a SID decodes to
  (``"Skin Care > Face > Masks"``).

:func:`train_tokenizer` fits either kind from :class:`TokenizerParams` (``kind: rqvae | rqkmeans``
plus the RQ-VAE fields and the :class:`SupervisionParams` loss switches and weights).
"""

from __future__ import annotations

from typing import Any, Callable, Dict, List, Literal, NamedTuple, Optional, Sequence, Tuple

import faiss
import numpy as np
import torch
from pydantic import Field
from torch import Tensor

from semid_pipeline.core.artifacts import Artifact, register_artifact
from semid_pipeline.core.device import configure_threads
from semid_pipeline.core.metrics import sample_users
from semid_pipeline.core.params import LimitError, check_limit
from semid_pipeline.core.progress import ProgressFn
from semid_pipeline.core.tokenizers.collaborative import CollaborativeInput, CollaborativeParams
from semid_pipeline.core.tokenizers.opq import OPQ, OPQParams, fit_opq
from semid_pipeline.core.tokenizers.rqkmeans import RQKMeans, RQKMeansParams, fit_rqkmeans
from semid_pipeline.core.tokenizers.kmeans import check_embeddings
from semid_pipeline.core.tokenizers.rqvae import RQVAE, RQVAEParams, train_rqvae
from semid_pipeline.core.tokenizers.supervision import (
    SEP,
    SupervisedLoss,
    SupervisionParams,
    TagHeads,
    TagVocab,
    build_tag_vocab,
    fit_probe_heads,
    heldout_mask,
)


class TokenizerParams(RQVAEParams, SupervisionParams, OPQParams, CollaborativeParams):
    """Which tokenizer, its sizes and training (``RQVAEParams``; ``OPQParams`` for ``kind: opq``), the
    supervised loss switches (``SupervisionParams``; all off = plain TIGER RQ-VAE, the default) and the
    optional collaborative part of its input (``CollaborativeParams``; off by default)."""

    kind: Literal["rqvae", "rqkmeans", "opq"] = Field(
        default="rqvae",
        description="'rqvae' (TIGER/HiD-VAE/CAT-ID2 losses), 'rqkmeans' (faiss residual k-means) or 'opq' (RPG's long "
        "PQ SIDs: PCA-whitening, OPQ rotation, pq_digits x pq_codebook_size; core/tokenizers/opq.py).",
    )
    tag_levels: int = Field(default=3, ge=1, description="Tag levels read from item_tags.tag_path (root first).")
    min_tag_items: int = Field(default=1, ge=1, description="Tags with fewer items count as missing (HiD-VAE appendix E filters < 30).")
    heldout_fraction: float = Field(default=0.1, ge=0.0, lt=1.0, description="Items whose tags are hidden from training, to measure tag accuracy.")
    probe_epochs: int = Field(default=30, ge=1, description="Epochs of the tag-classifier probe fitted on frozen codewords when the tokenizer was not trained with tag prediction.")
    probe_max_items: Optional[int] = Field(
        default=None, ge=1,
        description="Fit the tag-classifier probe on a seeded sample of at most this many items (None: every item). "
        "Large catalogues: the probe's input is every item's codewords (N x digits x dim) and its epochs run over all of them.",
    )
    probe_max_hidden: Optional[int] = Field(
        default=512,
        ge=1,
        description="Width cap of the probe classifiers' hidden layers (our choice; the probe is not in the papers). "
        "No-op on RQ-VAE codewords (2 x 3 x 32 = 192 at most); on RQ-KMeans' 384-d codewords the uncapped 2 x 1,152 "
        "level-3 classifier made the probe take ~1 h on 2 CPU cores.",
    )
    residual_pq_digits: int = Field(
        default=0,
        ge=0,
        description="Hybrid SID (kind rqvae/rqkmeans): append this many PQ digits (pq_codebook_size codes, OPQ over pca_dim "
        "dims) of what the quantizer's levels leave unexplained, so a SID decodes to a tag path and is still long and "
        "unique; 0 = off.",
    )
    refit_epochs: int = Field(
        default=30,
        ge=0,
        description="Epochs of refitting jointly trained tag classifiers (tag_prediction) to the final frozen codewords; 0 = keep them as trained.",
    )


class EncodeResult(NamedTuple):
    codes: np.ndarray  # (N, L) int64
    last_distances: np.ndarray  # (N, K) float32, squared distances of the last residual to the last codebook
    latents: np.ndarray  # (N, D) float32, pre-quantization latents (z_e; the input for RQ-KMeans)
    quantized: Tensor  # (N, L, D) selected codewords
    recon_error: np.ndarray  # (N,) squared L2 reconstruction error of the (normalised) input


@register_artifact
class SIDTokenizer(Artifact):
    KIND = "sid_tokenizer"

    def __init__(
        self,
        quantizer: Any,
        heads: Optional[TagHeads] = None,
        tag_keys: Optional[List[List[str]]] = None,
        heads_source: str = "none",
        tag_settings: Optional[Dict[str, Any]] = None,
        residual_pq: Optional[OPQ] = None,
        inputs: Optional[CollaborativeInput] = None,
    ):
        self.quantizer = quantizer
        # [text ; collaborative] -> whitened blocks before the quantizer (TokenizerParams.collaborative_dims > 0)
        self.inputs = inputs
        # hybrid SID: the quantizer's levels, then PQ digits of what they leave unexplained (TokenizerParams.residual_pq_digits)
        self.residual_pq = residual_pq
        self.heads = heads
        self.tag_keys = tag_keys or []
        self.heads_source = heads_source
        # tag_levels, min_tag_items, heldout_fraction, seed: rebuild the same labels / held-out split later
        self.tag_settings = dict(tag_settings or {})

    @property
    def kind(self) -> str:
        return self.quantizer.KIND

    @property
    def n_levels(self) -> int:
        return int(self.quantizer.n_levels) + (self.residual_pq.n_levels if self.residual_pq is not None else 0)

    def map_input(self, x) -> Tensor:
        """``x`` as the quantizer reads it: unchanged, or ``[text ; collaborative]`` whitened by :attr:`inputs`."""
        x = torch.as_tensor(np.asarray(x) if not isinstance(x, Tensor) else x).float()
        return self.inputs(x) if self.inputs is not None else x

    @torch.no_grad()
    def residual(self, x, quantized: Optional[Tensor] = None, batch_size: int = 8192) -> Tensor:
        """What the quantizer's levels leave unexplained, in its input space: ``prepare(x) - reconstruction``."""
        return self._residual(self.map_input(x), quantized, batch_size)

    @torch.no_grad()
    def _residual(self, x: Tensor, quantized: Optional[Tensor], batch_size: int) -> Tensor:
        if quantized is None:
            quantized = self._encode_full(x, batch_size, with_residual_pq=False).quantized
        if isinstance(self.quantizer, RQVAE):
            model = self.quantizer.eval()
            rec = torch.cat([model.decoder(quantized[i : i + batch_size].sum(1)) for i in range(0, max(x.shape[0], 1), batch_size)])
            return model.prepare_input(x) - rec
        return self.quantizer.prepare_input(x) - quantized.sum(1)

    @property
    def codebook_size(self) -> int:
        return int(self.quantizer.codebook_size)

    @property
    def codebooks(self) -> Tensor:
        return self.quantizer.codebooks.detach().cpu()

    def encode(self, x, batch_size: int = 8192) -> Tensor:
        """Codes ``(N, L)`` int64 on CPU."""
        x = self.map_input(x)
        if self.residual_pq is not None:
            return torch.from_numpy(self._encode_full(x, batch_size, True).codes)
        return self.quantizer.encode(x, batch_size=batch_size).cpu()

    def encode_latent(self, x, batch_size: int = 8192) -> Tensor:
        """Pre-quantization latents ``(N, D)`` (z_e for an RQ-VAE, the normalised input for RQ-KMeans);
        a hybrid appends the prepared input, from which :meth:`quantize` rebuilds the residual."""
        x = self.map_input(x)
        z = self.quantizer.encode_latent(x, batch_size)
        if self.residual_pq is None:
            return z
        prepared = self.quantizer.prepare_input(x)
        return torch.cat([z, prepared], 1)

    @torch.no_grad()
    def quantize(self, z: Tensor) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
        """``(codes, quantized, residuals, distances)`` of latents from :meth:`encode_latent` (the
        RQ-VAE interface that ``core/tokenizers/assign.py`` uses for last-level distances). For a
        hybrid the codes and distances include the PQ digits; quantized / residuals are the quantizer's."""
        if self.residual_pq is not None:
            dim = int(self.quantizer.latent_dim)
            zq, prepared = z[:, :dim], z[:, dim:]
            codes, quantized, residuals, distances = self._quantize_base(zq)
            if isinstance(self.quantizer, RQVAE):
                rec = self.quantizer.eval().decoder(quantized.sum(1))
            else:
                rec = quantized.sum(1)
            pq = self.residual_pq.quantize(prepared - rec)
            return torch.cat([codes, pq.codes], 1), quantized, residuals, torch.cat([distances, pq.distances], 1)
        return self._quantize_base(z)

    def _quantize_base(self, z: Tensor) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
        if isinstance(self.quantizer, RQVAE):
            return self.quantizer.quantize(z)
        return tuple(self.quantizer.quantize(z, prepared=True))

    @torch.no_grad()
    def encode_full(self, x, batch_size: int = 8192, with_residual_pq: bool = True) -> EncodeResult:
        """Codes, last-level distances, latents, codewords and reconstruction error. A hybrid's codes
        and last distances include its PQ digits; latents / codewords / error are the quantizer's."""
        return self._encode_full(self.map_input(x), batch_size, with_residual_pq)

    @torch.no_grad()
    def _encode_full(self, x: Tensor, batch_size: int, with_residual_pq: bool) -> EncodeResult:
        if isinstance(self.quantizer, RQVAE):
            model = self.quantizer.eval()
            z = model.encode_latent(x, batch_size)
            parts = [model.quantize(z[i : i + batch_size]) for i in range(0, max(z.shape[0], 1), batch_size)]
            codes, quantized, _, distances = (torch.cat([p[j] for p in parts]) for j in range(4))
            target = model.prepare_input(x)
            x_hat = torch.cat([model.decoder(quantized[i : i + batch_size].sum(1)) for i in range(0, max(z.shape[0], 1), batch_size)])
            recon = (x_hat - target).pow(2).sum(-1)
        else:
            z = self.quantizer.prepare_input(x)
            parts = []  # per batch only what is returned: codes, codewords, last-level distances (not every level's)
            with torch.no_grad():
                for i in range(0, max(z.shape[0], 1), batch_size):
                    qb = self.quantizer.quantize_batch(z[i : i + batch_size])
                    parts.append((qb.codes, qb.quantized, qb.distances[:, -1]))
            codes, quantized, last = (torch.cat([p[j] for p in parts]) for j in range(3))
            recon = (z - quantized.sum(1)).pow(2).sum(-1)
        if isinstance(self.quantizer, RQVAE):
            last = distances[:, -1]
        if with_residual_pq and self.residual_pq is not None:
            pq = self.residual_pq.quantize(self._residual(x, quantized.cpu(), batch_size))
            codes, last = torch.cat([codes.cpu(), pq.codes], 1), pq.distances[:, -1]
        return EncodeResult(
            codes=codes.cpu().numpy().astype(np.int64),
            last_distances=last.cpu().numpy().astype(np.float32),
            latents=z.cpu().numpy().astype(np.float32),
            quantized=quantized.cpu(),
            recon_error=recon.cpu().numpy().astype(np.float64),
        )

    def codewords(self, codes: np.ndarray) -> Tensor:
        """``(N, L, D)`` codewords of a code matrix (e.g. a SID after Sinkhorn re-assignment)."""
        cb = self.codebooks
        c = torch.as_tensor(np.asarray(codes, dtype=np.int64))
        return torch.stack([cb[lv][c[:, lv]] for lv in range(cb.shape[0])], 1)

    def predict_tags(self, quantized: Tensor) -> np.ndarray:
        """``(N, T)`` tag ids predicted from codewords by the tag heads (needs heads)."""
        if self.heads is None:
            raise ValueError("this tokenizer has no tag heads (trained without item tags)")
        return self.heads.cpu().predict(quantized.float()).numpy()

    def decode_paths(self, codes: np.ndarray) -> List[str]:
        """The tag path each code row decodes to, e.g. ``"Skin Care > Face > Masks"``: the predicted
        tag name per level (the last component of each level's key), joined by ``" > "``."""
        pred = self.predict_tags(self.codewords(codes))
        names = [[k.split(SEP)[-1] for k in keys] for keys in self.tag_keys]
        return [SEP.join(names[lv][v] for lv, v in enumerate(row) if v < len(names[lv])) for row in pred.tolist()]

    # -- Artifact ---------------------------------------------------------------------------------
    def artifact_config(self) -> Dict[str, Any]:
        heads = None
        if self.heads is not None:
            heads = {"latent_dim": self.heads.latent_dim, "n_classes": self.heads.n_classes, "tag_dim": self.heads.tag_dim, "dropout": self.heads.dropout}
            if self.heads.max_hidden is not None:  # only capped probes record it: uncapped heads keep their earlier config
                heads["max_hidden"] = self.heads.max_hidden
        return {
            "quantizer_kind": self.quantizer.KIND,
            "quantizer": self.quantizer.artifact_config(),
            "heads": heads,
            "heads_source": self.heads_source,
            "tag_keys": self.tag_keys,
            "tag_settings": self.tag_settings,
            "residual_pq": self.residual_pq.artifact_config() if self.residual_pq is not None else None,
            "inputs": self.inputs.artifact_config() if self.inputs is not None else None,
        }

    def artifact_tensors(self) -> Dict[str, Tensor]:
        out = {f"q.{k}": v for k, v in self.quantizer.artifact_tensors().items()}
        if self.heads is not None:
            out.update({f"h.{k}": v for k, v in self.heads.state_dict().items()})
        if self.residual_pq is not None:
            out.update({f"r.{k}": v for k, v in self.residual_pq.artifact_tensors().items()})
        if self.inputs is not None:
            out.update({f"c.{k}": v for k, v in self.inputs.artifact_tensors().items()})
        return out

    @classmethod
    def from_artifact(cls, config: Dict[str, Any], tensors: Dict[str, Tensor]) -> "SIDTokenizer":
        qt = {k[2:]: v for k, v in tensors.items() if k.startswith("q.")}
        qcls = {"rqvae": RQVAE, "rqkmeans": RQKMeans, "opq": OPQ}[config["quantizer_kind"]]
        quantizer = qcls.from_artifact(config["quantizer"], qt)
        heads = None
        if config.get("heads"):
            heads = TagHeads(**config["heads"])
            heads.load_state_dict({k[2:]: v for k, v in tensors.items() if k.startswith("h.")})
            heads.eval()
        residual_pq = None
        if config.get("residual_pq"):
            residual_pq = OPQ.from_artifact(config["residual_pq"], {k[2:]: v for k, v in tensors.items() if k.startswith("r.")})
        inputs = None
        if config.get("inputs"):
            inputs = CollaborativeInput.from_artifact(config["inputs"], {k[2:]: v for k, v in tensors.items() if k.startswith("c.")})
        return cls(quantizer, heads, config.get("tag_keys") or [], config.get("heads_source", "none"), config.get("tag_settings"), residual_pq, inputs)


def tag_labels_for(tokenizer: SIDTokenizer, tag_paths: Sequence[Any]) -> Tuple[TagVocab, np.ndarray]:
    """The label matrix and held-out mask that ``tokenizer`` was trained with, rebuilt from the same
    ``tag_paths`` (deterministic); raises if the tag vocabulary differs from the one it learned."""
    s = tokenizer.tag_settings
    vocab = build_tag_vocab(tag_paths, int(s.get("tag_levels", 3)), int(s.get("min_tag_items", 1)))
    if tokenizer.tag_keys and vocab.keys != tokenizer.tag_keys:
        raise ValueError("item tags differ from the ones the tokenizer was trained with (tag vocabulary changed); retrain sid_tokenizer")
    return vocab, heldout_mask(len(vocab.labels), float(s.get("heldout_fraction", 0.1)), int(s.get("seed", 0)))


class TokenizerResult(NamedTuple):
    tokenizer: SIDTokenizer
    history: List[Dict[str, Any]]
    vocab: Optional[TagVocab]
    heldout: np.ndarray  # (N,) bool, items whose tags training never saw


def _sub(params: TokenizerParams, cls):
    return cls(**{k: getattr(params, k) for k in cls.model_fields if hasattr(params, k)})


CODEBOOK_LIMIT = "the number of items to tokenize (each level cannot use more codes than there are items)"


def train_tokenizer(
    embeddings: np.ndarray,
    params: TokenizerParams,
    tag_paths: Optional[Sequence[Any]] = None,
    embed_texts: Optional[Callable[[List[str]], np.ndarray]] = None,
    progress: Optional[ProgressFn] = None,
    collaborative: Optional[np.ndarray] = None,
) -> TokenizerResult:
    """Fits the tokenizer ``params.kind`` on ``embeddings`` ``(N, dim)`` in row order.

    ``tag_paths`` (one root-first list of tag names per row, e.g. ``item_tags.tag_path``) gives the
    supervision labels (rows in :func:`heldout_mask` are hidden from training) and enables tag
    heads; ``embed_texts`` embeds the tag texts for HiD-VAE's alignment loss. Without tags, tag
    losses must be off. When the tokenizer did not learn classifiers jointly (no tag_prediction, or
    RQ-KMeans), classifiers are fitted afterwards on its frozen codewords (``heads_source='probe'``).
    With ``params.collaborative_dims > 0``, ``collaborative`` ``(N, c)`` (``NaN`` rows: items without
    interactions) is the collaborative part of the input (``core/tokenizers/collaborative.py``): the
    tokenizer learns on ``[whiten(text) ; whiten(collaborative)]`` and encodes ``[text ; collaborative]``.
    """
    x = check_embeddings(embeddings)
    n = x.shape[0]
    raw, inputs = x, None
    if params.collaborative_dims > 0:
        if collaborative is None:
            raise ValueError("collaborative_dims > 0 needs the items' collaborative embeddings (item_collaborative_embeddings)")
        inputs = CollaborativeInput.fit(x, collaborative, _sub(params, CollaborativeParams))
        raw = np.concatenate([x, np.asarray(collaborative, dtype=np.float32)], 1)
        x = inputs(torch.from_numpy(raw)).numpy()
        if progress is not None:
            progress(
                f"tokenizer input: {params.text_dims} whitened text + {params.collaborative_dims} whitened collaborative dims; "
                f"{inputs.n_predicted(raw):,} of {n:,} items without interactions get theirs predicted from text"
            )
    if n < 2:  # no codebook_size fits (its minimum is 2): advise on the data, not on the setting
        raise LimitError(f"{n} item to tokenize: a tokenizer needs at least 2 items (the smallest codebook has 2 codes); "
                         "give a catalog with more items")
    size_name = "pq_codebook_size" if params.kind == "opq" else "codebook_size"  # kind opq has no codebook_size levels
    check_limit(size_name, getattr(params, size_name), high=n, high_reason=CODEBOOK_LIMIT)
    faiss.omp_set_num_threads(configure_threads(None))  # SEMID_NUM_THREADS for torch and faiss alike
    sup = _sub(params, SupervisionParams)
    vocab = build_tag_vocab(tag_paths, params.tag_levels, params.min_tag_items) if tag_paths is not None else None
    if vocab is not None and len(vocab.labels) != n:
        raise ValueError(f"tag_paths has {len(vocab.labels)} rows but embeddings have {n}")
    heldout = heldout_mask(n, params.heldout_fraction, params.seed) if vocab is not None else np.zeros(n, dtype=bool)
    train_labels = None
    if vocab is not None:
        train_labels = vocab.labels.copy()
        train_labels[heldout] = -1
    history: List[Dict[str, Any]] = []
    heads, source = None, "none"
    if params.kind == "rqvae":
        extra = None
        if sup.any:
            if sup.any_tags and vocab is None:
                raise ValueError("tag losses are switched on but no item tags were given")
            tag_emb = None
            if sup.tag_alignment:
                if embed_texts is None:
                    raise ValueError("tag_alignment needs embed_texts to embed the tag texts")
                tag_emb = [np.asarray(embed_texts(keys), dtype=np.float32) for keys in vocab.keys]
            torch.manual_seed(params.seed)  # heads/projectors initialise identically on every run
            extra = SupervisedLoss(
                sup, params.latent_dim, params.n_levels, train_labels, vocab.parents if vocab else None, tag_emb,
                n_classes=[max(len(k), 1) for k in vocab.keys] if vocab else None,
            )
        result = train_rqvae(x, _sub(params, RQVAEParams), progress=progress, extra_loss=extra)
        quantizer, history = result.model, result.history
        if extra is not None and extra.heads is not None and sup.tag_prediction:
            heads, source = extra.heads.cpu().eval(), "trained"
    elif params.kind == "opq":
        if sup.any:
            raise ValueError("the supervised (HiD-VAE / CAT-ID2) losses need kind 'rqvae'; kind 'opq' has no training loss to add them to")
        quantizer = fit_opq(x, _sub(params, OPQParams), progress=progress)
    else:
        quantizer = fit_rqkmeans(x, _sub(params, RQKMeansParams), progress=progress)
    residual_pq = None
    if params.residual_pq_digits > 0:
        if params.kind == "opq":
            raise ValueError("residual_pq_digits needs kind 'rqvae' or 'rqkmeans' (an OPQ tokenizer is PQ digits already)")
        base = SIDTokenizer(quantizer)
        residual = base.residual(x).numpy()
        pq_params = OPQParams(**{**_sub(params, OPQParams).model_dump(), "pq_digits": params.residual_pq_digits, "normalize_pq_input": False})
        residual_pq = fit_opq(residual, pq_params, progress=progress)
    settings = {"tag_levels": params.tag_levels, "min_tag_items": params.min_tag_items, "heldout_fraction": params.heldout_fraction, "seed": params.seed}
    tok = SIDTokenizer(quantizer, heads, vocab.keys if vocab is not None else [], source, settings, residual_pq, inputs)
    if vocab is not None and (heads is None or params.refit_epochs > 0):
        # classifiers on the final frozen codewords: a probe for tokenizers without tag prediction,
        # a refit of the jointly trained heads otherwise (their inputs moved during training)
        rows = sample_users(len(raw), params.probe_max_items, params.seed)  # the project's one seeded sample
        if len(rows) < len(raw) and progress is not None:
            progress(f"tag probe: fitted on a seeded sample of {len(rows):,} of {len(raw):,} items (probe_max_items)")
        q = tok.encode_full(raw[rows], with_residual_pq=False).quantized
        tok.heads = fit_probe_heads(
            q, train_labels[rows][:, : int(tok.quantizer.n_levels)], q.shape[-1], epochs=params.probe_epochs if heads is None else params.refit_epochs, seed=params.seed,
            n_classes=[max(len(k), 1) for k in vocab.keys], init=heads, max_hidden=params.probe_max_hidden if heads is None else None,
        )
        tok.heads_source = "probe" if heads is None else "trained+refit"
    return TokenizerResult(tok, history, vocab, heldout)
