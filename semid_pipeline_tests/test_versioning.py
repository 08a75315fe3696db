"""Versioned SID assignments (core, no Dagster): version ids, frozen assignment, diffs, incoming files."""

import json

import numpy as np
import pandas as pd
import pytest
import torch

from semid_pipeline.core.artifacts import load_artifact, save_artifact
from semid_pipeline.core.data.incoming import fingerprint, list_incoming, load_incoming_items
from semid_pipeline.core.errors import InputError
from semid_pipeline.core.tokenizers.assign import assign_frozen, assign_full, encode_catalog
from semid_pipeline.core.tokenizers.collisions import collision_rate
from semid_pipeline.core.tokenizers.rqvae import RQVAE, RQVAEParams
from semid_pipeline.core.tokenizers.versioning import (
    VersionMismatchError,
    append_versions,
    check_decodable,
    check_same_version,
    diff_versions,
    list_versions,
    model_version,
    version_rows,
)


def _tokenizer(seed: int = 0, codebook_size: int = 4) -> RQVAE:
    torch.manual_seed(seed)
    params = RQVAEParams(hidden_dims=[16], latent_dim=8, n_levels=3, codebook_size=codebook_size)
    return RQVAE.from_params(16, params).eval()


def _catalog(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 16)).astype(np.float32)
    return x, np.array([f"item{seed}-{i:04d}" for i in range(n)], dtype=object)


def test_tokenizer_version_is_a_content_hash(tmp_path):
    model = _tokenizer(0)
    v = model_version(model)
    assert v.startswith("tok-") and len(v) == 20
    assert model_version(model) == v
    save_artifact(model, tmp_path / "tok")
    assert model_version(load_artifact(tmp_path / "tok")) == v  # survives save + reload
    with torch.no_grad():
        model.codebooks[0][0, 0] += 1e-3
    assert model_version(model) != v  # any weight change is a new version
    assert model_version(_tokenizer(1)) != v


def test_frozen_assignment_of_ten_percent_new_items_keeps_old_sids_and_diff_reports_them():
    model = _tokenizer(0, codebook_size=4)  # 64 code tuples for 220 items: collisions guaranteed
    version = model_version(model)
    x_old, ids_old = _catalog(200, seed=1)
    codes_old, _ = encode_catalog(model, x_old, last_distances=False)
    v1 = assign_full(np.arange(200), ids_old, codes_old)
    assert collision_rate(np.stack(v1["codes"])) > 0.2 and not v1["sid_str"].duplicated().any()

    x_new, ids_new = _catalog(20, seed=2)  # 10% new items
    x = np.concatenate([x_old, x_new])
    ids = np.concatenate([ids_old, ids_new])
    codes, _ = encode_catalog(model, x, last_distances=False)
    v2 = assign_frozen(v1, np.arange(220), ids, codes)

    old = v2.set_index("item_id").loc[ids_old]
    assert (old["sid_str"].to_numpy() == v1.set_index("item_id").loc[ids_old, "sid_str"].to_numpy()).all()
    assert not v2["sid_str"].duplicated().any()  # no collision left, old or new
    assert collision_rate(np.stack(v2["sid"])) == 0.0
    new = v2.set_index("item_id").loc[ids_new]
    assert (new["status"] == "new").all() and (old["status"] == "kept").all()
    assert (np.stack(new["codes"].to_numpy()) == codes[200:]).all()  # new items use the frozen tokenizer's codes
    assert new["collided"].any()  # some new items landed on taken code tuples and were resolved

    table = append_versions(None, version_rows(v1, version, "full", assigned_at="2026-01-01T00:00:00+00:00"))
    table = append_versions(table, version_rows(v2, version, "frozen", assigned_at="2026-01-02T00:00:00+00:00"))
    table = append_versions(table, version_rows(v2, version, "frozen"))  # same assignment again: no new version
    versions = list_versions(table)
    assert len(versions) == 2 and versions["n_items"].tolist() == [200, 220]
    assert versions["tokenizer_version"].nunique() == 1 and versions["assignment_id"].nunique() == 2
    diff = diff_versions(table, "previous", "latest")
    assert diff.added == sorted(ids_new) and diff.removed == [] and diff.moved == [] and diff.n_unchanged == 200
    assert diff.collision_rate_a == pytest.approx(collision_rate(codes_old))
    assert diff.collision_rate_b == pytest.approx(collision_rate(codes))
    assert [u["used_codes"] for u in diff.codebook_use_b] == [len(np.unique(codes[:, i])) for i in range(3)]


def test_frozen_append_token_never_reuses_a_retired_sid():
    codes = np.array([[1, 1], [1, 1], [2, 2]])
    v1 = assign_full(np.arange(3), np.array(["a", "b", "c"], dtype=object), codes)
    assert v1["sid_str"].tolist() == ["1-1-0", "1-1-1", "2-2-0"]
    # "b" left the catalog, "d" arrives with the same codes: it must not get b's old SID 1-1-1
    v2 = assign_frozen(v1, np.arange(3), np.array(["a", "c", "d"], dtype=object), np.array([[1, 1], [2, 2], [1, 1]]))
    assert v2.set_index("item_id")["sid_str"].to_dict() == {"a": "1-1-0", "c": "2-2-0", "d": "1-1-2"}


def test_frozen_sinkhorn_strategy_keeps_old_sids_without_an_extra_token():
    model = _tokenizer(3, codebook_size=8)
    x_old, ids_old = _catalog(60, seed=4)
    model.kmeans_init_(torch.from_numpy(x_old), seed=0)  # spread items over the prefixes
    codes_old, dist_old = encode_catalog(model, x_old)
    v1 = assign_full(np.arange(60), ids_old, codes_old, dist_old, strategy="sinkhorn")
    assert np.stack(v1["sid"]).shape[1] == 3 and not v1["sid_str"].duplicated().any()
    x_new, ids_new = _catalog(6, seed=5)
    codes, dist = encode_catalog(model, np.concatenate([x_old, x_new]))
    v2 = assign_frozen(v1, np.arange(66), np.concatenate([ids_old, ids_new]), codes, dist, strategy="sinkhorn")
    assert (v2.set_index("item_id").loc[ids_old, "sid_str"].to_numpy() == v1["sid_str"].to_numpy()).all()
    assert not v2["sid_str"].duplicated().any()
    with pytest.raises(ValueError, match="keep the previous collision strategy"):
        assign_frozen(v1, np.arange(66), np.concatenate([ids_old, ids_new]), codes, strategy="append_token")


def test_retrained_tokenizer_diff_reports_moved_items_and_version_guard():
    x, ids = _catalog(100, seed=6)
    table = None
    for seed in (0, 1):
        model = _tokenizer(seed, codebook_size=8)
        codes, _ = encode_catalog(model, x, last_distances=False)
        table = append_versions(table, version_rows(assign_full(np.arange(100), ids, codes), model_version(model), "full"))
    v_a, v_b = list_versions(table)["tokenizer_version"].tolist()
    diff = diff_versions(table, v_a, v_b)  # tokenizer versions resolve to their assignment
    assert diff.added == [] and diff.removed == [] and len(diff.moved) > 50
    assert len(diff.moved) + diff.n_unchanged == 100
    check_same_version(v_a, v_a)
    with pytest.raises(VersionMismatchError, match=v_b):
        check_same_version(v_a, v_b)
    with pytest.raises(VersionMismatchError):
        check_same_version(None, v_b)
    with pytest.raises(KeyError, match="unknown version"):
        diff_versions(table, "tok-nope", v_b)
    sids = np.array([[1, 2, 0], [1, 2, 1], [3, 0, 0]])
    check_decodable(sids, (4, 3, 2))
    with pytest.raises(VersionMismatchError, match=r"1 items \(e.g. \['new'\]\) have SID tokens outside"):
        check_decodable(sids, (4, 3, 1), np.array(["a", "new", "c"], dtype=object))


def test_incoming_files_parse_last_wins_and_bad_lines_name_file_and_line(tmp_path):
    folder = tmp_path / "incoming" / "demo"
    folder.mkdir(parents=True)
    (folder / "001.jsonl").write_text(
        json.dumps({"item_id": "n1", "title": "Rose balm", "brand": "Acme", "categories": ["Lips"]}) + "\n\n"
        + json.dumps({"item_id": "n2", "title": "Soap"}) + "\n"
    )
    (folder / "002.jsonl").write_text(json.dumps({"item_id": "n1", "title": "Rose lip balm v2", "description": "new"}) + "\n")
    df = load_incoming_items(folder)
    assert df["item_id"].tolist() == ["n1", "n2"]
    assert df.loc[0, "title"] == "Rose lip balm v2" and df.loc[0, "source"] == "002.jsonl:1"
    assert df.loc[1, "categories"] == [] and pd.isna(df.loc[1, "brand"])
    before = fingerprint(list_incoming(folder))
    (folder / "003.jsonl").write_text('{"item_id": "n3", "title": "ok"}\n{"item_id": "n4", "titel": "typo"}\n')
    assert fingerprint(list_incoming(folder)) != before
    with pytest.raises(InputError, match=r"003\.jsonl:2: unknown key 'titel' \(did you mean 'title'\?\)"):
        load_incoming_items(folder)
    (folder / "003.jsonl").write_text('{"item_id": "n3", "title": "ok"}\n{not json\n')
    with pytest.raises(InputError, match=r"003\.jsonl:2: not valid JSON"):
        load_incoming_items(folder)
    (folder / "003.jsonl").write_text('{"item_id": "", "title": "x"}\n')
    with pytest.raises(InputError, match=r"003\.jsonl:1: 'item_id' must be a non-empty string"):
        load_incoming_items(folder)
    assert load_incoming_items(tmp_path / "missing").empty
