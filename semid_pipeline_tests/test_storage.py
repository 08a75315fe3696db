import pandas as pd
import pytest
import torch

from semid_pipeline.core import storage
from semid_pipeline.core.artifacts import Artifact, load_artifact, register_artifact, save_artifact


def test_parquet_and_duckdb_round_trip(tmp_path):
    df = pd.DataFrame({"item_idx": [0, 1], "sid": [[1, 2, 3], [4, 5, 6]], "name": ["a", "b"]})
    storage.write_table(tmp_path, "semantic_ids", "demo", df)
    storage.write_table(tmp_path, "semantic_ids", "other", df.assign(name=["c", "d"]))
    back = storage.read_table(tmp_path, "semantic_ids", "demo")
    assert back["sid"].map(list).tolist() == [[1, 2, 3], [4, 5, 6]]
    assert back["name"].tolist() == ["a", "b"]
    q = storage.query(tmp_path, "select dataset, count(*) n from semantic_ids group by dataset order by dataset")
    assert q.to_dict("list") == {"dataset": ["demo", "other"], "n": [2, 2]}
    q = storage.query(tmp_path, "select name from semantic_ids where dataset = 'demo' and sid[2] = 5")
    assert q["name"].tolist() == ["b"]


def test_failed_write_keeps_previous_output(tmp_path):
    storage.write_table(tmp_path, "items", "demo", pd.DataFrame({"x": [1, 2, 3]}))

    class Boom:  # not convertible to Arrow
        pass

    with pytest.raises(Exception):
        storage.write_table(tmp_path, "items", "demo", pd.DataFrame({"x": [Boom()]}))
    assert storage.read_table(tmp_path, "items", "demo")["x"].tolist() == [1, 2, 3]
    leftovers = [p.name for p in storage.table_path(tmp_path, "items", "demo").parent.iterdir()]
    assert leftovers == ["part.parquet"]


def test_read_missing_table_names_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="semantic_ids"):
        storage.read_table(tmp_path, "semantic_ids", "demo")


@register_artifact
class _Toy(Artifact):
    KIND = "toy-test"

    def __init__(self, w: torch.Tensor, scale: float):
        self.w, self.scale = w, scale

    def artifact_config(self):
        return {"scale": self.scale}

    def artifact_tensors(self):
        return {"w": self.w}

    @classmethod
    def from_artifact(cls, config, tensors):
        return cls(tensors["w"], config["scale"])


def test_artifact_round_trip_and_atomic_replace(tmp_path):
    d = tmp_path / "models" / "toy"
    save_artifact(_Toy(torch.arange(6.0).reshape(2, 3), 0.5), d)
    save_artifact(_Toy(torch.ones(2), 2.0), d)  # replaces the first
    back = load_artifact(d)
    assert back.scale == 2.0 and torch.equal(back.w, torch.ones(2))
    assert sorted(p.name for p in d.iterdir()) == ["config.json", "model.safetensors"]
    assert [p.name for p in d.parent.iterdir()] == ["toy"]
