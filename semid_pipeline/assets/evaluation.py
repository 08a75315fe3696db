"""Stage 9: evaluation of every model's exported top-K lists, plus tokenizer quality."""

from typing import List

import numpy as np
import pandas as pd
from dagster import AssetExecutionContext, Config, Output, asset

from semid_pipeline.core.frames import sid_matrix
from semid_pipeline.core.metrics import score_lists
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
    """Recall/NDCG@k on validation and test for every model, and the SIDs' collision rate and codebook use."""
    recs = pd.concat([generative_recommendations, popularity_recommendations, sasrec_recommendations], ignore_index=True)
    metrics = score_lists(recs, user_sequences, config.ks)
    codes, sids = sid_matrix(semantic_ids, "codes"), sid_matrix(semantic_ids)
    tok_rows = [
        {"model": "sid_tokenizer", "split": "catalog", "metric": "collision_rate_before", "k": 0, "value": collision_rate(codes)},
        {"model": "sid_tokenizer", "split": "catalog", "metric": "collision_rate_after", "k": 0, "value": collision_rate(sids)},
    ]
    for level in range(codes.shape[1]):
        used = float(len(np.unique(codes[:, level])))
        tok_rows.append({"model": "sid_tokenizer", "split": "catalog", "metric": f"codes_used_level_{level + 1}", "k": 0, "value": used})
    tok = pd.DataFrame(tok_rows).assign(n_users=0)
    table = pd.concat([metrics, tok], ignore_index=True)
    wide = metrics.assign(name=metrics["metric"] + "@" + metrics["k"].astype(str)).pivot_table(index=["model", "split"], columns="name", values="value").reset_index()
    wide = order_metric_columns(wide)
    test = metrics[(metrics["split"] == "test") & (metrics["k"] == 10)].set_index(["model", "metric"])["value"]
    in_order = sorted(test.items(), key=lambda kv: (kv[0][0], metric_sort_key(f"{kv[0][1]}@10")))  # per model: recall, ndcg
    flat = {f"test_{m}_{metric}@10": float(v) for (m, metric), v in in_order}
    context.log.info(f"test @10: {flat}")
    return Output(
        table,
        metadata=readable({
            "metrics": md_table(wide),
            **flat,
            "collision_rate_before": float(tok_rows[0]["value"]),
            "glossary": glossary(
                {
                    "metrics": "Recall@k and NDCG@k per model and split (leave-one-out: one held-out item per user, full ranking)",
                    "collision_rate_before / _after": "share of items sharing their codes before / their SID after collision resolution (as in semantic_ids)",
                    "codes_used_level_*": "rows of the table: distinct codes per SID level, levels numbered from 1",
                }
            ),
        }),
    )
