"""Tables on disk: one Parquet file per (table, dataset), a DuckDB file with a view per table.

Layout under ``data_dir``::

    tables/<table>/dataset=<partition>/part.parquet      hive-partitioned by dataset
    models/<asset>/dataset=<partition>/                  safetensors + config.json
    semid.duckdb                                         one view per table over all datasets

Writes are atomic (temp file + ``os.replace``), so a failed run leaves the previous output intact.
The views read every dataset partition of a table and expose it as a ``dataset`` column, so
``select * from semantic_ids where dataset = 'demo'`` works right after a run.
"""

from __future__ import annotations

import os
import re
import uuid
from pathlib import Path
from typing import Iterable

import duckdb
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
DUCKDB_FILE = "semid.duckdb"


def _check_name(name: str) -> str:
    if not _NAME.match(name):
        raise ValueError(f"table name {name!r} must be an identifier ([A-Za-z_][A-Za-z0-9_]*)")
    return name


def table_dir(data_dir: str | os.PathLike, table: str) -> Path:
    return Path(data_dir) / "tables" / _check_name(table)


def table_path(data_dir: str | os.PathLike, table: str, dataset: str) -> Path:
    return table_dir(data_dir, table) / f"dataset={dataset}" / "part.parquet"


def model_dir(data_dir: str | os.PathLike, asset: str, dataset: str) -> Path:
    return Path(data_dir) / "models" / _check_name(asset) / f"dataset={dataset}"


def to_arrow(df: pd.DataFrame | pa.Table) -> pa.Table:
    if isinstance(df, pa.Table):
        return df
    return pa.Table.from_pandas(df, preserve_index=False)


def write_table(data_dir: str | os.PathLike, table: str, dataset: str, df: pd.DataFrame | pa.Table) -> Path:
    """Writes one dataset partition of a table atomically and refreshes its DuckDB view."""
    path = table_path(data_dir, table, dataset)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".part.parquet.tmp-{uuid.uuid4().hex[:8]}")
    try:
        pq.write_table(to_arrow(df), tmp, compression="zstd")
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    refresh_views(data_dir, [table])
    return path


def read_table(data_dir: str | os.PathLike, table: str, dataset: str) -> pd.DataFrame:
    path = table_path(data_dir, table, dataset)
    if not path.exists():
        raise FileNotFoundError(f"{path}: table {table!r} has not been materialized for dataset {dataset!r}")
    return pq.read_table(path).to_pandas()


def duckdb_path(data_dir: str | os.PathLike) -> Path:
    return Path(data_dir) / DUCKDB_FILE


def refresh_views(data_dir: str | os.PathLike, tables: Iterable[str] | None = None) -> list[str]:
    """(Re)creates ``create view <table>`` over every dataset partition of each table.

    Returns the views refreshed. If another process holds the DuckDB file's write lock (a user
    with the CLI open, say), the refresh is skipped: the Parquet files are already written, and
    the next write, or ``python -m semid_pipeline.core.storage <data_dir>``, refreshes the views.
    """
    data_dir = Path(data_dir).resolve()
    root = data_dir / "tables"
    names = sorted(tables) if tables is not None else sorted(p.name for p in root.glob("*") if p.is_dir())
    try:
        con = duckdb.connect(str(duckdb_path(data_dir)))
    except duckdb.IOException:
        return []
    done = []
    try:
        for name in names:
            files = sorted((root / name).glob("dataset=*/part.parquet"))
            if not files:
                continue
            glob = str(root / name / "dataset=*" / "part.parquet").replace("'", "''")
            con.execute(
                f"create or replace view {_check_name(name)} as "
                f"select * from read_parquet('{glob}', hive_partitioning = true, union_by_name = true)"
            )
            done.append(name)
    finally:
        con.close()
    return done


def query(data_dir: str | os.PathLike, sql: str) -> pd.DataFrame:
    """Runs ``sql`` against the DuckDB file (read-only) and returns a DataFrame."""
    con = duckdb.connect(str(duckdb_path(data_dir)), read_only=True)
    try:
        return con.execute(sql).df()
    finally:
        con.close()


if __name__ == "__main__":  # pragma: no cover - tiny CLI
    import sys

    print("refreshed:", ", ".join(refresh_views(sys.argv[1] if len(sys.argv) > 1 else "data")))
