"""Stage 8: the generative recommender and its top-K lists: ``kind: tiger`` (encoder-decoder, trie-constrained
beam search) or ``kind: parallel`` (RPG: all SID digits at once; exact scoring or graph-constrained decoding)."""

from typing import Callable, Literal

import numpy as np
import pandas as pd
from dagster import AssetCheckResult, AssetCheckSpec, AssetExecutionContext, Config, Output, asset
from pydantic import Field

from semid_pipeline.core.baselines.sasrec import SASRec
from semid_pipeline.core.frames import item_column, item_values, sid_matrix, sid_version, split_inputs, split_top_k, tag_paths_for
from semid_pipeline.core.recommendations import check_top_k
from semid_pipeline.core.recommender.hierarchy import HierarchyInputs, build_level_tags
from semid_pipeline.core.recommender.model import RecommenderParams
from semid_pipeline.core.recommender.parallel import ParallelParams, ParallelRecommender
from semid_pipeline.core.recommender.parallel_decode import item_graph, recommend_exact, recommend_graph
from semid_pipeline.core.recommender.parallel_train import train_parallel
from semid_pipeline.core.recommender.rl import GRPOParams, train_grpo
from semid_pipeline.core.recommender.train import TrainParams, recommend, train_recommender
from semid_pipeline.core.recommender.trie import SIDTrie
from semid_pipeline.core.recommender.vocab import level_sizes
from semid_pipeline.core.storage import table_path
from semid_pipeline.core.tokenizers.versioning import check_decodable, check_same_assignment, check_same_version, current_assignment_id
from semid_pipeline.metadata import curves, learning_curve, md_table, order_metric_columns, readable
from semid_pipeline.partitions import dataset_partitions
from semid_pipeline.resources import StorageResource, TextEncoderResource


class GRPOConfig(Config, GRPOParams):
    """The reinforcement stage after supervised training (DeepInterestGR Sec. III-E), off by default."""

    enabled: bool = False
    """Run GRPO on the supervised checkpoint; the asset then stores the validation-selected RL policy."""


class ParallelConfig(Config, ParallelParams):
    """The parallel (RPG) recommender's model, loss and optimisation (``core/recommender/parallel.py``)."""


class RecommenderConfig(Config, RecommenderParams, TrainParams):
    """``kind``; for ``tiger``: model size (``RecommenderParams``), optimisation (``TrainParams``), TIGER defaults,
    and ``rl``; for ``parallel``: everything under ``parallel``."""

    kind: Literal["tiger", "parallel"] = "tiger"
    """tiger: the encoder-decoder over SID tokens; parallel: RPG's parallel digit prediction (settings under ``parallel``)."""
    parallel: ParallelConfig = ParallelConfig()
    """Settings of ``kind: parallel`` (its evaluation row is ``rpg`` with the per-digit loss, ``rpg_item`` with the item loss)."""
    rl: GRPOConfig = GRPOConfig()
    """GRPO stage (``rl.enabled``); the ``qarm`` reward uses the ``item_quality_scores`` input (items without a score get 0)."""


class RecommendConfig(Config):
    beam_size: int = 20
    """Beams kept per step of the constrained beam search (at least ``top_k``)."""
    top_k: int = 10
    batch_size: int = Field(256, ge=1)
    """Users decoded together (all beams of all users of a batch run as one tensor program)."""
    decoding: Literal["exact", "graph"] = "exact"
    """kind parallel: exact (score every catalogue item) or graph (RPG's graph-constrained decoding)."""
    score: Literal["auto", "digit_logprob", "item_logit"] = "auto"
    """kind parallel: item score (auto: the one the model's loss trains)."""
    graph_beam_size: int = Field(50, ge=1)
    """kind parallel, graph: items kept per propagation step."""
    graph_edges: int = Field(100, ge=1)
    """kind parallel, graph: neighbours per item in the SID-similarity graph."""
    graph_steps: int = Field(3, ge=1)
    """kind parallel, graph: propagation steps."""


@asset(partitions_def=dataset_partitions, group_name="recommender", io_manager_key="model_io", pool="gpu")
def generative_recommender(
    context: AssetExecutionContext,
    config: RecommenderConfig,
    semantic_ids: pd.DataFrame,
    user_sequences: pd.DataFrame,
    item_tags: pd.DataFrame,
    item_quality_scores: pd.DataFrame,
    sasrec_model: SASRec,
    text_encoder: TextEncoderResource,
) -> Output:
    """Encoder-decoder over SID tokens, trained on every next-item target of each user's training
    history; the checkpoint kept is the one with the best validation Recall@10. With
    ``embedding: hierarchy`` the SID tokens use HiD-VAE's hierarchy-aware embeddings (tag of every
    (level, code) from ``item_tags``); with ``rl.enabled`` a GRPO stage follows and the
    validation-selected policy is stored (the evaluation then scores it). ``kind: parallel`` trains the
    RPG-style model instead (selection on validation, ``parallel.select_metric``); with
    ``parallel.distill_weight`` or ``distill_rank_weight > 0`` the run's ``sasrec_model`` is its teacher (read only then)."""
    if config.kind == "parallel":
        return parallel_output(context, config.parallel, semantic_ids, user_sequences, sasrec_model)
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


def parallel_output(
    context: AssetExecutionContext, config: ParallelConfig, semantic_ids: pd.DataFrame, user_sequences: pd.DataFrame, teacher: SASRec
) -> Output:
    params = ParallelParams(**{k: getattr(config, k) for k in ParallelParams.model_fields})
    valid_hist, valid_target = split_inputs(user_sequences, "valid")
    teacher = teacher if params.uses_teacher else None
    result = train_parallel(sid_matrix(semantic_ids), valid_hist, valid_target, params, progress=context.log.info, teacher=teacher)
    result.model.artifact_extra = {"tokenizer_version": sid_version(semantic_ids), "assignment_id": current_assignment_id(semantic_ids)}
    hist = pd.DataFrame([{k: v for k, v in h.items() if isinstance(v, (int, float))} for h in result.history])
    best = next((h for h in result.history if h["epoch"] == result.best_epoch), {})
    return Output(
        result.model,
        metadata=readable({
            "recommender_kind": "parallel",
            "model_name": result.model.model_name,
            "loss": params.loss,
            "distill_weight": float(params.distill_weight),
            "distill_rank_weight": float(params.distill_rank_weight),
            "tokenizer_version": str(sid_version(semantic_ids)),
            "n_digits": result.model.n_digits,
            "codebook_size": result.model.codebook_size,
            "n_parameters": int(sum(p.numel() for p in result.model.parameters() if p.requires_grad)),
            "best_epoch": int(result.best_epoch),
            "best_valid_recall@10": float(best.get("valid_recall@10", 0.0)),
            "best_valid_ndcg@10": float(best.get("valid_ndcg@10", 0.0)),
            "epochs_run": len(result.history),
            "train_seconds": float(result.seconds),
            "samples_per_s": float(np.mean([h["samples_per_s"] for h in result.history])) if result.history else 0.0,
            "learning_curve": learning_curve(result.history, "Parallel recommender training"),
            "history": md_table(order_metric_columns(hist)),
        }),
    )


def parallel_ranker(model: ParallelRecommender, semantic_ids: pd.DataFrame, config: RecommendConfig, log) -> Callable:
    """``rank(histories, user_idx)`` of a parallel model over the current catalogue (new items included)."""
    sids = sid_matrix(semantic_ids)
    if config.decoding == "exact":
        return lambda histories, user_idx: recommend_exact(model, sids, histories, config.top_k, config.batch_size, config.score, progress=log)
    graph = item_graph(model, sids, config.graph_edges)
    return lambda histories, user_idx: recommend_graph(
        model, sids, histories, graph, config.top_k, config.graph_beam_size, config.graph_steps, config.batch_size, config.score, progress=log
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
    """Per-user top-K for validation and test: TIGER by beam search constrained to valid SIDs (prefix trie);
    a parallel model by exact scoring or graph-constrained decoding over every catalogue item (items
    added by a frozen re-tokenization included: they are scored through their digits, no retraining).

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
    if isinstance(generative_recommender, ParallelRecommender):
        check_top_k(config.top_k, len(sids))
        name, rank = generative_recommender.model_name, parallel_ranker(generative_recommender, semantic_ids, config, context.log.info)
        meta = {"decoding": config.decoding, "score": config.score}
    else:
        check_decodable(sids, generative_recommender.vocab.level_sizes, item_ids)
        check_top_k(config.top_k, len(sids), beam_size=config.beam_size)
        trie = SIDTrie.from_sids(sids)
        name, meta = "generative", {"beam_size": config.beam_size}
        rank = lambda histories, user_idx: recommend(  # noqa: E731
            generative_recommender, trie, histories, user_idx, config.beam_size, config.top_k, config.batch_size, progress=context.log.info
        )
    recs, per_split = split_top_k(name, user_sequences, item_ids, rank)
    yield Output(recs, metadata={"model": name, "top_k": config.top_k, **meta})
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
