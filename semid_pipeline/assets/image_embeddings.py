"""Stage 4b: item image features (DeepInterestGR CMSA path 2, eq. 5); off unless a backend is set."""

import pandas as pd
from dagster import AssetExecutionContext, Config, Output, asset

from semid_pipeline.core.enrich.image_encoder import ImageEncoderParams, embed_images
from semid_pipeline.partitions import dataset_partitions
from semid_pipeline.resources import StorageResource


class ImageEmbeddingConfig(Config, ImageEncoderParams):
    """Image encoder (``none`` = skip the stage explicitly; ``efficientnet-lite0`` = offline default)."""


@asset(partitions_def=dataset_partitions, group_name="enrichment", io_manager_key="table_io")
def item_image_embeddings(
    context: AssetExecutionContext, config: ImageEmbeddingConfig, items: pd.DataFrame, storage: StorageResource
) -> Output:
    """One row per item: the image feature (None when there is none) and a status saying why not."""
    params = ImageEncoderParams(**{k: getattr(config, k) for k in ImageEncoderParams.model_fields})
    if params.image_cache_dir is None:
        params = params.model_copy(update={"image_cache_dir": str(storage.image_cache_dir())})
    frame, stats = embed_images(items, params, progress=context.log.info)
    counts = {str(k): int(v) for k, v in frame["status"].value_counts().items()}
    stage = "skipped: backend is 'none'" if params.backend == "none" else f"ran ({params.backend})"
    context.log.info(f"image embeddings: {stage}; {counts}")
    metadata = {"stage": stage, "backend": params.backend, "status_counts": counts}
    metadata.update({k: v for k, v in stats.items() if isinstance(v, (int, float))})
    return Output(frame, metadata=metadata)
