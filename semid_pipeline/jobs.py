"""Jobs and schedules: the whole graph, and re-tokenization (embeddings -> ... -> evaluation)."""

import difflib
import os
from pathlib import Path

import yaml
from dagster import AssetSelection, RunRequest, ScheduleEvaluationContext, define_asset_job, schedule

from semid_pipeline.partitions import dataset_partitions

# Expensive assets that run only on request (their own job), never in the full or retokenize runs.
ON_DEMAND = AssetSelection.assets("tokenizer_ablation")

# The run config that sizes the graph for the `demo` partition on a 2-core CPU (package data, so an
# installed wheel has it too; `configs/demo.yaml` at the repository root links to it).
DEMO_CONFIG_PATH = Path(__file__).parent / "configs" / "demo.yaml"
DEMO_RUN_CONFIG = yaml.safe_load(DEMO_CONFIG_PATH.read_text())

full_pipeline_job = define_asset_job(
    "full_pipeline",
    selection=AssetSelection.all() - ON_DEMAND,
    partitions_def=dataset_partitions,
    description="Every asset of a dataset partition, ingestion to evaluation, with the code defaults (sized for the "
    "real benchmarks; for the `demo` partition use the `demo_pipeline` job).",
)

demo_pipeline_job = define_asset_job(
    "demo_pipeline",
    selection=AssetSelection.all() - ON_DEMAND,
    partitions_def=dataset_partitions,
    config=DEMO_RUN_CONFIG,
    description="What README command one runs: every asset of the `demo` partition with configs/demo.yaml (models sized "
    "for a 2-core CPU). The launchpad shows that config as the default; pick the `demo` partition.",
)

retrieval_job = define_asset_job(
    "retrieval",
    selection=AssetSelection.groups("retrieval").upstream().required_multi_asset_neighbors(),
    partitions_def=dataset_partitions,
    description="Query-to-product retrieval (esci, demo): catalog -> SIDs -> generative retriever, BM25 and dense "
    "Recall@5..100 on the test queries.",
)

retokenize_job = define_asset_job(
    "retokenize",
    selection=(
        AssetSelection.assets("item_text_embeddings", "item_collaborative_embeddings").downstream() | AssetSelection.assets("incoming_items")
    ) - ON_DEMAND,
    partitions_def=dataset_partitions,
    description="Mode 'full': re-embed items (text, and the SASRec-CE collaborative vectors; + incoming ones), retrain the tokenizer, reassign every SID, "
    "record the version, retrain and re-evaluate the recommender.",
)

tokenizer_ablation_job = define_asset_job(
    "tokenizer_ablation_job",
    selection=ON_DEMAND,
    partitions_def=dataset_partitions,
    description="Train the recommender on every tokenizer variant (plain RQ-VAE, HiD-VAE terms, CAT-ID2, RQ-KMeans) "
    "and write one comparison table (HiD-VAE Tables 2/3 shape).",
)

retokenize_frozen_job = define_asset_job(
    "retokenize_frozen",
    selection=AssetSelection.assets("incoming_items", "catalog_item_embeddings", "semantic_ids", "sid_versions"),
    partitions_def=dataset_partitions,
    config={"ops": {"semantic_ids": {"config": {"mode": "frozen"}}}},
    description="Mode 'frozen': SIDs for new catalog items from the frozen tokenizer; existing items keep theirs.",
)

RETOKENIZE_CRON = os.environ.get("SEMID_RETOKENIZE_CRON", "0 3 * * 0")


def retokenize_datasets(value: str) -> list:
    """The partitions ``SEMID_RETOKENIZE_DATASETS`` names (comma-separated; ``all``: every declared dataset);
    a name no datasets file declares is refused with its close match."""
    declared = dataset_partitions.get_partition_keys()
    names = [d.strip() for d in value.split(",") if d.strip()]
    if names == ["all"]:
        return list(declared)
    for name in names:
        if name not in declared:
            close = difflib.get_close_matches(name, declared, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ValueError(f"SEMID_RETOKENIZE_DATASETS: unknown dataset {name!r}{hint}; declared: {', '.join(declared)} (or 'all')")
    return names


RETOKENIZE_DATASETS = retokenize_datasets(os.environ.get("SEMID_RETOKENIZE_DATASETS", "demo"))
RETOKENIZE_MODE = os.environ.get("SEMID_RETOKENIZE_MODE", "full")
if RETOKENIZE_MODE not in ("full", "frozen"):
    raise ValueError(f"SEMID_RETOKENIZE_MODE must be 'full' or 'frozen', got {RETOKENIZE_MODE!r}")


def retokenize_run_config(mode: str) -> dict:
    """Run config of a re-tokenization run: the YAML file ``SEMID_RETOKENIZE_CONFIG`` (Dagster
    ``ops:`` layout, e.g. ``configs/demo.yaml``), if set, with ``semantic_ids.mode`` = ``mode``."""
    path = os.environ.get("SEMID_RETOKENIZE_CONFIG")
    config = yaml.safe_load(Path(path).read_text()) or {} if path else {}
    ops = config.setdefault("ops", {})
    ops.setdefault("semantic_ids", {}).setdefault("config", {})["mode"] = mode
    if mode == "frozen":  # the frozen job runs only the catalog -> semantic_ids -> sid_versions assets
        keep = {"incoming_items", "catalog_item_embeddings", "semantic_ids", "sid_versions"}
        config["ops"] = {k: v for k, v in ops.items() if k in keep}
    return config


@schedule(
    job=retokenize_frozen_job if RETOKENIZE_MODE == "frozen" else retokenize_job,
    cron_schedule=RETOKENIZE_CRON,
    execution_timezone="UTC",
)
def retokenize_schedule(context: ScheduleEvaluationContext):
    """One re-tokenization run per configured dataset (``SEMID_RETOKENIZE_DATASETS``: declared names, or
    ``all``) on the cron ``SEMID_RETOKENIZE_CRON`` (default weekly, Sunday 03:00 UTC), in ``SEMID_RETOKENIZE_MODE``
    (``full``: retrain the tokenizer; ``frozen``: new items only)."""
    tick = context.scheduled_execution_time.strftime("%Y%m%dT%H%M")
    for dataset in RETOKENIZE_DATASETS:
        yield RunRequest(run_key=f"retokenize-{dataset}-{tick}", partition_key=dataset, run_config=retokenize_run_config(RETOKENIZE_MODE))
