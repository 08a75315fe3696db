"""Tokenizer ablation (HiD-VAE Tables 2/3 shape): the recommender trained on each tokenizer variant.

Runs only when asked (the ``tokenizer_ablation`` job): for every variant in config it trains the
tokenizer, assigns SIDs, trains and evaluates the recommender (``core/experiments/tokenizer_ablation.py``)
and writes one table, one row per variant.
"""

from typing import List, Literal

import numpy as np
import pandas as pd
from dagster import AssetExecutionContext, Config, Output, asset

from semid_pipeline.core.frames import by_item, embedding_matrix, tag_paths_for
from semid_pipeline.core.recommender.model import RecommenderParams
from semid_pipeline.core.recommender.train import TrainParams
from semid_pipeline.core.experiments.tokenizer_ablation import AblationParams, run_tokenizer_ablation
from semid_pipeline.core.tokenizers.base import TokenizerParams
from semid_pipeline.core.tokenizers.variants import VARIANTS
from semid_pipeline.metadata import md_table
from semid_pipeline.partitions import dataset_partitions
from semid_pipeline.resources import TextEncoderResource


class AblationTokenizerConfig(Config, TokenizerParams):
    """The base tokenizer every variant starts from (see ``TokenizerParams``)."""


class AblationRecommenderConfig(Config, RecommenderParams, TrainParams):
    """The recommender every variant trains (same architecture and budget for all)."""


class TokenizerAblationConfig(Config):
    variants: List[str] = list(VARIANTS)
    """Variant names (``core/tokenizers/variants.py``)."""
    collision_strategy: Literal["append_token", "sinkhorn"] = "append_token"
    """How each variant's collisions are resolved before the recommender sees the SIDs."""
    beam_size: int = 20
    top_k: int = 10
    seed: int = 0
    tokenizer: AblationTokenizerConfig = AblationTokenizerConfig()
    """Base tokenizer settings; each variant's switches are applied on top."""
    recommender: AblationRecommenderConfig = AblationRecommenderConfig()


@asset(partitions_def=dataset_partitions, group_name="tokenizer", io_manager_key="table_io", pool="gpu")
def tokenizer_ablation(
    context: AssetExecutionContext,
    config: TokenizerAblationConfig,
    item_text_embeddings: pd.DataFrame,
    item_tags: pd.DataFrame,
    user_sequences: pd.DataFrame,
    text_encoder: TextEncoderResource,
) -> Output:
    """One row per tokenizer variant: collision rates, tag accuracy, Recall/NDCG@5/10 of the recommender."""
    emb = by_item(item_text_embeddings)
    x = embedding_matrix(emb)
    paths = tag_paths_for(item_tags, emb["item_idx"].to_numpy(np.int64))
    params = AblationParams(
        variants=config.variants, collision_strategy=config.collision_strategy, beam_size=config.beam_size, top_k=config.top_k, seed=config.seed
    )
    tok = TokenizerParams(**{k: getattr(config.tokenizer, k) for k in TokenizerParams.model_fields})
    rec = config.recommender
    model_params = RecommenderParams(**{k: getattr(rec, k) for k in RecommenderParams.model_fields})
    train_params = TrainParams(**{k: getattr(rec, k) for k in TrainParams.model_fields})
    encoder = text_encoder.get()
    table = run_tokenizer_ablation(x, paths, user_sequences, params, tok, model_params, train_params, encoder.encode, progress=context.log.info)
    shown = [c for c in ("variant", "collision_rate_before", "collision_rate_after", "tag_accuracy_l1", "tag_accuracy_l2", "tag_accuracy_l3", "recall_at_10", "ndcg_at_10") if c in table]
    return Output(table, metadata={"n_variants": len(table), "ablation": md_table(table[shown])})
