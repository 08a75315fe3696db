"""Issue 17, class 2 (values that cannot make sense for the data): top_k above the catalog, an absurd
beam_size, a negative top_k, a codebook larger than the items fail before any work, naming the value
and the limit, and the previous recommendations stay byte-identical."""

import numpy as np
import pytest
import torch
from dagster import DagsterInstance, materialize

from semid_pipeline.core import storage
from semid_pipeline.core.artifacts import save_artifact
from semid_pipeline.core.params import LimitError
from semid_pipeline.core.recommender.model import GenerativeRecommender, RecommenderParams
from semid_pipeline.core.recommender.vocab import SIDVocab
from semid_pipeline.core.tokenizers.base import TokenizerParams, train_tokenizer
from semid_pipeline.definitions import all_assets
from semid_pipeline_tests.conftest import tiny_resources
from semid_pipeline_tests.test_recommender_assets import write_inputs

N_ITEMS = 60  # write_inputs: 6 chains of 10 items


@pytest.fixture()
def data_dir(tmp_path):
    sids, _ = write_inputs(tmp_path)
    torch.manual_seed(0)
    params = RecommenderParams(d_model=16, n_encoder_layers=1, n_decoder_layers=1, n_heads=2, d_head=8, d_ff=32,
                               n_user_buckets=4, max_history_items=5)
    model = GenerativeRecommender(params, SIDVocab.from_sids(np.asarray(sids), 4))
    save_artifact(model, storage.model_dir(tmp_path, "generative_recommender", "demo"), extra={"tokenizer_version": None})
    return tmp_path


def _run(data_dir, selection, config):
    return materialize(all_assets, selection=selection, partition_key="demo", resources=tiny_resources(data_dir),
                       run_config={"ops": config}, instance=DagsterInstance.ephemeral(), raise_on_error=False)


@pytest.mark.parametrize(
    "asset, config, message",
    [
        ("generative_recommendations", {"beam_size": 10, "top_k": 5000}, "top_k = 5000 exceeds the catalog size (items that can be recommended), 60; set top_k <= 60"),
        ("generative_recommendations", {"beam_size": 100000, "top_k": 10}, "beam_size = 100000 exceeds the catalog size (the search is exact with one beam per item), 60; set beam_size <= 60"),
        ("generative_recommendations", {"beam_size": 10, "top_k": -3}, "top_k = -3 is below its minimum 1; set top_k >= 1"),
        ("generative_recommendations", {"beam_size": 5, "top_k": 10}, "beam_size = 5 is below its minimum 10 (beam search keeps at least top_k beams)"),
        ("popularity_recommendations", {"top_k": 5000}, "top_k = 5000 exceeds the catalog size (items that can be recommended), 60"),
        ("popularity_recommendations", {"top_k": -3}, "top_k = -3 is below its minimum 1"),
    ],
)
def test_limits_fail_before_work_and_keep_previous_recommendations(data_dir, asset, config, message):
    good = {"generative_recommendations": {"beam_size": 10, "top_k": 10, "batch_size": 64}, "popularity_recommendations": {"top_k": 10}}
    assert _run(data_dir, [asset], {asset: {"config": good[asset]}}).success
    path = storage.table_path(data_dir, asset, "demo")
    before = path.read_bytes()
    result = _run(data_dir, [asset], {asset: {"config": config}})
    assert not result.success
    failure = [e for e in result.all_events if e.is_step_failure][0]
    error = failure.step_failure_data.error
    while error.cause is not None and "LimitError" not in error.cls_name:
        error = error.cause
    assert error.cls_name == "LimitError" and message in error.message, error.message
    assert path.read_bytes() == before


def test_codebook_larger_than_the_items_fails_before_training():
    x = np.random.default_rng(0).normal(size=(200, 8)).astype(np.float32)
    with pytest.raises(LimitError, match=r"codebook_size = 100000 exceeds the number of items to tokenize .*, 200; set codebook_size <= 200"):
        train_tokenizer(x, TokenizerParams(codebook_size=100000, hidden_dims=[8], latent_dim=4, epochs=1))
    with pytest.raises(LimitError, match="codebook_size = 256 exceeds"):
        train_tokenizer(x, TokenizerParams(kind="rqkmeans", codebook_size=256))
