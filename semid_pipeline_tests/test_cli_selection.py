"""Asset selections as a user types them, through the real CLI (`dagster asset materialize --select ...`):
upstream (`*asset`), downstream (`asset*`, `asset+`) and single assets, on a tiny demo in a throw-away
instance and data dir. Each selection takes part of a multi-asset (`raw_dataset`, `prepared_dataset`,
`hierarchical_tags`): only the selected tables may be written, and an unselected sibling that a step
needs is read from storage."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from semid_pipeline_tests.conftest import TINY_DEMO

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def cli(tmp_path_factory):
    work = tmp_path_factory.mktemp("cli_selection")
    home = work / "home"
    home.mkdir()
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    env = {
        **os.environ,
        "DAGSTER_HOME": str(home),
        "SEMID_DATA_DIR": str(work / "data"),
        "SEMID_DATASET_OPTIONS": json.dumps({"demo": TINY_DEMO}),
        "SEMID_NUM_THREADS": os.environ.get("SEMID_NUM_THREADS", "1"),
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep),
    }

    def materialize(selection: str) -> None:
        cmd = [sys.executable, "-m", "dagster", "asset", "materialize", "-m", "semid_pipeline.definitions",
               "--select", selection, "--partition", "demo"]
        out = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=600)
        assert out.returncode == 0, f"--select {selection!r} failed:\n{out.stdout[-3000:]}\n{out.stderr[-6000:]}"

    def table(name: str) -> Path:
        return work / "data" / "tables" / name / "dataset=demo" / "part.parquet"

    return materialize, table


def test_selections_take_part_of_a_multi_asset(cli):
    materialize, table = cli
    # upstream: item_tags and its ancestors; from prepared_dataset only `items`, from hierarchical_tags only `item_tags`
    materialize("*item_tags")
    assert all(table(t).exists() for t in ("raw_items", "raw_interactions", "items", "item_tags"))
    assert not any(table(t).exists() for t in ("interactions", "user_sequences", "tag_pool"))

    # a single asset out of a multi-asset: the tag pool alone; item_tags (same op) is left as it was
    tags_before = table("item_tags").read_bytes()
    materialize("tag_pool")
    assert table("tag_pool").exists() and table("item_tags").read_bytes() == tags_before

    # downstream, one level: raw_interactions (raw_items, its sibling, is read from storage) and prepared_dataset
    items_before = table("raw_items").read_bytes()
    materialize("raw_interactions+")
    assert table("interactions").exists() and table("user_sequences").exists()
    assert table("raw_items").read_bytes() == items_before

    # downstream with `*` of an asset without consumers: one table of prepared_dataset, its siblings untouched
    seqs_before = table("user_sequences").read_bytes()
    table("interactions").unlink()
    materialize("interactions*")
    assert table("interactions").exists() and table("user_sequences").read_bytes() == seqs_before
