"""Bring your own data through Dagster: a declared dataset is a partition (definitions, jobs, sensor,
schedule, CLI), a generated shop (Parquet items with a mapped id column, a CSV of ISO times, new
items bought only at the end of the logs, items never bought) materializes to the evaluation with
cold and warm rows, every refused input names its problem and leaves the earlier outputs
byte-identical, and the docs/own-data.md example runs exactly as written.

Partitions are fixed when the definitions load, so the runs happen in a fresh Python process with
``SEMID_DATASETS_FILE`` set (this module run as a script, or the ``dagster`` CLI), as a user's would.
"""

import hashlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

REPO = Path(__file__).resolve().parents[1]
N_NEW, NEW_BUYERS, N_UNSOLD = 8, 6, 4
SHOP_FILE = """datasets:
  my-shop:
    format: generic
    description: a generated shop
    options:
      items: {path: items.parquet, columns: {item_id: sku, categories: category}}
      interactions: {path: events.csv, columns: {user_id: customer, item_id: sku, timestamp: event_time}}
"""


def write_shop(folder: Path, n_items: int = 240, n_users: int = 300, seed: int = 7) -> dict:
    """``items.parquet`` (sku, title, brand, category 'A > B > C', description) and ``events.csv``
    (customer, sku, event_time in ISO 8601) from the demo generator, plus ``N_NEW`` new items each
    bought by ``NEW_BUYERS`` users as their very last event (cold test targets) and ``N_UNSOLD`` items
    nobody bought; returns the counts."""
    from semid_pipeline.core.data.demo import DemoParams, generate_demo

    folder.mkdir(parents=True, exist_ok=True)
    raw = generate_demo(DemoParams(n_items=n_items, n_users=n_users, seed=seed))
    items = raw.items.reset_index(drop=True)
    extra = []
    for j in range(N_NEW + N_UNSOLD):
        base = items.iloc[(j * 29) % len(items)]
        kind = "new" if j < N_NEW else "unsold"
        extra.append({**base.to_dict(), "item_id": f"{kind}-{j}", "title": f"New {base['title']} edition {j}"})
    items = pd.concat([items, pd.DataFrame(extra)], ignore_index=True)
    catalog = pd.DataFrame({
        "sku": items["item_id"].astype(str), "title": items["title"], "brand": items["brand"],
        "category": [" > ".join(p) for p in items["categories"]], "description": items["description"],
    })
    catalog.to_parquet(folder / "items.parquet", index=False)

    inter = raw.interactions
    last = inter.groupby("user_id")["timestamp"].max()
    buyers = sorted(last.index)[: N_NEW * NEW_BUYERS]
    new_events = pd.DataFrame({
        "user_id": buyers,
        "item_id": [f"new-{i // NEW_BUYERS}" for i in range(len(buyers))],
        "timestamp": [int(last[u]) + 86_400 for u in buyers],
    })
    events = pd.concat([inter[["user_id", "item_id", "timestamp"]], new_events], ignore_index=True)
    stamps = pd.to_datetime(events["timestamp"], unit="s", utc=True)
    iso = stamps.dt.strftime("%Y-%m-%dT%H:%M:%SZ")
    iso[::3] = stamps[::3].dt.strftime("%Y-%m-%d %H:%M:%S")  # no zone: read as UTC
    iso[1::7] = stamps[1::7].dt.tz_convert("Europe/Paris").map(lambda t: t.isoformat())  # with an offset
    pd.DataFrame({"customer": events["user_id"], "sku": events["item_id"], "event_time": iso}).to_csv(folder / "events.csv", index=False)
    return {"n_items": len(catalog), "n_cold_buyers": len(buyers), "n_events": len(events)}


def file_hashes(data_dir: Path) -> dict:
    """sha256 of every output the runs wrote (tables, models); the partition lock and the run journals
    beside them are bookkeeping of the run guard, not outputs."""
    files = [p for sub in ("tables", "models") for p in (data_dir / sub).rglob("*") if p.is_file()]
    assert files, f"no outputs under {data_dir}"
    return {str(p.relative_to(data_dir)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(files)}


# Each case: what is written over the good files, the options override, and the error it must give.
def _bad_inputs(shop: Path) -> dict:
    items = pd.read_parquet(shop / "items.parquet")
    events = pd.read_csv(shop / "events.csv", dtype=str)
    dup = pd.concat([items, items.iloc[[3]].assign(brand="Another Brand")], ignore_index=True)
    unknown = pd.concat([events, pd.DataFrame({"customer": [events["customer"][0]], "sku": ["ghost-1"],
                                               "event_time": ["2030-01-01T00:00:00Z"]})], ignore_index=True)
    bad_time = events.copy()
    bad_time.loc[41, "event_time"] = "31/02/2021 25:00"
    return {
        "missing_column": ({"events.csv": events.drop(columns=["event_time"])}, {},
                           "events.csv: interactions: missing required column 'event_time' (mapped from timestamp)"),
        "duplicate_item": ({"items.parquet": dup}, {},
                           f"items: item_id {items['sku'][3]!r} appears on rows 4 and {len(dup)} with different 'brand'"),
        "unknown_item_refused": ({"events.csv": unknown}, {"unknown_items": "refuse"},
                                 f"interactions: 1 rows name items missing from {shop / 'items.parquet'}, first row {len(unknown)}, "
                                 "column 'sku' (item_id): 'ghost-1'"),
        "unparseable_time": ({"events.csv": bad_time}, {},
                             "row 42, column 'event_time' (timestamp): unparseable time '31/02/2021 25:00'"),
        "empty_items": ({"items.parquet": items.iloc[:0]}, {}, "items.parquet: items: the table is empty (no rows)"),
    }


def run_in_fresh_process(shop: Path, data_dir: Path, out: Path) -> None:
    """What the subprocess does (``SEMID_DATASETS_FILE`` names ``shop/datasets.yaml``); writes its findings to ``out``."""
    import shutil

    from dagster import DagsterInstance, materialize

    from semid_pipeline.assets import ingestion
    from semid_pipeline.core import storage
    from semid_pipeline.definitions import all_assets, defs
    from semid_pipeline.jobs import retokenize_datasets
    from semid_pipeline.sensors import pending_datasets

    from .conftest import TINY_RUN_CONFIG, tiny_resources

    found: dict = {"jobs": {}}
    for job in ("full_pipeline", "retokenize", "retokenize_frozen", "demo_pipeline"):
        found["jobs"][job] = defs.resolve_job_def(job).partitions_def.get_partition_keys()
    found["schedule_datasets"] = retokenize_datasets("my-shop")
    found["schedule_all"] = retokenize_datasets("all")
    incoming = data_dir / "incoming" / "my-shop"
    incoming.mkdir(parents=True)
    (incoming / "more.jsonl").write_text("{}\n")
    found["sensor_pending"] = sorted(pending_datasets(str(data_dir), {}))
    shutil.rmtree(data_dir / "incoming")

    instance = DagsterInstance.ephemeral()
    result = materialize(all_assets, partition_key="my-shop", resources=tiny_resources(data_dir), run_config=TINY_RUN_CONFIG,
                         instance=instance)
    found["success"] = result.success
    found["materialized"] = sorted({e.asset_key.path[-1] for e in result.get_asset_materialization_events()})
    meta = {e.asset_key.path[-1]: e.materialization.metadata for e in result.get_asset_materialization_events()}
    found["evaluation_metadata"] = {k: str(v.value) for k, v in meta["evaluation"].items()}
    found["evaluation"] = storage.read_table(data_dir, "evaluation", "my-shop").to_dict("records")
    found["items"] = storage.read_table(data_dir, "items", "my-shop")["item_id"].tolist()
    found["sids"] = storage.read_table(data_dir, "semantic_ids", "my-shop")["item_id"].tolist()
    found["raw_items"] = {k: str(v.value) for k, v in meta["raw_items"].items()}

    good = {name: (shop / name).read_bytes() for name in ("items.parquet", "events.csv")}
    before = file_hashes(data_dir)
    found["cases"] = {}
    for case, (files, options, expected) in _bad_inputs(shop).items():
        for name, frame in files.items():
            frame.to_parquet(shop / name, index=False) if name.endswith(".parquet") else frame.to_csv(shop / name, index=False)
        try:
            materialize([ingestion.raw_dataset], partition_key="my-shop", instance=instance,
                        resources=tiny_resources(data_dir, {"my-shop": options}))
            message = None
        except Exception as e:  # the loader's InputError, raised by materialize
            message = f"{type(e).__name__}: {e}"
        found["cases"][case] = {"message": message, "expected": expected, "unchanged": file_hashes(data_dir) == before}
        for name, content in good.items():
            (shop / name).write_bytes(content)

    # dropping (the default): counted in raw_items' metadata; in another data dir, the earlier one stays as it was
    unknown_files, _, _ = _bad_inputs(shop)["unknown_item_refused"]
    unknown_files["events.csv"].to_csv(shop / "events.csv", index=False)
    dropped = materialize([ingestion.raw_dataset], partition_key="my-shop", instance=instance,
                          resources=tiny_resources(data_dir.parent / "data_drop"))
    found["dropped"] = {k: str(v.value) for k, v in dropped.get_asset_materialization_events()[0].materialization.metadata.items()}
    (shop / "events.csv").write_bytes(good["events.csv"])
    out.write_text(json.dumps(found, default=str))


def _env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SEMID_") and k != "DAGSTER_HOME"}
    env.update(PYTHONPATH=str(REPO), SEMID_NUM_THREADS=os.environ.get("SEMID_NUM_THREADS", "1"), HF_HUB_OFFLINE="1",
               TRANSFORMERS_OFFLINE="1", PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}", **extra)
    return env


@pytest.fixture(scope="module")
def shop_run(tmp_path_factory):
    base = tmp_path_factory.mktemp("own_data")
    shop, data_dir, out = base / "shop", base / "data", base / "found.json"
    counts = write_shop(shop)
    (shop / "datasets.yaml").write_text(SHOP_FILE)
    proc = subprocess.run(
        [sys.executable, "-m", "semid_pipeline_tests.test_own_data_pipeline", str(shop), str(data_dir), str(out)],
        cwd=REPO, env=_env(SEMID_DATASETS_FILE=str(shop / "datasets.yaml")), capture_output=True, text=True, timeout=1500,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(out.read_text()), counts, data_dir


def test_a_declared_dataset_is_a_partition_of_every_job_the_sensor_and_the_schedule(shop_run):
    found, _, _ = shop_run
    for job, keys in found["jobs"].items():
        assert keys[:6] == ["demo", "amazon-beauty", "amazon-sports", "amazon-toys", "esci", "kuairand"], job
        assert keys[-1] == "my-shop", job
    assert found["schedule_datasets"] == ["my-shop"] and found["schedule_all"][-1] == "my-shop"
    assert found["sensor_pending"] == ["my-shop"]


def test_the_shop_materializes_to_an_evaluation_with_cold_and_warm_rows(shop_run):
    found, counts, _ = shop_run
    assert found["success"]
    assert {"raw_items", "items", "semantic_ids", "generative_recommender", "sasrec_model", "evaluation"} <= set(found["materialized"])
    assert not {"generative_retriever", "retrieval_evaluation"} & set(found["materialized"])  # no queries: skipped
    # every catalog item is kept and gets a SID, the new (cold) and the never-bought ones too
    assert len(found["items"]) == counts["n_items"] == 240 + N_NEW + N_UNSOLD
    assert sorted(found["sids"]) == sorted(found["items"])
    assert {f"unsold-{j}" for j in range(N_NEW, N_NEW + N_UNSOLD)} <= set(found["sids"])
    ev = pd.DataFrame(found["evaluation"])
    cold = ev[ev["split"] == "test_cold"].set_index(["model", "metric", "k"]).sort_index()
    warm = ev[ev["split"] == "test_warm"].set_index(["model", "metric", "k"]).sort_index()
    assert (cold["n_users"] == N_NEW * NEW_BUYERS).all()  # exactly the users whose last purchase was a new item
    assert (warm["n_users"] == 300 - N_NEW * NEW_BUYERS).all()
    for k in (5, 10):
        for metric in ("recall", "ndcg"):
            assert 0.0 <= cold.loc[("generative", metric, k), "value"] <= 1.0
            assert cold.loc[("generative", metric, k), "note"] == ""
            assert np.isnan(cold.loc[("sasrec", metric, k), "value"])
            assert cold.loc[("sasrec", metric, k), "note"] == "n/a: ID model cannot rank unseen items"
            assert np.isnan(cold.loc[("most_popular", metric, k), "value"])
            assert 0.0 <= warm.loc[("sasrec", metric, k), "value"] <= 1.0
    # the whole-test row is the users-weighted mean of the warm and cold rows
    test = ev[ev["split"] == "test"].set_index(["model", "metric", "k"]).sort_index()
    n_cold = N_NEW * NEW_BUYERS
    mixed = (warm.loc[("generative", "recall", 10), "value"] * (300 - n_cold) + cold.loc[("generative", "recall", 10), "value"] * n_cold) / 300
    assert test.loc[("generative", "recall", 10), "value"] == pytest.approx(mixed)
    meta = found["evaluation_metadata"]
    assert meta["n_cold_test_targets"] == str(N_NEW * NEW_BUYERS)
    assert "n/a: ID model cannot rank unseen items" in meta["cold_vs_warm"] and "test_cold_generative_recall@10" in meta


@pytest.mark.parametrize("case", ["missing_column", "duplicate_item", "unknown_item_refused", "unparseable_time", "empty_items"])
def test_each_refused_input_is_named_and_leaves_earlier_outputs_intact(shop_run, case):
    found, _, _ = shop_run
    got = found["cases"][case]
    assert got["message"] is not None and got["message"].startswith("InputError: "), got
    assert got["expected"] in got["message"]
    assert got["unchanged"], f"{case}: a refused run changed files of the earlier outputs"


def test_unknown_items_are_dropped_and_counted_by_default(shop_run):
    found, _, _ = shop_run
    assert found["dropped"]["unknown_item_interactions"] == "1" and found["dropped"]["input_warnings"] == "1"


def test_the_check_command_lists_checks_and_refuses_without_running_anything(tmp_path):
    shop = tmp_path / "shop"
    write_shop(shop)
    (shop / "datasets.yaml").write_text(SHOP_FILE)
    env = _env(SEMID_DATASETS_FILE=str(shop / "datasets.yaml"))

    def check(*args):
        return subprocess.run([sys.executable, "-m", "semid_pipeline.datasets", *args], cwd=REPO, env=env, capture_output=True, text=True,
                              timeout=300)

    listed = check()
    assert listed.returncode == 0 and re.search(r"^my-shop +generic +.*datasets.yaml:2 +a generated shop$", listed.stdout, re.M)
    ok = check("my-shop")
    assert ok.returncode == 0, ok.stderr
    assert f"items: {240 + N_NEW + N_UNSOLD} ({N_UNSOLD} without interactions: cold items, they get SIDs)" in ok.stdout
    assert "by 300 users" in ok.stdout
    events = pd.read_csv(shop / "events.csv", dtype=str)
    events.loc[9, "event_time"] = "soon"
    events.to_csv(shop / "events.csv", index=False)
    bad = check("my-shop")
    assert bad.returncode == 2 and bad.stdout == ""
    assert bad.stderr.strip() == (f"error: {shop / 'events.csv'}: interactions: row 10, column 'event_time' (timestamp): unparseable time "
                                  "'soon' (expected ISO 8601, e.g. '2024-03-01T12:30:00Z' or epoch seconds); 1 rows do not parse")
    assert not (tmp_path / "data").exists() and sorted(p.name for p in shop.iterdir()) == ["datasets.yaml", "events.csv", "items.parquet"]
    typo = check("my-shp")
    assert typo.returncode == 2 and "unknown dataset 'my-shp' (did you mean 'my-shop'?)" in typo.stderr


def docs_example() -> str:
    """The shell block of docs/own-data.md's "From two files to an evaluation table"."""
    text = (REPO / "docs" / "own-data.md").read_text()
    section = text.split("## From two files to an evaluation table", 1)[1]
    return re.search(r"```bash\n(.*?)```", section, re.S).group(1)


def test_the_docs_example_runs_as_written(tmp_path):
    block = docs_example()
    assert len([line for line in block.splitlines() if line.strip() and not line.startswith("#")]) <= 12
    home = tmp_path / "home"
    write_shop(home / "shop")  # the user's two files, where the example expects them
    proc = subprocess.run(["bash", "-euo", "pipefail", "-c", block], cwd=REPO, env=_env(HOME=str(home)),
                          capture_output=True, text=True, timeout=1500)
    assert proc.returncode == 0, (proc.stdout[-3000:], proc.stderr[-3000:])
    # the last command prints the evaluation table of the shop, cold rows included
    assert "test_cold" in proc.stdout and "n/a: ID model cannot rank unseen items" in proc.stdout
    assert (home / "shop" / "semid-data" / "tables" / "evaluation" / "dataset=my-shop" / "part.parquet").is_file()


if __name__ == "__main__":
    run_in_fresh_process(Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]))
