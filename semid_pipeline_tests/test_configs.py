"""The shipped run configs (configs/*.yaml) validate against the assets' typed config."""

from pathlib import Path

import pytest
import yaml
from dagster import validate_run_config

from semid_pipeline.definitions import defs

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_run_config_validates(path):
    config = yaml.safe_load(path.read_text())
    validated = validate_run_config(defs.resolve_job_def("full_pipeline"), config)
    assert set(config["ops"]) <= set(validated["ops"])


def test_bad_config_value_is_rejected():
    with pytest.raises(Exception, match="mixed_precision|fp8"):
        validate_run_config(defs.resolve_job_def("full_pipeline"), {"ops": {"generative_recommender": {"config": {"mixed_precision": "fp8"}}}})
