"""Stage 5: item embeddings before the tokenizer (sentence-transformers; offline default all-MiniLM-L6-v2).

The text is the enriched text of DeepInterestGR eq. 2 (metadata + VLM caption + DCIM descriptors,
whichever of those stages ran). When item image features exist (``item_image_embeddings`` ran), the
CMSA fusion (eq. 5-7, ``core/enrich/fusion.py``) is trained here and the fused vectors replace the
text vectors, with the same schema, so the tokenizer reads either unchanged. Every switch is config
and the metadata says which paths went in.
"""

import numpy as np
import pandas as pd
from dagster import AssetExecutionContext, Config, Output, asset

from semid_pipeline.core.enrich.fusion import FusionParams, train_fusion
from semid_pipeline.core.enrich.item_text import compose_item_texts
from semid_pipeline.core.frames import item_column, split_inputs
from semid_pipeline.core.tokenizers.collaborative import item_occurrences
from semid_pipeline.metadata import line_plot, readable
from semid_pipeline.partitions import dataset_partitions
from semid_pipeline.resources import TextEncoderResource


class EmbeddingConfig(Config, FusionParams):
    """What goes into the item vector; the ``FusionParams`` fields train the CMSA projection."""

    include_captions: bool = True
    """Append the VLM caption (when there is one) to the item text before embedding (CMSA eq. 4)."""
    include_descriptors: bool = True
    """Append the DCIM intent descriptors (when there are any) to the item text (DCIM eq. 2)."""
    fuse_images: bool = True
    """Fuse image features with the text embedding (CMSA eq. 5-7) when ``item_image_embeddings`` has any."""


@asset(partitions_def=dataset_partitions, group_name="embeddings", io_manager_key="table_io")
def item_text_embeddings(
    context: AssetExecutionContext,
    config: EmbeddingConfig,
    items: pd.DataFrame,
    item_captions: pd.DataFrame,
    item_intent_descriptors: pd.DataFrame,
    item_image_embeddings: pd.DataFrame,
    text_encoder: TextEncoderResource,
) -> Output:
    """L2-normalised embedding of each item's enriched text (fused with its image when enabled), one row per item_idx."""
    texts = compose_item_texts(
        items,
        item_captions if config.include_captions else None,
        item_intent_descriptors if config.include_descriptors else None,
    )
    encoder = text_encoder.get()
    emb = encoder.encode(texts, progress=context.log.info)
    stats = encoder.last_stats
    metadata: dict = {
        "text_dim": int(emb.shape[1]),
        "text_encoder": encoder.describe(),
        "distinct_texts": stats.get("distinct_texts", len(texts)),
        "text_encoding_seconds": stats.get("seconds", 0.0),
    }
    if "texts_without_known_tokens" in stats:
        metadata["texts_without_known_tokens"] = stats["texts_without_known_tokens"]
    ok = item_image_embeddings[item_image_embeddings["status"] == "ok"] if len(item_image_embeddings) else item_image_embeddings
    if config.fuse_images and len(ok):
        by_idx = dict(zip(ok["item_idx"].tolist(), ok["embedding"].tolist()))
        dim = len(next(iter(by_idx.values())))
        has = np.array([i in by_idx for i in items["item_idx"].tolist()])
        image = np.stack([np.asarray(by_idx[i], np.float32) if i in by_idx else np.zeros(dim, np.float32) for i in items["item_idx"].tolist()])
        params = FusionParams(**{k: getattr(config, k) for k in FusionParams.model_fields})
        result = train_fusion(emb, image, has, params, progress=context.log.info)
        emb = result.fused
        metadata.update(
            {
                "embedding_source": "CMSA fusion of enriched text and image features",
                "image_dim": int(dim),
                "items_with_image": int(has.sum()),
                "fusion_final_align": float(result.history[-1]["align"]) if result.history else 0.0,
                "fusion_final_rec": float(result.history[-1]["rec"]) if result.history else 0.0,
            }
        )
        if result.history:
            metadata["fusion_loss_curve"] = line_plot(result.history, ["total", "align", "rec"], "CMSA fusion losses")
    else:
        why = "fuse_images is off" if not config.fuse_images else "no image embeddings (item_image_embeddings skipped or empty)"
        metadata.update({"embedding_source": "enriched text", "image_fusion": f"skipped: {why}"})
    n_cap = sum("; Image: " in t for t in texts)
    n_desc = sum("; Intents: " in t for t in texts)
    df = pd.DataFrame({"item_idx": items["item_idx"].to_numpy(), "item_id": items["item_id"].to_numpy(), "embedding": list(emb.astype(np.float32))})
    metadata.update(
        {
            "dim": int(emb.shape[1]),
            "n_items": len(df),
            "model": encoder.describe(),
            "items_with_caption": int(n_cap),
            "items_with_descriptors": int(n_desc),
            "example_text": texts[0] if texts else "",
        }
    )
    return Output(df, metadata=readable(metadata))



@asset(partitions_def=dataset_partitions, group_name="embeddings", io_manager_key="table_io")
def item_collaborative_embeddings(context: AssetExecutionContext, sasrec_model, items: pd.DataFrame, user_sequences: pd.DataFrame) -> Output:
    """Each item's collaborative vector: its row of the SASRec-CE item table (trained on the training
    sequences only), with how often it occurs there. The optional second half of the tokenizer input
    (``TokenizerConfig.collaborative_dims``); items with ``n_occurrences = 0`` get theirs predicted from text."""
    histories, _ = split_inputs(user_sequences, "valid")
    emb = sasrec_model.item_embeddings()
    if len(emb) != len(items):
        raise ValueError(f"sasrec_model scores {len(emb)} items but the catalogue `items` has {len(items)}: re-materialize sasrec_model")
    counts = item_occurrences(histories, len(items))
    table = pd.DataFrame({
        "item_idx": np.arange(len(items), dtype=np.int64),
        "item_id": item_column(items, "item_id"),
        "embedding": list(emb),
        "n_occurrences": counts,
    })
    missing = int((counts == 0).sum())
    context.log.info(f"collaborative vectors: {len(items):,} items x {emb.shape[1]} dims; {missing:,} never in a training sequence")
    return Output(table, metadata=readable({
        "n_items": len(items), "dims": int(emb.shape[1]), "items_without_interactions": missing,
        "source": "sasrec_model item table (core/tokenizers/collaborative.py)",
    }))
