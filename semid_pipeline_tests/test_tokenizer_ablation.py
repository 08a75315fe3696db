"""The tokenizer ablation runner: one recommender per tokenizer variant, one row per variant."""

import numpy as np
import pandas as pd
import pytest

from semid_pipeline.core.recommender.model import RecommenderParams
from semid_pipeline.core.recommender.train import TrainParams
from semid_pipeline.core.experiments.tokenizer_ablation import AblationParams, run_tokenizer_ablation
from semid_pipeline.core.tokenizers.base import TokenizerParams

from .test_tokenizer_kinds import fake_text_embed, synthetic


def tiny_sequences(n_items: int, n_users: int = 40, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = []
    for u in range(n_users):
        seq = rng.choice(n_items, size=7, replace=False)
        rows.append({"user_idx": u, "user_id": f"u{u}", "train_items": seq[:-2], "valid_item": int(seq[-2]), "test_item": int(seq[-1]), "n_interactions": 7})
    return pd.DataFrame(rows)


def test_ablation_table_has_one_row_per_variant_with_sane_values():
    x, paths = synthetic(n=120)
    seqs = tiny_sequences(len(x))
    table = run_tokenizer_ablation(
        x,
        paths,
        seqs,
        AblationParams(variants=["rqvae+unique", "hidvae", "rqkmeans"], collision_strategy="sinkhorn", beam_size=10),
        TokenizerParams(hidden_dims=[16], latent_dim=8, codebook_size=8, epochs=3, batch_size=64, probe_epochs=2),
        RecommenderParams(d_model=16, n_encoder_layers=1, n_decoder_layers=1, n_heads=2, d_head=8, d_ff=32, n_user_buckets=8),
        TrainParams(epochs=1, batch_size=32, warmup_steps=2, eval_beam_size=10, patience=1),
        fake_text_embed,
    )
    assert table["variant"].tolist() == ["rqvae+unique", "hidvae", "rqkmeans"]
    assert (table["collision_rate_after"] == 0.0).all() and (table["sid_length"] == 3).all()
    for col in ("collision_rate_before", "tag_accuracy_l1", "tag_accuracy_l3", "recall_at_10", "ndcg_at_10"):
        assert table[col].between(0.0, 1.0).all(), col
    assert (table["ndcg_at_10"] <= table["recall_at_10"] + 1e-12).all()
    assert table.loc[table["variant"] == "hidvae", "tag_heads"].item() == "trained+refit"
    assert table.loc[table["variant"] == "rqkmeans", "kind"].item() == "rqkmeans"


@pytest.mark.slow
def test_ablation_asset_materializes_on_tiny_demo(tmp_path):
    from dagster import AssetSelection, DagsterInstance, materialize

    from semid_pipeline.core import storage
    from semid_pipeline.definitions import all_assets, on_demand_assets

    from .conftest import tiny_resources

    rec = {"d_model": 16, "n_encoder_layers": 1, "n_decoder_layers": 1, "n_heads": 2, "d_head": 8, "d_ff": 32, "n_user_buckets": 8,
           "epochs": 1, "batch_size": 64, "warmup_steps": 2, "eval_beam_size": 10, "patience": 1, "eval_max_users": 50}
    tok = {"hidden_dims": [16], "latent_dim": 8, "codebook_size": 16, "epochs": 2, "batch_size": 128, "probe_epochs": 1}
    result = materialize(
        [*all_assets, *on_demand_assets],
        selection=AssetSelection.assets("tokenizer_ablation").upstream().required_multi_asset_neighbors(),
        partition_key="demo",
        resources=tiny_resources(tmp_path),
        run_config={"ops": {"tokenizer_ablation": {"config": {"variants": ["rqvae", "rqkmeans"], "beam_size": 10, "tokenizer": tok, "recommender": rec}}}},
        instance=DagsterInstance.ephemeral(),
    )
    assert result.success
    table = storage.read_table(tmp_path, "tokenizer_ablation", "demo")
    assert table["variant"].tolist() == ["rqvae", "rqkmeans"]
    assert table["recall_at_10"].between(0, 1).all() and (table["collision_rate_after"] == 0).all()
