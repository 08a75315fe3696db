"""LLM client, LLM tag classifier and captions against a fake OpenAI-compatible server on 127.0.0.1."""

from __future__ import annotations

import base64
import json
import re
import struct
import threading
import time
import zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable

import numpy as np
import pandas as pd
import pytest

from semid_pipeline.core.enrich.captions import CaptionParams, caption_items
from semid_pipeline.core.enrich.llm import LLMClient, LLMError, LLMParams, parse_answer, choice_model
from semid_pipeline.core.enrich.tags import LLMTagClassifier, TagParams, TagPool, generate_tags

Reply = tuple[int, Any]  # (HTTP status, JSON body or raw text)


def completion(content: str) -> Reply:
    return 200, {
        "id": "chatcmpl-test",
        "object": "chat.completion",
        "created": 0,
        "model": "fake",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 11, "completion_tokens": 3, "total_tokens": 14},
    }


def enum_of(body: dict) -> list[str]:
    return body["response_format"]["json_schema"]["schema"]["properties"]["tag"]["enum"]


class FakeServer:
    """Serves POST /v1/chat/completions with ``responder(body, n)`` (n = 0-based request number) and
    GET /files/<name> from ``files``; records every chat request and its Authorization header."""

    def __init__(self, responder: Callable[[dict, int], Reply], files: dict[str, bytes] | None = None):
        self.responder = responder
        self.files = files or {}
        self.requests: list[dict] = []
        self.auth: list[str] = []
        self._lock = threading.Lock()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def _send(self, status: int, payload: Any, ctype: str = "application/json") -> None:
                data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:
                name = self.path.rsplit("/", 1)[-1]
                if name in fake.files:
                    self._send(200, fake.files[name], "application/octet-stream")
                else:
                    self._send(404, {"error": "not found"})

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with fake._lock:
                    n = len(fake.requests)
                    fake.requests.append(body)
                    fake.auth.append(self.headers.get("Authorization", ""))
                status, payload = fake.responder(body, n)
                self._send(status, payload)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.url = f"{self.base}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> "FakeServer":
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def client_for(server: FakeServer, **kw: Any) -> LLMClient:
    params = dict(base_url=server.url, model="fake", backoff_s=0.01, timeout_s=5, max_retries=2)
    params.update(kw)
    return LLMClient(LLMParams(**params))


CANDS = ["Shampoo", "Conditioner", "Hair Spray"]


# -- client ----------------------------------------------------------------------------------------


def test_structured_choice():
    with FakeServer(lambda body, n: completion(json.dumps({"tag": enum_of(body)[1]}))) as server:
        client = client_for(server)
        assert client.choose("which tag?", CANDS) == "Conditioner"
        rf = server.requests[0]["response_format"]
        assert rf["type"] == "json_schema" and rf["json_schema"]["strict"] is True
        assert rf["json_schema"]["schema"]["additionalProperties"] is False
        assert enum_of(server.requests[0]) == CANDS and server.requests[0]["temperature"] == 0.0
        assert client.choose("one option", ["Only"]) == "Only"  # nothing to choose: no call
        s = client.stats
        assert (s["calls"], s["retries"], s["prompt_tokens"], s["completion_tokens"]) == (1, 0, 11, 3)


def test_out_of_candidates_retried_then_none():
    with FakeServer(lambda body, n: completion('{"tag": "Banana"}')) as server:
        client = client_for(server)
        assert client.choose("which tag?", CANDS) is None
        assert client.stats["invalid_answers"] == 2 and client.stats["calls"] == 2
        second = server.requests[1]["messages"]
        assert second[-2] == {"role": "assistant", "content": '{"tag": "Banana"}'}
        assert "not valid" in second[-1]["content"] and "Shampoo" in second[-1]["content"]


def test_plain_text_answers_are_parsed():
    model = choice_model(CANDS)
    assert parse_answer("Conditioner", model).tag == "Conditioner"
    assert parse_answer('Sure!\n```json\n{"tag": "Hair Spray"}\n```', model).tag == "Hair Spray"
    assert parse_answer('"Shampoo"', model).tag == "Shampoo"
    with pytest.raises(ValueError):
        parse_answer("Banana", model)
    replies = iter(["I pick: Conditioner", "Shampoo"])
    with FakeServer(lambda body, n: completion(next(replies))) as server:
        client = client_for(server, structured_output=False)
        assert client.choose("which tag?", CANDS) == "Shampoo"  # first reply invalid, corrected
        assert "response_format" not in server.requests[0]


def test_server_error_then_success_is_retried():
    def responder(body: dict, n: int) -> Reply:
        if n == 0:
            return 500, {"error": {"message": "boom"}}
        if n == 1:
            return 429, {"error": {"message": "slow down"}}
        return completion('{"tag": "Shampoo"}')

    with FakeServer(responder) as server:
        client = client_for(server)
        assert client.choose("which tag?", CANDS) == "Shampoo"
        assert client.stats["retries"] == 2 and client.stats["calls"] == 3


def test_client_error_is_not_retried_and_dead_server_raises():
    with FakeServer(lambda body, n: (400, {"error": {"message": "bad request"}})) as server:
        client = client_for(server)
        with pytest.raises(LLMError, match="HTTP 400"):
            client.choose("which tag?", CANDS)
        assert client.stats["calls"] == 1 and client.stats["retries"] == 0
    with FakeServer(lambda body, n: (503, {"error": {"message": "down"}})) as server:
        client = client_for(server, max_retries=1)
        with pytest.raises(LLMError, match="after 2 attempts"):
            client.choose("which tag?", CANDS)


def test_timeout_is_retried():
    def responder(body: dict, n: int) -> Reply:
        if n == 0:
            time.sleep(1.0)
        return completion('{"tag": "Hair Spray"}')

    with FakeServer(responder) as server:
        client = client_for(server, timeout_s=0.3)
        assert client.choose("which tag?", CANDS) == "Hair Spray"
        assert client.stats["retries"] == 1


def test_cache_second_run_makes_no_calls(tmp_path):
    cache = str(tmp_path / "cache" / "llm.duckdb")
    prompts = [f"item {i}: which tag?" for i in range(5)]
    with FakeServer(lambda body, n: completion(json.dumps({"tag": enum_of(body)[n % 3]}))) as server:
        with client_for(server, cache_path=cache, max_concurrency=3) as first:
            answers = first.map(prompts, lambda p: first.choose(p, CANDS))
        assert len(server.requests) == 5 and first.stats["cache_hits"] == 0
        with client_for(server, cache_path=cache) as second:
            assert second.map(prompts, lambda p: second.choose(p, CANDS)) == answers
            assert second.stats["calls"] == 0 and second.stats["cache_hits"] == 5
        assert len(server.requests) == 5
        with client_for(server, cache_path=cache, model="other") as third:  # the model is part of the key
            third.choose(prompts[0], CANDS)
            assert third.stats["calls"] == 1


def test_map_keeps_order_and_propagates_errors():
    with FakeServer(lambda body, n: completion("{}")) as server:
        client = client_for(server, max_concurrency=4)
        assert client.map(list(range(20)), lambda x: x * x) == [x * x for x in range(20)]

        def boom(x: int) -> int:
            if x == 3:
                raise RuntimeError("item 3 failed")
            return x

        with pytest.raises(RuntimeError, match="item 3"):
            client.map(list(range(10)), boom)


def test_api_key_never_in_stats_or_repr(monkeypatch):
    secret = "sk-very-secret-123"
    monkeypatch.setenv("SEMID_TEST_KEY", secret)
    with FakeServer(lambda body, n: completion('{"tag": "Shampoo"}')) as server:
        client = client_for(server, api_key_env="SEMID_TEST_KEY")
        client.choose("which tag?", CANDS)
        assert server.auth == [f"Bearer {secret}"]
        for text in (repr(client), str(client), json.dumps(client.stats), client.params.model_dump_json()):
            assert secret not in text
    monkeypatch.delenv("SEMID_TEST_KEY")
    with pytest.raises(ValueError, match="SEMID_TEST_KEY is not set"):
        LLMClient(LLMParams(base_url="https://api.example.com/v1", api_key_env="SEMID_TEST_KEY"))
    with LLMClient(LLMParams(api_key_env="SEMID_TEST_KEY")) as local:  # loopback: a dummy key is fine
        assert local.stats["calls"] == 0


# -- LLM tag classifier ----------------------------------------------------------------------------


class HashEncoder:
    """Bag of words hashed into 1024 dims: deterministic, instant, enough to rank toy tags."""

    dim = 1024

    def encode(self, texts: list[str], progress: Any = None) -> np.ndarray:
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for i, text in enumerate(texts):
            for word in re.findall(r"[a-z]+", text.lower()):
                out[i, zlib.crc32(word.encode()) % self.dim] += 1.0
        return out + 1e-3


def test_llm_classifier_in_generate_tags():
    pool = TagPool.from_paths([["Hair", "Shampoo"], ["Hair", "Conditioner"], ["Skin", "Face"], ["Skin", "Body"]])

    def responder(body: dict, n: int) -> Reply:
        if "weird" in body["messages"][1]["content"]:  # the original prompt, also in correction turns
            return completion('{"tag": "Not a candidate"}')
        return completion(json.dumps({"tag": enum_of(body)[-1]}))  # always the last-ranked candidate

    texts = ["hair shampoo", "weird hair item"]
    with FakeServer(responder) as server:
        client = client_for(server)
        params = TagParams(classifier="llm", top_k=2)
        frame, stats = generate_tags(texts, pool, HashEncoder(), params, LLMTagClassifier(client))
    prompts = [r["messages"][1]["content"] for r in server.requests]
    first = 'Given the item description: "hair shampoo", and the previous hierarchical tags: none, please select'
    assert any(p.startswith(first) for p in prompts[:2])
    # level-2 prompts carry the level-1 tag chosen for that item
    assert any('"hair shampoo", and the previous hierarchical tags: ["Skin"]' in p for p in prompts)
    assert any('"weird hair item", and the previous hierarchical tags: ["Hair"]' in p for p in prompts)
    assert frame["generated_path"][0] == ["Skin", frame["generated_path"][0][1]]  # LLM overrode retrieval
    assert frame["generated_path"][1][0] == "Hair"  # invalid twice -> top retrieved candidate
    assert stats["fallbacks"] == 2 and stats["llm_calls"] == len(server.requests) and stats["cache_hits"] == 0


# -- captions --------------------------------------------------------------------------------------


def tiny_png() -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", 2, 2, 8, 2, 0, 0, 0)  # 2x2 RGB
    pixels = zlib.compress(b"\x00\xff\x00\x00\x00\xff\x00" * 2)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", pixels) + chunk(b"IEND", b"")


def caption_frame(tmp_path, server: FakeServer) -> pd.DataFrame:
    good = tmp_path / "good.png"
    good.write_bytes(tiny_png())
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(tiny_png()[:40])
    text = tmp_path / "notes.txt"
    text.write_text("not an image")
    images = [None, "", str(good), str(corrupt), str(text), str(tmp_path / "missing.jpg"),
              f"{server.base}/files/remote.png", f"{server.base}/files/absent.png"]
    return pd.DataFrame(
        {"item_idx": range(len(images)), "item_id": [f"i{i}" for i in range(len(images))],
         "title": [f"Product {i}" for i in range(len(images))], "image": images}
    )


def test_captions_statuses(tmp_path):
    def responder(body: dict, n: int) -> Reply:
        return completion(f"  A green product photo number {n}.  ")

    with FakeServer(responder, files={"remote.png": tiny_png()}) as server:
        items = caption_frame(tmp_path, server)
        skipped, stats0 = caption_items(items)
        assert skipped["status"].tolist() == ["no_image", "no_image"] + ["skipped_backend_none"] * 6
        assert stats0["llm_calls"] == 0 and not server.requests

        params = CaptionParams(backend="openai", image_cache_dir=str(tmp_path / "images"), timeout_s=5)
        client = client_for(server, cache_path=str(tmp_path / "llm.duckdb"))
        frame, stats = caption_items(items, params, client)
        assert frame["status"].tolist() == [
            "no_image", "no_image", "ok", "image_error", "image_error", "image_error", "ok", "image_error"
        ]
        assert frame["caption"][2].startswith("A green product photo") and frame["caption"][3] is None
        assert "does not decode" in frame["detail"][3] and "not a JPEG" in frame["detail"][4]
        assert "404" in frame["detail"][7]
        assert stats["ok"] == 2 and stats["image_error"] == 4 and stats["images_downloaded"] == 1
        assert len(server.requests) == 2
        content = server.requests[0]["messages"][0]["content"]
        image_part = next(part for part in content if part["type"] == "image_url")
        url = image_part["image_url"]["url"]
        assert url.startswith("data:image/png;base64,") and base64.b64decode(url.split(",", 1)[1]) == tiny_png()
        assert content[0]["text"].startswith("Product title: Product")

        again, stats2 = caption_items(items, params, client)  # image cache + answer cache: no work
        assert again["caption"].tolist() == frame["caption"].tolist()
        assert stats2["image_cache_hits"] == 1 and stats2["llm_calls"] == 0 and stats2["cache_hits"] == 2
        client.close()


def test_caption_model_error_is_recorded(tmp_path):
    good = tmp_path / "good.png"
    good.write_bytes(tiny_png())
    items = pd.DataFrame({"item_idx": [0, 1], "item_id": ["a", "b"],
         "title": ["A", "B"], "image": [str(good)] * 2})

    def responder(body: dict, n: int) -> Reply:
        if "Product title: A" in body["messages"][0]["content"][0]["text"]:
            return 400, {"error": {"message": "image too small"}}
        return completion("")

    with FakeServer(responder) as server:
        frame, stats = caption_items(items, CaptionParams(backend="openai"), client_for(server))
    assert frame["status"].tolist() == ["model_error", "model_error"]
    assert "HTTP 400" in frame["detail"][0] and frame["detail"][1] == "empty caption"
    with pytest.raises(ValueError, match="needs an LLMClient"):
        caption_items(items, CaptionParams(backend="openai"))


def test_json_object_dialect_fallback():
    """A server that rejects response_format type json_schema (llama-cpp-python's) is re-asked with
    {type: json_object, schema} once, and spoken to in that dialect from then on."""

    def responder(body: dict, n: int) -> Reply:
        fmt = body.get("response_format", {})
        if fmt.get("type") != "json_object":
            return 422, {"detail": [{"loc": ["body", "response_format", "type"], "msg": "Input should be 'text' or 'json_object'"}]}
        return completion(json.dumps({"tag": fmt["schema"]["properties"]["tag"]["enum"][2]}))

    with FakeServer(responder) as server:
        client = client_for(server, max_retries=0)
        assert client.choose("which tag?", CANDS) == "Hair Spray"
        assert client.choose("another?", CANDS) == "Hair Spray"
        assert [r["response_format"]["type"] for r in server.requests] == ["json_schema", "json_object", "json_object"]
        assert client.stats["retries"] == 1
        strict = client_for(server, max_retries=0, response_format_style="json_schema")
        with pytest.raises(LLMError, match="HTTP 422"):
            strict.choose("which tag?", CANDS)
