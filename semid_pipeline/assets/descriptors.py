"""Stage 4c: DCIM intent descriptors and QARM descriptor-quality labels (DeepInterestGR III-C, III-E).

Both are off unless a backend is set; a skipped stage still writes its tables (no descriptors, no
labels) and says so in metadata, so downstream assets behave the same either way.
"""

from typing import Optional

import pandas as pd
from dagster import AssetExecutionContext, AssetIn, AssetOut, Config, Output, asset, multi_asset

from semid_pipeline.core.enrich.descriptors import (
    DescriptorParams,
    QualityParams,
    empty_descriptors,
    label_descriptors,
    mine_descriptors,
)
from semid_pipeline.core.enrich.item_text import compose_item_texts
from semid_pipeline.metadata import llm_run_metadata, md_table, readable
from semid_pipeline.partitions import dataset_partitions
from semid_pipeline.resources import LLMResource, StorageResource


class DescriptorConfig(Config, DescriptorParams):
    """DCIM settings (``DescriptorParams``); ``llm_model`` / ``llm_base_url`` override the ``llm`` resource."""

    llm_model: Optional[str] = None
    llm_base_url: Optional[str] = None


class QualityConfig(Config, QualityParams):
    """QARM settings (``QualityParams``); ``llm_model`` / ``llm_base_url`` override the ``llm`` resource."""

    llm_model: Optional[str] = None
    llm_base_url: Optional[str] = None


@asset(partitions_def=dataset_partitions, group_name="enrichment", io_manager_key="table_io")
def item_intent_descriptors(
    context: AssetExecutionContext,
    config: DescriptorConfig,
    items: pd.DataFrame,
    item_captions: pd.DataFrame,
    llm: LLMResource,
    storage: StorageResource,
) -> Output:
    """Per item: ``descriptors`` (list[str]) and ``confidences`` (list[float]) mined from metadata + caption."""
    params = DescriptorParams(**{k: getattr(config, k) for k in DescriptorParams.model_fields})
    if params.backend == "none":
        frame, run_stats = empty_descriptors(items), {}
        stats = {"n_items": len(frame), "n_descriptors": 0}
        stage = "skipped: backend is 'none'"
    else:
        texts = compose_item_texts(items, item_captions if params.include_caption else None)
        client = llm.get_client(storage.cache_path("llm_cache_descriptors"), config.llm_model, config.llm_base_url)
        before = client.stats
        try:
            frame, stats = mine_descriptors(items, texts, params, client, progress=context.log.info)
            run_stats = client.stats_since(before)
        finally:
            client.close()
        stage = f"ran ({client.params.model})"
    counts = {str(k): int(v) for k, v in frame["status"].value_counts().items()}
    context.log.info(f"intent descriptors: {stage}; {counts}")
    metadata = {"stage": stage, "backend": params.backend, "status_counts": counts}
    metadata.update({k: v for k, v in stats.items() if isinstance(v, (int, float))})
    metadata.update(llm_run_metadata(run_stats))
    examples = frame[frame["descriptors"].map(len) > 0].head(5)
    if len(examples):
        metadata["examples"] = md_table(
            pd.DataFrame({"item_id": examples["item_id"], "descriptors": examples["descriptors"].map(lambda d: "; ".join(d))})
        )
    return Output(frame, metadata=metadata)


@multi_asset(
    ins={"items": AssetIn(), "item_captions": AssetIn(), "item_intent_descriptors": AssetIn()},
    outs={
        "descriptor_quality_labels": AssetOut(
            io_manager_key="table_io", is_required=False, description="QARM binary label per (item, descriptor), with its DCIM confidence."
        ),
        "item_quality_scores": AssetOut(
            io_manager_key="table_io", is_required=False, description="QARM confidence-weighted quality score per item (eq. 10)."
        ),
    },
    partitions_def=dataset_partitions,
    group_name="enrichment",
    can_subset=True,  # labels and scores come from one labelling pass; the selected tables are written
)
def descriptor_quality(
    context: AssetExecutionContext,
    config: QualityConfig,
    items: pd.DataFrame,
    item_captions: pd.DataFrame,
    item_intent_descriptors: pd.DataFrame,
    llm: LLMResource,
    storage: StorageResource,
):
    params = QualityParams(**{k: getattr(config, k) for k in QualityParams.model_fields})
    texts_by_idx = dict(zip(items["item_idx"].tolist(), compose_item_texts(items, item_captions)))
    texts = [texts_by_idx.get(i, "") for i in item_intent_descriptors["item_idx"].tolist()]
    client, run_stats = None, {}
    if params.backend != "none":
        client = llm.get_client(storage.cache_path("llm_cache_quality"), config.llm_model, config.llm_base_url)
    try:
        before = client.stats if client is not None else None
        labels, scores, stats = label_descriptors(item_intent_descriptors, texts, params, client, progress=context.log.info)
        if client is not None:
            run_stats = client.stats_since(before)
    finally:
        if client is not None:
            client.close()
    stage = stats.get("skipped") and f"skipped: {stats['skipped']}" or f"ran ({client.params.model})"
    context.log.info(f"descriptor quality: {stage}; {stats}")
    metadata = {"stage": stage, "backend": params.backend}
    metadata.update({k: v for k, v in stats.items() if isinstance(v, (int, float))})
    metadata.update(llm_run_metadata(run_stats))
    if "descriptor_quality_labels" in context.selected_output_names:
        yield Output(labels, "descriptor_quality_labels", metadata=readable(metadata))
    if "item_quality_scores" in context.selected_output_names:
        yield Output(scores, "item_quality_scores", metadata=readable({"stage": stage, "n_items": len(scores),
                 "mean_quality_score": float(scores["quality_score"].mean()) if len(scores) else 0.0}))
