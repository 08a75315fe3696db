"""Named tokenizer variants: the rows of the HiD-VAE Table 2/3-style ablation, as TokenizerParams overrides.

HiD-VAE's ablation removes one component at a time from the full model; the issue asks for the
additive view from plain RQ-VAE: each supervised term alone on top of the TIGER objective, then all
three (full HiD-VAE), plus CAT-ID2's three losses and the non-neural RQ-KMeans. Variants with the
uniqueness loss batch colliding items together (``collision_batches``) so that its in-batch pairs
exist: with random batches of 1,024 out of 12k items a colliding pair shares a batch ~8% of the time.

The ``-L4`` rows use four codebooks instead of three (HiD-VAE appendix E.2 finds L = 4 the best depth on
Beauty, +4.9% Recall@10 over L = 3); the tag supervision still covers the first three levels and the
fourth level only refines. Measured on Beauty (``BEAUTY_SCHEDULE``, seed 0, 1 thread): collisions before
resolution rqvae 5.75% / hidvae 3.18% with L = 3 and 2.10% / 0.80% with L = 4. At L = 3 the uniqueness loss
cannot hold collisions down on MiniLM title/brand/category embeddings: tracking the SIDs the model assigns at
every epoch start showed ~80% of the colliding items were new each epoch (pairs it separates are replaced by
neighbours it pushes together), and grouping batches by those current SIDs instead of the codes recorded
during the previous epoch, a cosine lr decay, or beta_unique 2 / 32 / 64 left the rate between 2.4% and 3.9%
(3 seeds of the cosine schedule: 2.4 / 3.6 / 2.6%, with lower held-out tag accuracy).
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
    "rqvae-L4": {"n_levels": 4},
    "hidvae-L4": {"n_levels": 4, "tag_alignment": True, "tag_prediction": True, "uniqueness": True, "collision_batches": True},
}
"""Variant name -> overrides of :class:`~semid_pipeline.core.tokenizers.base.TokenizerParams`."""

BEAUTY_SCHEDULE: Dict[str, Any] = {"batch_size": 256, "epochs": 30, "lr": 2e-3, "dead_code_window": 80, "refit_epochs": 10, "beta_unique": 8.0}
"""Training schedule of the RQ-VAE variants on a ~12k-item catalogue (Amazon Beauty), tuned on Beauty
and used as the base of ``benchmarks/tokenizers_beauty.py`` and ``benchmarks/tokenizer_ablation.py``.

The :class:`~semid_pipeline.core.tokenizers.rqvae.RQVAEParams` defaults (batch 1,024, 50 epochs) take
only ~600 optimizer steps on 12k items: enough for the plain TIGER objective, far too few for the
supervised heads (HiD-VAE trains with batch 128-512 for many epochs). Measured on Beauty (1 thread,
full HiD-VAE losses, held-out tag accuracy L1/L2/L3 and collision rate): batch 1,024 x 20 epochs
(240 steps) 93.5/82.5/67.6%, 9.0%; batch 256 x 20 (960 steps) 94.0/85.1/75.5%, 4.9%; batch 128 x 20
(1,900 steps) 96.6/88.7/81.2%, 3.9%; batch 256 x 40 (1,900 steps, cheaper per step) 96.4/90.3/84.7%,
3.2%; batch 256 x 30 at lr 2e-3 (1,420 steps) 97.7/93.3/89.4%, 3.2%, the schedule used. Other
settings tried on that run's basis: cosine lr decay (96.4/91.0/84.5%, 3.6%), uniqueness margin 0.5
(no lower collisions), ``beta_unique`` 8 vs the paper's 2 (no measurable difference in collisions at
batch 128; kept at 8, the setting of the best run); refitting the jointly trained heads for 10
epochs on the frozen codewords beat keeping them (97.4/92.6/86.9%) and 30 refit epochs
(97.4/93.1/88.7%). ``dead_code_window`` is in steps, so it grows with the step count (80 x 256 = 20k assignments,
the same ~1.7 epochs as the default 20 x 1,024). Applied to every RQ-VAE variant alike, so the
ablation rows differ only in their losses."""
