"""Stage 9: evaluation of every model's exported top-K lists, plus tokenizer quality."""

from typing import List

import numpy as np
import pandas as pd
from dagster import AssetExecutionContext, Config, Output, asset

from semid_pipeline.core.frames import sid_matrix
from semid_pipeline.core.metrics import score_cold_warm, score_lists
from semid_pipeline.core.tokenizers.collisions import collision_rate
from semid_pipeline.metadata import glossary, md_table, metric_sort_key, order_metric_columns, readable
from semid_pipeline.partitions import dataset_partitions


class EvaluationConfig(Config):
    ks: List[int] = [5, 10]
    """Cut-offs for Recall@k and NDCG@k (full ranking over the catalog, one held-out item)."""


@asset(partitions_def=dataset_partitions, group_name="evaluation", io_manager_key="table_io")
def evaluation(
    context: AssetExecutionContext,
    config: EvaluationConfig,
    user_sequences: pd.DataFrame,
    semantic_ids: pd.DataFrame,
    generative_recommendations: pd.DataFrame,
    popularity_recommendations: pd.DataFrame,
    sasrec_recommendations: pd.DataFrame,
) -> Output:
    """Recall/NDCG@k on validation and test for every model, the test split again over cold targets (never
    trained on) and warm ones, and the SIDs' collision rate and codebook use."""
    recs = pd.concat([generative_recommendations, popularity_recommendations, sasrec_recommendations], ignore_index=True)
    metrics = score_lists(recs, user_sequences, config.ks)
    cold_warm = score_cold_warm(recs, user_sequences, config.ks)
    codes, sids = sid_matrix(semantic_ids, "codes"), sid_matrix(semantic_ids)
    tok_rows = [
        {"model": "sid_tokenizer", "split": "catalog", "metric": "collision_rate_before", "k": 0, "value": collision_rate(codes)},
        {"model": "sid_tokenizer", "split": "catalog", "metric": "collision_rate_after", "k": 0, "value": collision_rate(sids)},
    ]
    for level in range(codes.shape[1]):
        used = float(len(np.unique(codes[:, level])))
        tok_rows.append({"model": "sid_tokenizer", "split": "catalog", "metric": f"codes_used_level_{level + 1}", "k": 0, "value": used})
    tok = pd.DataFrame(tok_rows).assign(n_users=0, note="")
    table = pd.concat([metrics, cold_warm, tok], ignore_index=True)
    wide = metrics.assign(name=metrics["metric"] + "@" + metrics["k"].astype(str)).pivot_table(index=["model", "split"], columns="name", values="value").reset_index()
    wide = order_metric_columns(wide)
    test = metrics[(metrics["split"] == "test") & (metrics["k"] == 10)].set_index(["model", "metric"])["value"]
    in_order = sorted(test.items(), key=lambda kv: (kv[0][0], metric_sort_key(f"{kv[0][1]}@10")))  # per model: recall, ndcg
    flat = {f"test_{m}_{metric}@10": float(v) for (m, metric), v in in_order}
    context.log.info(f"test @10: {flat}")
    n_cold = int(cold_warm.loc[cold_warm["split"] == "test_cold", "n_users"].max()) if len(cold_warm) else 0
    cold10 = cold_warm[(cold_warm["split"] == "test_cold") & (cold_warm["k"] == 10) & (cold_warm["note"] == "")]
    flat.update({f"test_cold_{r.model}_{r.metric}@10": float(r.value) for r in cold10.itertuples()})
    n_scored = int(metrics["n_users"].max()) if len(metrics) else 0
    sample = "every user" if n_scored == len(user_sequences) else f"a seeded sample of {n_scored:,} of {len(user_sequences):,} users"
    context.log.info(f"scored on {sample}; test targets never trained on (cold): {n_cold} of {n_scored} users")
    return Output(
        table,
        metadata=readable({
            "metrics": md_table(wide),
            "cold_vs_warm": md_table(_cold_warm_wide(cold_warm)),
            "n_cold_test_targets": n_cold,
            "users_scored": sample,
            **flat,
            "collision_rate_before": float(tok_rows[0]["value"]),
            "glossary": glossary(
                {
                    "metrics": "Recall@k and NDCG@k per model and split (leave-one-out: one held-out item per user, full ranking)",
                    "cold_vs_warm": "the test split again, over users whose target no training sequence holds (cold: a new item, "
                    "ranked from its SID) and the others (warm); n/a where a model ranks by item-ID statistics it cannot have",
                    "n_cold_test_targets": "test users whose target item no user's training items contain",
                    "users_scored": "the users every model is scored on (prepared_dataset's eval_users draws a seeded sample)",
                    "collision_rate_before / _after": "share of items sharing their codes before / their SID after collision resolution (as in semantic_ids)",
                    "codes_used_level_*": "rows of the table: distinct codes per SID level, levels numbered from 1",
                }
            ),
        }),
    )


def _cold_warm_wide(cold_warm: pd.DataFrame) -> pd.DataFrame:
    """One row per model and target group: ``n_users`` and Recall/NDCG@k, the note in place of a score it lacks."""
    rows = []
    for (model, split), group in cold_warm.groupby(["model", "split"], sort=False):
        row = {"model": model, "targets": split.rsplit("_", 1)[-1], "n_users": int(group["n_users"].iloc[0])}
        for r in group.itertuples():
            row[f"{r.metric}@{r.k}"] = r.note if r.note else float(r.value)
        rows.append(row)
    return order_metric_columns(pd.DataFrame(rows)) if rows else pd.DataFrame(columns=["model", "targets", "n_users"])
