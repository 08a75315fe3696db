"""Baselines scored on the same split as the generative model: most-popular and SASRec (SASRec-CE by default;
eSASRec's gated blocks and sampled softmax are config of the same asset)."""

import numpy as np
import pandas as pd
from dagster import AssetExecutionContext, Config, Output, asset
from pydantic import Field

from semid_pipeline.core.baselines.popularity import most_popular
from semid_pipeline.core.baselines.sasrec import SASRecParams, recommend_sasrec, train_sasrec
from semid_pipeline.core.frames import item_column, split_inputs, split_top_k
from semid_pipeline.core.recommendations import check_top_k
from semid_pipeline.metadata import learning_curve, md_table, order_metric_columns, readable
from semid_pipeline.partitions import dataset_partitions


class PopularityConfig(Config):
    top_k: int = 10


@asset(partitions_def=dataset_partitions, group_name="baselines", io_manager_key="table_io")
def popularity_recommendations(
    context: AssetExecutionContext, config: PopularityConfig, items: pd.DataFrame, user_sequences: pd.DataFrame
) -> Output:
    """Most-popular top-K per user and split, popularity counted on what each split may see."""
    item_ids = item_column(items, "item_id")
    check_top_k(config.top_k, len(items))

    def rank(histories, user_idx):
        top, scores = most_popular(histories, len(items), config.top_k)
        return np.tile(top, (len(user_idx), 1)), np.tile(scores, (len(user_idx), 1))

    recs, _ = split_top_k("most_popular", user_sequences, item_ids, rank)
    return Output(recs)


class SASRecConfig(Config, SASRecParams):
    """SASRec: full-softmax cross-entropy over the catalog by default (SASRec-CE); ``block: gated`` and
    ``loss: sampled`` give eSASRec (see ``SASRecParams``)."""


@asset(partitions_def=dataset_partitions, group_name="baselines", io_manager_key="model_io", pool="gpu")
def sasrec_model(context: AssetExecutionContext, config: SASRecConfig, items: pd.DataFrame, user_sequences: pd.DataFrame) -> Output:
    """SASRec (SASRec-CE by default, eSASRec by config) trained on every user's training items; the checkpoint
    kept is the best on validation. Its evaluation row is the model's ``model_name`` (sasrec, esasrec, ...)."""
    params = SASRecParams(**{k: getattr(config, k) for k in SASRecParams.model_fields})
    histories, targets = split_inputs(user_sequences, "valid")
    result = train_sasrec(histories, targets, len(items), params, progress=context.log.info)
    hist = pd.DataFrame([{k: v for k, v in h.items() if isinstance(v, (int, float))} for h in result.history])
    return Output(
        result.model,
        metadata=readable({
            "model_name": result.model.model_name,
            "epochs_run": len(result.history),
            "best_epoch": int(result.best_epoch),
            "train_seconds": float(hist["seconds"].sum()) if "seconds" in hist else 0.0,
            "samples_per_s": float(hist["samples_per_s"].mean()) if "samples_per_s" in hist else 0.0,
            "learning_curve": learning_curve(result.history, "SASRec training"),
            "history": md_table(order_metric_columns(hist)),
        }),
    )


class SASRecRecommendConfig(Config):
    top_k: int = 10
    batch_size: int = Field(1024, ge=1)


@asset(partitions_def=dataset_partitions, group_name="baselines", io_manager_key="table_io")
def sasrec_recommendations(
    context: AssetExecutionContext, config: SASRecRecommendConfig, sasrec_model, items: pd.DataFrame, user_sequences: pd.DataFrame
) -> Output:
    """SASRec top-K per user for validation and test (full ranking over the catalog); rows named by the model's variant."""
    item_ids = item_column(items, "item_id")
    check_top_k(config.top_k, len(items))
    recs, _ = split_top_k(
        sasrec_model.model_name,
        user_sequences,
        item_ids,
        lambda histories, _users: recommend_sasrec(sasrec_model, histories, top_k=config.top_k, batch_size=config.batch_size),
    )
    return Output(recs)
