"""Stage 8: the TIGER-style generative recommender and its trie-constrained beam-search top-K lists."""

import numpy as np
import pandas as pd
from dagster import AssetCheckResult, AssetCheckSpec, AssetExecutionContext, Config, Output, asset

from semid_pipeline.core.frames import item_column, item_values, sid_matrix, sid_version, split_inputs, split_top_k, tag_paths_for
from semid_pipeline.core.recommendations import check_top_k
from semid_pipeline.core.recommender.hierarchy import HierarchyInputs, build_level_tags
from semid_pipeline.core.recommender.model import RecommenderParams
from semid_pipeline.core.recommender.rl import GRPOParams, train_grpo
from semid_pipeline.core.recommender.train import TrainParams, recommend, train_recommender
from semid_pipeline.core.recommender.trie import SIDTrie
from semid_pipeline.core.storage import table_path
from semid_pipeline.core.recommender.vocab import level_sizes
from semid_pipeline.core.tokenizers.versioning import check_decodable, check_same_assignment, check_same_version, current_assignment_id
from semid_pipeline.metadata import curves, learning_curve, md_table, order_metric_columns, readable
from semid_pipeline.partitions import dataset_partitions
from semid_pipeline.resources import StorageResource, TextEncoderResource


class GRPOConfig(Config, GRPOParams):
    """The reinforcement stage after supervised training (DeepInterestGR Sec. III-E), off by default."""

    enabled: bool = False
    """Run GRPO on the supervised checkpoint; the asset then stores the validation-selected RL policy."""


class RecommenderConfig(Config, RecommenderParams, TrainParams):
    """Model size (``RecommenderParams``), optimisation (``TrainParams``), TIGER defaults, and ``rl``."""

    rl: GRPOConfig = GRPOConfig()
    """GRPO stage (``rl.enabled``); the ``qarm`` reward uses the ``item_quality_scores`` input (items without a score get 0)."""


class RecommendConfig(Config):
    beam_size: int = 20
    """Beams kept per step of the constrained beam search (at least ``top_k``)."""
    top_k: int = 10
    batch_size: int = 256
    """Users decoded together (all beams of all users of a batch run as one tensor program)."""


@asset(partitions_def=dataset_partitions, group_name="recommender", io_manager_key="model_io", pool="gpu")
def generative_recommender(
    context: AssetExecutionContext,
    config: RecommenderConfig,
    semantic_ids: pd.DataFrame,
    user_sequences: pd.DataFrame,
    item_tags: pd.DataFrame,
    item_quality_scores: pd.DataFrame,
    text_encoder: TextEncoderResource,
) -> Output:
    """Encoder-decoder over SID tokens, trained on every next-item target of each user's training
    history; the checkpoint kept is the one with the best validation Recall@10. With
    ``embedding: hierarchy`` the SID tokens use HiD-VAE's hierarchy-aware embeddings (tag of every
    (level, code) from ``item_tags``); with ``rl.enabled`` a GRPO stage follows and the
    validation-selected policy is stored (the evaluation then scores it)."""
    model_params = RecommenderParams(**{k: getattr(config, k) for k in RecommenderParams.model_fields})
    train_params = TrainParams(**{k: getattr(config, k) for k in TrainParams.model_fields})
    valid_hist, valid_target = split_inputs(user_sequences, "valid")
    sids, item_idx = sid_matrix(semantic_ids), item_column(semantic_ids, "item_idx")
    level_tags = build_level_tags(sids, tag_paths_for(item_tags, item_idx), level_sizes(sids))
    hierarchy = HierarchyInputs(level_tags, text_encoder.get().encode)
    user_idx = user_sequences["user_idx"].to_numpy(np.int64)
    result = train_recommender(
        sids, valid_hist, valid_target, valid_hist, user_idx, model_params, train_params, progress=context.log.info, hierarchy=hierarchy
    )
    rl_meta: dict = {}
    if config.rl.enabled:
        rl_params = GRPOParams(**{k: getattr(config.rl, k) for k in GRPOParams.model_fields})
        quality = item_values(item_quality_scores, "quality_score", item_idx) if rl_params.reward == "qarm" else None
        rl = train_grpo(result.model, sids, valid_hist, valid_target, user_idx, rl_params, quality, progress=context.log.info)
        rl_hist = pd.DataFrame([{k: v for k, v in h.items() if isinstance(v, (int, float))} for h in rl.history])
        rl_meta = {
            "rl_reward": rl_params.reward,
            "rl_best_epoch": int(rl.best_epoch),
            "rl_best_valid_recall@10": float(rl.history[rl.best_epoch]["valid_recall@10"]),
            "rl_seconds_per_epoch": float(np.mean([h["train_seconds"] for h in rl.history[1:]])) if len(rl.history) > 1 else 0.0,
            "rl_history": md_table(order_metric_columns(rl_hist)),
            "rl_curve": curves(rl.history, {"validation": ["valid_recall@10", "valid_ndcg@10"]}, "GRPO validation per epoch"),
        }
        result.model = rl.model
    # saved in config.json by ModelIOManager; generative_recommendations checks both against the current SIDs
    result.model.artifact_extra = {"tokenizer_version": sid_version(semantic_ids), "assignment_id": current_assignment_id(semantic_ids)}
    hist = pd.DataFrame([{k: v for k, v in h.items() if isinstance(v, (int, float))} for h in result.history])
    best = max(result.history, key=lambda h: h.get("valid_recall@10", -1.0)) if result.history else {}
    return Output(
        result.model,
        metadata=readable({
            "tokenizer_version": str(sid_version(semantic_ids)),
            "best_epoch": int(best.get("epoch", -1)),
            "best_valid_recall@10": float(best.get("valid_recall@10", 0.0)),
            "best_valid_ndcg@10": float(best.get("valid_ndcg@10", 0.0)),
            "epochs_run": len(result.history),
            "train_seconds": float(sum(h.get("seconds", 0.0) for h in result.history)),
            "learning_curve": learning_curve(result.history, "Recommender training"),
            "history": md_table(order_metric_columns(hist)),
            "embedding": model_params.embedding,
            **rl_meta,
        }),
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
    storage: StorageResource,
):
    """Per-user top-K for validation and test by beam search constrained to valid SIDs (prefix trie).

    Refuses a model trained on another tokenizer version, or on an assignment whose items do not all
    keep their SID in the current one (``sid_versions`` shows which; new items of a frozen run are fine)."""
    extra = getattr(generative_recommender, "artifact_extra", None) or {}
    trained_on = extra.get("tokenizer_version")
    check_same_version(trained_on, sid_version(semantic_ids), "generative_recommender")
    if trained_on is not None:
        history_path = table_path(storage.data_dir, "sid_versions", context.partition_key)
        history = pd.read_parquet(history_path, columns=["assignment_id", "item_id", "sid_str"]) if history_path.exists() else None
        check_same_assignment(extra.get("assignment_id"), semantic_ids, history, "generative_recommender")
    sids = sid_matrix(semantic_ids)
    item_ids = item_column(semantic_ids, "item_id")
    check_decodable(sids, generative_recommender.vocab.level_sizes, item_ids)
    check_top_k(config.top_k, len(sids), beam_size=config.beam_size)
    trie = SIDTrie.from_sids(sids)
    recs, per_split = split_top_k(
        "generative",
        user_sequences,
        item_ids,
        lambda histories, user_idx: recommend(
            generative_recommender, trie, histories, user_idx, config.beam_size, config.top_k, config.batch_size, progress=context.log.info
        ),
    )
    yield Output(recs, metadata={"beam_size": config.beam_size, "top_k": config.top_k})
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
