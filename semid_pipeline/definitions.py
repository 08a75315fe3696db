"""The Dagster code location: ``dagster dev -m semid_pipeline.definitions`` (or workspace.yaml)."""

import json
import os

from dagster import Definitions, ExecutorDefinition, in_process_executor, load_assets_from_modules, multiprocess_executor

from semid_pipeline.assets import (
    baselines,
    captions,
    catalog,
    descriptors,
    embeddings,
    evaluation,
    explanations,
    image_embeddings,
    ingestion,
    preprocessing,
    recommender,
    retrieval,
    semantic_ids,
    sid_versions,
    tags,
    tokenizer,
    tokenizer_ablation,
    tokenizer_quality,
)
from pydantic import ValidationError

from semid_pipeline.core.enrich.text_encoder import TextEncoderParams
from semid_pipeline.io_managers import ModelIOManager, ParquetIOManager
from semid_pipeline.jobs import demo_pipeline_job, full_pipeline_job, retokenize_frozen_job, retokenize_job, retokenize_schedule, retrieval_job, tokenizer_ablation_job
from semid_pipeline.paths import default_data_dir, default_shared_dir
from semid_pipeline.resources import DatasetsResource, LLMResource, StorageResource, TextEncoderResource
from semid_pipeline.sensors import incoming_items_sensor

ASSET_MODULES = [ingestion, preprocessing, tags, captions, image_embeddings, descriptors, embeddings, tokenizer, semantic_ids, recommender, baselines, evaluation, explanations, catalog, sid_versions, retrieval, tokenizer_quality]


def text_encoder_settings() -> dict:
    """The text encoder of this environment: ``SEMID_TEXT_ENCODER`` (model) and ``SEMID_TEXT_ENCODER_OPTIONS``
    (a JSON object of the other ``TextEncoderParams`` fields, e.g. ``{"kind": "static"}``); a bad value or
    an unknown key is refused naming the variable."""
    raw = os.environ.get("SEMID_TEXT_ENCODER_OPTIONS", "").strip() or "{}"
    try:
        options = json.loads(raw)
    except json.JSONDecodeError as e:
        raise ValueError(f"SEMID_TEXT_ENCODER_OPTIONS is not JSON ({e}): {raw!r}") from None
    if not isinstance(options, dict):
        raise ValueError(f"SEMID_TEXT_ENCODER_OPTIONS must be a JSON object, got {raw!r}")
    settings = {"model": os.environ.get("SEMID_TEXT_ENCODER", "default"), **options}
    try:
        TextEncoderParams(**settings)
    except ValidationError as e:
        raise ValueError(f"SEMID_TEXT_ENCODER_OPTIONS: {e}") from None
    return settings


def build_resources(data_dir: str | None = None, datasets_options_json: str | None = None) -> dict:
    """Resources for one environment; everything defaults to offline, local files."""
    storage = StorageResource(data_dir=data_dir or default_data_dir())
    return {
        "storage": storage,
        "table_io": ParquetIOManager(storage=storage),
        "model_io": ModelIOManager(storage=storage),
        "datasets": DatasetsResource(
            shared_dir=default_shared_dir(),
            options_json=datasets_options_json or os.environ.get("SEMID_DATASET_OPTIONS", "{}"),
        ),
        "text_encoder": TextEncoderResource(**text_encoder_settings()),
        "llm": LLMResource(
            base_url=os.environ.get("SEMID_LLM_BASE_URL", "http://127.0.0.1:8080/v1"),
            model=os.environ.get("SEMID_LLM_MODEL", "local"),
        ),
    }


def select_executor(kind: str | None = None) -> ExecutorDefinition:
    """``SEMID_EXECUTOR``: ``in_process`` (default: one process per run, the GPU pool orders the
    training steps), ``multiprocess`` (a process per step on one machine) or ``k8s`` (a Kubernetes
    Job per step, ``pip install '.[k8s]'``; GPU requests per step in docker/scale-out/k8s_executor.yaml)."""
    kind = kind or os.environ.get("SEMID_EXECUTOR", "in_process")
    if kind == "in_process":
        return in_process_executor
    if kind == "multiprocess":
        return multiprocess_executor
    if kind == "k8s":
        from dagster_k8s import k8s_job_executor

        return k8s_job_executor
    raise ValueError(f"SEMID_EXECUTOR must be in_process, multiprocess or k8s, got {kind!r}")


all_assets = load_assets_from_modules(ASSET_MODULES)
# On-demand assets (own job, not part of the full graph run): the tokenizer ablation.
on_demand_assets = load_assets_from_modules([tokenizer_ablation])

defs = Definitions(
    assets=all_assets + on_demand_assets,
    jobs=[full_pipeline_job, demo_pipeline_job, retokenize_job, retokenize_frozen_job, retrieval_job, tokenizer_ablation_job],
    schedules=[retokenize_schedule],
    sensors=[incoming_items_sensor],
    resources=build_resources(),
    executor=select_executor(),
)
