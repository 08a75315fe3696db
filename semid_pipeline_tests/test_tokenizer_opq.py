"""kind: opq (RPG's long PQ semantic IDs): PCA whitening, OPQ rotation, PQ digits; determinism, save/reload,
collision handling and the quality report."""

import numpy as np
import pytest
import torch

from semid_pipeline.core.artifacts import load_artifact, save_artifact
from semid_pipeline.core.tokenizers.base import SIDTokenizer, TokenizerParams, train_tokenizer
from semid_pipeline.core.tokenizers.collisions import collision_rate, resolve_collisions
from semid_pipeline.core.tokenizers.opq import OPQParams, fit_opq
from semid_pipeline.core.tokenizers.quality import tokenizer_quality
from semid_pipeline_tests.test_tokenizer_kinds import synthetic

OPQ_SMALL = dict(kind="opq", pq_digits=4, pq_codebook_size=16, pca_dim=16, opq_iters=4, pq_iters=10, probe_epochs=3)


def test_opq_codes_are_nearest_subspace_centroids_and_reconstruct():
    x, _ = synthetic(n=400, dim=24)
    model = fit_opq(x, OPQParams(pq_digits=4, pq_codebook_size=16, pca_dim=16, opq_iters=4, pq_iters=10, seed=3))
    z = model.prepare_input(x)
    assert z.shape == (400, 16)
    # whitened: every principal direction has ~unit variance (the rotation is orthogonal)
    cov = np.cov(z.numpy().T)
    np.testing.assert_allclose(np.trace(cov) / 16, 1.0, rtol=0.05)
    rot = model.rotation
    torch.testing.assert_close(rot @ rot.T, torch.eye(16), atol=1e-4, rtol=0)
    qb = model.quantize(x)
    assert qb.codes.shape == (400, 4) and int(qb.codes.max()) < 16
    for j in range(4):
        sub = z[:, 4 * j : 4 * (j + 1)]
        brute = torch.cdist(sub, model.centroids[j]).argmin(-1)
        assert (brute == qb.codes[:, j]).float().mean() > 0.99
    err = (z - qb.quantized.sum(1)).pow(2).sum(-1).mean()
    assert err < 0.6 * z.pow(2).sum(-1).mean()  # 4 x 16 codes explain a good part of the latent energy
    # codebooks: block placement, sum of codewords = reconstruction
    torch.testing.assert_close(model.codebooks[1, :, 4:8], model.centroids[1])
    assert float(model.codebooks[1, :, :4].abs().sum()) == 0.0


def test_opq_fits_on_a_seeded_sample_and_codes_every_item():
    x, _ = synthetic(n=600, dim=24)
    small = OPQParams(pq_digits=4, pq_codebook_size=16, pca_dim=16, opq_iters=2, pq_iters=10, seed=3, opq_max_train_items=200)
    a, b = fit_opq(x, small), fit_opq(x, small)
    torch.testing.assert_close(a.centroids, b.centroids)  # same seed, same sample
    other = fit_opq(x, small.model_copy(update={"seed": 4}))
    assert not torch.equal(a.pca_a, other.pca_a)  # a different sample
    full = fit_opq(x, small.model_copy(update={"opq_max_train_items": None}))
    assert not torch.equal(a.pca_a, full.pca_a)
    codes = a.quantize(x).codes
    assert codes.shape == (600, 4)
    # fitted on a third of the items, it still reconstructs the rest nearly as well as fitting on all
    z = a.prepare_input(x)
    err = (z - a.quantize(x).quantized.sum(1)).pow(2).sum(-1).mean() / z.pow(2).sum(-1).mean()
    z_full = full.prepare_input(x)
    err_full = (z_full - full.quantize(x).quantized.sum(1)).pow(2).sum(-1).mean() / z_full.pow(2).sum(-1).mean()
    assert err < 1.25 * err_full


def test_tag_probe_on_a_seeded_item_sample():
    x, paths = synthetic(n=400, dim=24)
    full = train_tokenizer(x, TokenizerParams(**OPQ_SMALL), paths).tokenizer
    messages = []
    sampled = train_tokenizer(x, TokenizerParams(**OPQ_SMALL, probe_max_items=150), paths, progress=messages.append).tokenizer
    assert any("150 of 400 items" in m for m in messages)
    np.testing.assert_array_equal(sampled.encode(x).numpy(), full.encode(x).numpy())  # the SIDs do not depend on the probe
    q = sampled.encode_full(x).quantized
    assert sampled.heads_source == "probe" and sampled.predict_tags(q).shape[0] == 400  # heads still predict every item


def test_opq_rejects_bad_shapes():
    x, _ = synthetic(n=300, dim=24)
    with pytest.raises(ValueError, match="multiple of pq_digits"):
        fit_opq(x, OPQParams(pq_digits=5, pq_codebook_size=16, pca_dim=16))
    with pytest.raises(ValueError, match="exceeds the embedding dimension"):
        fit_opq(x, OPQParams(pq_digits=4, pq_codebook_size=16, pca_dim=32))
    with pytest.raises(ValueError, match="power of two"):
        fit_opq(x, OPQParams(pq_digits=4, pq_codebook_size=12, pca_dim=16))
    with pytest.raises(ValueError, match="need kind 'rqvae'"):
        train_tokenizer(x, TokenizerParams(uniqueness=True, **OPQ_SMALL))


def test_opq_tokenizer_deterministic_save_reload_collisions_and_quality(tmp_path):
    x, paths = synthetic(n=400, dim=24)
    x = np.concatenate([x, x[:5]])  # 5 exact duplicates: collisions the resolver must handle
    paths = paths + paths[:5]
    params = TokenizerParams(**OPQ_SMALL)
    tok = train_tokenizer(x, params, paths).tokenizer
    assert tok.kind == "opq" and tok.n_levels == 4 and tok.codebook_size == 16
    enc = tok.encode_full(x)
    np.testing.assert_array_equal(enc.codes, tok.encode(x).numpy())
    assert enc.last_distances.shape == (405, 16)
    again = train_tokenizer(x, params, paths).tokenizer
    np.testing.assert_array_equal(again.encode(x).numpy(), enc.codes)
    save_artifact(tok, tmp_path / "tok")
    loaded = load_artifact(tmp_path / "tok")
    assert isinstance(loaded, SIDTokenizer) and loaded.kind == "opq"
    np.testing.assert_array_equal(loaded.encode_full(x).codes, enc.codes)
    assert collision_rate(enc.codes) > 0  # the duplicates collide ...
    for strategy in ("append_token", "sinkhorn"):
        sids, _ = resolve_collisions(enc.codes, enc.last_distances, strategy, seed=0)
        assert collision_rate(sids) == 0  # ... and are resolved
    other = train_tokenizer(x, TokenizerParams(**{**OPQ_SMALL, "seed": 7}), paths).tokenizer
    assert not np.array_equal(other.encode(x).numpy(), enc.codes)  # the seed matters
    res = train_tokenizer(x, params, paths)
    report = tokenizer_quality(res.tokenizer, x, res.vocab, res.heldout, [f"i{k}" for k in range(len(x))])
    s = report.summary
    assert s["tokenizer_kind"] == "opq" and s["n_levels"] == 4 and s["codebook_size"] == 16
    assert s["collision_rate_before"] > 0 and s["collision_rate_after"] == 0
    assert 0 < s["recon_error"] < float(tok.encode_full(x).latents.__pow__(2).sum(1).mean())
    assert list(report.levels["used_codes"]) == [len(np.unique(enc.codes[:, j])) for j in range(4)]
    assert len(report.usage) == 4


@pytest.mark.parametrize("kind", ["rqvae", "rqkmeans"])
def test_hybrid_rq_levels_then_pq_digits_of_the_residual(tmp_path, kind):
    """residual_pq_digits: the quantizer's tag-bearing levels followed by PQ digits of its residual."""
    from semid_pipeline.core.tokenizers.assign import encode_catalog
    from semid_pipeline_tests.test_tokenizer_kinds import SMALL

    x, paths = synthetic(n=400, dim=24)
    params = TokenizerParams(kind=kind, n_levels=2, residual_pq_digits=4, pq_codebook_size=16, pca_dim=16, opq_iters=3,
                             pq_iters=8, tag_prediction=kind == "rqvae", **{**SMALL, "codebook_size": 16})
    tok = train_tokenizer(x, params, paths).tokenizer
    assert tok.n_levels == 6 and tok.residual_pq.n_levels == 4
    enc = tok.encode_full(x)
    assert enc.codes.shape == (400, 6) and int(enc.codes.max()) < 16
    base = tok.encode_full(x, with_residual_pq=False)
    np.testing.assert_array_equal(enc.codes[:, :2], base.codes)  # the tag-bearing levels are unchanged
    np.testing.assert_array_equal(tok.encode(x).numpy(), enc.codes)
    assert collision_rate(enc.codes) < collision_rate(base.codes)  # the PQ tail separates items
    codes, last = encode_catalog(tok, x)  # the semantic_ids path (Sinkhorn distances of the last PQ digit)
    np.testing.assert_array_equal(codes, enc.codes)
    np.testing.assert_allclose(last, enc.last_distances, rtol=1e-5, atol=1e-5)
    assert all(p.count(" > ") == 1 for p in tok.decode_paths(enc.codes[:5]))  # still decodes to a (2-level) tag path
    save_artifact(tok, tmp_path / "tok")
    loaded = load_artifact(tmp_path / "tok")
    np.testing.assert_array_equal(loaded.encode_full(x).codes, enc.codes)
    with pytest.raises(ValueError, match="residual_pq_digits needs kind"):
        train_tokenizer(x, TokenizerParams(residual_pq_digits=2, **OPQ_SMALL))


def test_opq_through_the_tokenizer_assets(tmp_path):
    """sid_tokenizer kind: opq -> semantic_ids (Sinkhorn: unique m-digit SIDs, no extra token) -> tokenizer_quality."""
    import pandas as pd
    from dagster import DagsterInstance, materialize

    from semid_pipeline.core import storage
    from semid_pipeline.definitions import all_assets
    from semid_pipeline_tests.conftest import tiny_resources, write_collaborative_placeholder

    x, paths = synthetic(n=400, dim=24)
    n = len(x)
    ids = [f"i{i:03d}" for i in range(n)]
    emb = pd.DataFrame({"item_idx": np.arange(n), "item_id": ids, "embedding": list(x)})
    storage.write_table(tmp_path, "item_text_embeddings", "demo", emb)
    storage.write_table(tmp_path, "catalog_item_embeddings", "demo", emb.assign(origin="prepared"))
    write_collaborative_placeholder(tmp_path, "demo", emb)
    storage.write_table(tmp_path, "item_tags", "demo", pd.DataFrame({
        "item_idx": np.arange(n), "item_id": ids, "tag_path": paths, "generated_path": paths, "true_path": paths,
        "candidates": [[["x"]]] * n, "scores": [[1.0]] * n, "tag_source": "true",
    }))
    config = {"ops": {
        "sid_tokenizer": {"config": {"kind": "opq", "pq_digits": 4, "pq_codebook_size": 16, "pca_dim": 16, "opq_iters": 3,
                                     "pq_iters": 8, "probe_epochs": 2}},
        "semantic_ids": {"config": {"collision_strategy": "sinkhorn"}},
    }}
    result = materialize(all_assets, selection=["sid_tokenizer", "semantic_ids", "tokenizer_quality", "tokenizer_sample_paths"], partition_key="demo",
                         resources=tiny_resources(tmp_path), run_config=config, instance=DagsterInstance.ephemeral())
    assert result.success
    sem = storage.read_table(tmp_path, "semantic_ids", "demo")
    sids = np.stack(sem["sid"].to_numpy())
    assert sids.shape == (n, 4) and len({tuple(r) for r in sids.tolist()}) == n
    assert sem["tokenizer_version"].iloc[0].startswith("tok-")
    quality = storage.read_table(tmp_path, "tokenizer_quality", "demo")
    assert {"collision_rate_before", "recon_error"} <= set(quality["metric"])


def test_opq_on_fewer_items_than_the_rq_codebook_size():
    # kind opq has no RQ codebook: its limit is pq_codebook_size (a 240-item catalogue with 64 codes per digit is fine)
    from semid_pipeline.core.params import LimitError

    x = np.random.default_rng(0).normal(size=(240, 16)).astype(np.float32)
    result = train_tokenizer(x, TokenizerParams(kind="opq", pq_digits=4, pq_codebook_size=64, pca_dim=16))
    assert result.tokenizer.encode(torch.from_numpy(x)).shape == (240, 4)
    with pytest.raises(LimitError, match="pq_codebook_size = 256 exceeds the number of items"):
        train_tokenizer(x, TokenizerParams(kind="opq", pq_digits=4, pq_codebook_size=256, pca_dim=16))
