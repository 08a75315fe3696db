"""CMSA dual-path fusion before RQ-VAE (DeepInterestGR III-D, eq. 5-7).

``v_i = W_p f_img(I_i)`` (eq. 5) projects the image feature to the text-embedding width;
``e_i = W_f [e_text_i ; v_i]`` (eq. 7) projects the concatenation with the enriched-text embedding
(eq. 6) to the RQ-VAE input width. The result is L2-normalised, like ``item_text_embeddings``, so the
tokenizer reads it unchanged.

The paper calls ``W_p`` and ``W_f`` learnable but does not say how they are trained (it explicitly does
not claim a new contrastive embedding space). Chosen here, trained once per materialization before the
tokenizer, deterministic for ``seed``:

- ``W_p`` by a symmetric InfoNCE alignment between ``normalize(W_p f_i)`` and the item's text
  embedding ``t_i`` (temperature ``temperature``, in-batch negatives), over items with an image, so
  the projected image lands in the text space;
- ``W_f`` (with a linear decoder ``D``) by reconstruction: ``D(W_f z_i)`` must give back
  ``z_i = [t_i ; stopgrad(v_i)]``, so the fused vector keeps what both paths carry in ``out_dim``
  dimensions (a learned linear compression, PCA-like). ``W_f`` starts as ``[I ; w I] / sqrt(1 + w^2)``
  (``w = image_weight``), i.e. a weighted sum of the two paths, so it is useful from step 0.
- Items without an image use ``v_i = 0``: their fused vector is ``W_f [t_i ; 0]``.
The loss is ``InfoNCE + rec_weight * MSE``; both terms are reported per epoch.
"""


import math
from typing import Any, Dict, NamedTuple, Optional

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from semid_pipeline.core.artifacts import Artifact, register_artifact
from semid_pipeline.core.params import StrictParams
from semid_pipeline.core.progress import ProgressFn, Throttle


class FusionParams(StrictParams):
    """Learned CMSA projection of image features fused with the text embedding."""

    out_dim: Optional[int] = Field(None, ge=2, description="Fused width (RQ-VAE input); None = the text width.")
    image_weight: float = Field(1.0, ge=0.0, description="Weight of the image path in W_f's initial value.")
    temperature: float = Field(0.07, gt=0.0, description="InfoNCE temperature of the W_p alignment.")
    rec_weight: float = Field(1.0, ge=0.0, description="Weight of the reconstruction term that trains W_f.")
    epochs: int = Field(30, ge=0, description="Passes over the items.")
    batch_size: int = Field(256, ge=2, description="Items per step (InfoNCE negatives are in-batch).")
    lr: float = Field(1e-3, gt=0.0, description="AdamW learning rate.")
    weight_decay: float = Field(0.0, ge=0.0, description="AdamW weight decay.")
    seed: int = Field(0, description="Initialisation and shuffling seed.")


class FusionLosses(NamedTuple):
    total: Tensor
    align: Tensor
    rec: Tensor


@register_artifact
class CMSAFusion(nn.Module, Artifact):
    """``W_p`` (image -> text width), ``W_f`` (concat -> out width) and the decoder that trains ``W_f``."""

    KIND = "cmsa_fusion"

    def __init__(self, text_dim: int, image_dim: int, out_dim: Optional[int] = None, image_weight: float = 1.0):
        super().__init__()
        self.text_dim, self.image_dim = int(text_dim), int(image_dim)
        self.out_dim = int(out_dim or text_dim)
        self.image_weight = float(image_weight)
        self.w_p = nn.Linear(self.image_dim, self.text_dim, bias=False)
        self.w_f = nn.Linear(2 * self.text_dim, self.out_dim, bias=False)
        self.decoder = nn.Linear(self.out_dim, 2 * self.text_dim, bias=False)
        with torch.no_grad():
            eye = torch.eye(self.out_dim, self.text_dim)
            init = torch.cat([eye, self.image_weight * eye], dim=1) / math.sqrt(1.0 + self.image_weight**2)
            self.w_f.weight.copy_(init)
            self.decoder.weight.copy_(init.t())

    def project_image(self, image: Tensor, has_image: Tensor) -> Tensor:
        """Eq. 5, L2-normalised; zero for items without an image."""
        return F.normalize(self.w_p(image), dim=-1) * has_image.unsqueeze(-1).to(image.dtype)

    def forward(self, text: Tensor, image: Tensor, has_image: Tensor) -> Tensor:
        """Eq. 7: the fused, L2-normalised item vector."""
        v = self.project_image(image, has_image)
        return F.normalize(self.w_f(torch.cat([text, v], dim=-1)), dim=-1)

    def losses(self, text: Tensor, image: Tensor, has_image: Tensor, temperature: float, rec_weight: float) -> FusionLosses:
        v = self.project_image(image, has_image)
        mask = has_image.bool()
        if int(mask.sum()) >= 2:
            logits = v[mask] @ text[mask].t() / temperature
            target = torch.arange(int(mask.sum()), device=text.device)
            align = 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.t(), target))
        else:
            align = text.new_zeros(())
        z = torch.cat([text, v.detach()], dim=-1)
        rec = F.mse_loss(self.decoder(self.w_f(z)), z) * z.shape[-1]
        return FusionLosses(align + rec_weight * rec, align, rec)

    def artifact_config(self) -> Dict[str, Any]:
        return {"text_dim": self.text_dim, "image_dim": self.image_dim, "out_dim": self.out_dim,
                "image_weight": self.image_weight}

    def artifact_tensors(self) -> Dict[str, Tensor]:
        return dict(self.state_dict())

    @classmethod
    def from_artifact(cls, config: Dict[str, Any], tensors: Dict[str, Tensor]) -> "CMSAFusion":
        model = cls(**config)
        model.load_state_dict(tensors)
        return model


class FusionResult(NamedTuple):
    model: CMSAFusion
    fused: np.ndarray  # [N, out_dim] float32, L2-normalised
    history: list[dict[str, float]]


def train_fusion(
    text: np.ndarray,
    image: np.ndarray,
    has_image: np.ndarray,
    params: Optional[FusionParams] = None,
    progress: Optional[ProgressFn] = None,
) -> FusionResult:
    """Trains the fusion on ``text [N, d_t]``, ``image [N, d_i]`` (rows of items without an image are
    ignored; zeros are fine) and ``has_image [N] bool``; returns the model and the fused matrix."""
    params = params or FusionParams()
    text_t = torch.as_tensor(np.asarray(text, np.float32))
    image_t = torch.as_tensor(np.asarray(image, np.float32))
    has_t = torch.as_tensor(np.asarray(has_image, bool))
    n = text_t.shape[0]
    if image_t.shape[0] != n or has_t.shape[0] != n:
        raise ValueError(f"text has {n} rows, image {image_t.shape[0]}, has_image {has_t.shape[0]}")
    torch.manual_seed(params.seed)
    model = CMSAFusion(text_t.shape[1], image_t.shape[1], params.out_dim, params.image_weight)
    opt = torch.optim.AdamW(model.parameters(), lr=params.lr, weight_decay=params.weight_decay)
    gen = torch.Generator().manual_seed(params.seed)
    report = Throttle(progress)
    history: list[dict[str, float]] = []
    for epoch in range(params.epochs):
        order = torch.randperm(n, generator=gen)
        sums = np.zeros(3)
        steps = 0
        for lo in range(0, n, params.batch_size):
            idx = order[lo : lo + params.batch_size]
            loss = model.losses(text_t[idx], image_t[idx], has_t[idx], params.temperature, params.rec_weight)
            opt.zero_grad()
            loss.total.backward()
            opt.step()
            sums += [float(loss.total.detach()), float(loss.align.detach()), float(loss.rec.detach())]
            steps += 1
        mean = sums / max(steps, 1)
        history.append({"epoch": epoch + 1, "total": float(mean[0]), "align": float(mean[1]), "rec": float(mean[2])})
        report(f"cmsa fusion: epoch {epoch + 1}/{params.epochs} loss {mean[0]:.4f} (align {mean[1]:.4f}, rec {mean[2]:.4f})")
    model.eval()
    with torch.no_grad():
        fused = model(text_t, image_t, has_t).numpy().astype(np.float32)
    return FusionResult(model, fused, history)
