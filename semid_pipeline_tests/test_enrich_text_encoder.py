"""TextEncoder: the bundled MiniLM, offline, order kept, one model per process."""

import os

import numpy as np
import pytest

from semid_pipeline.core.enrich.text_encoder import TextEncoder, TextEncoderParams


@pytest.fixture(scope="module")
def encoder() -> TextEncoder:
    return TextEncoder(TextEncoderParams(device="cpu", batch_size=4))


def test_encode_shape_norm_and_order(encoder):
    texts = ["a much longer sentence about moisturising face cream for dry skin", "shampoo", "", "red lipstick"]
    emb = encoder.encode(texts)
    assert emb.dtype == np.float32 and emb.shape == (4, encoder.dim) and encoder.dim == 384
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    one_by_one = np.stack([encoder.encode([t])[0] for t in texts])
    np.testing.assert_allclose(emb, one_by_one, atol=1e-5)  # length sorting is undone
    assert os.environ.get("HF_HUB_OFFLINE") and os.environ.get("TRANSFORMERS_OFFLINE")


def test_empty_input_and_shared_model(encoder):
    assert encoder.encode([]).shape == (0, 384)
    assert TextEncoder(TextEncoderParams(device="cpu")).model is encoder.model
    with pytest.raises(TypeError, match=r"texts\[1\]"):
        encoder.encode(["ok", None])


def test_unnormalised_option(encoder):
    raw = TextEncoder(TextEncoderParams(device="cpu", normalize=False)).encode(["conditioner for curly hair"])
    unit = encoder.encode(["conditioner for curly hair"])
    np.testing.assert_allclose(raw / np.linalg.norm(raw), unit, atol=1e-5)


def test_text_encoder_settings_come_from_the_environment_and_refuse_unknown_keys(monkeypatch):
    from semid_pipeline.definitions import text_encoder_settings

    monkeypatch.setenv("SEMID_TEXT_ENCODER_OPTIONS", '{"batch_size": 7}')
    monkeypatch.delenv("SEMID_TEXT_ENCODER", raising=False)
    assert text_encoder_settings() == {"model": "default", "batch_size": 7}
    monkeypatch.setenv("SEMID_TEXT_ENCODER_OPTIONS", '{"batch_sise": 7}')
    with pytest.raises(ValueError, match="(?s)SEMID_TEXT_ENCODER_OPTIONS.*batch_sise"):
        text_encoder_settings()
    monkeypatch.setenv("SEMID_TEXT_ENCODER_OPTIONS", "[1]")
    with pytest.raises(ValueError, match="JSON object"):
        text_encoder_settings()


# -- the static (distilled bag-of-tokens) kind -------------------------------------------------------


@pytest.fixture(scope="module")
def static(tmp_path_factory) -> TextEncoder:
    return TextEncoder(TextEncoderParams(device="cpu", kind="static", static_cache_dir=str(tmp_path_factory.mktemp("static"))))


def test_static_encoder_is_unit_norm_deterministic_and_semantic(static, encoder):
    texts = ["matte red lipstick", "red lipstick with a matte finish", "garden hose 50 ft", "matte red lipstick"]
    emb = static.encode(texts)
    assert emb.shape == (4, 384) and emb.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(emb[0], emb[3])
    assert static.last_stats["distinct_texts"] == 3 and static.last_stats["texts"] == 4
    assert emb[0] @ emb[1] > emb[0] @ emb[2] + 0.2
    # its neighbours agree with the transformer it was distilled from on an easy case
    full = encoder.encode(texts)
    assert (full[0] @ full[1] > full[0] @ full[2]) and (emb[0] @ emb[1] > emb[0] @ emb[2])
    np.testing.assert_array_equal(static.encode(texts[:2]), emb[:2])  # independent of what else is embedded


def test_static_encoder_counts_texts_without_tokens_and_caches_its_table(static, monkeypatch):
    emb = static.encode(["", "shampoo"])
    assert static.last_stats["texts_without_known_tokens"] == 1
    assert not emb[0].any() and abs(np.linalg.norm(emb[1]) - 1) < 1e-5
    cache_file = static.last_stats["table_file"]
    import json
    from pathlib import Path

    from semid_pipeline.core.enrich import static_encoder

    meta = json.loads(Path(cache_file).with_suffix(".json").read_text())
    assert meta["tokens"] > 20_000 and meta["dim"] == 384
    # a new process finds the cached table and never loads the transformer
    monkeypatch.setattr(static_encoder, "_TABLES", {})
    again = TextEncoder(TextEncoderParams(device="cpu", kind="static", static_cache_dir=static.params.static_cache_dir))
    monkeypatch.setattr(TextEncoder, "model", property(lambda self: (_ for _ in ()).throw(AssertionError("model loaded"))))
    np.testing.assert_array_equal(again.encode(["", "shampoo"]), emb)
    assert again.last_stats["table_cache"] == "hit"


def test_dedupe_keeps_the_order_for_the_transformer_too(encoder):
    emb = encoder.encode(["b", "a", "b"])
    np.testing.assert_array_equal(emb[0], emb[2])
    assert encoder.last_stats["distinct_texts"] == 2
    with pytest.raises(ValueError, match="kind"):
        TextEncoderParams(kind="bag")
