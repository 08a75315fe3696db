"""Sensor: new or changed item files in ``<data_dir>/incoming/<dataset>/`` request a re-tokenization.

The cursor is a JSON map ``{dataset: fingerprint}`` where the fingerprint hashes the folder's
``(file name, mtime, size)`` listing, so adding, rewriting or removing a file triggers exactly one
run per change; the run key is ``incoming-<dataset>-<fingerprint>`` (the daemon never launches
the same key twice). Which job runs is ``SEMID_INCOMING_MODE``: ``frozen`` (default: new items
get SIDs from the frozen tokenizer, existing items keep theirs) or ``full`` (retrain the tokenizer,
re-assign everything, retrain the recommender). Settings, all environment variables:

- ``SEMID_INCOMING_MODE``: ``frozen`` | ``full``.
- ``SEMID_INCOMING_SENSOR_INTERVAL``: seconds between evaluations (default 60).
- ``SEMID_INCOMING_SENSOR_STATUS``: ``running`` (default) | ``stopped``: the sensor's default state.
- ``SEMID_RETOKENIZE_CONFIG``: YAML run config for the runs (see ``jobs.retokenize_run_config``).
"""

import json
import os

from dagster import DefaultSensorStatus, RunRequest, SensorEvaluationContext, SensorResult, SkipReason, sensor

from semid_pipeline.core.data.incoming import fingerprint, incoming_dir, list_incoming
from semid_pipeline.jobs import retokenize_frozen_job, retokenize_job, retokenize_run_config
from semid_pipeline.partitions import dataset_partitions
from semid_pipeline.resources import StorageResource

INCOMING_MODE = os.environ.get("SEMID_INCOMING_MODE", "frozen")
if INCOMING_MODE not in ("full", "frozen"):
    raise ValueError(f"SEMID_INCOMING_MODE must be 'full' or 'frozen', got {INCOMING_MODE!r}")
INCOMING_INTERVAL = int(os.environ.get("SEMID_INCOMING_SENSOR_INTERVAL", "60"))
INCOMING_STATUS = DefaultSensorStatus.STOPPED if os.environ.get("SEMID_INCOMING_SENSOR_STATUS", "running") == "stopped" else DefaultSensorStatus.RUNNING


def pending_datasets(data_dir: str, cursor: dict) -> dict:
    """``{dataset: fingerprint}`` of every dataset whose incoming folder changed since ``cursor``."""
    changed = {}
    for dataset in dataset_partitions.get_partition_keys():
        files = list_incoming(incoming_dir(data_dir, dataset))
        if not files and dataset not in cursor:
            continue
        fp = fingerprint(files)
        if cursor.get(dataset) != fp:
            changed[dataset] = fp
    return changed


@sensor(
    jobs=[retokenize_frozen_job, retokenize_job],
    minimum_interval_seconds=INCOMING_INTERVAL,
    default_status=INCOMING_STATUS,
    description="Re-tokenizes a dataset when item files appear or change in <data_dir>/incoming/<dataset>/.",
)
def incoming_items_sensor(context: SensorEvaluationContext, storage: StorageResource):
    cursor = json.loads(context.cursor) if context.cursor else {}
    changed = pending_datasets(storage.data_dir, cursor)
    if not changed:
        return SkipReason("no new or changed item files")
    job = retokenize_frozen_job if INCOMING_MODE == "frozen" else retokenize_job
    requests = []
    for dataset, fp in sorted(changed.items()):
        context.log.info(f"{dataset}: incoming items changed ({fp}), requesting {job.name}")
        requests.append(
            RunRequest(
                run_key=f"incoming-{dataset}-{fp}",
                job_name=job.name,
                partition_key=dataset,
                run_config=retokenize_run_config(INCOMING_MODE),
                tags={"semid/trigger": "incoming_items", "semid/mode": INCOMING_MODE},
            )
        )
    return SensorResult(run_requests=requests, cursor=json.dumps({**cursor, **changed}, sort_keys=True))
