"""What a local user gets: the repository's dagster.yaml (gpu pool limit) and the demo job carrying configs/demo.yaml."""

import os
import shutil
import subprocess
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
    assert demo["ops"]["generative_recommender"]["config"]["kind"] == "parallel"  # the model the README recommends
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


def test_instance_script_links_the_repository_dagster_yaml(tmp_path):
    # the instance reads the repository's dagster.yaml itself (a link, not a stale copy), so an edit takes effect
    home = tmp_path / "home"
    env = {**os.environ, "DAGSTER_HOME": str(home)}
    subprocess.run(["bash", "-c", ". scripts/instance.sh"], cwd=ROOT, env=env, check=True)
    assert (home / "dagster.yaml").resolve() == (ROOT / "dagster.yaml").resolve()
    (home / "dagster.yaml").unlink()
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")  # a home with its own file keeps it, and says so
    out = subprocess.run(["bash", "-c", ". scripts/instance.sh"], cwd=ROOT, env=env, check=True, capture_output=True, text=True)
    assert "differs from the repository's dagster.yaml" in out.stdout and not (home / "dagster.yaml").is_symlink()
