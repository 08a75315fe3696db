"""Stage 8: the TIGER-style generative recommender and its trie-constrained beam-search top-K lists."""

import numpy as np
import pandas as pd
from dagster import AssetCheckResult, AssetCheckSpec, AssetExecutionContext, Config, Output, asset

from semid_pipeline.core.recommendations import topk_frame
from semid_pipeline.core.recommender.model import RecommenderParams
from semid_pipeline.core.recommender.train import TrainParams, recommend, train_recommender
from semid_pipeline.core.recommender.trie import SIDTrie
from semid_pipeline.metadata import line_plot, md_table
from semid_pipeline.partitions import dataset_partitions


class RecommenderConfig(Config, RecommenderParams, TrainParams):
    """Model size (``RecommenderParams``) and optimisation (``TrainParams``), TIGER defaults."""


class RecommendConfig(Config):
    beam_size: int = 20
    """Beams kept per step of the constrained beam search (at least ``top_k``)."""
    top_k: int = 10
    batch_size: int = 256
    """Users decoded together (all beams of all users of a batch run as one tensor program)."""


def sid_matrix(semantic_ids: pd.DataFrame) -> np.ndarray:
    return np.stack(semantic_ids.sort_values("item_idx")["sid"].to_numpy()).astype(np.int64)


def split_inputs(user_sequences: pd.DataFrame, split: str) -> tuple[list, np.ndarray]:
    """Histories and targets of a split: validation reads ``train_items``, test also sees ``valid_item``."""
    train = [np.asarray(t, dtype=np.int64) for t in user_sequences["train_items"]]
    if split == "valid":
        return train, user_sequences["valid_item"].to_numpy(np.int64)
    valid = user_sequences["valid_item"].to_numpy(np.int64)
    return [np.append(t, v) for t, v in zip(train, valid)], user_sequences["test_item"].to_numpy(np.int64)


@asset(partitions_def=dataset_partitions, group_name="recommender", io_manager_key="model_io", pool="gpu")
def generative_recommender(
    context: AssetExecutionContext, config: RecommenderConfig, semantic_ids: pd.DataFrame, user_sequences: pd.DataFrame
) -> Output:
    """Encoder-decoder over SID tokens, trained on every next-item target of each user's training
    history; the checkpoint kept is the one with the best validation Recall@10."""
    model_params = RecommenderParams(**{k: getattr(config, k) for k in RecommenderParams.model_fields})
    train_params = TrainParams(**{k: getattr(config, k) for k in TrainParams.model_fields})
    valid_hist, valid_target = split_inputs(user_sequences, "valid")
    result = train_recommender(
        sid_matrix(semantic_ids),
        valid_hist,
        valid_target,
        valid_hist,
        user_sequences["user_idx"].to_numpy(np.int64),
        model_params,
        train_params,
        progress=context.log.info,
    )
    hist = pd.DataFrame([{k: v for k, v in h.items() if isinstance(v, (int, float))} for h in result.history])
    best = max(result.history, key=lambda h: h.get("valid_recall@10", -1.0)) if result.history else {}
    return Output(
        result.model,
        metadata={
            "best_epoch": int(best.get("epoch", -1)),
            "best_valid_recall@10": float(best.get("valid_recall@10", 0.0)),
            "best_valid_ndcg@10": float(best.get("valid_ndcg@10", 0.0)),
            "epochs_run": len(result.history),
            "train_seconds": float(sum(h.get("seconds", 0.0) for h in result.history)),
            "learning_curve": line_plot(result.history, ["loss", "valid_recall@10", "valid_ndcg@10"], "Recommender training"),
            "history": md_table(hist),
        },
    )


@asset(
    partitions_def=dataset_partitions,
    group_name="recommender",
    io_manager_key="table_io",
    check_specs=[
        AssetCheckSpec(
            "test_users_get_k_distinct_valid_items",
            asset="generative_recommendations",
            description="Every test user gets top_k distinct recommendations, each an existing item.",
        )
    ],
)
def generative_recommendations(
    context: AssetExecutionContext,
    config: RecommendConfig,
    generative_recommender,
    semantic_ids: pd.DataFrame,
    user_sequences: pd.DataFrame,
):
    """Per-user top-K for validation and test by beam search constrained to valid SIDs (prefix trie)."""
    sids = sid_matrix(semantic_ids)
    trie = SIDTrie.from_sids(sids)
    item_ids = semantic_ids.sort_values("item_idx")["item_id"].to_numpy()
    user_idx = user_sequences["user_idx"].to_numpy(np.int64)
    frames, per_split = [], {}
    for split in ("valid", "test"):
        histories, _ = split_inputs(user_sequences, split)
        items, scores = recommend(generative_recommender, trie, histories, user_idx, config.beam_size, config.top_k, config.batch_size, progress=context.log.info)
        per_split[split] = items
        frames.append(topk_frame("generative", split, user_idx, user_sequences["user_id"].to_numpy(), items, scores, item_ids))
    recs = pd.concat(frames, ignore_index=True)
    yield Output(recs, metadata={"n_rows": len(recs), "beam_size": config.beam_size, "top_k": config.top_k})
    test = per_split["test"]
    n_items = len(sids)
    distinct = (test.shape[1] == config.top_k) & (np.diff(np.sort(test, axis=1), axis=1) != 0).all(axis=1)
    in_catalog = ((test >= 0) & (test < n_items)).all(axis=1)
    ok = distinct & in_catalog
    yield AssetCheckResult(
        check_name="test_users_get_k_distinct_valid_items",
        passed=bool(ok.all()),
        metadata={"n_users": len(test), "n_failing_users": int((~ok).sum())},
    )
