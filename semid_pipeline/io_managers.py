"""IO managers: tables to Parquet (+ DuckDB views), models to safetensors + JSON.

Both write atomically, so a failed re-materialization leaves the previous output in place. Before
replacing an output they check that their run still holds the dataset partition (a step left over
from a killed run must not write under the run that replaced it) and journal the output they
replace, so a refused run can be rolled back (``semid_pipeline/run_guard.py``).
"""

from contextlib import contextmanager
from typing import Any, Iterator

import pandas as pd
from dagster import ConfigurableIOManager, InitResourceContext, InputContext, MetadataValue, OutputContext

from semid_pipeline.core import storage as tables
from semid_pipeline.core.artifacts import Artifact, load_artifact, read_artifact_meta, save_artifact
from semid_pipeline.metadata import table_metadata
from semid_pipeline.resources import StorageResource
from semid_pipeline.run_guard import check_writer, guarded_run


def _partition(context: InputContext | OutputContext) -> str:
    if context.has_asset_partitions:
        keys = list(context.asset_partition_keys)
        if len(keys) != 1:
            raise ValueError(f"{context.asset_key.to_user_string()}: expected one dataset partition, got {keys}")
        return keys[0]
    return "default"


def _before_replacing(context: OutputContext, data_dir: str, path) -> None:
    dataset = _partition(context)
    check_writer(data_dir, dataset, context.run_id)
    tables.RunJournal(data_dir, dataset, context.run_id).keep(path)


def add_missing_metadata(context: OutputContext, metadata: dict[str, Any]) -> None:
    """Adds the IO manager's entries that the asset did not set itself: Dagster lets IO-manager
    metadata replace the asset's on a shared key, and the asset's own value is the one that means something."""
    own = set(context.output_metadata or {})
    context.add_output_metadata({k: v for k, v in metadata.items() if k not in own})


class _GuardedIOManager(ConfigurableIOManager):
    """Both IO managers enter the run guard (``run_guard.guarded_run``: partition lock, dead runs'
    slots freed, refused runs rolled back) for as long as the run uses them; the first one in does
    the work. Here and not on ``StorageResource``, which sensors use outside any run."""

    storage: StorageResource

    @contextmanager
    def yield_for_execution(self, context: InitResourceContext) -> Iterator[Any]:
        with guarded_run(context, self.storage.data_dir):
            yield self.create_resource(context)


class ParquetIOManager(_GuardedIOManager):
    """Stores each (table asset, dataset) as ``<data_dir>/tables/<asset>/dataset=<key>/part.parquet``."""

    def handle_output(self, context: OutputContext, obj: pd.DataFrame) -> None:
        if obj is None:
            return
        name = context.asset_key.path[-1]
        _before_replacing(context, self.storage.data_dir, tables.table_path(self.storage.data_dir, name, _partition(context)))
        path = tables.write_table(self.storage.data_dir, name, _partition(context), obj)
        add_missing_metadata(
            context,
            {
                **table_metadata(obj, path),
                "path": MetadataValue.path(str(path)),
                "duckdb_view": f"select * from {name} where dataset = '{_partition(context)}'",
            },
        )

    def load_input(self, context: InputContext) -> pd.DataFrame:
        return tables.read_table(self.storage.data_dir, context.asset_key.path[-1], _partition(context))


class ModelIOManager(_GuardedIOManager):
    """Stores each (model asset, dataset) as safetensors + JSON under ``<data_dir>/models``."""

    def handle_output(self, context: OutputContext, obj: Artifact) -> None:
        if obj is None:
            return
        directory = tables.model_dir(self.storage.data_dir, context.asset_key.path[-1], _partition(context))
        _before_replacing(context, self.storage.data_dir, directory)
        extra: dict[str, Any] = {"run_id": context.run_id, "asset": context.asset_key.to_user_string()}
        extra.update(getattr(obj, "artifact_extra", None) or {})  # e.g. the tokenizer version a recommender was trained on
        save_artifact(obj, directory, extra=extra)
        n_params = sum(int(t.numel()) for t in obj.artifact_tensors().values())
        add_missing_metadata(context, {"path": MetadataValue.path(str(directory)), "artifact_kind": obj.KIND, "n_tensor_values": n_params})

    def load_input(self, context: InputContext) -> Artifact:
        directory = tables.model_dir(self.storage.data_dir, context.asset_key.path[-1], _partition(context))
        obj = load_artifact(directory)
        obj.artifact_extra = dict(read_artifact_meta(directory).get("extra", {}))
        return obj
