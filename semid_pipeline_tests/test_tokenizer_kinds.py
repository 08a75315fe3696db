"""RQ-KMeans, the SIDTokenizer artifact (save/reload, determinism), supervised training and quality report."""

import numpy as np
import pytest
import torch

from semid_pipeline.core.artifacts import load_artifact, save_artifact
from semid_pipeline.core.tokenizers.base import SIDTokenizer, TokenizerParams, tag_labels_for, train_tokenizer
from semid_pipeline.core.tokenizers.collisions import collision_rate, resolve_collisions
from semid_pipeline.core.tokenizers.quality import tokenizer_quality
from semid_pipeline.core.tokenizers.rqkmeans import RQKMeansParams, fit_rqkmeans


def synthetic(n=300, dim=24, seed=0):
    """Items from a 3-level tag tree (3 x 2 x 2 leaves); the embedding is a noisy sum of level vectors."""
    rng = np.random.default_rng(seed)
    r, c, g = rng.normal(size=(3, dim)), rng.normal(size=(3, 2, dim)), rng.normal(size=(3, 2, 2, dim))
    a, b, d = rng.integers(0, 3, n), rng.integers(0, 2, n), rng.integers(0, 2, n)
    x = 2 * r[a] + c[a, b] + 0.5 * g[a, b, d] + 0.6 * rng.normal(size=(n, dim))
    paths = [[f"root{i}", f"mid{i}{j}", f"leaf{i}{j}{k}"] for i, j, k in zip(a, b, d)]
    return x.astype(np.float32), paths


def fake_text_embed(texts):
    """Deterministic stand-in for the sentence encoder (tests stay offline and fast)."""
    return np.stack([np.random.default_rng(abs(hash(t)) % (2**32)).normal(size=8) for t in texts]).astype(np.float32)


SMALL = dict(hidden_dims=[32], latent_dim=8, codebook_size=16, epochs=8, batch_size=64, probe_epochs=4)


def test_rqkmeans_residuals_and_determinism(tmp_path):
    x, _ = synthetic()
    params = RQKMeansParams(n_levels=3, codebook_size=8, seed=1)
    model = fit_rqkmeans(x, params)
    qb = model.quantize(x)
    xn = torch.nn.functional.normalize(torch.from_numpy(x), dim=-1)
    # residual chain: r_0 = x, r_l = r_{l-1} - c_l, codes are nearest centroids
    torch.testing.assert_close(qb.residuals[:, 0], xn)
    for lv in range(1, 3):
        torch.testing.assert_close(qb.residuals[:, lv], qb.residuals[:, lv - 1] - qb.quantized[:, lv - 1])
    brute = torch.cdist(qb.residuals[:, 2], model.centroids[2]).argmin(-1)
    assert (brute == qb.codes[:, 2]).float().mean() > 0.99  # cdist vs expanded form: float ties only
    again = fit_rqkmeans(x, params)
    np.testing.assert_array_equal(model.encode(x).numpy(), again.encode(x).numpy())
    save_artifact(model, tmp_path / "km")
    np.testing.assert_array_equal(load_artifact(tmp_path / "km").encode(x).numpy(), model.encode(x).numpy())


@pytest.mark.parametrize("kind", ["rqvae", "rqkmeans"])
def test_sid_tokenizer_save_reload_and_retrain_give_identical_sids(tmp_path, kind):
    x, paths = synthetic()
    params = TokenizerParams(kind=kind, tag_prediction=kind == "rqvae", **SMALL)
    res = train_tokenizer(x, params, paths)
    tok = res.tokenizer
    assert tok.heads is not None and tok.heads_source == ("trained+refit" if kind == "rqvae" else "probe")
    enc = tok.encode_full(x)
    np.testing.assert_array_equal(enc.codes, tok.encode(x).numpy())
    sids, _ = resolve_collisions(enc.codes, enc.last_distances, "sinkhorn", seed=0)
    save_artifact(tok, tmp_path / "tok")
    loaded = load_artifact(tmp_path / "tok")
    assert isinstance(loaded, SIDTokenizer)
    enc2 = loaded.encode_full(x)
    np.testing.assert_array_equal(enc.codes, enc2.codes)
    np.testing.assert_array_equal(sids, resolve_collisions(enc2.codes, enc2.last_distances, "sinkhorn", seed=0)[0])
    assert loaded.decode_paths(sids[:10]) == tok.decode_paths(sids[:10])
    assert all(p.count(" > ") == 2 for p in tok.decode_paths(sids[:10]))
    vocab, held = tag_labels_for(loaded, paths)
    np.testing.assert_array_equal(held, res.heldout)
    np.testing.assert_array_equal(vocab.labels, res.vocab.labels)
    if kind == "rqvae":
        again = train_tokenizer(x, params, paths).tokenizer
        np.testing.assert_array_equal(again.encode(x).numpy(), enc.codes)


def test_uniqueness_loss_with_collision_batches_reduces_collisions():
    """HiD-VAE eq. 7 pushes apart the latents of items whose SIDs collide; batching colliding items
    together (collision_batches) lets it see the pairs. A strong setting makes the effect clear on
    a tiny set (the paper's m=0.9, beta=2 moves Beauty's rate, measured in benchmarks/)."""
    x, paths = synthetic(n=400)
    common = dict(hidden_dims=[32], latent_dim=16, codebook_size=16, epochs=25, batch_size=100, probe_epochs=1, seed=0)
    plain = train_tokenizer(x, TokenizerParams(**common), paths).tokenizer
    uniq = train_tokenizer(
        x, TokenizerParams(uniqueness=True, collision_batches=True, margin=0.0, beta_unique=10.0, **common), paths
    ).tokenizer
    c_plain = collision_rate(plain.encode(x).numpy())
    c_uniq = collision_rate(uniq.encode(x).numpy())
    assert c_uniq < c_plain - 0.05, (c_plain, c_uniq)


def test_catid2_training_runs_and_quality_report_is_complete():
    x, paths = synthetic(n=200)
    res = train_tokenizer(x, TokenizerParams(hcc=True, csc=True, dispersion=True, **SMALL), paths)
    hist = res.history[-1]
    assert hist["hcc"] > 0 and hist["csc"] >= 0 and hist["dispersion"] > 0
    q = tokenizer_quality(res.tokenizer, x, res.vocab, res.heldout, [f"i{i}" for i in range(len(x))], strategy="sinkhorn", n_samples=5, n_projection=50)
    s = q.summary
    assert s["collision_rate_after"] == 0.0 and s["sid_length"] == 3
    assert 0.0 <= s["tag_accuracy_l1"] <= 1.0 and s["recon_error"] > 0
    assert len(q.levels) == 3 and {"utilisation", "perplexity", "tag_accuracy"} <= set(q.levels.columns)
    assert len(q.sample_paths) == 5 and q.projection.shape == (50, 2)
    assert q.sample_paths["decoded_path"].str.count(" > ").eq(2).all()


def test_tag_losses_need_tags():
    x, _ = synthetic(n=50)
    with pytest.raises(ValueError, match="tags"):
        train_tokenizer(x, TokenizerParams(tag_prediction=True, **SMALL))


def test_four_level_variant_with_three_tag_levels(tmp_path):
    """The ``hidvae-L4`` variant: 4 codebooks, tag supervision on the first 3 levels; the 4th level
    only refines (its tag accuracy is reported as missing, its paths still name 3 tags), and the
    tokenizer saves, reloads and assigns the same 4-token SIDs."""
    from semid_pipeline.core.tokenizers.variants import VARIANTS

    x, paths = synthetic(n=200)
    params = TokenizerParams(**{**SMALL, **VARIANTS["hidvae-L4"]})
    res = train_tokenizer(x, params, paths, fake_text_embed)
    codes = res.tokenizer.encode(x).numpy()
    assert codes.shape == (200, 4)
    q = tokenizer_quality(res.tokenizer, x, res.vocab, res.heldout, [f"i{i}" for i in range(len(x))], strategy="sinkhorn", n_samples=5, n_projection=20)
    assert q.summary["sid_length"] == 4 and q.summary["collision_rate_after"] == 0.0
    acc = q.levels["tag_accuracy"].to_numpy()
    assert len(acc) == 4 and np.isfinite(acc[:3]).all() and np.isnan(acc[3])
    assert q.sample_paths["decoded_path"].str.count(" > ").eq(2).all()
    save_artifact(res.tokenizer, tmp_path / "tok")
    np.testing.assert_array_equal(load_artifact(tmp_path / "tok").encode(x).numpy(), codes)


def test_quality_report_describes_the_given_sids():
    """Given the SIDs semantic_ids produced (append_token: L + 1 tokens), the report names that
    strategy and length and its sample paths show those SIDs, whatever its default strategy."""
    from semid_pipeline.core.tokenizers.assign import encode_catalog
    from semid_pipeline.core.tokenizers.quality import strategy_of

    x, paths = synthetic(n=200)
    res = train_tokenizer(x, TokenizerParams(**SMALL), paths)
    codes, _ = encode_catalog(res.tokenizer, x, 8192, last_distances=False)
    sids, _ = resolve_collisions(codes, strategy="append_token")
    assert strategy_of(codes, sids) == "append_token" and strategy_of(codes, codes) == "sinkhorn"
    ids = [f"i{i}" for i in range(len(x))]
    q = tokenizer_quality(res.tokenizer, x, res.vocab, res.heldout, ids, strategy="sinkhorn", n_samples=6, n_projection=20, codes=codes, sids=sids)
    s = q.summary
    assert s["collision_strategy"] == "append_token" and s["sid_length"] == codes.shape[1] + 1
    assert s["collision_rate_before"] == collision_rate(codes) and s["collision_rate_after"] == 0.0
    want = {f"i{i}": "-".join(map(str, sids[i])) for i in range(len(x))}
    assert all(want[item] == sid for item, sid in zip(q.sample_paths["item_id"], q.sample_paths["sid_str"]))
    assert q.sample_paths["sid_str"].str.count("-").eq(codes.shape[1]).all()  # 4 tokens, e.g. 5-1-3-0
    assert q.levels["level"].tolist() == [1, 2, 3]
    with pytest.raises(ValueError, match="neither"):
        strategy_of(codes, sids[:, :1])
