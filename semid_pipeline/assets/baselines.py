"""Baselines scored on the same split as the generative model: most-popular."""

import numpy as np
import pandas as pd
from dagster import AssetExecutionContext, Config, Output, asset

from semid_pipeline.assets.recommender import split_inputs
from semid_pipeline.core.baselines.popularity import most_popular
from semid_pipeline.core.recommendations import topk_frame
from semid_pipeline.partitions import dataset_partitions


class PopularityConfig(Config):
    top_k: int = 10


@asset(partitions_def=dataset_partitions, group_name="baselines", io_manager_key="table_io")
def popularity_recommendations(
    context: AssetExecutionContext, config: PopularityConfig, items: pd.DataFrame, user_sequences: pd.DataFrame
) -> Output:
    """Most-popular top-K per user and split, popularity counted on what each split may see."""
    user_idx = user_sequences["user_idx"].to_numpy(np.int64)
    item_ids = items.sort_values("item_idx")["item_id"].to_numpy()
    frames = []
    for split in ("valid", "test"):
        histories, _ = split_inputs(user_sequences, split)
        top, scores = most_popular(histories, len(items), config.top_k)
        n = len(user_idx)
        frames.append(topk_frame("most_popular", split, user_idx, user_sequences["user_id"].to_numpy(), np.tile(top, (n, 1)), np.tile(scores, (n, 1)), item_ids))
    recs = pd.concat(frames, ignore_index=True)
    return Output(recs, metadata={"n_rows": len(recs)})
