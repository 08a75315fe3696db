"""Stage 2: cleaned items, chronological per-user sequences, k-core filter, leave-one-out split."""

from dagster import AssetExecutionContext, AssetIn, AssetOut, Config, Output, multi_asset

from semid_pipeline.core.data.preprocess import PreprocessParams, prepare
from semid_pipeline.core.data.registry import DATASETS
from semid_pipeline.core.data.schema import RawDataset
from semid_pipeline.metadata import readable
from semid_pipeline.partitions import dataset_partitions


class PreprocessConfig(Config, PreprocessParams):
    """k-core thresholds, category depth and de-duplication (see ``PreprocessParams``)."""


@multi_asset(
    ins={"raw_items": AssetIn(), "raw_interactions": AssetIn()},
    outs={
        "items": AssetOut(io_manager_key="table_io", is_required=False, description="Cleaned items with a dense item_idx and the text to embed."),
        "interactions": AssetOut(io_manager_key="table_io", is_required=False, description="k-core filtered interactions in chronological order."),
        "user_sequences": AssetOut(io_manager_key="table_io", is_required=False, description="Per-user history with the leave-one-out split."),
    },
    partitions_def=dataset_partitions,
    group_name="preprocessing",
    can_subset=True,  # any selection works (`*semantic_ids`, `items`): the three tables are built together, the selected ones written
)
def prepared_dataset(context: AssetExecutionContext, config: PreprocessConfig, raw_items, raw_interactions):
    params = PreprocessParams(**config.model_dump())
    if params.keep_all_items is None:  # the dataset's default (True for a retrieval corpus such as esci)
        spec = DATASETS.get(context.partition_key)
        params = params.model_copy(update={"keep_all_items": bool(spec and spec.keep_all_items)})
    prepared, removed = prepare(RawDataset(raw_items, raw_interactions), params, source=f"dataset {context.partition_key!r}")
    seqs = prepared.user_sequences
    stats = {
        "n_users": len(seqs),
        "n_items": len(prepared.items),
        "n_interactions": len(prepared.interactions),
        "avg_sequence_length": float(seqs["n_interactions"].mean()) if len(seqs) else 0.0,
        "density": float(len(prepared.interactions) / max(1, len(seqs) * len(prepared.items))),
    }
    context.log.info(f"{context.partition_key}: {stats}; removed or changed on the way: {removed}")
    stats.update(removed)  # what de-duplication, the k-core filter and the text caps removed, counted
    selected = context.selected_output_names
    if "items" in selected:
        yield Output(prepared.items, "items", metadata={"n_items": stats["n_items"]})
    if "interactions" in selected:
        yield Output(prepared.interactions, "interactions", metadata={"n_interactions": stats["n_interactions"]})
    if "user_sequences" in selected:
        yield Output(seqs, "user_sequences", metadata=readable(stats))
