"""Bad input fails the step with an error naming the file, the line and the problem, and leaves the
previous materialization of that partition untouched."""

import json

import pytest
from dagster import DagsterInstance, materialize

from semid_pipeline.assets import ingestion, preprocessing
from semid_pipeline.core import storage
from semid_pipeline.core.errors import InputError

from .conftest import tiny_resources

ASSETS = [ingestion.raw_dataset, preprocessing.prepared_dataset]


def _write_p5(root, n_users=12, broken_meta=False):
    root.mkdir(parents=True, exist_ok=True)
    items = [f"B{i:04d}" for i in range(8)]
    lines = []
    for u in range(n_users):
        seq = [items[(u + j) % len(items)] for j in range(6)]
        lines.append(" ".join([f"U{u}"] + seq))
    (root / "user_sequence.txt").write_text("\n".join(lines) + "\n")
    meta = [json.dumps({"asin": a, "title": f"Item {a} &amp; co", "categories": [["Beauty", "Skin Care", "Face"]]}) for a in items]
    if broken_meta:
        meta[3] = '{"asin": "B0003", "title": '  # truncated JSON on line 4
    (root / "meta_Beauty.jsonl").write_text("\n".join(meta) + "\n")


def test_malformed_input_names_file_and_line_and_keeps_previous_outputs(tmp_path):
    root = tmp_path / "beauty"
    _write_p5(root)
    data_dir = tmp_path / "data"
    options = {"amazon-beauty": {"root": str(root)}}
    instance = DagsterInstance.ephemeral()
    ok = materialize(ASSETS, partition_key="amazon-beauty", resources=tiny_resources(data_dir, options), instance=instance)
    assert ok.success
    before = storage.read_table(data_dir, "items", "amazon-beauty")
    assert before["title"].iloc[0] == "Item B0000 & co"  # HTML entity unescaped

    _write_p5(root, n_users=13, broken_meta=True)
    with pytest.raises(InputError) as err:
        materialize(ASSETS, partition_key="amazon-beauty", resources=tiny_resources(data_dir, options), instance=instance)
    message = str(err.value)
    assert "meta_Beauty.jsonl:4" in message
    after = storage.read_table(data_dir, "items", "amazon-beauty")
    assert after.equals(before)
    assert storage.read_table(data_dir, "user_sequences", "amazon-beauty")["user_id"].nunique() == 12


def test_missing_dataset_folder_is_named(tmp_path):
    options = {"amazon-beauty": {"root": str(tmp_path / "nowhere")}}
    with pytest.raises(InputError, match="nowhere"):
        materialize(ASSETS[:1], partition_key="amazon-beauty", resources=tiny_resources(tmp_path / "data", options), instance=DagsterInstance.ephemeral())
