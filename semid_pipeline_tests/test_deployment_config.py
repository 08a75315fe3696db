"""The deployment files parse and agree: docker-compose.yml, docker/dagster.yaml, Dockerfiles, workspaces."""

import shutil
from pathlib import Path

import pytest
import yaml

from semid_pipeline_tests.deployment_utils import REPO, instance_yaml_for_tests

COMPOSE = REPO / "docker-compose.yml"
SERVICES = {"postgres", "user_code", "webserver", "daemon", "llm"}


class _ComposeLoader(yaml.SafeLoader):
    """Compose's YAML: also accepts the ``!reset`` / ``!override`` merge tags of override files."""


_ComposeLoader.add_constructor("!reset", lambda loader, node: None)
_ComposeLoader.add_constructor("!override", lambda loader, node: loader.construct_object(node) if not isinstance(node, yaml.MappingNode) else loader.construct_mapping(node))


def _compose(path: Path) -> dict:
    return yaml.load(path.read_text(), Loader=_ComposeLoader)


def test_compose_names_every_service_volume_and_network_it_uses():
    compose = _compose(COMPOSE)
    services = compose["services"]
    assert SERVICES <= set(services)
    declared_volumes, declared_networks = set(compose.get("volumes") or {}), set(compose.get("networks") or {})
    for name, svc in services.items():
        for vol in svc.get("volumes", []):
            source = vol.split(":")[0] if isinstance(vol, str) else vol["source"]
            if not source.startswith((".", "/", "$")):
                assert source in declared_volumes, f"service {name} uses undeclared volume {source}"
        for net in svc.get("networks", []):
            assert net in declared_networks, f"service {name} uses undeclared network {net}"
        for dep in svc.get("depends_on", {}):
            assert dep in services, f"service {name} depends on unknown service {dep}"
        build = svc.get("build")
        if build:
            assert (REPO / build.get("context", ".") / build.get("dockerfile", "Dockerfile")).exists()
    # the data volume is shared by every Dagster process; the GPU goes to the code server (runs execute there)
    for name in ("user_code", "webserver", "daemon"):
        assert "semid_data:/opt/dagster/data" in services[name]["volumes"]
        assert services[name]["environment"]["DAGSTER_POSTGRES_HOST"] == "postgres"
    devices = services["user_code"]["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["driver"] == "nvidia" and "gpu" in devices[0]["capabilities"]
    assert services["llm"]["deploy"]["resources"]["reservations"]["devices"][0]["driver"] == "nvidia"
    assert "grpc" in services["user_code"]["command"] and "semid_pipeline.definitions" in services["user_code"]["command"]
    assert services["webserver"]["command"][0] == "dagster-webserver" and services["daemon"]["command"][:2] == ["dagster-daemon", "run"]
    cpu = _compose(REPO / "docker" / "compose.cpu.yml")
    assert cpu["services"]["user_code"]["build"]["dockerfile"] == "Dockerfile"


def test_workspaces_point_at_the_code_location():
    compose_ws = yaml.safe_load((REPO / "docker" / "workspace.yaml").read_text())
    grpc = compose_ws["load_from"][0]["grpc_server"]
    user_code = _compose(COMPOSE)["services"]["user_code"]
    assert grpc["host"] == "user_code" and str(grpc["port"]) in user_code["command"]
    local_ws = yaml.safe_load((REPO / "workspace.yaml").read_text())
    assert local_ws["load_from"][0]["python_module"]["module_name"] == "semid_pipeline.definitions"


def test_dockerfiles_install_the_package_and_ship_the_instance_config():
    cpu = (REPO / "Dockerfile").read_text()
    gpu = (REPO / "Dockerfile.gpu").read_text()
    assert "nvidia/cuda" in gpu and "download.pytorch.org/whl/cu" in gpu
    for text in (cpu, gpu):
        assert 'pip install -c requirements.lock ".[deploy]"' in text  # from the lock (scripts/lock.sh)
        assert "COPY docker/dagster.yaml $DAGSTER_HOME/dagster.yaml" in text
        for line in text.splitlines():
            if line.startswith("COPY "):
                for src in line.split()[1:-1]:
                    assert (REPO / src).exists(), f"Dockerfile copies missing {src}"
    assert "dagster-postgres" in (REPO / "pyproject.toml").read_text()


def test_instance_config_validates_with_postgres_and_loads_for_the_daemon(tmp_path, monkeypatch):
    from dagster import DagsterInstance
    from dagster._core.instance.config import dagster_instance_config
    from dagster._core.run_coordinator import QueuedRunCoordinator
    from dagster._daemon.controller import create_daemons_from_instance

    for var, value in {"DAGSTER_POSTGRES_USER": "u", "DAGSTER_POSTGRES_PASSWORD": "p", "DAGSTER_POSTGRES_HOST": "h", "DAGSTER_POSTGRES_DB": "d"}.items():
        monkeypatch.setenv(var, value)
    shutil.copy(REPO / "docker" / "dagster.yaml", tmp_path / "dagster.yaml")
    config, _ = dagster_instance_config(str(tmp_path))  # full schema validation, postgres section included
    assert config["storage"]["postgres"]["postgres_db"]["hostname"] == {"env": "DAGSTER_POSTGRES_HOST"}
    assert config["run_coordinator"]["class"] == "QueuedRunCoordinator"

    # the same file with SQLite storage instead of PostgreSQL loads as an instance and yields the daemons
    home = tmp_path / "home"
    home.mkdir()
    (home / "dagster.yaml").write_text(instance_yaml_for_tests(home))
    with DagsterInstance.from_config(str(home)) as instance:
        assert isinstance(instance.run_coordinator, QueuedRunCoordinator)
        daemons = {d.daemon_type() for d in create_daemons_from_instance(instance)}
        assert {"SENSOR", "SCHEDULER", "QUEUED_RUN_COORDINATOR"} <= daemons
        assert instance.get_concurrency_config().pool_config.default_pool_limit == 1


def test_k8s_scale_out_config_requests_gpus_for_the_gpu_pool_steps():
    from semid_pipeline.definitions import defs, select_executor

    config = yaml.safe_load((REPO / "docker" / "scale-out" / "k8s_executor.yaml").read_text())["execution"]["config"]
    per_step = config["per_step_k8s_config"]
    gpu_ops = {a.op.name for a in defs.resolve_asset_graph().assets_defs if a.is_executable and getattr(a.op, "pool", None) == "gpu"}
    assert {"sid_tokenizer", "generative_recommender", "sasrec_model"} <= set(per_step) <= gpu_ops
    for step in per_step.values():
        assert step["container_config"]["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert "nvidia.com/gpu" not in str(config["step_k8s_config"])  # CPU steps request no GPU
    helm = yaml.safe_load((REPO / "docker" / "scale-out" / "helm-values.yaml").read_text())
    env = {e["name"]: e["value"] for e in helm["dagster-user-deployments"]["deployments"][0]["env"]}
    assert env["SEMID_EXECUTOR"] == "k8s" and helm["runLauncher"]["type"] == "K8sRunLauncher"
    assert select_executor("multiprocess").name == "multiprocess" and select_executor("in_process").name == "in_process"
    with pytest.raises(ValueError, match="SEMID_EXECUTOR"):
        select_executor("celery-typo")


def test_schedule_requests_one_run_per_dataset_with_the_configured_mode(tmp_path, monkeypatch):
    from datetime import datetime, timezone

    from dagster import build_schedule_context

    from semid_pipeline.definitions import defs
    from semid_pipeline.jobs import RETOKENIZE_DATASETS, retokenize_run_config, retokenize_schedule

    when = datetime(2026, 1, 4, 3, 0, tzinfo=timezone.utc)
    ctx = build_schedule_context(scheduled_execution_time=when, repository_def=defs.get_repository_def())
    requests = retokenize_schedule.evaluate_tick(ctx).run_requests
    assert [r.partition_key for r in requests] == RETOKENIZE_DATASETS
    assert all(r.run_key.endswith("-20260104T0300") for r in requests)  # one run per dataset and tick

    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump({"ops": {"sid_tokenizer": {"config": {"epochs": 3}}, "semantic_ids": {"config": {"max_collision_rate": 0.2}}}}))
    monkeypatch.setenv("SEMID_RETOKENIZE_CONFIG", str(config))
    full = retokenize_run_config("full")
    assert full["ops"]["sid_tokenizer"]["config"]["epochs"] == 3
    assert full["ops"]["semantic_ids"]["config"] == {"max_collision_rate": 0.2, "mode": "full"}
    frozen = retokenize_run_config("frozen")
    assert set(frozen["ops"]) == {"semantic_ids"} and frozen["ops"]["semantic_ids"]["config"]["mode"] == "frozen"
