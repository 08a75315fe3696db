"""Tokenizer quality report: collision rates, codebook health, reconstruction, held-out tag accuracy,
and the human-readable path a sample of SIDs decodes to (``core/tokenizers/quality.py``), for the
SIDs ``semantic_ids`` produced (its codes, collision strategy, SID length and SIDs)."""

import numpy as np
import pandas as pd
from dagster import AssetExecutionContext, AssetOut, Config, Output, multi_asset
from pydantic import Field

from semid_pipeline.core.frames import by_item, embedding_matrix, tag_paths_for
from semid_pipeline.core.tokenizers.collaborative import tokenizer_input
from semid_pipeline.core.tokenizers.base import tag_labels_for
from semid_pipeline.core.tokenizers.quality import tokenizer_quality as measure_quality
from semid_pipeline.metadata import bar_plots, glossary, md_table, png_markdown, readable
from semid_pipeline.partitions import dataset_partitions


class TokenizerQualityConfig(Config):
    n_samples: int = Field(20, ge=0)
    """Items whose SID -> tag path is listed in ``tokenizer_sample_paths``."""
    n_projection: int = Field(2000, ge=1)
    """Items in the 2-D latent projection plot."""
    seed: int = 0


def _scatter(points: np.ndarray, labels: list, title: str):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 4))
    lab = np.asarray(labels, dtype=object)
    for name in sorted(set(labels)):
        m = lab == name
        ax.scatter(points[m, 0], points[m, 1], s=4, alpha=0.6, label=name or "(no tag)")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=6, markerscale=2, loc="best")
    return png_markdown(fig)


@multi_asset(
    outs={
        "tokenizer_quality": AssetOut(
            io_manager_key="table_io", is_required=False,
            description="One row per (level, metric) for the SIDs semantic_ids produced; level 1..L, null for the whole tokenizer.",
        ),
        "tokenizer_sample_paths": AssetOut(
            io_manager_key="table_io", is_required=False, description="Sample items: their SID as semantic_ids assigned it, the tag path it decodes to, the true tag path."
        ),
    },
    partitions_def=dataset_partitions,
    group_name="tokenizer",
    can_subset=True,  # both tables come from one measurement; the selected ones are written
)
def tokenizer_quality(
    context: AssetExecutionContext,
    config: TokenizerQualityConfig,
    sid_tokenizer,
    item_text_embeddings: pd.DataFrame,
    item_tags: pd.DataFrame,
    semantic_ids: pd.DataFrame,
    item_collaborative_embeddings: pd.DataFrame,
):
    emb = by_item(item_text_embeddings)
    x = tokenizer_input(sid_tokenizer, embedding_matrix(emb), item_collaborative_embeddings, emb["item_idx"].to_numpy(np.int64))
    assigned = semantic_ids.set_index("item_idx").reindex(emb["item_idx"].to_numpy(np.int64))
    if assigned["sid"].isna().any():
        missing = emb["item_idx"].to_numpy()[assigned["sid"].isna().to_numpy()]
        raise ValueError(f"semantic_ids has no SID for {len(missing)} item(s), e.g. item_idx {missing[:5].tolist()}: re-materialize semantic_ids")
    codes = np.stack(assigned["codes"].to_numpy()).astype(np.int64)
    sids = np.stack(assigned["sid"].to_numpy()).astype(np.int64)
    vocab, heldout = (None, None)
    if getattr(sid_tokenizer, "tag_keys", None):
        vocab, heldout = tag_labels_for(sid_tokenizer, tag_paths_for(item_tags, emb["item_idx"].to_numpy(np.int64)))
    q = measure_quality(
        sid_tokenizer, x, vocab, heldout, emb["item_id"].astype(str).tolist(),
        seed=config.seed, n_samples=config.n_samples, n_projection=config.n_projection, codes=codes, sids=sids,
    )
    rows = [{"level": None, "metric": k, "value": float(v)} for k, v in q.summary.items() if isinstance(v, (int, float))]
    for rec in q.levels.to_dict(orient="records"):
        rows += [{"level": int(rec["level"]), "metric": k, "value": float(v)} for k, v in rec.items() if k != "level"]
    table = pd.DataFrame(rows).astype({"level": "Int64", "metric": str, "value": "float64"})
    scalars = {k: (v if isinstance(v, (int, float)) else str(v)) for k, v in q.summary.items()}
    context.log.info(f"tokenizer quality: {scalars}")
    if "tokenizer_quality" in context.selected_output_names:
        yield Output(
            table,
            "tokenizer_quality",
            metadata=readable({
                **scalars,
                "levels": md_table(q.levels),
                "code_usage": bar_plots(q.usage, "Items per code, each level"),
                "latent_projection": _scatter(q.projection, q.projection_labels, "Latents, 2-D PCA (colour: level-1 tag)"),
                "glossary": glossary(QUALITY_GLOSSARY),
            }),
        )
    if "tokenizer_sample_paths" in context.selected_output_names:
        yield Output(q.sample_paths, "tokenizer_sample_paths", metadata={"sample": md_table(q.sample_paths)})


QUALITY_GLOSSARY = {
    "collision_strategy, sid_length": "read off the semantic_ids table: append_token when its SIDs carry one token "
    "more than the L code levels (e.g. 55-45-34-0), sinkhorn when they have L",
    "collision_rate_before": "share of items whose codes (levels 1..L) are shared with another item, as in semantic_ids",
    "collision_rate_after": "the same share for the SIDs semantic_ids assigned (0: every SID unique)",
    "recon_error": "mean squared error between the normalised embedding and its reconstruction from the codes",
    "tag_accuracy_l*": "tag heads on the codewords of held-out items vs their true level-* tag (levels numbered from 1)",
    "levels": "per level (numbered from 1): codes used, utilisation, perplexity, distinct prefixes, held-out tag accuracy",
}
