"""Stage 4: VLM image captions (DeepInterestGR CMSA path 1); items without images are skipped cleanly."""

import pandas as pd
from dagster import AssetExecutionContext, Config, Output, asset

from semid_pipeline.core.enrich.captions import CaptionParams, caption_items
from semid_pipeline.partitions import dataset_partitions
from semid_pipeline.resources import LLMResource, StorageResource


class CaptionConfig(Config, CaptionParams):
    """Caption backend (``none`` = skip the stage explicitly; ``openai`` = an OpenAI-compatible VLM)."""


@asset(partitions_def=dataset_partitions, group_name="enrichment", io_manager_key="table_io")
def item_captions(
    context: AssetExecutionContext, config: CaptionConfig, items: pd.DataFrame, llm: LLMResource, storage: StorageResource
) -> Output:
    """One row per item: the caption, or why there is none (``no_image``, ``skipped_backend_none``, errors)."""
    params = CaptionParams(**{k: getattr(config, k) for k in CaptionParams.model_fields})
    client = llm.get_client(cache_path=storage.cache_path("llm_cache_captions")) if params.backend == "openai" else None
    try:
        captions, stats = caption_items(items, params, client=client, progress=context.log.info)
    finally:
        if client is not None:
            client.close()
    counts = {str(k): int(v) for k, v in captions["status"].value_counts().items()}
    context.log.info(f"captions: {counts}")
    return Output(captions, metadata={"backend": params.backend, "status_counts": counts, **{k: v for k, v in stats.items() if isinstance(v, (int, float))}})
