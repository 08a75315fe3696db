"""Interpretability view of the generative recommender: recommended items with their decoded tag paths."""

from typing import Optional

import numpy as np
import pandas as pd
from dagster import AssetExecutionContext, Config, Output, asset
from pydantic import Field

from semid_pipeline.core.artifacts import read_artifact_meta
from semid_pipeline.core.frames import by_item, item_column, sid_matrix, split_inputs, tag_paths_for
from semid_pipeline.core.recommender.explain import PATH_SEP, explain_recommendations, path_source
from semid_pipeline.core.recommender.hierarchy import build_level_tags
from semid_pipeline.core.recommender.vocab import level_sizes
from semid_pipeline.core.storage import model_dir
from semid_pipeline.metadata import md_table, readable
from semid_pipeline.partitions import dataset_partitions
from semid_pipeline.resources import StorageResource


class ExplanationConfig(Config):
    split: str = "test"
    """Which split's recommendation lists to explain ('valid' or 'test')."""
    max_users: Optional[int] = 2000
    """Explain the first this many users (by user_idx) to keep the table small; None: all."""
    max_history: int = Field(5, ge=1)
    """Most recent history items shown per user."""


def tokenizer_tag_supervised(data_dir: str, dataset: str) -> Optional[bool]:
    """Whether the dataset's saved ``sid_tokenizer`` learned its tag heads jointly (``tag_prediction``:
    supervised levels) rather than as a probe afterwards; None when there is no saved tokenizer."""
    try:
        config = read_artifact_meta(model_dir(data_dir, "sid_tokenizer", dataset)).get("config", {})
    except FileNotFoundError:
        return None
    return str(config.get("heads_source", "none")).startswith("trained")


@asset(partitions_def=dataset_partitions, group_name="recommender", io_manager_key="table_io")
def recommendation_explanations(
    context: AssetExecutionContext,
    config: ExplanationConfig,
    generative_recommender,
    generative_recommendations: pd.DataFrame,
    semantic_ids: pd.DataFrame,
    user_sequences: pd.DataFrame,
    items: pd.DataFrame,
    item_tags: pd.DataFrame,
    storage: StorageResource,
) -> Output:
    """For each user, the recommended items with the tag path each SID decodes to (the model's saved
    (level, code) -> tag map; rebuilt from ``item_tags`` for older models) and the user's recent
    history with its paths. Ranks count from 1. ``path_derivation`` says how the paths were derived:
    per-code majority tags for a tokenizer trained without tags (plain TIGER SIDs), supervised levels
    for one trained to predict tags (``heads_source`` trained in the saved ``sid_tokenizer``'s
    config.json, read without making the tokenizer an input). Query it, e.g.:
    ``python -m semid_pipeline.query "select rank, title, tag_path_str, hit from recommendation_explanations where user_idx = 0"``."""
    sids = sid_matrix(semantic_ids)
    level_tags = getattr(generative_recommender, "level_tags", None)
    if level_tags is None:
        level_tags = build_level_tags(sids, tag_paths_for(item_tags, item_column(semantic_ids, "item_idx")), level_sizes(sids))
    recs = generative_recommendations[generative_recommendations["split"] == config.split]
    users = np.sort(recs["user_idx"].unique())
    if config.max_users is not None:
        users = users[: config.max_users]
    recs = recs[recs["user_idx"].isin(users)].sort_values(["user_idx", "rank"])
    histories, targets = split_inputs(user_sequences, config.split)
    uidx = user_sequences["user_idx"].to_numpy(np.int64)
    titles = by_item(items)["title"].fillna("").to_numpy()
    table = explain_recommendations(
        recs, level_tags, sids, titles, dict(zip(uidx.tolist(), histories)), dict(zip(uidx.tolist(), targets.tolist())), config.max_history
    )
    meta = {"path_derivation": path_source(tokenizer_tag_supervised(storage.data_dir, context.partition_key)), "n_users": int(len(users))}
    if len(table):
        meta["hit_rate"] = float(table.groupby("user_idx")["hit"].any().mean())
        first = table[table["user_idx"] == users[0]]
        shown = first.assign(
            tag_path=[PATH_SEP.join(f"{t} ({p:.0%})" for t, p in zip(path, share)) for path, share in zip(first["tag_path"], first["tag_path_share"])]
        )
        meta["example_user"] = md_table(shown[["rank", "title", "sid_str", "tag_path", "hit"]])
        row = first.iloc[0]
        history = pd.DataFrame({"title": list(row["history_titles"]), "tag_path": list(row["history_paths"])})
        history.insert(0, "order (1 = oldest shown, last = most recent)", range(1, len(history) + 1))
        meta["example_user_history"] = md_table(history)
        meta["example_user_id"] = str(row["user_id"])
    return Output(table, metadata=readable(meta))
