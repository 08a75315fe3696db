"""Stage 7: semantic-ID assignment and collision resolution, with checks on the result."""

from typing import Literal

import numpy as np
import pandas as pd
from dagster import AssetCheckResult, AssetCheckSpec, AssetExecutionContext, Config, Output, asset
from pydantic import Field

from semid_pipeline.core.errors import CheckRefusedError

from semid_pipeline.core.frames import by_item, embedding_matrix
from semid_pipeline.core.storage import read_table, table_path
from semid_pipeline.core.tokenizers.assign import assign_frozen, assign_full, encode_catalog
from semid_pipeline.core.tokenizers.collaborative import tokenizer_input
from semid_pipeline.core.tokenizers.collisions import codebook_stats, collision_rate
from semid_pipeline.core.tokenizers.versioning import model_version
from semid_pipeline.metadata import bar_plots, glossary, md_table, readable
from semid_pipeline.partitions import dataset_partitions
from semid_pipeline.resources import StorageResource


SID_GLOSSARY = {
    "collision_rate_before": "share of items whose tokenizer codes (level 1..L) are shared with another item, "
    "every item encoded once by the final tokenizer (sid_tokenizer's last_epoch_collision_rate was measured "
    "while the last training epoch still changed the weights, so it differs)",
    "collision_rate_after": "the same share for the final SIDs, after the collision strategy: 0 when every SID is unique",
    "sid_length": "tokens per SID: the L code levels, plus the appended de-duplication token with append_token",
    "collaborative_input": "tokenizers trained with collaborative_dims > 0 read [text ; SASRec-CE item vector]; items that never "
    "occurred in a training sequence (e.g. new catalog items) get the collaborative part predicted from their text",
    "max_dedup_token": "largest appended token (size of the biggest collision group minus one; 0 with sinkhorn)",
    "codebook_stats": "per level (numbered from 1): codes used, utilisation, perplexity, distinct prefixes",
}


class SemanticIdConfig(Config):
    mode: Literal["full", "frozen"] = "full"
    """``full``: every catalog item is assigned from scratch by the current tokenizer. ``frozen``:
    items of the previous assignment keep their SIDs and only new catalog items are encoded,
    their collisions resolved against the SIDs already handed out (``core/tokenizers/assign.py``);
    needs the tokenizer that made the previous assignment."""
    collision_strategy: Literal["append_token", "sinkhorn"] = "append_token"
    """How colliding items are made unique: ``append_token`` (TIGER's appended de-duplication token,
    SIDs of length L+1) or ``sinkhorn`` (CAT-ID2/LETTER balanced-OT re-assignment of the last level,
    no extra token: SIDs of length L); see ``core/tokenizers/collisions.py:resolve_collisions``."""
    max_collision_rate: float = Field(0.5, ge=0.0, le=1.0)
    """Ceiling for the pre-resolution collision rate; above it the blocking check fails: the assignment is
    not written (the previous one stays current) and downstream training does not run."""
    batch_size: int = Field(8192, ge=1)
    """Items encoded per batch (at least 1)."""


@asset(
    partitions_def=dataset_partitions,
    group_name="tokenizer",
    io_manager_key="table_io",
    check_specs=[
        AssetCheckSpec("every_item_has_sid", asset="semantic_ids", blocking=True, description="Each item of the catalog has a full-length SID."),
        AssetCheckSpec("sids_unique", asset="semantic_ids", blocking=True, description="No two items share a SID after collision resolution."),
        AssetCheckSpec("collision_rate", asset="semantic_ids", blocking=True, description="Pre-resolution collision rate under the configured ceiling."),
    ],
)
def semantic_ids(
    context: AssetExecutionContext,
    config: SemanticIdConfig,
    sid_tokenizer,
    catalog_item_embeddings: pd.DataFrame,
    item_collaborative_embeddings: pd.DataFrame,
    storage: StorageResource,
):
    """Each catalog item's codes from the tokenizer, made unique by the collision strategy; in
    ``frozen`` mode items that already had a SID keep it. ``tokenizer_version`` names the tokenizer."""
    emb = by_item(catalog_item_embeddings)
    x = tokenizer_input(sid_tokenizer, embedding_matrix(emb), item_collaborative_embeddings, emb["item_idx"].to_numpy(np.int64))
    codes, last_distances = encode_catalog(sid_tokenizer, x, config.batch_size, last_distances=config.collision_strategy != "append_token")
    version = model_version(sid_tokenizer)
    idx, ids = emb["item_idx"].to_numpy(np.int64), emb["item_id"].astype(str).to_numpy()
    previous = _previous_assignment(storage.data_dir, context.partition_key, version) if config.mode == "frozen" else None
    if config.mode == "frozen" and previous is None:
        path = table_path(storage.data_dir, "semantic_ids", context.partition_key)
        raise FileNotFoundError(
            f"{path}: semantic_ids mode 'frozen' needs the previous assignment of dataset {context.partition_key!r} "
            "(missing); a full assignment would move existing SIDs. Run mode 'full' first, or restore the table."
        )
    if previous is None:
        df = assign_full(idx, ids, codes, last_distances, strategy=config.collision_strategy)
    else:
        df = assign_frozen(previous, idx, ids, codes, last_distances, strategy=config.collision_strategy)
    df["tokenizer_version"] = version
    codes = np.stack(df["codes"].to_numpy()).astype(np.int64)
    sids = np.stack(df["sid"].to_numpy()).astype(np.int64)
    dedup = df["dedup"].to_numpy(np.int64)
    rate_before = collision_rate(codes)
    rate_after = collision_rate(sids)
    stats = codebook_stats(codes, sid_tokenizer.codebook_size)
    usage = {f"level {i + 1}": np.bincount(codes[:, i], minlength=sid_tokenizer.codebook_size).tolist() for i in range(codes.shape[1])}
    context.log.info(f"collision rate before {rate_before:.4f}, after {rate_after:.4f}, max dedup {int(dedup.max(initial=0))}")
    complete = len(df) == len(ids) and set(df["item_id"]) == set(ids) and bool((sids >= 0).all())
    checks = [
        AssetCheckResult(check_name="every_item_has_sid", passed=bool(complete), metadata={"n_items": len(df)}),
        AssetCheckResult(check_name="sids_unique", passed=bool(rate_after == 0.0), metadata={"collision_rate_after": float(rate_after)}),
        AssetCheckResult(
            check_name="collision_rate",
            passed=bool(rate_before <= config.max_collision_rate),
            metadata={"collision_rate_before": float(rate_before), "ceiling": config.max_collision_rate},
        ),
    ]
    failed = [c for c in checks if not c.passed]
    if failed:  # checked before writing: a rejected assignment never becomes the current one
        yield from checks
        details = {"every_item_has_sid": f"{len(df)} of {len(ids)} items have a full SID",
                   "sids_unique": f"collision rate after resolution {rate_after:.4f}",
                   "collision_rate": f"collision rate before resolution {rate_before:.4f} > max_collision_rate {config.max_collision_rate}"}
        raise CheckRefusedError(
            f"semantic_ids of dataset {context.partition_key!r} refused by its blocking checks ("
            + "; ".join(f"{c.check_name}: {details[c.check_name]}" for c in failed)
            + f"); nothing written: {table_path(storage.data_dir, 'semantic_ids', context.partition_key)} keeps the previous assignment"
        )
    yield Output(
        df,
        metadata=readable({
            "collision_rate_before": float(rate_before),
            "collision_rate_after": float(rate_after),
            "collision_strategy": config.collision_strategy,
            "sid_length": int(sids.shape[1]),
            "n_levels": int(codes.shape[1]),
            "max_dedup_token": int(dedup.max(initial=0)),
            "tokenizer_version": version,
            "mode": config.mode if previous is not None else "full",
            "n_new": int((df["status"] == "new").sum()),
            "n_kept": int((df["status"] == "kept").sum()),
            "collaborative_input": (
                f"{inputs.n_predicted(x)} of {len(x)} items without interactions: collaborative part predicted from text"
                if (inputs := getattr(sid_tokenizer, "inputs", None)) is not None else "off (text only)"
            ),
            "codebook_stats": md_table(pd.DataFrame(stats)),
            "code_usage": bar_plots(usage, "Items per code, each level"),
            "glossary": glossary(SID_GLOSSARY),
        }),
    )
    yield from checks


def _previous_assignment(data_dir: str, dataset: str, version: str):
    """The last ``semantic_ids`` table of ``dataset`` (None before the first one), which must come
    from tokenizer ``version``: frozen SIDs are only meaningful under the tokenizer that made them."""
    if not table_path(data_dir, "semantic_ids", dataset).exists():
        return None
    previous = read_table(data_dir, "semantic_ids", dataset)
    made_by = set(previous["tokenizer_version"].unique()) if "tokenizer_version" in previous else set()
    if made_by and made_by != {version}:
        raise ValueError(
            f"semantic_ids mode 'frozen' needs the tokenizer that made the previous assignment ({sorted(made_by)}), "
            f"but sid_tokenizer is now {version}: re-assign with mode 'full' after retraining the tokenizer"
        )
    return previous
