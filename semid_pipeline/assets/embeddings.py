"""Stage 5: item text embeddings (sentence-transformers; offline default all-MiniLM-L6-v2)."""

import numpy as np
import pandas as pd
from dagster import AssetExecutionContext, Config, Output, asset

from semid_pipeline.core.enrich.item_text import compose_item_texts
from semid_pipeline.partitions import dataset_partitions
from semid_pipeline.resources import TextEncoderResource


class EmbeddingConfig(Config):
    include_captions: bool = True
    """Append the VLM caption (when there is one) to the item text before embedding (CMSA eq. 4)."""


@asset(partitions_def=dataset_partitions, group_name="embeddings", io_manager_key="table_io")
def item_text_embeddings(
    context: AssetExecutionContext,
    config: EmbeddingConfig,
    items: pd.DataFrame,
    item_captions: pd.DataFrame,
    text_encoder: TextEncoderResource,
) -> Output:
    """L2-normalised sentence embedding of each item's text (+ caption), one row per item_idx."""
    texts = compose_item_texts(items, item_captions if config.include_captions else None)
    encoder = text_encoder.get()
    emb = encoder.encode(texts, progress=context.log.info)
    df = pd.DataFrame({"item_idx": items["item_idx"].to_numpy(), "item_id": items["item_id"].to_numpy(), "embedding": list(emb.astype(np.float32))})
    return Output(df, metadata={"dim": int(emb.shape[1]), "n_items": len(df), "model": text_encoder.model, "example_text": texts[0] if texts else ""})
