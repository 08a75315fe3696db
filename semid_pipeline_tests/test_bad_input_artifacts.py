"""Issue 17, class 3: corrupted models do not load. A content hash of tensors + config is recorded
at save and verified at load; a mismatch or a truncated file names the file."""

import json
import warnings

import pytest
import torch

from semid_pipeline.core.artifacts import Artifact, HASH_KEY, load_artifact, register_artifact, save_artifact
from semid_pipeline.core.errors import InputError


@register_artifact
class _Toy17(Artifact):
    KIND = "toy-issue17"

    def __init__(self, w, scale):
        self.w, self.scale = w, scale

    def artifact_config(self):
        return {"scale": self.scale}

    def artifact_tensors(self):
        return {"w": self.w, "idx": torch.arange(5)}

    @classmethod
    def from_artifact(cls, config, tensors):
        return cls(tensors["w"], config["scale"])


@pytest.fixture()
def saved(tmp_path):
    d = tmp_path / "models" / "toy" / "dataset=demo"
    save_artifact(_Toy17(torch.linspace(0, 1, 256).reshape(16, 16), 0.5), d, extra={"tokenizer_version": "tok-abc"})
    return d


def test_round_trip_records_and_verifies_hash(saved):
    meta = json.loads((saved / "config.json").read_text())
    assert set(meta[HASH_KEY]) == {"tensors", "config"} and meta["format_version"] == 2
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        back = load_artifact(saved)
    assert torch.equal(back.w, torch.linspace(0, 1, 256).reshape(16, 16)) and back.scale == 0.5


def test_bytes_overwritten_inside_safetensors_same_size(saved):
    path = saved / "model.safetensors"
    raw = bytearray(path.read_bytes())
    size = len(raw)
    raw[-200:-100] = b"\x7f" * 100  # inside the tensor data, not the header
    path.write_bytes(bytes(raw))
    assert path.stat().st_size == size
    with pytest.raises(InputError) as err:
        load_artifact(saved)
    assert str(err.value).startswith(f"{path}: content hash mismatch")


def test_edited_config_is_refused(saved):
    path = saved / "config.json"
    meta = json.loads(path.read_text())
    meta["config"]["scale"] = 5.0
    path.write_text(json.dumps(meta))
    with pytest.raises(InputError, match=r"config\.json: content hash mismatch"):
        load_artifact(saved)
    meta["config"]["scale"] = 0.5
    meta["extra"]["tokenizer_version"] = "tok-other"  # the recommender's version guard reads this
    path.write_text(json.dumps(meta))
    with pytest.raises(InputError, match=r"config\.json: content hash mismatch"):
        load_artifact(saved)


@pytest.mark.parametrize("keep", [0, 7, 40, -10])
def test_truncated_safetensors_names_the_path(saved, keep):
    path = saved / "model.safetensors"
    raw = path.read_bytes()
    path.write_bytes(raw[:keep] if keep >= 0 else raw[:keep])
    with pytest.raises(InputError) as err:
        load_artifact(saved)
    assert str(err.value).startswith(f"{path}: ") and ("unreadable safetensors" in str(err.value) or "hash mismatch" in str(err.value))
    assert "\n" not in str(err.value)


def test_garbled_config_json_names_the_path(saved):
    (saved / "config.json").write_text('{"kind": "toy-issue17", "config": ')
    with pytest.raises(InputError, match=r"config\.json:1: unreadable model config"):
        load_artifact(saved)


def test_missing_weights_names_the_path(saved):
    (saved / "model.safetensors").unlink()
    with pytest.raises(InputError, match=r"model\.safetensors: model weights missing"):
        load_artifact(saved)


def test_legacy_artifact_without_hash_loads_with_a_warning(saved):
    path = saved / "config.json"
    meta = json.loads(path.read_text())
    del meta[HASH_KEY]
    meta["format_version"] = 1
    path.write_text(json.dumps(meta))
    with pytest.warns(UserWarning, match="without a content hash"):
        assert load_artifact(saved).scale == 0.5
