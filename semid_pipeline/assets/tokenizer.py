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
from semid_pipeline.metadata import line_plot, md_table
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
    text_encoder: TextEncoderResource,
) -> Output:
    """The trained item tokenizer with its per-level tag heads (safetensors + JSON)."""
    params = TokenizerParams(**{k: getattr(config, k) for k in TokenizerParams.model_fields})
    emb = by_item(item_text_embeddings)
    x = embedding_matrix(emb)
    paths = tag_paths_for(item_tags, emb["item_idx"].to_numpy(np.int64))
    encoder = text_encoder.get() if params.tag_alignment and params.kind == "rqvae" else None
    result = train_tokenizer(x, params, paths, encoder.encode if encoder is not None else None, progress=context.log.info)
    last = result.history[-1] if result.history else {}
    scalar = {k: float(v) for k, v in last.items() if isinstance(v, (int, float))}
    hist = pd.DataFrame([{k: v for k, v in h.items() if isinstance(v, (int, float))} for h in result.history])
    metadata = {
        **{f"final_{k}": v for k, v in scalar.items()},
        "kind": params.kind,
        "losses_on": ", ".join(k for k in ("tag_alignment", "tag_prediction", "uniqueness", "hcc", "csc", "dispersion") if getattr(params, k)) or "TIGER only",
        "tag_heads": result.tokenizer.heads_source,
        "tag_classes_per_level": [len(k) for k in result.tokenizer.tag_keys],
        "n_items": int(x.shape[0]),
        "input_dim": int(x.shape[1]),
    }
    if result.history:
        keys = [c for c in ("total", "recon", "codebook", "commitment", "extra", "align", "pred", "unique", "hcc", "csc", "dispersion") if c in hist.columns]
        metadata["loss_curve"] = line_plot(result.history, keys, "Tokenizer training losses")
        metadata["history_tail"] = md_table(hist.tail(10))
    return Output(result.tokenizer, metadata=metadata)
