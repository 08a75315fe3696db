"""Tokenizer quality report: collisions, codebook health, reconstruction, tag accuracy, readable paths.

:func:`tokenizer_quality` assigns SIDs to a catalogue with a trained
:class:`~semid_pipeline.core.tokenizers.base.SIDTokenizer` and measures

- ``collision_rate_before`` (raw codes) and ``collision_rate_after`` (after ``strategy``), or, given
  ``sids`` (the ``semantic_ids`` table's), of exactly those SIDs, with the strategy read off them
  (:func:`strategy_of`), so the report describes the SIDs the pipeline uses;
- per level: utilisation, perplexity, conditional perplexity, unique prefixes
  (:func:`~semid_pipeline.core.tokenizers.collisions.codebook_stats`) and held-out tag accuracy
  (tag heads applied to the codewords of held-out items, against their true tags, over items
  that have a tag at that level);
- ``recon_error``: mean squared L2 error between the (normalised) input and its reconstruction;
- a sample of items with their SID, the path it decodes to and the true path;
- code usage counts per level and a 2-D PCA projection of the latents (for plots).
"""

from __future__ import annotations

from typing import Any, Dict, List, NamedTuple, Optional, Sequence

import numpy as np
import pandas as pd

from semid_pipeline.core.tokenizers.collisions import codebook_stats, collision_rate, resolve_collisions, sid_strings
from semid_pipeline.core.tokenizers.supervision import SEP, TagVocab


class QualityReport(NamedTuple):
    summary: Dict[str, Any]
    levels: pd.DataFrame  # one row per level
    sample_paths: pd.DataFrame  # item_idx, item_id, sid_str, decoded_path, true_path
    usage: Dict[str, List[int]]  # "level 1" -> items per code
    projection: np.ndarray  # (n, 2) PCA of latents of a sample
    projection_labels: List[str]  # level-1 true tag of each projected item ("" when none)


def pca_2d(latents: np.ndarray) -> np.ndarray:
    """Deterministic 2-D PCA (SVD of the centred data; component signs fixed by their largest entry)."""
    z = np.asarray(latents, dtype=np.float64)
    z = z - z.mean(0)
    if z.shape[0] < 2:
        return np.zeros((z.shape[0], 2))
    _, _, vt = np.linalg.svd(z, full_matrices=False)
    comps = vt[:2]
    signs = np.sign(comps[np.arange(comps.shape[0]), np.abs(comps).argmax(1)])
    proj = z @ (comps * signs[:, None]).T
    return np.pad(proj, ((0, 0), (0, 2 - proj.shape[1])))


def strategy_of(codes: np.ndarray, sids: np.ndarray) -> str:
    """The collision strategy that turned ``codes`` ``(N, L)`` into ``sids``: ``append_token`` adds
    one token (``L + 1`` columns), ``sinkhorn`` keeps ``L``."""
    n_codes, n_sid = np.asarray(codes).shape[1], np.asarray(sids).shape[1]
    if n_sid == n_codes + 1:
        return "append_token"
    if n_sid == n_codes:
        return "sinkhorn"
    raise ValueError(f"SIDs have {n_sid} tokens for {n_codes} code levels: neither append_token (L+1) nor sinkhorn (L)")


def tokenizer_quality(
    tokenizer,
    embeddings: np.ndarray,
    vocab: Optional[TagVocab],
    heldout: Optional[np.ndarray],
    item_ids: Sequence[str],
    strategy: str = "sinkhorn",
    seed: int = 0,
    n_samples: int = 20,
    n_projection: int = 2000,
    codes: Optional[np.ndarray] = None,
    sids: Optional[np.ndarray] = None,
) -> QualityReport:
    """Quality of ``tokenizer`` on ``embeddings`` (rows = items). Given ``codes`` and ``sids`` (rows
    aligned with ``embeddings``, e.g. ``semantic_ids.codes`` / ``.sid``), collisions, SID length,
    strategy and sample SIDs describe those; otherwise the codes are re-encoded and resolved with
    ``strategy``."""
    enc = tokenizer.encode_full(embeddings)
    n = enc.codes.shape[0]
    if sids is None:
        codes = enc.codes
        sids, _ = resolve_collisions(codes, enc.last_distances, strategy=strategy, seed=seed)
    else:
        codes = np.asarray(enc.codes if codes is None else codes, dtype=np.int64)
        sids = np.asarray(sids, dtype=np.int64)
        if codes.shape != enc.codes.shape or sids.shape[0] != n:
            raise ValueError(f"codes {codes.shape} / sids {sids.shape} do not match the {n} items x {enc.codes.shape[1]} levels of the embeddings")
        strategy = strategy_of(codes, sids)
    stats = pd.DataFrame(codebook_stats(codes, tokenizer.codebook_size))  # level numbered from 1
    stats.insert(0, "level", stats.pop("level"))
    summary: Dict[str, Any] = {
        "tokenizer_kind": tokenizer.kind,
        "n_items": int(n),
        "n_levels": int(codes.shape[1]),
        "codebook_size": int(tokenizer.codebook_size),
        "collision_rate_before": collision_rate(codes),
        "collision_strategy": strategy,
        "collision_rate_after": collision_rate(sids),
        "sid_length": int(sids.shape[1]),
        "recon_error": float(enc.recon_error.mean()) if n else 0.0,
        "tag_heads": getattr(tokenizer, "heads_source", "none"),
    }
    acc_cols = []
    rng = np.random.default_rng(seed)
    decoded: List[str] = [""] * n
    has_tags = vocab is not None and tokenizer.heads is not None
    if has_tags:
        held = np.asarray(heldout, dtype=bool) if heldout is not None else np.ones(n, dtype=bool)
        pred = tokenizer.predict_tags(enc.quantized)
        for lv in range(pred.shape[1]):
            y = vocab.labels[:, lv]
            mask = held & (y >= 0)
            acc = float((pred[mask, lv] == y[mask]).mean()) if mask.any() else float("nan")
            acc_cols.append(acc)
            summary[f"tag_accuracy_l{lv + 1}"] = acc
            seen = ~held & (y >= 0)  # items whose tags training used: the paper's Table 5 protocol (no held-out split there)
            summary[f"tag_accuracy_seen_l{lv + 1}"] = float((pred[seen, lv] == y[seen]).mean()) if seen.any() else float("nan")
            summary[f"tag_classes_l{lv + 1}"] = int(len(vocab.keys[lv]))
        summary["heldout_items"] = int(held.sum())
    stats["tag_accuracy"] = acc_cols + [float("nan")] * (len(stats) - len(acc_cols))
    sample = np.sort(rng.choice(n, size=min(n_samples, n), replace=False)) if n else np.zeros(0, dtype=np.int64)
    if has_tags and sample.size:
        for i, p in zip(sample.tolist(), tokenizer.decode_paths(sids[sample][:, : codes.shape[1]])):
            decoded[i] = p
    true_paths = []
    for i in sample.tolist():
        if vocab is not None:
            lab = vocab.labels[i]
            deepest = [vocab.keys[lv][v] for lv, v in enumerate(lab.tolist()) if v >= 0]
            true_paths.append(deepest[-1] if deepest else "")
        else:
            true_paths.append("")
    sample_df = pd.DataFrame(
        {
            "item_idx": sample.astype(np.int64),
            "item_id": [str(item_ids[i]) for i in sample.tolist()],
            "sid_str": sid_strings(sids[sample]) if sample.size else [],
            "decoded_path": [decoded[i] for i in sample.tolist()],
            "true_path": true_paths,
        }
    )
    usage = {f"level {lv + 1}": np.bincount(codes[:, lv], minlength=tokenizer.codebook_size).tolist() for lv in range(codes.shape[1])}
    proj_idx = np.sort(rng.choice(n, size=min(n_projection, n), replace=False)) if n else np.zeros(0, dtype=np.int64)
    proj = pca_2d(enc.latents[proj_idx])
    labels = []
    for i in proj_idx.tolist():
        if vocab is not None and vocab.labels[i, 0] >= 0:
            labels.append(vocab.keys[0][vocab.labels[i, 0]].split(SEP)[-1])
        else:
            labels.append("")
    return QualityReport(summary, stats, sample_df, usage, proj, labels)
