"""The recommender assets with hierarchy-aware embeddings, the GRPO stage and the explanation view."""

import numpy as np
import pandas as pd
from dagster import DagsterInstance, materialize

from semid_pipeline.core import storage
from semid_pipeline.core.artifacts import load_artifact
from semid_pipeline.core.enrich.descriptors import empty_scores
from semid_pipeline.definitions import all_assets
from semid_pipeline.resources import TextEncoderResource
from semid_pipeline_tests.conftest import tiny_resources, write_untrained_sasrec
from semid_pipeline_tests.test_recommender_train import CHAIN, N_CHAINS, chain_data
from semid_pipeline_tests.test_recommender_trie import random_sids

LEVEL1 = ["Skincare", "Hair", "Makeup", "Fragrance"]


class HashEncoder:
    def encode(self, texts, progress=None):
        from semid_pipeline_tests.test_recommender_hierarchy import fake_encode

        return fake_encode(texts)


class FakeTextEncoderResource(TextEncoderResource):
    """Deterministic character-hash 'sentence embeddings': the asset wiring is under test, not MiniLM."""

    def get(self):
        return HashEncoder()


def write_inputs(data_dir):
    sids = random_sids(N_CHAINS * CHAIN, (4, 4, 4), seed=1)
    n = len(sids)
    item_ids = [f"i{i:03d}" for i in range(n)]
    storage.write_table(data_dir, "semantic_ids", "demo", pd.DataFrame({
        "item_idx": np.arange(n), "item_id": item_ids, "codes": list(sids), "dedup": 0, "sid": list(sids),
        "sid_str": ["-".join(map(str, s)) for s in sids], "collided": False,
    }))
    # tag paths that follow the SID's first code, so the majority map is known
    paths = [[LEVEL1[s[0]], f"{LEVEL1[s[0]]} {s[1]}", f"leaf {s[2]}"] for s in sids]
    storage.write_table(data_dir, "item_tags", "demo", pd.DataFrame({
        "item_idx": np.arange(n), "item_id": item_ids, "tag_path": paths, "generated_path": paths, "true_path": paths,
        "candidates": [[["x"]]] * n, "scores": [[1.0]] * n, "tag_source": "true",
    }))
    storage.write_table(data_dir, "items", "demo", pd.DataFrame({
        "item_idx": np.arange(n), "item_id": item_ids, "title": [f"title {i}" for i in range(n)], "brand": None,
        "category_path": [[]] * n, "description": None, "image": None, "text": [f"title {i}" for i in range(n)],
    }))
    train, valid, test = chain_data(n_users=120)
    storage.write_table(data_dir, "user_sequences", "demo", pd.DataFrame({
        "user_idx": np.arange(120), "user_id": [f"u{u}" for u in range(120)], "train_items": [list(t) for t in train],
        "valid_item": valid, "test_item": test, "n_interactions": 8,
    }))
    # a declared input of generative_recommender (QARM reward); empty = the QARM stage was skipped
    storage.write_table(data_dir, "item_quality_scores", "demo", empty_scores())
    write_untrained_sasrec(data_dir, "demo", n)
    return sids, paths


def test_hierarchy_and_grpo_assets_and_explanations(tmp_path):
    sids, paths = write_inputs(tmp_path)
    config = {
        "ops": {
            "generative_recommender": {"config": {
                "d_model": 32, "n_encoder_layers": 1, "n_decoder_layers": 1, "n_heads": 2, "d_head": 16, "d_ff": 64,
                "n_user_buckets": 16, "max_history_items": 5, "epochs": 3, "warmup_steps": 20, "batch_size": 16, "lr": 4e-3,
                "eval_beam_size": 10, "embedding": "hierarchy", "d_id_embedding": 16, "d_type_embedding": 8,
                "rl": {"enabled": True, "epochs": 1, "group_size": 4, "batch_size": 64, "reward": "prefix", "eval_beam_size": 10},
            }},
            "generative_recommendations": {"config": {"beam_size": 10, "top_k": 10, "batch_size": 128}},
            "recommendation_explanations": {"config": {"max_users": 5}},
        }
    }
    selection = ["generative_recommender", "generative_recommendations", "recommendation_explanations"]
    resources = {**tiny_resources(tmp_path), "text_encoder": FakeTextEncoderResource()}
    result = materialize(all_assets, selection=selection, partition_key="demo", resources=resources,
                         run_config=config, instance=DagsterInstance.ephemeral())
    assert result.success
    meta = result.asset_materializations_for_node("generative_recommender")[0].metadata
    assert meta["embedding"].value == "hierarchy" and meta["rl_reward"].value == "prefix"
    assert meta["rl_best_epoch"].value in (0, 1)
    model = load_artifact(storage.model_dir(tmp_path, "generative_recommender", "demo"))
    assert model.params.embedding == "hierarchy" and model.level_tags.texts[0] == LEVEL1
    table = storage.read_table(tmp_path, "recommendation_explanations", "demo")
    assert sorted(table["user_idx"].unique()) == [0, 1, 2, 3, 4] and len(table) == 50
    row = table.iloc[0]
    assert list(row["tag_path"])[0] == LEVEL1[sids[row["item_idx"]][0]]
    assert row["tag_path_str"].startswith(paths[row["item_idx"]][0])
    assert len(row["history_titles"]) == 5
