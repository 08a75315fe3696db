"""Stage 7: semantic-ID assignment and collision resolution, with checks on the result."""

from typing import Literal

import numpy as np
import pandas as pd
import torch
from dagster import AssetCheckResult, AssetCheckSeverity, AssetCheckSpec, AssetExecutionContext, Config, Output, asset

from semid_pipeline.assets.tokenizer import embedding_matrix
from semid_pipeline.core.tokenizers.collisions import append_dedup_token, codebook_stats, collided_mask, collision_rate, sid_strings
from semid_pipeline.metadata import bar_plots, md_table
from semid_pipeline.partitions import dataset_partitions


class SemanticIdConfig(Config):
    collision_strategy: Literal["append_token"] = "append_token"
    """How colliding items are made unique: TIGER's appended de-duplication token."""
    max_collision_rate: float = 0.5
    """Ceiling for the pre-resolution collision rate; above it the check fails (severity WARN)."""
    batch_size: int = 8192


@asset(
    partitions_def=dataset_partitions,
    group_name="tokenizer",
    io_manager_key="table_io",
    check_specs=[
        AssetCheckSpec("every_item_has_sid", asset="semantic_ids", description="Each item of the catalog has a full-length SID."),
        AssetCheckSpec("sids_unique", asset="semantic_ids", description="No two items share a SID after collision resolution."),
        AssetCheckSpec("collision_rate", asset="semantic_ids", description="Pre-resolution collision rate under the configured ceiling."),
    ],
)
def semantic_ids(context: AssetExecutionContext, config: SemanticIdConfig, sid_tokenizer, item_text_embeddings: pd.DataFrame):
    """Each item's codes from the frozen tokenizer, plus the appended token that makes SIDs unique."""
    x = embedding_matrix(item_text_embeddings)
    codes = sid_tokenizer.encode(torch.from_numpy(x), batch_size=config.batch_size).numpy().astype(np.int64)
    rate_before = collision_rate(codes)
    sids, dedup = append_dedup_token(codes)
    collided = collided_mask(codes)
    df = pd.DataFrame(
        {
            "item_idx": np.arange(len(codes), dtype=np.int64),
            "item_id": item_text_embeddings.sort_values("item_idx")["item_id"].to_numpy(),
            "codes": list(codes),
            "dedup": dedup.astype(np.int64),
            "sid": list(sids.astype(np.int64)),
            "sid_str": sid_strings(sids),
            "collided": collided,
        }
    )
    rate_after = collision_rate(sids)
    stats = codebook_stats(codes, sid_tokenizer.codebook_size)
    usage = {f"level {i + 1}": np.bincount(codes[:, i], minlength=sid_tokenizer.codebook_size).tolist() for i in range(codes.shape[1])}
    context.log.info(f"collision rate before {rate_before:.4f}, after {rate_after:.4f}, max dedup {int(dedup.max(initial=0))}")
    yield Output(
        df,
        metadata={
            "collision_rate_before": float(rate_before),
            "collision_rate_after": float(rate_after),
            "max_dedup_token": int(dedup.max(initial=0)),
            "codebook_stats": md_table(pd.DataFrame(stats)),
            "code_usage": bar_plots(usage, "Items per code, each level"),
        },
    )
    yield AssetCheckResult(check_name="every_item_has_sid", passed=bool(len(df) == len(x) and (sids >= 0).all()), metadata={"n_items": len(df)})
    yield AssetCheckResult(check_name="sids_unique", passed=bool(rate_after == 0.0), metadata={"collision_rate_after": float(rate_after)})
    yield AssetCheckResult(
        check_name="collision_rate",
        passed=bool(rate_before <= config.max_collision_rate),
        severity=AssetCheckSeverity.WARN,
        metadata={"collision_rate_before": float(rate_before), "ceiling": config.max_collision_rate},
    )
