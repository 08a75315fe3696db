import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
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


def test_embedding_columns_round_trip_by_row_group(tmp_path, monkeypatch):
    """An embedding column is stored as fixed_size_list in row groups and read back group by group into
    one matrix whose rows the column holds; ragged or null float lists still read the general way."""
    monkeypatch.setattr(storage, "ROW_GROUP_ROWS", 4)
    rng = np.random.default_rng(0)
    emb = rng.normal(size=(10, 3)).astype(np.float32)
    wide = rng.normal(size=(10, 2))  # float64 stays float64
    df = pd.DataFrame({"item_idx": np.arange(10), "embedding": list(emb), "wide": list(wide), "name": list("abcdefghij")})
    path = storage.write_table(tmp_path, "item_text_embeddings", "demo", df)
    file = pq.ParquetFile(path)
    assert file.num_row_groups == 3
    assert pa.types.is_fixed_size_list(file.schema_arrow.field("embedding").type)
    back = storage.read_table(tmp_path, "item_text_embeddings", "demo")
    assert list(back.columns) == ["item_idx", "embedding", "wide", "name"]
    got = np.stack(back["embedding"].to_numpy())
    assert got.dtype == np.float32 and np.array_equal(got, emb)
    assert np.stack(back["wide"].to_numpy()).dtype == np.float64 and np.array_equal(np.stack(back["wide"].to_numpy()), wide)
    assert back["embedding"].iloc[7].base is back["embedding"].iloc[2].base  # rows of one matrix, not per-row copies
    q = storage.query(tmp_path, "select len(embedding) n, embedding[2] v from item_text_embeddings where item_idx = 5")
    assert q["n"].tolist() == [3] and q["v"].iloc[0] == pytest.approx(float(emb[5, 1]))

    ragged = pd.DataFrame({"item_idx": [0, 1, 2], "v": [np.array([1.0, 2.0]), np.array([3.0]), None]})
    storage.write_table(tmp_path, "odd", "demo", ragged)
    back = storage.read_table(tmp_path, "odd", "demo")
    assert list(back["v"].iloc[0]) == [1.0, 2.0] and list(back["v"].iloc[1]) == [3.0] and back["v"].iloc[2] is None

    empty = storage.write_table(tmp_path, "none", "demo", df.iloc[:0])
    assert pq.read_table(empty).num_rows == 0 and storage.read_table(tmp_path, "none", "demo").empty


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
