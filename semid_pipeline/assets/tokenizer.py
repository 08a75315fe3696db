"""Stage 6: the SID tokenizer: RQ-VAE (TIGER objective, optional HiD-VAE / CAT-ID2 losses) or RQ-KMeans.

``TokenizerConfig.kind`` picks the quantizer; the supervised loss switches and weights are config
(``core/tokenizers/supervision.py``), so an ablation is a config change. Defaults: the plain TIGER
RQ-VAE. Tags come from ``item_tags.tag_path``; the tag texts are embedded with the pipeline's text
encoder for HiD-VAE's alignment loss.
"""

import numpy as np
import pandas as pd
from dagster import AssetExecutionContext, Config, Output, asset

from semid_pipeline.core.frames import by_item, embedding_matrix, tag_paths_for
from semid_pipeline.core.tokenizers.base import TokenizerParams, train_tokenizer
from semid_pipeline.core.tokenizers.collaborative import collaborative_matrix
from semid_pipeline.metadata import curves, glossary, md_table, readable
from semid_pipeline.partitions import dataset_partitions
from semid_pipeline.resources import TextEncoderResource


class TokenizerConfig(Config, TokenizerParams):
    """Tokenizer kind, RQ-VAE architecture/training (TIGER defaults) and supervised losses (see ``TokenizerParams``)."""


@asset(partitions_def=dataset_partitions, group_name="tokenizer", io_manager_key="model_io", pool="gpu")
def sid_tokenizer(
    context: AssetExecutionContext,
    config: TokenizerConfig,
    item_text_embeddings: pd.DataFrame,
    item_tags: pd.DataFrame,
    item_collaborative_embeddings: pd.DataFrame,
    text_encoder: TextEncoderResource,
) -> Output:
    """The trained item tokenizer with its per-level tag heads (safetensors + JSON)."""
    params = TokenizerParams(**{k: getattr(config, k) for k in TokenizerParams.model_fields})
    emb = by_item(item_text_embeddings)
    x = embedding_matrix(emb)
    item_idx = emb["item_idx"].to_numpy(np.int64)
    paths = tag_paths_for(item_tags, item_idx)
    encoder = text_encoder.get() if params.tag_alignment and params.kind == "rqvae" else None
    collab = collaborative_matrix(item_collaborative_embeddings, item_idx) if params.collaborative_dims > 0 else None
    result = train_tokenizer(x, params, paths, encoder.encode if encoder is not None else None, progress=context.log.info, collaborative=collab)
    metadata = {
        "kind": params.kind,
        "losses_on": ", ".join(k for k in ("tag_alignment", "tag_prediction", "uniqueness", "hcc", "csc", "dispersion") if getattr(params, k)) or "TIGER only",
        "tag_heads": result.tokenizer.heads_source,
        "tag_classes_per_level": [len(k) for k in result.tokenizer.tag_keys],
        "n_items": int(x.shape[0]),
        "input_dim": int(x.shape[1]),
        "collaborative_input": (
            f"{params.text_dims} text + {params.collaborative_dims} collaborative dims; "
            f"{int(np.isnan(collab).any(axis=1).sum())} items predicted from text"
            if collab is not None else "off (text only)"
        ),
        "n_levels": int(result.tokenizer.n_levels),
        "codebook_size": int(result.tokenizer.codebook_size),
    }
    if result.history:
        metadata.update(training_history_metadata(result.history, result.tokenizer.n_levels, result.tokenizer.codebook_size))
    return Output(result.tokenizer, metadata=readable(metadata))


LOSS_KEYS = ("total", "recon", "codebook", "commitment", "extra", "align", "pred", "unique", "hcc", "csc", "dispersion")


def training_history_metadata(history: list, n_levels: int, codebook_size: int) -> dict:
    """The whole training history of an RQ-VAE (``train_rqvae``'s per-epoch records) for the UI:
    the last epoch's numbers (``last_epoch_*``), the worst epoch for codebook use and collisions
    (a collapse in the middle of training shows even when the end looks fine), the curves (losses,
    codes used per level against the codebook size, collision rate: one axis each) and the table."""
    hist = pd.DataFrame([{k: v for k, v in h.items() if isinstance(v, (int, float))} for h in history])
    last = hist.iloc[-1]
    used = [f"used_codes_l{lv}" for lv in range(1, n_levels + 1) if f"used_codes_l{lv}" in hist]
    counts = ("used_codes_l", "restarted_l")
    out: dict = {f"last_epoch_{k}": (int(v) if k.startswith(counts) else float(v)) for k, v in last.items() if k not in ("epoch", "step")}
    out["epochs"] = int(last["epoch"])
    for col in used:
        out[f"min_{col}"] = int(hist[col].min())
        out[f"min_{col}_epoch"] = int(hist.loc[hist[col].idxmin(), "epoch"])
    if "collision_rate" in hist:
        out["max_collision_rate"] = float(hist["collision_rate"].max())
        out["max_collision_rate_epoch"] = int(hist.loc[hist["collision_rate"].idxmax(), "epoch"])
    losses = [c for c in LOSS_KEYS if c in hist.columns]
    out["training_curves"] = curves(
        history,
        {"loss": losses, "codes used": used, "collision rate": ["collision_rate"]},
        f"Tokenizer training, every epoch (codebook size {codebook_size})",
        hlines={"codes used": codebook_size},
        log_panels=("loss",),
        zero_panels=("codes used", "collision rate"),
    )
    shown = ["epoch", *losses, *used, "collision_rate", *[c for c in hist.columns if c.startswith("restarted_l")], "seconds"]
    out["history"] = md_table(hist[[c for c in shown if c in hist.columns]])
    out["glossary"] = glossary(
        {
            "last_epoch_collision_rate": "share of items whose codes collided during the last training epoch, each item "
            "encoded when its batch came up while the weights were still changing; semantic_ids' collision_rate_before "
            "encodes every item once with the final weights, so the two differ",
            "last_epoch_used_codes_l*": "distinct codes per level (levels numbered from 1) the items received in the last epoch",
            "min_used_codes_l* / max_collision_rate": "the worst epoch of training (a codebook collapse mid-training shows here and in the curves)",
        }
    )
    return out
