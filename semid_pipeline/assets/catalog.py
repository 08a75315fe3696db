"""Living catalog: incoming item files and the embeddings of every item that gets a semantic ID.

New and changed items are dropped as JSONL files into ``<data_dir>/incoming/<dataset>/`` (schema in
``core/data/incoming.py``); ``semid_pipeline.sensors.incoming_items_sensor`` notices them and
requests a re-tokenization run. ``catalog_item_embeddings`` is ``item_text_embeddings`` with
changed items re-embedded and new items (no interactions yet, so not in ``items``) appended
after the last ``item_idx`` in ``item_id`` order: that is the catalog ``semantic_ids`` assigns.
"""

import pandas as pd
from dagster import AssetExecutionContext, Config, Output, asset
from pydantic import Field

from semid_pipeline.core.data.catalog import merge_incoming
from semid_pipeline.core.data.incoming import incoming_dir, list_incoming, load_incoming_items
from semid_pipeline.partitions import dataset_partitions
from semid_pipeline.reporting import captured_warnings
from semid_pipeline.resources import StorageResource, TextEncoderResource


class CatalogConfig(Config):
    max_category_depth: int = Field(3, ge=1)
    """Category paths of incoming items are cut to this many levels (as ``PreprocessConfig``)."""


@asset(partitions_def=dataset_partitions, group_name="catalog", io_manager_key="table_io")
def incoming_items(context: AssetExecutionContext, storage: StorageResource) -> Output:
    """Every item of ``<data_dir>/incoming/<dataset>/*.jsonl`` (any letter case; last occurrence of an
    item_id wins). Other files in the folder are not read: they are named in the run log and counted
    in the metadata (``incoming_files_ignored``)."""
    directory = incoming_dir(storage.data_dir, context.partition_key)
    files = list_incoming(directory)
    with captured_warnings(context) as notes:
        df = load_incoming_items(directory)
    context.log.info(f"{len(df)} incoming items from {len(files)} files in {directory}")
    meta = {"n_items": len(df), "n_files": len(files), "folder": str(directory), "incoming_files_ignored": 0, **notes.metadata()}
    return Output(df, metadata=meta)


@asset(partitions_def=dataset_partitions, group_name="catalog", io_manager_key="table_io")
def catalog_item_embeddings(
    context: AssetExecutionContext,
    config: CatalogConfig,
    item_text_embeddings: pd.DataFrame,
    items: pd.DataFrame,
    incoming_items: pd.DataFrame,
    text_encoder: TextEncoderResource,
) -> Output:
    """``item_text_embeddings`` plus incoming items: changed ones re-embedded, new ones appended."""
    merged = merge_incoming(
        item_text_embeddings,
        items,
        incoming_items,
        lambda texts: text_encoder.get().encode(texts, progress=context.log.info),  # loads the encoder only when items came in
        config.max_category_depth,
    )
    out = merged.table
    if merged.n_changed or merged.n_new:
        context.log.info(f"catalog: {len(out) - merged.n_new} prepared items, {merged.n_changed} changed, {merged.n_new} new")
    return Output(out, metadata={"n_items": len(out), "n_new": merged.n_new, "n_changed": merged.n_changed})
