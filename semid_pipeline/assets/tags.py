"""Stage 3: hierarchical item tags by retrieve-then-classify (HiD-VAE section 3.4)."""

from typing import Optional

import pandas as pd
from dagster import AssetExecutionContext, AssetIn, AssetOut, Config, Output, multi_asset

from semid_pipeline.core.data.registry import DATASETS
from semid_pipeline.core.enrich.tags import TagParams, TagPool, make_classifier, tag_items
from semid_pipeline.core.io_utils import read_any_table
from semid_pipeline.metadata import llm_run_metadata, md_table, readable
from semid_pipeline.partitions import dataset_partitions
from semid_pipeline.resources import LLMResource, StorageResource, TextEncoderResource


class TagConfig(Config, TagParams):
    """Retrieve-then-classify settings (``TagParams``).

    ``tag_pool_path``: a Parquet/CSV file with columns ``level, name, parent`` supplying the tag pool
    (for datasets without category paths); by default the pool is the dataset's own category paths.
    """

    tag_pool_path: Optional[str] = None
    llm_model: Optional[str] = None
    llm_base_url: Optional[str] = None


@multi_asset(
    ins={"items": AssetIn()},
    outs={
        "tag_pool": AssetOut(io_manager_key="table_io", is_required=False, description="Candidate tags per hierarchy level."),
        "item_tags": AssetOut(io_manager_key="table_io", is_required=False, description="Per-item tag path, generated and true, with candidates."),
    },
    partitions_def=dataset_partitions,
    group_name="tags",
    can_subset=True,  # `tag_pool` alone skips the classifier; `item_tags` alone rebuilds the (deterministic) pool, unwritten
)
def hierarchical_tags(
    context: AssetExecutionContext,
    config: TagConfig,
    items: pd.DataFrame,
    text_encoder: TextEncoderResource,
    llm: LLMResource,
    storage: StorageResource,
):
    params = TagParams(**{k: getattr(config, k) for k in TagParams.model_fields})
    spec = DATASETS.get(context.partition_key)
    if config.tag_pool_path:
        pool = TagPool.from_table(read_any_table(config.tag_pool_path), source=config.tag_pool_path)
    elif spec is not None and spec.tag_pool is not None and not any(len(p) for p in items["category_path"]):
        # a dataset without category paths (KuaiRand): its built-in pool from its own fields
        pool = TagPool.from_table(spec.tag_pool(items), source=f"built-in tag pool of {context.partition_key!r}")
    else:
        pool = TagPool.from_paths(items["category_path"].tolist(), depth=params.depth)
    pool_frame = pool.to_frame()
    pool_output = Output(pool_frame, "tag_pool", metadata={"tags_per_level": {str(k): int(v) for k, v in pool_frame["level"].value_counts().sort_index().items()}})
    if "item_tags" not in context.selected_output_names:
        yield pool_output
        return
    client = None
    if params.classifier == "llm" and len(pool):
        client = llm.get_client(storage.cache_path("llm_cache_tags"), config.llm_model, config.llm_base_url)
    run_stats: dict = {}
    try:
        before = client.stats if client is not None else None
        classifier = make_classifier(params if len(pool) else params.model_copy(update={"classifier": "retrieval"}), client)
        table, stats = tag_items(items, pool, text_encoder.get(), params, classifier, progress=context.log.info)
        if client is not None:
            run_stats = client.stats_since(before)
    finally:
        if client is not None:
            client.close()
    if not len(pool):
        stage = "skipped: the items have no category paths and no tag_pool_path was given"
    else:
        stage = f"ran (classifier={params.classifier}" + (f", model={client.params.model})" if client is not None else ")")
    context.log.info(f"tags: {stage}")
    metadata = {k: v for k, v in stats.items() if isinstance(v, (int, float, str)) and k not in ("llm_calls", "cache_hits")}
    metadata.update({"stage": stage, "classifier": params.classifier, **llm_run_metadata(run_stats)})
    accuracy = stats.get("accuracy") or []
    if accuracy:
        metadata["generated_vs_true_accuracy"] = md_table(pd.DataFrame({"level": range(1, len(accuracy) + 1), "accuracy": accuracy}))
        metadata.update({f"accuracy_level_{i}": float(a) for i, a in enumerate(accuracy, start=1)})
    metadata["tag_source_counts"] = {str(k): int(v) for k, v in table["tag_source"].value_counts().items()}
    if "tag_pool" in context.selected_output_names:
        yield pool_output
    yield Output(table, "item_tags", metadata=readable(metadata))
