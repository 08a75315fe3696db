"""Stage 4: VLM image captions (DeepInterestGR CMSA path 1); items without images are skipped cleanly."""

from typing import Optional

import pandas as pd
from dagster import AssetExecutionContext, Config, Output, asset

from semid_pipeline.core.enrich.captions import CaptionParams, caption_items
from semid_pipeline.metadata import llm_run_metadata
from semid_pipeline.partitions import dataset_partitions
from semid_pipeline.resources import LLMResource, StorageResource


class CaptionConfig(Config, CaptionParams):
    """Caption backend (``none`` = skip the stage explicitly; ``openai`` = an OpenAI-compatible VLM).

    ``llm_model`` / ``llm_base_url`` override the ``llm`` resource for this stage (a vision model may
    be served apart from the text model)."""

    llm_model: Optional[str] = None
    llm_base_url: Optional[str] = None


@asset(partitions_def=dataset_partitions, group_name="enrichment", io_manager_key="table_io")
def item_captions(
    context: AssetExecutionContext, config: CaptionConfig, items: pd.DataFrame, llm: LLMResource, storage: StorageResource
) -> Output:
    """One row per item: the caption, or why there is none (``no_image``, ``skipped_backend_none``, errors)."""
    params = CaptionParams(**{k: getattr(config, k) for k in CaptionParams.model_fields})
    if params.image_cache_dir is None:
        params = params.model_copy(update={"image_cache_dir": str(storage.image_cache_dir())})
    client = None
    if params.backend == "openai":
        client = llm.get_client(storage.cache_path("llm_cache_captions"), config.llm_model, config.llm_base_url)
    before = client.stats if client is not None else None
    try:
        captions, stats = caption_items(items, params, client=client, progress=context.log.info)
        run_stats = client.stats_since(before) if client is not None else {}
    finally:
        if client is not None:
            client.close()
    counts = {str(k): int(v) for k, v in captions["status"].value_counts().items()}
    stage = "skipped: backend is 'none'" if params.backend == "none" else f"ran ({client.params.model})"
    context.log.info(f"captions: {stage}; {counts}")
    metadata = {"stage": stage, "backend": params.backend, "status_counts": counts}
    metadata.update({k: v for k, v in stats.items() if isinstance(v, (int, float)) and k not in ("llm_calls", "cache_hits")})
    metadata.update(llm_run_metadata(run_stats))
    return Output(captions, metadata=metadata)
