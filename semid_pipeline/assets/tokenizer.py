"""Stage 6: RQ-VAE tokenizer training (TIGER objective; k-means init, dead-code restart)."""

import numpy as np
import pandas as pd
from dagster import AssetExecutionContext, Config, Output, asset

from semid_pipeline.core.tokenizers.rqvae import RQVAEParams, train_rqvae
from semid_pipeline.metadata import line_plot, md_table
from semid_pipeline.partitions import dataset_partitions


class TokenizerConfig(Config, RQVAEParams):
    """RQ-VAE architecture, codebooks and optimisation (TIGER defaults; see ``RQVAEParams``)."""


def embedding_matrix(item_text_embeddings: pd.DataFrame) -> np.ndarray:
    """``[N, dim]`` float32 matrix in ``item_idx`` order."""
    df = item_text_embeddings.sort_values("item_idx")
    return np.stack(df["embedding"].to_numpy()).astype(np.float32)


@asset(partitions_def=dataset_partitions, group_name="tokenizer", io_manager_key="model_io", pool="gpu")
def sid_tokenizer(context: AssetExecutionContext, config: TokenizerConfig, item_text_embeddings: pd.DataFrame) -> Output:
    """The trained RQ-VAE item tokenizer (safetensors + JSON config)."""
    params = RQVAEParams(**{k: getattr(config, k) for k in RQVAEParams.model_fields})
    x = embedding_matrix(item_text_embeddings)
    result = train_rqvae(x, params, progress=context.log.info)
    last = result.history[-1] if result.history else {}
    scalar = {k: float(v) for k, v in last.items() if isinstance(v, (int, float))}
    hist = pd.DataFrame([{k: v for k, v in h.items() if isinstance(v, (int, float))} for h in result.history])
    loss_keys = [c for c in ("total", "recon", "codebook", "commitment", "extra") if c in hist.columns]
    metadata = {
        **{f"final_{k}": v for k, v in scalar.items()},
        "n_items": int(x.shape[0]),
        "input_dim": int(x.shape[1]),
        "loss_curve": line_plot(result.history, loss_keys, "RQ-VAE training losses"),
        "history_tail": md_table(hist.tail(10)),
    }
    return Output(result.model, metadata=metadata)
