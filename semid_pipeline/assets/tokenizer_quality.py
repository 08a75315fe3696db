"""Tokenizer quality report: collision rates, codebook health, reconstruction, held-out tag accuracy,
and the human-readable path a sample of SIDs decodes to (``core/tokenizers/quality.py``)."""

from typing import Literal

import numpy as np
import pandas as pd
from dagster import AssetExecutionContext, AssetOut, Config, Output, multi_asset

from semid_pipeline.core.frames import by_item, embedding_matrix, tag_paths_for
from semid_pipeline.core.tokenizers.base import tag_labels_for
from semid_pipeline.core.tokenizers.quality import tokenizer_quality as measure_quality
from semid_pipeline.metadata import bar_plots, md_table, png_markdown
from semid_pipeline.partitions import dataset_partitions


class TokenizerQualityConfig(Config):
    collision_strategy: Literal["append_token", "sinkhorn"] = "sinkhorn"
    """Resolution whose result ``collision_rate_after`` reports."""
    n_samples: int = 20
    """Items whose SID -> tag path is listed in ``tokenizer_sample_paths``."""
    n_projection: int = 2000
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
        "tokenizer_quality": AssetOut(io_manager_key="table_io", description="One row per (level, metric); level 0 = the whole tokenizer."),
        "tokenizer_sample_paths": AssetOut(io_manager_key="table_io", description="Sample items: SID, decoded tag path, true tag path."),
    },
    partitions_def=dataset_partitions,
    group_name="tokenizer",
)
def tokenizer_quality(
    context: AssetExecutionContext,
    config: TokenizerQualityConfig,
    sid_tokenizer,
    item_text_embeddings: pd.DataFrame,
    item_tags: pd.DataFrame,
):
    emb = by_item(item_text_embeddings)
    x = embedding_matrix(emb)
    vocab, heldout = (None, None)
    if getattr(sid_tokenizer, "tag_keys", None):
        vocab, heldout = tag_labels_for(sid_tokenizer, tag_paths_for(item_tags, emb["item_idx"].to_numpy(np.int64)))
    q = measure_quality(
        sid_tokenizer, x, vocab, heldout, emb["item_id"].astype(str).tolist(), strategy=config.collision_strategy,
        seed=config.seed, n_samples=config.n_samples, n_projection=config.n_projection,
    )
    rows = [{"level": 0, "metric": k, "value": float(v)} for k, v in q.summary.items() if isinstance(v, (int, float))]
    for rec in q.levels.to_dict(orient="records"):
        rows += [{"level": int(rec["level"]), "metric": k, "value": float(v)} for k, v in rec.items() if k != "level"]
    table = pd.DataFrame(rows).astype({"level": "int64", "metric": str, "value": "float64"})
    scalars = {k: (float(v) if isinstance(v, (int, float)) else str(v)) for k, v in q.summary.items()}
    context.log.info(f"tokenizer quality: {scalars}")
    yield Output(
        table,
        "tokenizer_quality",
        metadata={
            **scalars,
            "levels": md_table(q.levels),
            "code_usage": bar_plots(q.usage, "Items per code, each level"),
            "latent_projection": _scatter(q.projection, q.projection_labels, "Latents, 2-D PCA (colour: level-1 tag)"),
        },
    )
    yield Output(q.sample_paths, "tokenizer_sample_paths", metadata={"sample": md_table(q.sample_paths)})
