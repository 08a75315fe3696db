"""Issue 17, class 2 (unknown keys): every options / Params model forbids unknown keys and names the
close match; invalid JSON in SEMID_DATASET_OPTIONS names the variable."""

import importlib
import pkgutil

import pytest
from dagster import DagsterInstance, materialize, validate_run_config
from pydantic import BaseModel, ValidationError

import semid_pipeline
from semid_pipeline.assets import ingestion
from semid_pipeline.core import storage
from semid_pipeline.core.data.registry import load_raw, parse_options
from semid_pipeline.core.errors import InputError
from semid_pipeline.core.params import StrictParams
from semid_pipeline.definitions import defs

from .conftest import tiny_resources


def _all_params_classes():
    for mod in pkgutil.walk_packages(semid_pipeline.__path__, "semid_pipeline."):
        if ".devtools" in mod.name or mod.name.endswith("hf_adapter") or mod.name.endswith("local_llm"):
            continue
        importlib.import_module(mod.name)
    seen, todo = set(), [BaseModel]
    while todo:
        for sub in todo.pop().__subclasses__():
            if sub not in seen:
                seen.add(sub)
                todo.append(sub)
    return sorted((c for c in seen if c.__module__.startswith("semid_pipeline.core") and c.__name__.endswith("Params") and c is not StrictParams),
                  key=lambda c: c.__name__)


def test_every_core_params_class_is_strict():
    classes = _all_params_classes()
    assert len(classes) >= 20, [c.__name__ for c in classes]
    not_strict = [c.__name__ for c in classes if not issubclass(c, StrictParams)]
    assert not_strict == []
    for cls in classes:
        field = max(sorted(cls.model_fields), key=len)
        typo = field + field[-1]  # "epochss", the kind of slip a user makes
        with pytest.raises(ValidationError) as err:
            cls.model_validate({typo: 1})
        assert f"unknown key {typo!r} (did you mean {field!r}?)" in str(err.value), (cls.__name__, str(err.value))


@pytest.mark.parametrize(
    "options, named",
    [
        ('{"amazon-beauty": {"rooot": "my/folder"}}', "SEMID_DATASET_OPTIONS['amazon-beauty']: unknown key 'rooot' (did you mean 'root'?)"),
        ('{"demo": {"n_item": 80}}', "SEMID_DATASET_OPTIONS['demo']: unknown key 'n_item' (did you mean 'n_items'?)"),
        ('{"demo": {"n_queries": 10, "n_userz": 5}}', "unknown key 'n_userz' (did you mean 'n_users'?)"),
        ('{"kuairand": {"variantt": "pure"}}', "unknown key 'variantt' (did you mean 'variant'?)"),
        ('{"esci": {"locales": "us"}}', "unknown key 'locales' (did you mean 'locale'?)"),
        ('{"amazon-beuty": {}}', "SEMID_DATASET_OPTIONS: unknown dataset 'amazon-beuty' (did you mean 'amazon-beauty'?)"),
        ('{"demo": {"n_items": 80', "SEMID_DATASET_OPTIONS: invalid JSON (Expecting ',' delimiter at line 1 column 24)"),
        ('[1, 2]', "SEMID_DATASET_OPTIONS: must be a JSON object"),
        ('{"demo": 5}', "SEMID_DATASET_OPTIONS['demo']: must be a JSON object"),
    ],
)
def test_dataset_options_are_checked(options, named):
    with pytest.raises(InputError) as err:
        parse_options(options)
    assert named in str(err.value)
    assert "\n" not in str(err.value)


def test_load_raw_refuses_unknown_option_before_loading(tmp_path):
    with pytest.raises(InputError, match=r"'rooot' \(did you mean 'root'\?\)"):
        load_raw("amazon-beauty", str(tmp_path), {"rooot": str(tmp_path)})
    # the demo accepts its query options too (the retrieval stage reads them)
    assert len(load_raw("demo", str(tmp_path), {"n_items": 100, "n_users": 120, "n_queries": 5}).items) == 100


def test_unknown_option_fails_the_run_and_keeps_outputs(tmp_path):
    data_dir = tmp_path / "data"
    instance = DagsterInstance.ephemeral()
    assert materialize([ingestion.raw_dataset], partition_key="demo", resources=tiny_resources(data_dir), instance=instance).success
    before = storage.table_path(data_dir, "raw_items", "demo").read_bytes()
    with pytest.raises(InputError, match=r"'n_item' \(did you mean 'n_items'\?\)"):
        materialize([ingestion.raw_dataset], partition_key="demo", instance=instance,
                    resources=tiny_resources(data_dir, {"demo": {"n_item": 80}}))
    assert storage.table_path(data_dir, "raw_items", "demo").read_bytes() == before


def test_run_config_unknown_key_is_refused():
    with pytest.raises(Exception, match="epoch"):
        validate_run_config(defs.resolve_job_def("full_pipeline"), {"ops": {"generative_recommender": {"config": {"epoch": 3}}}})
