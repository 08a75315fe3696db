"""Every semantic-ID assignment, kept: the ``sid_versions`` table and what changed since the last one.

One row per item per assignment (schema in ``core/tokenizers/versioning.py``), appended each time
``semantic_ids`` changes; the DuckDB view ``sid_versions`` answers "which SID did item X have under
tokenizer version V". Diff two versions with
``python -m semid_pipeline.versions --dataset demo previous latest``.
"""

import pandas as pd
from dagster import AssetExecutionContext, Output, asset

from semid_pipeline.core.storage import read_table, table_path
from semid_pipeline.core.tokenizers.versioning import append_versions, check_append_only, diff_versions, list_versions, version_rows
from semid_pipeline.metadata import md_table
from semid_pipeline.partitions import dataset_partitions
from semid_pipeline.resources import StorageResource


@asset(partitions_def=dataset_partitions, group_name="tokenizer", io_manager_key="table_io")
def sid_versions(context: AssetExecutionContext, semantic_ids: pd.DataFrame, storage: StorageResource) -> Output:
    """All assignments so far plus the current ``semantic_ids``: appended unless it is already the latest,
    so the latest assignment is always the one ``semantic_ids`` holds. Append-only: the run holds the
    dataset partition (``run_guard.py``), so no other run can write between this read and the write."""
    dataset = context.partition_key
    previous = read_table(storage.data_dir, "sid_versions", dataset) if table_path(storage.data_dir, "sid_versions", dataset).exists() else None
    tok_version = str(semantic_ids["tokenizer_version"].iloc[0])
    mode = "frozen" if (semantic_ids["status"] == "kept").any() else "full"
    table = append_versions(previous, version_rows(semantic_ids, tok_version, mode))
    check_append_only(previous, table)
    versions = list_versions(table)
    metadata = {"n_versions": len(versions), "latest": str(versions["assignment_id"].iloc[-1]), "versions": md_table(versions.tail(20))}
    if len(versions) >= 2:
        diff = diff_versions(table, "previous", "latest")
        metadata.update({f"diff_{k}": v for k, v in diff.summary().items()})
        context.log.info(f"SID assignment {diff.b} vs {diff.a}: {diff.summary()}")
    return Output(table, metadata=metadata)
