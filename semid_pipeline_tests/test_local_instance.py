"""What a local user gets: the repository's dagster.yaml (gpu pool limit) and the demo job carrying configs/demo.yaml."""

import os
import shutil
from pathlib import Path

import yaml
from dagster import DagsterInstance

from semid_pipeline.definitions import defs
from semid_pipeline.jobs import DEMO_CONFIG_PATH

ROOT = Path(__file__).resolve().parents[1]


def test_local_dagster_yaml_limits_the_gpu_pool_to_one(tmp_path, monkeypatch):
    shutil.copy(ROOT / "dagster.yaml", tmp_path / "dagster.yaml")
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path))
    with DagsterInstance.get() as instance:
        assert instance.get_concurrency_config().pool_config.default_pool_limit == 1


def test_demo_job_carries_the_demo_config_for_the_demo_partition():
    job = defs.resolve_job_def("demo_pipeline")
    assert (ROOT / "configs" / "demo.yaml").resolve() == DEMO_CONFIG_PATH.resolve()
    demo = yaml.safe_load(DEMO_CONFIG_PATH.read_text())
    assert demo["ops"]["generative_recommender"]["config"]["d_model"] == 64
    # the job's default run config is the file, and it covers the same assets as full_pipeline
    assert job.get_run_config_for_partition_key("demo") == demo
    assert job.asset_layer.executable_asset_keys == defs.resolve_job_def("full_pipeline").asset_layer.executable_asset_keys
    assert "demo" in job.partitions_def.get_partition_keys()


def test_scripts_use_the_demo_job_and_the_local_instance():
    demo = (ROOT / "scripts" / "demo.sh").read_text()
    # `dagster job execute` runs a partitioned job with an empty config unless given one: command one must pass it
    assert "-j demo_pipeline -c configs/demo.yaml" in demo and "scripts/instance.sh" in demo
    assert "scripts/instance.sh" in (ROOT / "scripts" / "ui.sh").read_text()
    assert os.access(ROOT / "scripts" / "ui.sh", os.X_OK)
