"""Re-tokenization in Dagster, in-process on tiny tables written straight to a temp data dir:
the sensor requests a frozen run for new item files, blocking checks stop training, and the
recommender refuses SIDs of another tokenizer version."""

import json

import numpy as np
import pytest
import torch
from dagster import DagsterInstance, SensorResult, SkipReason, build_sensor_context, materialize

from semid_pipeline.core import storage
from semid_pipeline.core.artifacts import save_artifact
from semid_pipeline.core.data.demo import DemoParams, generate_demo
from semid_pipeline.core.data.preprocess import PreprocessParams, build_tables
from semid_pipeline.core.enrich.descriptors import empty_scores
from semid_pipeline.core.tokenizers.rqvae import RQVAE, RQVAEParams
from semid_pipeline.core.tokenizers.versioning import VersionMismatchError, diff_versions
from semid_pipeline.resources import StorageResource
from semid_pipeline_tests.conftest import TINY_DEMO, TINY_RUN_CONFIG, tiny_resources, write_collaborative_placeholder, write_untrained_sasrec

DIM = 384  # the bundled text encoder's width: incoming items are embedded by it
REC_CONFIG = {**TINY_RUN_CONFIG["ops"]["generative_recommender"]["config"], "epochs": 1, "eval_max_users": 50}


def _tokenizer(seed: int, x: np.ndarray) -> RQVAE:
    torch.manual_seed(seed)
    model = RQVAE.from_params(DIM, RQVAEParams(hidden_dims=[32], latent_dim=8, codebook_size=8))
    model.kmeans_init_(torch.from_numpy(x), seed=seed)
    return model.eval()


@pytest.fixture()
def data_dir(tmp_path):
    """items / user_sequences of the tiny demo, random item embeddings, tags, empty quality scores and a tokenizer, on disk."""
    prepared = build_tables(generate_demo(DemoParams(**TINY_DEMO)), PreprocessParams())
    items = prepared.items
    x = np.random.default_rng(0).normal(size=(len(items), DIM)).astype(np.float32)
    emb = items[["item_idx", "item_id"]].assign(embedding=list(x))
    tags = items[["item_idx", "item_id"]].assign(tag_path=items["category_path"], tag_source="true")
    tables = (("items", items), ("user_sequences", prepared.user_sequences), ("item_text_embeddings", emb), ("item_tags", tags),
              ("item_quality_scores", empty_scores()))  # QARM skipped: an input of generative_recommender
    for name, df in tables:
        storage.write_table(tmp_path, name, "demo", df)
    write_collaborative_placeholder(tmp_path, "demo", items)
    write_untrained_sasrec(tmp_path, "demo", len(items))  # an input of generative_recommender (its optional teacher)
    save_artifact(_tokenizer(0, x), storage.model_dir(tmp_path, "sid_tokenizer", "demo"))
    return tmp_path


def _run(data_dir, assets, config=None, raise_on_error=True):
    from semid_pipeline.definitions import all_assets

    return materialize(
        all_assets,
        selection=assets,
        partition_key="demo",
        resources=tiny_resources(data_dir),
        run_config=config or {},
        instance=DagsterInstance.ephemeral(),
        raise_on_error=raise_on_error,
    )


def test_sensor_requests_frozen_run_that_keeps_old_sids_and_versions_it(data_dir):
    from semid_pipeline.sensors import incoming_items_sensor

    _run(data_dir, ["incoming_items", "catalog_item_embeddings", "semantic_ids", "sid_versions"])
    v1 = storage.read_table(data_dir, "semantic_ids", "demo")
    ctx = build_sensor_context(resources={"storage": StorageResource(data_dir=str(data_dir))})
    assert isinstance(incoming_items_sensor(ctx), SkipReason)  # nothing incoming yet

    folder = data_dir / "incoming" / "demo"
    folder.mkdir(parents=True)
    n_new = len(v1) // 10
    new_ids = [f"NEW{i:04d}" for i in range(n_new)]
    rows = [{"item_id": i, "title": f"New lip balm {k}", "categories": ["Makeup", "Lips"]} for k, i in enumerate(new_ids)]
    rows.append({"item_id": str(v1["item_id"].iloc[0]), "title": "A changed title"})  # changed item keeps its SID
    (folder / "2026-01-02.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")

    result = incoming_items_sensor(ctx)
    assert isinstance(result, SensorResult) and len(result.run_requests) == 1
    request = result.run_requests[0]
    assert request.job_name == "retokenize_frozen" and request.partition_key == "demo" and request.run_key.startswith("incoming-demo-")
    assert isinstance(incoming_items_sensor(build_sensor_context(cursor=result.cursor, resources={"storage": StorageResource(data_dir=str(data_dir))})), SkipReason)

    # run what the request asks for: the frozen job's assets with the request's run config
    from semid_pipeline.definitions import defs

    assert request.run_config["ops"]["semantic_ids"]["config"]["mode"] == "frozen"
    job_keys = {k.path[-1] for k in defs.resolve_job_def("retokenize_frozen").asset_layer.executable_asset_keys}
    assert job_keys == {"incoming_items", "catalog_item_embeddings", "semantic_ids", "sid_versions"}
    _run(data_dir, sorted(job_keys), request.run_config)
    v2 = storage.read_table(data_dir, "semantic_ids", "demo").set_index("item_id")
    old = v1.set_index("item_id")
    assert (v2.loc[old.index, "sid_str"] == old["sid_str"]).all()  # every old SID kept, the changed item's too
    assert len(v2) == len(v1) + n_new and not v2["sid_str"].duplicated().any()
    versions = storage.read_table(data_dir, "sid_versions", "demo")
    diff = diff_versions(versions, "previous", "latest")
    assert diff.added == new_ids and diff.moved == [] and diff.removed == []
    con_rows = storage.query(data_dir, "select count(distinct assignment_id) as n from sid_versions where dataset = 'demo'")
    assert int(con_rows["n"].iloc[0]) == 2  # the DuckDB view answers version questions too


def test_failing_blocking_check_stops_training_and_recommender_refuses_other_tokenizer(data_dir):
    folder = data_dir / "incoming" / "demo"  # full mode: new items (no interactions, no tags) join the catalog
    folder.mkdir(parents=True)
    (folder / "a.jsonl").write_text("".join(json.dumps({"item_id": f"NEW{i}", "title": f"Shampoo {i}"}) + "\n" for i in range(3)))
    _run(data_dir, ["incoming_items", "catalog_item_embeddings"])
    rec = {"generative_recommender": {"config": REC_CONFIG}}
    failing = {"ops": {"semantic_ids": {"config": {"max_collision_rate": 0.0}}, **rec}}
    result = _run(data_dir, ["semantic_ids", "generative_recommender"], failing, raise_on_error=False)
    checks = {e.check_name: e.passed for e in result.get_asset_check_evaluations()}
    assert checks["collision_rate"] is False
    materialized = {e.asset_key.path[-1] for e in result.get_asset_materialization_events()}
    assert "generative_recommender" not in materialized  # the blocking check stopped training
    assert not storage.model_dir(data_dir, "generative_recommender", "demo").exists()

    _run(data_dir, ["semantic_ids", "generative_recommender"], {"ops": rec})
    assert storage.read_table(data_dir, "semantic_ids", "demo")["item_id"].str.startswith("NEW").sum() == 3
    recs = {"generative_recommendations": {"config": {"beam_size": 10, "top_k": 10, "batch_size": 128}}}
    _run(data_dir, ["generative_recommendations"], {"ops": recs})  # same version: decodes

    x = np.stack(storage.read_table(data_dir, "item_text_embeddings", "demo")["embedding"].to_numpy()).astype(np.float32)
    save_artifact(_tokenizer(1, x), storage.model_dir(data_dir, "sid_tokenizer", "demo"))  # a retrained tokenizer
    with pytest.raises(Exception, match="needs the tokenizer that made the previous assignment"):
        _run(data_dir, ["semantic_ids"], {"ops": {"semantic_ids": {"config": {"mode": "frozen"}}}})
    _run(data_dir, ["semantic_ids"])
    with pytest.raises(VersionMismatchError, match="tokenizer version"):
        _run(data_dir, ["generative_recommendations"], {"ops": recs})
