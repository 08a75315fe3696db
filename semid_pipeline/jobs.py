"""Jobs and schedules: the whole graph, and re-tokenization (embeddings -> ... -> evaluation)."""

import os

from dagster import AssetSelection, RunRequest, ScheduleEvaluationContext, define_asset_job, schedule

from semid_pipeline.partitions import dataset_partitions

full_pipeline_job = define_asset_job(
    "full_pipeline",
    selection=AssetSelection.all(),
    partitions_def=dataset_partitions,
    description="Every asset of a dataset partition, ingestion to evaluation.",
)

retokenize_job = define_asset_job(
    "retokenize",
    selection=AssetSelection.assets("item_text_embeddings").downstream(),
    partitions_def=dataset_partitions,
    description="Re-embed items, retrain the tokenizer, reassign SIDs, retrain and re-evaluate the recommender.",
)

RETOKENIZE_CRON = os.environ.get("SEMID_RETOKENIZE_CRON", "0 3 * * 0")
RETOKENIZE_DATASETS = [d.strip() for d in os.environ.get("SEMID_RETOKENIZE_DATASETS", "demo").split(",") if d.strip()]


@schedule(job=retokenize_job, cron_schedule=RETOKENIZE_CRON, execution_timezone="UTC")
def retokenize_schedule(context: ScheduleEvaluationContext):
    """One re-tokenization run per configured dataset (``SEMID_RETOKENIZE_DATASETS``) on the cron
    ``SEMID_RETOKENIZE_CRON`` (default weekly, Sunday 03:00 UTC)."""
    tick = context.scheduled_execution_time.strftime("%Y%m%dT%H%M")
    for dataset in RETOKENIZE_DATASETS:
        if dataset in dataset_partitions.get_partition_keys():
            yield RunRequest(run_key=f"retokenize-{dataset}-{tick}", partition_key=dataset)
