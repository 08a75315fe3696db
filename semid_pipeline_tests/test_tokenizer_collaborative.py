"""Collaborative tokenizer input: the [text ; SASRec item vector] input stage (items without interactions
predicted from text), and the tokenizer / assets that use it."""

import numpy as np
import pandas as pd
import pytest
import torch

from semid_pipeline.core.artifacts import load_artifact, save_artifact
from semid_pipeline.core.tokenizers.base import TokenizerParams, train_tokenizer
from semid_pipeline.core.tokenizers.collaborative import (
    CollaborativeInput,
    CollaborativeParams,
    collaborative_matrix,
    item_occurrences,
    tokenizer_input,
)
from semid_pipeline_tests.test_tokenizer_kinds import synthetic

OPQ_SMALL = dict(kind="opq", pq_digits=4, pq_codebook_size=16, pca_dim=16, opq_iters=3, pq_iters=8, probe_epochs=2)


def test_item_occurrences_count_training_items_and_reject_bad_indices():
    counts = item_occurrences([np.array([0, 2, 2]), np.array([], dtype=np.int64), np.array([4])], 6)
    assert counts.tolist() == [1, 0, 2, 0, 1, 0]
    with pytest.raises(ValueError, match=r"\[0, 5\)"):
        item_occurrences([np.array([0, 7])], 5)


def test_collaborative_input_whitens_both_blocks_and_predicts_missing_rows_from_text():
    rng = np.random.default_rng(1)
    text = rng.normal(size=(500, 12)).astype(np.float32) * np.linspace(0.1, 5, 12)
    collab = (text[:, 6:] @ rng.normal(size=(6, 6))).astype(np.float32)  # a linear function of the text's main directions
    collab[:50] = np.nan  # items without interactions
    stage = CollaborativeInput.fit(text, collab, CollaborativeParams(collaborative_dims=4, text_dims=6, collaborative_ridge=1e-3))
    out = stage(torch.from_numpy(np.concatenate([text, collab], 1))).numpy()
    assert out.shape == (500, 10) and np.isfinite(out).all()
    np.testing.assert_allclose(out[50:, :6].std(0), 1.0, rtol=0.1)  # whitened text
    np.testing.assert_allclose(out[50:, 6:].std(0), 1.0, rtol=0.1)  # whitened collaborative part
    # the missing rows' collaborative block is predicted from text: close to what the true values would give
    truth = (text[:50, 6:] @ np.linalg.lstsq(text[50:, 6:], collab[50:], rcond=None)[0]).astype(np.float32)
    full = stage(torch.from_numpy(np.concatenate([text[:50], truth], 1))).numpy()
    assert np.corrcoef(out[:50, 6:].ravel(), full[:, 6:].ravel())[0, 1] > 0.95
    # rows that have a collaborative part are whitened, not predicted
    np.testing.assert_allclose(stage(torch.from_numpy(np.concatenate([text[50:], collab[50:]], 1))).numpy(), out[50:], atol=1e-5)
    assert stage.n_predicted(np.concatenate([text, collab], 1)) == 50
    with pytest.raises(ValueError, match=r"12 \+ 6 = 18"):
        stage(torch.from_numpy(text))


def test_tokenizer_with_collaborative_input_saves_reloads_and_needs_the_table(tmp_path):
    x, _ = synthetic(n=400, dim=24)
    rng = np.random.default_rng(0)
    emb = rng.normal(size=(400, 8)).astype(np.float32)
    counts = np.r_[rng.integers(1, 20, size=390), np.zeros(10, np.int64)]  # the last 10 never occur in training
    table = pd.DataFrame({"item_idx": np.arange(400), "item_id": [f"i{i}" for i in range(400)], "embedding": list(emb), "n_occurrences": counts})
    collab = collaborative_matrix(table, np.arange(400))
    assert np.isnan(collab[390:]).all() and not np.isnan(collab[:390]).any()
    params = TokenizerParams(collaborative_dims=8, text_dims=8, **OPQ_SMALL)
    with pytest.raises(ValueError, match="item_collaborative_embeddings"):
        train_tokenizer(x, params)
    tok = train_tokenizer(x, params, collaborative=collab).tokenizer
    assert tok.inputs is not None and tok.inputs.output_dim == 16
    inp = tokenizer_input(tok, x, table, np.arange(400))
    assert inp.shape == (400, 32)
    codes = tok.encode(inp).numpy()
    save_artifact(tok, tmp_path / "tok")
    back = load_artifact(tmp_path / "tok")
    np.testing.assert_array_equal(back.encode(inp).numpy(), codes)
    np.testing.assert_array_equal(back.encode_full(inp).codes, codes)
    # a text-only tokenizer ignores the table; a collaborative one refuses text alone
    plain = train_tokenizer(x, TokenizerParams(**OPQ_SMALL)).tokenizer
    assert tokenizer_input(plain, x, table, np.arange(400)).shape == (400, 24)
    with pytest.raises(ValueError, match="collaborative"):
        tokenizer_input(tok, x)
    with pytest.raises(ValueError, match="values"):
        tok.encode(x)
    # the collaborative part changes the codes (same text, different co-occurrences)
    other = collaborative_matrix(table.assign(embedding=list(emb[::-1].copy())), np.arange(400))
    tok2 = train_tokenizer(x, params, collaborative=other).tokenizer
    assert (tok2.encode(np.concatenate([x, other], 1)).numpy() != codes).any()


def test_collaborative_tokenizer_through_the_assets(tmp_path):
    """sasrec_model -> item_collaborative_embeddings -> sid_tokenizer (collaborative_dims) -> semantic_ids."""
    from dagster import DagsterInstance, materialize

    from semid_pipeline.core import storage
    from semid_pipeline.definitions import all_assets
    from semid_pipeline_tests.conftest import tiny_resources

    x, paths = synthetic(n=400, dim=24)
    n = len(x)
    ids = [f"i{i:03d}" for i in range(n)]
    emb = pd.DataFrame({"item_idx": np.arange(n), "item_id": ids, "embedding": list(x)})
    storage.write_table(tmp_path, "items", "demo", pd.DataFrame({"item_idx": np.arange(n), "item_id": ids}))
    storage.write_table(tmp_path, "item_text_embeddings", "demo", emb)
    # a catalogue with one item more than the training data knows: its collaborative part is predicted
    new = pd.DataFrame({"item_idx": [n], "item_id": ["new"], "embedding": [x[0] + 0.01]})
    storage.write_table(tmp_path, "catalog_item_embeddings", "demo", pd.concat([emb, new], ignore_index=True).assign(origin="prepared"))
    storage.write_table(tmp_path, "item_tags", "demo", pd.DataFrame({
        "item_idx": np.arange(n), "item_id": ids, "tag_path": paths, "generated_path": paths, "true_path": paths,
        "candidates": [[["x"]]] * n, "scores": [[1.0]] * n, "tag_source": "true",
    }))
    rng = np.random.default_rng(0)
    seqs = [rng.integers(0, n - 4, size=8) for _ in range(600)]
    storage.write_table(tmp_path, "user_sequences", "demo", pd.DataFrame({
        "user_idx": np.arange(600), "user_id": [f"u{u}" for u in range(600)],
        "train_items": [s[:-2] for s in seqs], "valid_item": [int(s[-2]) for s in seqs], "test_item": [int(s[-1]) for s in seqs],
    }))
    config = {"ops": {
        "sasrec_model": {"config": {"hidden": 16, "n_layers": 1, "epochs": 2, "max_len": 10, "batch_size": 64}},
        "sid_tokenizer": {"config": {**OPQ_SMALL, "collaborative_dims": 8, "text_dims": 8}},
        "semantic_ids": {"config": {"collision_strategy": "sinkhorn"}},
    }}
    result = materialize(all_assets, selection=["sasrec_model", "item_collaborative_embeddings", "sid_tokenizer", "semantic_ids"], partition_key="demo",
                         resources=tiny_resources(tmp_path), run_config=config, instance=DagsterInstance.ephemeral())
    assert result.success
    collab = storage.read_table(tmp_path, "item_collaborative_embeddings", "demo")
    assert len(collab) == n and (collab["n_occurrences"] == 0).sum() >= 4  # the last 4 items never occur in training
    assert len(collab["embedding"].iloc[0]) == 16  # SASRec's hidden size
    sem = storage.read_table(tmp_path, "semantic_ids", "demo")
    assert len(sem) == n + 1 and len({tuple(r) for r in np.stack(sem["sid"].to_numpy()).tolist()}) == n + 1
    meta = result.asset_materializations_for_node("semantic_ids")[0].metadata
    predicted = int(meta["collaborative_input"].value.split(" of ")[0])
    assert predicted == int((collab["n_occurrences"] == 0).sum()) + 1  # never-seen items + the new one


def test_whitening_by_covariance_matches_the_svd(monkeypatch):
    """Above EXACT_SVD_MAX_ROWS the whitening comes from the chunked covariance: same directions, unit variance."""
    from semid_pipeline.core.tokenizers import collaborative

    rng = np.random.default_rng(0)
    x = (rng.normal(size=(3000, 12)) * np.arange(1, 13)).astype(np.float32) + 3
    mean_svd, proj_svd = collaborative._whitening(x, 5, "test")
    monkeypatch.setattr(collaborative, "EXACT_SVD_MAX_ROWS", 100)
    mean_cov, proj_cov = collaborative._whitening(x, 5, "test")
    assert np.allclose(mean_cov, mean_svd, atol=1e-4)
    assert np.allclose(proj_cov, proj_svd, atol=1e-5 * np.abs(proj_svd).max())
    white = (x - mean_cov) @ proj_cov
    assert np.allclose(np.cov(white.T, bias=True), np.eye(5), atol=1e-4)
