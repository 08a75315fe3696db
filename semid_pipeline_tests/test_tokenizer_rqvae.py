"""RQ-VAE tokenizer: residual arithmetic, losses, k-means init, dead codes, determinism, artifacts."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from semid_pipeline.core.artifacts import load_artifact, save_artifact
from semid_pipeline.core.tokenizers.collisions import codebook_stats
from semid_pipeline.core.tokenizers.rqvae import RQVAE, RQVAEParams, _reset_dead_codes, train_rqvae

TINY = dict(hidden_dims=[32], latent_dim=8, n_levels=2, codebook_size=8, batch_size=64, epochs=10)


def clustered(n_clusters: int = 8, per_cluster: int = 32, dim: int = 16, noise: float = 0.05, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(n_clusters, dim))
    centers /= np.linalg.norm(centers, axis=1, keepdims=True)
    x = np.repeat(centers, per_cluster, axis=0) + noise * rng.normal(size=(n_clusters * per_cluster, dim))
    return x.astype(np.float32)


def tiny_model(seed: int = 0, **kw) -> RQVAE:
    torch.manual_seed(seed)
    args = dict(input_dim=16, hidden_dims=[32], latent_dim=8, n_levels=3, codebook_size=8)
    args.update(kw)
    return RQVAE(**args)


def quiet(_: str) -> None:
    pass


def tiny_params(**overrides) -> RQVAEParams:
    return RQVAEParams(**{**TINY, **overrides})


def test_params_defaults_and_descriptions():
    p = RQVAEParams()
    assert (p.hidden_dims, p.latent_dim, p.n_levels, p.codebook_size, p.beta) == ([512, 256, 128], 32, 3, 256, 0.25)
    assert all(f.description for f in RQVAEParams.model_fields.values())


def test_residuals_add_back_up():
    model = tiny_model()
    x = torch.randn(50, 16)
    out = model(x)
    L = model.n_levels
    assert out.codes.shape == (50, L) and out.codes.dtype == torch.int64
    assert out.quantized.shape == out.cumulative.shape == out.residuals.shape == (50, L, 8)
    assert out.distances.shape == (50, L, 8)
    assert torch.equal(out.residuals[:, 0], out.z_e)
    for level in range(L):
        # e^(l) is the selected codeword, and r_l = r_{l-1} - e^(l) exactly
        assert torch.equal(out.quantized[:, level], model.codebooks[level][out.codes[:, level]])
        if level + 1 < L:
            assert torch.equal(out.residuals[:, level + 1], out.residuals[:, level] - out.quantized[:, level])
    torch.testing.assert_close(out.quantized.sum(dim=1), out.cumulative[:, -1])
    torch.testing.assert_close(out.z_q, out.cumulative[:, -1])
    final_residual = out.residuals[:, -1] - out.quantized[:, -1]
    torch.testing.assert_close(out.cumulative[:, -1] + final_residual, out.z_e)
    # distances are exact squared euclidean distances and codes their argmin
    brute = torch.stack([torch.cdist(out.residuals[:, lv], model.codebooks[lv]).pow(2) for lv in range(L)], dim=1)
    torch.testing.assert_close(out.distances, brute, atol=1e-5, rtol=1e-4)
    assert torch.equal(out.codes, out.distances.argmin(-1))


def test_loss_terms_and_gradient_routes():
    model = tiny_model(beta=0.5)
    x = torch.randn(20, 16)
    out = model(x)
    losses = model.loss(x, out)
    target = F.normalize(x, dim=-1)
    torch.testing.assert_close(losses.recon, (out.x_hat - target).pow(2).sum(-1).mean())
    expected_q = sum((out.residuals[:, lv] - out.quantized[:, lv]).pow(2).sum(-1) for lv in range(3)).mean()
    torch.testing.assert_close(losses.codebook, expected_q)
    torch.testing.assert_close(losses.commitment, expected_q)
    torch.testing.assert_close(losses.total, losses.recon + losses.codebook + 0.5 * losses.commitment)

    # straight-through: reconstruction reaches the encoder but not the codebooks
    model.zero_grad()
    losses.recon.backward(retain_graph=True)
    assert model.encoder[0].weight.grad.abs().sum() > 0
    assert model.codebooks.grad is None or model.codebooks.grad.abs().sum() == 0
    # codebook term trains codebooks only; commitment trains the encoder only
    model.zero_grad()
    losses.codebook.backward(retain_graph=True)
    assert model.codebooks.grad.abs().sum() > 0 and model.encoder[0].weight.grad is None
    model.zero_grad()
    losses.commitment.backward()
    assert model.encoder[0].weight.grad.abs().sum() > 0
    assert model.codebooks.grad is None or model.codebooks.grad.abs().sum() == 0


def test_encode_ties_go_to_lowest_index():
    model = tiny_model()
    with torch.no_grad():
        model.codebooks[0] = model.codebooks[0, 5]  # every level-0 codeword identical
    codes = model.encode(torch.randn(30, 16))
    assert codes.device.type == "cpu" and codes.dtype == torch.int64
    assert (codes[:, 0] == 0).all()
    assert model.encode(torch.zeros(0, 16)).shape == (0, 3)


def test_losses_decrease_on_clustered_data():
    result = train_rqvae(clustered(), tiny_params(epochs=30), progress=quiet)
    first, last = result.history[0], result.history[-1]
    assert len(result.history) == 30
    assert last["total"] < first["total"] and last["recon"] < 0.7 * first["recon"]
    for key in ("total", "recon", "codebook", "commitment", "collision_rate", "seconds", "used_codes_l1", "perplexity_l1", "restarted_l1"):
        assert key in last
    n_levels = tiny_params().n_levels  # levels numbered 1..L, as in every report
    assert f"used_codes_l{n_levels}" in last and "used_codes_l0" not in last and f"used_codes_l{n_levels + 1}" not in last
    assert not result.model.training


def test_kmeans_init_gives_full_codebook_use():
    x = torch.from_numpy(clustered(n_clusters=8))
    random_init = tiny_model(n_levels=2)
    used_random = [s["used_codes"] for s in codebook_stats(random_init.encode(x).numpy(), 8)]
    model = tiny_model(n_levels=2)
    model.kmeans_init_(x, seed=0)
    used_kmeans = [s["used_codes"] for s in codebook_stats(model.encode(x).numpy(), 8)]
    assert used_kmeans == [8, 8]
    assert used_random[0] < 8


def test_reset_dead_codes_uses_batch_residuals_and_clears_moments():
    model = tiny_model(n_levels=2)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    out = model(torch.randn(16, 16))
    model.loss(torch.randn(16, 16), out).total.backward()
    opt.step()
    before = model.codebooks.detach().clone()
    dead = torch.zeros(2, 8, dtype=torch.bool)
    dead[0, [1, 6]] = True
    dead[1, 3] = True
    restarted = _reset_dead_codes(model, opt, dead, out.residuals, torch.Generator().manual_seed(0))
    assert restarted == [2, 1]
    after = model.codebooks.detach()
    assert torch.equal(after[~dead], before[~dead])
    for level in range(2):
        batch_residuals = out.residuals[:, level].detach()
        for k in dead[level].nonzero().flatten().tolist():
            assert (batch_residuals == after[level, k]).all(-1).any()
    state = opt.state[model.codebooks]
    assert (state["exp_avg"][dead] == 0).all() and (state["exp_avg_sq"][dead] == 0).all()
    assert (state["exp_avg_sq"][~dead] != 0).any()


def test_dead_codes_get_restarted_in_training():
    x = clustered()
    base = dict(epochs=15, kmeans_init=False)
    without = train_rqvae(x, tiny_params(**base, dead_code_restart=False), progress=quiet).history
    with_restart = train_rqvae(x, tiny_params(**base, dead_code_window=2), progress=quiet).history
    assert sum(h["restarted_l1"] for h in without) == 0
    assert sum(h["restarted_l1"] for h in with_restart) > 0
    assert with_restart[-1]["used_codes_l1"] > without[-1]["used_codes_l1"]


def test_same_seed_gives_identical_codes():
    x = clustered(seed=1)
    params = tiny_params(dead_code_window=3, dropout=0.1, seed=7)
    a = train_rqvae(x, params, progress=quiet)
    b = train_rqvae(x, params, progress=quiet)
    assert torch.equal(a.model.encode(x), b.model.encode(x))
    for (name, ta), tb in zip(a.model.state_dict().items(), b.model.state_dict().values()):
        assert torch.equal(ta, tb), name
    assert [h["total"] for h in a.history] == [h["total"] for h in b.history]
    c = train_rqvae(x, params.model_copy(update={"seed": 8}), progress=quiet)
    assert not torch.equal(a.model.codebooks, c.model.codebooks)


def _train_fingerprint() -> str:
    """Hash of the codes and weights of a short training run (big enough for multi-threaded kernels)."""
    x = np.random.default_rng(0).normal(size=(1024, 16)).astype(np.float32)
    params = RQVAEParams(hidden_dims=[32], latent_dim=32, codebook_size=256, batch_size=1024, epochs=1, kmeans_init=False)
    model = train_rqvae(x, params, progress=quiet).model
    digest = hashlib.sha1(model.encode(x).numpy().tobytes())
    for tensor in model.state_dict().values():
        digest.update(tensor.numpy().tobytes())
    return digest.hexdigest()


@pytest.mark.slow
def test_same_seed_identical_across_processes():
    """A fresh process reproduces the run bitwise: nothing may depend on process state such as memory
    addresses (torch's CPU advanced-indexing backward did, hence ``F.embedding`` in ``RQVAE.quantize``)."""
    root = Path(__file__).resolve().parents[1]
    # float reductions are split per thread, so both processes must use the same thread count
    script = (
        f"import torch; torch.set_num_threads({torch.get_num_threads()}); "
        "from semid_pipeline_tests.test_tokenizer_rqvae import _train_fingerprint; print(_train_fingerprint())"
    )
    other = subprocess.run([sys.executable, "-c", script], cwd=root, capture_output=True, text=True, check=True, timeout=60)
    assert other.stdout.strip() == _train_fingerprint()


def test_save_load_roundtrip_is_bitwise(tmp_path):
    x = clustered()
    model = train_rqvae(x, tiny_params(epochs=3, dropout=0.1, normalize_input=False), progress=quiet).model
    save_artifact(model, tmp_path / "rqvae", extra={"dataset": "unit"})
    loaded = load_artifact(tmp_path / "rqvae")
    assert isinstance(loaded, RQVAE) and not loaded.training
    assert loaded.artifact_config() == model.artifact_config()
    for (name, ta), tb in zip(model.state_dict().items(), loaded.state_dict().values()):
        assert torch.equal(ta, tb), name
    assert torch.equal(model.encode(x), loaded.encode(x))
    with torch.no_grad():
        assert torch.equal(model(torch.from_numpy(x)).x_hat, loaded(torch.from_numpy(x)).x_hat)


class _Probe(nn.Module):
    """Extra loss with its own parameter, recording the item indices it sees."""

    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(1.0))
        self.seen: list[torch.Tensor] = []

    def forward(self, model, batch_idx, x, out):
        self.seen.append(batch_idx.cpu())
        loss = (self.scale * out.cumulative[:, -1]).pow(2).mean()
        return loss, {"probe": float(loss.detach())}


def test_extra_loss_module_is_trained_and_logged():
    x = clustered(per_cluster=10)  # 80 items, batch 64 -> 2 steps per epoch
    probe = _Probe()
    result = train_rqvae(x, tiny_params(epochs=2), progress=quiet, extra_loss=probe)
    assert probe.scale.item() != 1.0
    first_epoch = torch.cat(probe.seen[:2])
    assert sorted(first_epoch.tolist()) == list(range(len(x)))
    assert "extra" in result.history[0] and "probe" in result.history[0]
    assert result.history[0]["total"] > result.history[0]["recon"]


def test_rejects_bad_embeddings():
    with pytest.raises(ValueError, match="NaN"):
        train_rqvae(np.array([[0.0, np.nan], [1.0, 0.0]]), tiny_params())
    with pytest.raises(ValueError, match="2-D"):
        train_rqvae(np.zeros(5), tiny_params())


def test_fewer_items_than_codes():
    x = clustered(n_clusters=2, per_cluster=3)  # 6 items < 8 codes
    result = train_rqvae(x, tiny_params(epochs=2), progress=quiet)
    assert result.model.encode(x).shape == (6, 2)


def test_cosine_lr_schedule_trains_differently_and_stays_deterministic():
    x = clustered(seed=2)
    params = tiny_params(epochs=4, lr_schedule="cosine", seed=3)
    a = train_rqvae(x, params, progress=quiet)
    b = train_rqvae(x, params, progress=quiet)
    assert torch.equal(a.model.encode(x), b.model.encode(x))
    const = train_rqvae(x, params.model_copy(update={"lr_schedule": "constant"}), progress=quiet)
    assert not torch.equal(a.model.codebooks, const.model.codebooks)
    recon_cos = a.history[-1]["recon"]
    assert np.isfinite(recon_cos) and recon_cos <= a.history[0]["recon"]
