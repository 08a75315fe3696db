"""Named tokenizer variants: the rows of the HiD-VAE Table 2/3-style ablation, as TokenizerParams overrides.

HiD-VAE's ablation removes one component at a time from the full model; the issue asks for the
additive view from plain RQ-VAE: each supervised term alone on top of the TIGER objective, then all
three (full HiD-VAE), plus CAT-ID2's three losses and the non-neural RQ-KMeans. Variants with the
uniqueness loss batch colliding items together (``collision_batches``) so that its in-batch pairs
exist: with random batches of 1,024 out of 12k items a colliding pair shares a batch ~8% of the time.
"""

from __future__ import annotations

from typing import Any, Dict

VARIANTS: Dict[str, Dict[str, Any]] = {
    "rqvae": {},
    "rqvae+align": {"tag_alignment": True},
    "rqvae+pred": {"tag_prediction": True},
    "rqvae+unique": {"uniqueness": True, "collision_batches": True},
    "hidvae": {"tag_alignment": True, "tag_prediction": True, "uniqueness": True, "collision_batches": True},
    "catid2": {"hcc": True, "csc": True, "dispersion": True},
    "rqkmeans": {"kind": "rqkmeans"},
}
"""Variant name -> overrides of :class:`~semid_pipeline.core.tokenizers.base.TokenizerParams`."""
