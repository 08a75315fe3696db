"""Stage 1, ingestion: raw items and interactions of a dataset partition, as the source gives them."""

from dagster import AssetExecutionContext, AssetOut, Output, multi_asset

from semid_pipeline.core.data.schema import normalize_ids, validate_raw
from semid_pipeline.partitions import dataset_partitions
from semid_pipeline.reporting import captured_warnings
from semid_pipeline.resources import DatasetsResource


@multi_asset(
    outs={
        "raw_items": AssetOut(io_manager_key="table_io", is_required=False, description="Items as the source gives them (one row per item)."),
        "raw_interactions": AssetOut(io_manager_key="table_io", is_required=False, description="User-item interactions with timestamps."),
    },
    partitions_def=dataset_partitions,
    group_name="ingestion",
    can_subset=True,  # `raw_items*` works: the source is read once, the selected tables written
)
def raw_dataset(context: AssetExecutionContext, datasets: DatasetsResource):
    """Loads the partition's source files. What the loader skips or repairs (items without metadata,
    duplicate metadata lines, dropped examples) is logged in the run and counted in ``raw_items``'
    metadata (``input_warnings`` and one count per kind); too much of it fails the load. Ids are
    normalized to Unicode NFC (counted as ``ids_normalized_nfc``)."""
    dataset = context.partition_key
    with captured_warnings(context) as notes:
        raw = normalize_ids(datasets.load(dataset), source=dataset)  # NFD spellings of an id become the NFC one, counted
    validate_raw(raw, source=dataset)
    context.log.info(f"{dataset}: {len(raw.items):,} items, {len(raw.interactions):,} interactions loaded")
    untitled = int((raw.items["title"].fillna("").astype(str).str.strip() == "").sum())
    selected = context.selected_output_names
    if "raw_items" in selected:
        yield Output(raw.items, "raw_items", metadata={"n_items": len(raw.items), "n_untitled_items": untitled, **notes.metadata()})
    if "raw_interactions" in selected:
        yield Output(
            raw.interactions,
            "raw_interactions",
            metadata={"n_interactions": len(raw.interactions), "n_users": int(raw.interactions["user_id"].nunique())},
        )
