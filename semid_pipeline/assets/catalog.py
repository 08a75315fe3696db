"""Living catalog: incoming item files and the embeddings of every item that gets a semantic ID.

New and changed items are dropped as JSONL files into ``<data_dir>/incoming/<dataset>/`` (schema in
``core/data/incoming.py``); ``semid_pipeline.sensors.incoming_items_sensor`` notices them and
requests a re-tokenization run. ``catalog_item_embeddings`` is ``item_text_embeddings`` with
changed items re-embedded and new items (no interactions yet, so not in ``items``) appended
after the last ``item_idx`` in ``item_id`` order: that is the catalog ``semantic_ids`` assigns.
"""

import numpy as np
import pandas as pd
from dagster import AssetExecutionContext, Config, Output, asset

from semid_pipeline.core.data.incoming import incoming_dir, list_incoming, load_incoming_items
from semid_pipeline.core.data.preprocess import build_item_text, clean_items
from semid_pipeline.core.enrich.item_text import compose_item_texts
from semid_pipeline.core.errors import InputError
from semid_pipeline.partitions import dataset_partitions
from semid_pipeline.reporting import captured_warnings
from semid_pipeline.resources import StorageResource, TextEncoderResource


class CatalogConfig(Config):
    max_category_depth: int = 3
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
    base = item_text_embeddings.sort_values("item_idx").reset_index(drop=True)
    origin = np.full(len(base), "prepared", dtype=object)
    if incoming_items.empty:
        return Output(base.assign(origin=origin), metadata={"n_items": len(base), "n_new": 0, "n_changed": 0})
    inc = clean_items(incoming_items.drop(columns=["source"]))
    inc["category_path"] = [list(p[: config.max_category_depth]) for p in inc["categories"]]
    inc["text"] = build_item_text(inc)
    idx_of = pd.Series(items["item_idx"].to_numpy(np.int64), index=items["item_id"].astype(str).to_numpy())
    existing = inc["item_id"].isin(idx_of.index).to_numpy()
    n_base = int(base["item_idx"].max()) + 1 if len(base) else 0
    inc["item_idx"] = np.where(existing, idx_of.reindex(inc["item_id"]).fillna(-1).to_numpy(np.int64), 0)
    inc.loc[~existing, "item_idx"] = n_base + np.arange(int((~existing).sum()), dtype=np.int64)
    emb = text_encoder.get().encode(compose_item_texts(inc), progress=context.log.info).astype(np.float32)
    dim = len(base["embedding"].iloc[0]) if len(base) else emb.shape[1]
    if emb.shape[1] != dim:
        raise InputError(
            "item_text_embeddings", None, f"incoming items embed to {emb.shape[1]} dims but the catalog's embeddings have {dim}"
        )
    vectors = list(np.stack(base["embedding"].to_numpy()).astype(np.float32)) if len(base) else []
    pos = {int(i): k for k, i in enumerate(base["item_idx"].to_numpy())}
    for row, vec in zip(inc.itertuples(index=False), emb):
        if row.item_idx in pos:
            vectors[pos[row.item_idx]] = vec
            origin[pos[row.item_idx]] = "changed"
    new = ~existing
    out = pd.DataFrame(
        {
            "item_idx": np.concatenate([base["item_idx"].to_numpy(np.int64), inc["item_idx"].to_numpy(np.int64)[new]]),
            "item_id": np.concatenate([base["item_id"].astype(str).to_numpy(), inc["item_id"].astype(str).to_numpy()[new]]),
            "embedding": vectors + list(emb[new]),
            "origin": np.concatenate([origin, np.full(int(new.sum()), "new", dtype=object)]),
        }
    )
    context.log.info(f"catalog: {len(base)} prepared items, {int(existing.sum())} changed, {int(new.sum())} new")
    return Output(out, metadata={"n_items": len(out), "n_new": int(new.sum()), "n_changed": int(existing.sum())})
