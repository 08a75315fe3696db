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
