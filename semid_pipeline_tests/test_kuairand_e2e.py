"""A KuaiRand-shaped run end to end: official-schema files -> positives, k-core, leave-one-out ->
tags from the built-in KuaiRand pool -> embeddings -> SIDs -> recommender and baselines -> evaluation.
The retrieval stage has no queries for KuaiRand and is skipped without failing the run."""

import pytest
from dagster import DagsterInstance, materialize

from semid_pipeline.core import storage
from semid_pipeline.core.data.kuairand import field_path
from semid_pipeline.definitions import all_assets

from .conftest import TINY_RUN_CONFIG, tiny_resources
from .test_data_kuairand import write_kuairand


@pytest.fixture(scope="module")
def kuairand_run(tmp_path_factory):
    root = write_kuairand(tmp_path_factory.mktemp("kuairand"), n_users=60, n_videos=60, per_user=12)
    data_dir = tmp_path_factory.mktemp("data")
    # KuaiRand item texts are field lists that differ only in a few values, so a 30-step RQ-VAE leaves most
    # codes shared (~98% pre-resolution collisions here); the appended token still makes SIDs unique.
    config = {"ops": {**TINY_RUN_CONFIG["ops"], "semantic_ids": {"config": {"max_collision_rate": 1.0}}}}
    result = materialize(
        all_assets,
        partition_key="kuairand",
        resources=tiny_resources(data_dir, {"kuairand": {"root": str(root), "variant": "pure", "positive": ["is_click"]}}),
        run_config=config,
        instance=DagsterInstance.ephemeral(),
    )
    return result, data_dir


def test_kuairand_partition_runs_through_tags_sids_recommender_and_evaluation(kuairand_run):
    result, data_dir = kuairand_run
    assert result.success
    materialized = {e.asset_key.path[-1] for e in result.get_asset_materialization_events()}
    assert {"raw_items", "items", "user_sequences", "item_tags", "semantic_ids", "generative_recommender", "evaluation"} <= materialized
    assert not {"generative_retriever", "retrieval_evaluation"} & materialized  # no queries: skipped

    items = storage.read_table(data_dir, "items", "kuairand")
    tags = storage.read_table(data_dir, "item_tags", "kuairand")
    assert len(tags) == len(items) and all(len(p) == 3 for p in tags["tag_path"])
    assert (tags["tag_source"] != "true").all()  # generated, KuaiRand has no category paths
    # retrieval picks the duration class written in the item text for most videos
    truth = {i: field_path(d)[0] for i, d in zip(items["item_id"], items["description"])}
    hits = sum(p[0] == truth[i] for i, p in zip(tags["item_id"], tags["tag_path"]))
    assert hits / len(tags) > 0.5

    sids = storage.read_table(data_dir, "semantic_ids", "kuairand")
    assert len(sids) == len(items) and sids["sid_str"].is_unique
    ev = storage.read_table(data_dir, "evaluation", "kuairand")
    ranking = ev[ev["metric"].isin(["recall", "ndcg"]) & ev["split"].isin(["valid", "test"])]
    assert {"generative", "most_popular", "sasrec"} <= set(ranking["model"]) and ranking["value"].between(0, 1).all()
    assert set(ranking["split"]) == {"valid", "test"} and (ranking["n_users"] > 0).all()
