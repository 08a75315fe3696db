"""Issue 17, LLM cases: prose answers are labelled fallbacks, counted, and fail the stage above a share;
the answer cache is keyed by server too; a hung server fails the stage in bounded time, cache kept."""

import json
import socket
import threading
import time

import pandas as pd
import pytest
from dagster import DagsterInstance, materialize

from semid_pipeline.core import storage
from semid_pipeline.core.enrich.llm import LLMClient, LLMError, LLMParams
from semid_pipeline.core.enrich.tags import FALLBACK_SOURCE, FallbackError, LLMTagClassifier, TagParams, TagPool, tag_items
from semid_pipeline.definitions import all_assets
from semid_pipeline.resources import LLMResource
from semid_pipeline_tests.conftest import tiny_resources
from semid_pipeline_tests.test_enrich_llm import FakeServer, HashEncoder, client_for, completion, enum_of
from semid_pipeline.resources import TextEncoderResource

PROSE = "Well, that depends on what you like. I would not pick just one of those."
PATHS = [["Hair", "Shampoo"], ["Hair", "Conditioner"], ["Skin", "Face"], ["Skin", "Body"], ["Makeup", "Lips"]]


class HashEncoderResource(TextEncoderResource):
    def get(self):
        return HashEncoder()


def _items(n=10):
    return pd.DataFrame({
        "item_idx": range(n), "item_id": [f"i{i}" for i in range(n)], "title": [f"thing {i} for hair and skin" for i in range(n)],
        "brand": None, "category_path": [PATHS[i % len(PATHS)] for i in range(n)], "description": None, "image": None,
        "text": [f"thing {i}" for i in range(n)],
    })


def test_prose_answers_are_labelled_counted_and_fail_above_the_share():
    items, pool = _items(), TagPool.from_paths(PATHS)
    params = TagParams(classifier="llm", top_k=3, tag_path_source="generated")
    with FakeServer(lambda body, n: completion(PROSE)) as server:
        with pytest.raises(FallbackError) as err:
            tag_items(items, pool, HashEncoder(), params, LLMTagClassifier(client_for(server)))
        assert "20 of 20 decisions (100%, 10 items) fell back" in str(err.value)
        assert "max_fallback_share = 0.5" in str(err.value)
        table, stats = tag_items(items, pool, HashEncoder(), params.model_copy(update={"max_fallback_share": 1.0}),
                                 LLMTagClassifier(client_for(server)))
    assert table["tag_source"].tolist() == [FALLBACK_SOURCE] * 10  # not 'llm'
    assert (stats["fallbacks"], stats["decisions"], stats["fallback_share"], stats["items_with_fallback"]) == (20, 20, 1.0, 10)


def test_mixed_answers_label_only_the_items_that_fell_back():
    def responder(body, n):
        prompt = body["messages"][1]["content"]
        return completion(PROSE) if "thing 3 " in prompt else completion(json.dumps({"tag": enum_of(body)[0]}))

    with FakeServer(responder) as server:
        table, stats = tag_items(_items(), TagPool.from_paths(PATHS), HashEncoder(),
                                 TagParams(classifier="llm", top_k=3, tag_path_source="generated"), LLMTagClassifier(client_for(server)))
    assert table["tag_source"].tolist() == ["llm"] * 3 + [FALLBACK_SOURCE] + ["llm"] * 6
    assert stats["items_with_fallback"] == 1 and stats["fallbacks"] == 2


def test_tag_asset_counts_fallbacks_in_metadata_and_fails_keeping_outputs(tmp_path):
    storage.write_table(tmp_path, "items", "demo", _items())
    with FakeServer(lambda body, n: completion(PROSE)) as server:
        resources = {**tiny_resources(tmp_path), "text_encoder": HashEncoderResource(),
                     "llm": LLMResource(base_url=server.url, model="fake", backoff_s=0.01, timeout_s=5, max_retries=1)}
        cfg = {"classifier": "llm", "top_k": 3, "tag_path_source": "generated"}

        def run(extra):
            return materialize(all_assets, selection=["tag_pool", "item_tags"], partition_key="demo", resources=resources, raise_on_error=False,
                               instance=DagsterInstance.ephemeral(), run_config={"ops": {"hierarchical_tags": {"config": {**cfg, **extra}}}})

        ok = run({"max_fallback_share": 1.0})
        assert ok.success
        meta = [m for m in ok.asset_materializations_for_node("hierarchical_tags") if m.asset_key.path[-1] == "item_tags"][0].metadata
        assert meta["tag_source_counts"].value == {FALLBACK_SOURCE: 10}
        assert meta["fallbacks"].value == 20 and meta["fallback_share"].value == 1.0 and meta["items_with_fallback"].value == 10
        before = storage.table_path(tmp_path, "item_tags", "demo").read_bytes()
        failed = run({})
    assert not failed.success
    error = [e for e in failed.all_events if e.is_step_failure][0].step_failure_data.error
    while error.cause is not None and error.cls_name != "FallbackError":
        error = error.cause
    assert error.cls_name == "FallbackError" and "20 of 20 decisions" in error.message
    assert storage.table_path(tmp_path, "item_tags", "demo").read_bytes() == before


def test_cache_key_includes_the_server(tmp_path):
    cache = str(tmp_path / "cache.duckdb")
    with FakeServer(lambda body, n: completion(json.dumps({"tag": enum_of(body)[0]}))) as a, \
            FakeServer(lambda body, n: completion(json.dumps({"tag": enum_of(body)[1]}))) as b:
        with client_for(a, cache_path=cache) as client:
            assert client.choose("which?", ["x", "y"]) == "x"
        with client_for(b, cache_path=cache) as client:  # same model name, same prompt, another server
            assert client.choose("which?", ["x", "y"]) == "y"
        with client_for(a, cache_path=cache) as client:  # the first server's answer is still cached
            assert client.choose("which?", ["x", "y"]) == "x" and client.stats["cache_hits"] == 1
    assert len(a.requests) == 1 and len(b.requests) == 1


class HangingServer:
    """Accepts connections; answers prompts containing 'fast' at once, never answers the others."""

    def __init__(self):
        self.release = threading.Event()
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}/v1"
        self.n_requests = 0
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn):
        with conn:
            data = b""
            while b"\r\n\r\n" not in data:
                chunk = conn.recv(65536)
                if not chunk:
                    return
                data += chunk
            head, body = data.split(b"\r\n\r\n", 1)
            length = int([ln.split(b":")[1] for ln in head.split(b"\r\n") if ln.lower().startswith(b"content-length")][0])
            while len(body) < length:
                body += conn.recv(65536)
            self.n_requests += 1
            request = json.loads(body)
            if "fast" not in request["messages"][1]["content"]:
                self.release.wait(60)  # hold the connection, never answer
                return
            _, payload = completion(json.dumps({"tag": enum_of(request)[0]}))
            out = json.dumps(payload).encode()
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n"
                         + f"Content-Length: {len(out)}\r\n\r\n".encode() + out)

    def close(self):
        self.release.set()
        self.sock.close()


def test_hung_server_fails_within_bounded_time_keeping_cached_answers(tmp_path):
    server = HangingServer()
    timeout_s, retries, workers = 0.5, 2, 4
    cache = str(tmp_path / "cache.duckdb")
    params = LLMParams(base_url=server.url, model="m", timeout_s=timeout_s, max_retries=retries, backoff_s=0.01,
                       max_concurrency=workers, cache_path=cache)
    prompts = [f"fast {i}" for i in range(4)] + [f"slow {i}" for i in range(20)]
    try:
        with LLMClient(params) as client:
            start = time.monotonic()
            with pytest.raises(LLMError, match="after 3 attempts"):
                client.map(prompts, lambda p: client.choose(p, ["a", "b"]))
            elapsed = time.monotonic() - start
            calls = client.stats["calls"]
        # documented bound: (retries + 1) * timeout_s for the first failure, plus one timeout_s in flight;
        # without the circuit breaker a worker picks up the next prompt and runs its full retries too
        assert elapsed < (retries + 1) * timeout_s + timeout_s + 1.0, elapsed
        assert calls <= 4 + workers * (retries + 1)  # the fast ones, then no request after the circuit opened
        with LLMClient(params.model_copy(update={"base_url": server.url})) as again:
            answers = [again.choose(p, ["a", "b"]) for p in prompts[:4]]
            assert answers == ["a"] * 4 and again.stats["cache_hits"] == 4 and again.stats["calls"] == 0
    finally:
        server.close()
