"""Tables on disk: one Parquet file per (table, dataset), a DuckDB file with a view per table.

Layout under ``data_dir``::

    tables/<table>/dataset=<partition>/part.parquet      hive-partitioned by dataset
    models/<asset>/dataset=<partition>/                  safetensors + config.json
    semid.duckdb                                         one view per table over all datasets

Writes are atomic (temp file + ``os.replace``), so a failed run leaves the previous output intact.
A :class:`RunJournal` keeps what a run replaced (hard links: no copy of the bytes) so that a run
that is refused later on can put every earlier output back byte-identical (:meth:`RunJournal.rollback`).
The views read every dataset partition of a table and expose it as a ``dataset`` column, so
``select * from semantic_ids where dataset = 'demo'`` works right after a run.

:func:`query` (and the ``python -m semid_pipeline.query`` CLI) is read-only in fact, not only by
intent: it never opens ``semid.duckdb`` (so a writer holding its lock does not block it); it
builds the same views on an in-memory connection, then restricts file access to
``<data_dir>/tables`` (``allowed_directories`` + ``enable_external_access = false``, no extension
loading, ``lock_configuration``) and runs only ``SELECT`` statements (``select``, ``with``,
``from``, ``describe``, ``show``, ``summarize``, ``values``). ``COPY``, ``ATTACH``, ``EXPORT``,
``SET``, ``INSTALL``/``LOAD``, ``PRAGMA``, ``CALL`` and DDL are refused with :class:`QueryError`
before anything runs, and reads outside the tables folder (``read_text('/etc/passwd')``) fail.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import uuid
from pathlib import Path
from typing import Iterable

import duckdb
import numpy as np
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


ROW_GROUP_ROWS = 65_536
"""Rows per Parquet row group: a reader decodes one group at a time, so reading a 10^6-row table of
384-dim vectors costs the table plus one group, not a second copy of the whole column."""


def _vector_rows(values: np.ndarray) -> np.ndarray | None:
    """``values`` (an object column) as one ``[n, dim]`` float matrix when every row is a 1-D float array of
    the same length (an embedding column), else None."""
    if not len(values) or not isinstance(values[0], np.ndarray) or values[0].ndim != 1 or values[0].dtype.kind != "f":
        return None
    dim = len(values[0])
    if not all(isinstance(v, np.ndarray) and v.ndim == 1 and len(v) == dim for v in values):
        return None
    return np.stack(values).astype(values[0].dtype, copy=False)


def to_arrow(df: pd.DataFrame | pa.Table) -> pa.Table:
    """A table as Arrow. Embedding columns (every row a float array of one length) become
    ``fixed_size_list<float>`` built from one stacked matrix: no per-row conversion, and a reader gets
    the values as one contiguous buffer (:func:`read_table`)."""
    if isinstance(df, pa.Table):
        return df
    vectors = {}
    for name in df.columns:
        if df[name].dtype == object:
            matrix = _vector_rows(df[name].to_numpy())
            if matrix is not None:
                vectors[name] = pa.FixedSizeListArray.from_arrays(pa.array(matrix.reshape(-1)), matrix.shape[1])
    table = pa.Table.from_pandas(df.drop(columns=list(vectors)), preserve_index=False)
    for name, column in vectors.items():
        table = table.append_column(name, column)
    return table.select([str(c) for c in df.columns])


def write_table(data_dir: str | os.PathLike, table: str, dataset: str, df: pd.DataFrame | pa.Table) -> Path:
    """Writes one dataset partition of a table atomically (row groups of :data:`ROW_GROUP_ROWS`) and
    refreshes its DuckDB view."""
    path = table_path(data_dir, table, dataset)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".part.parquet.tmp-{uuid.uuid4().hex[:8]}")
    try:
        pq.write_table(to_arrow(df), tmp, compression="zstd", row_group_size=ROW_GROUP_ROWS)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    refresh_views(data_dir, [table])
    return path


RUNS_DIR = ".runs"
"""Under ``data_dir``: one folder per running run with its journal and the outputs it replaced."""


class RunJournal:
    """What one run replaced under ``data_dir``, so that :meth:`rollback` can restore it.

    Before an output (a table file or a model folder) is replaced, :meth:`keep` hard-links the
    current one into ``<data_dir>/.runs/<dataset>/<run_id>/kept/<n>`` (no bytes copied; the
    replacement is a new file, so the link keeps the old content) and appends ``{"path", "kept"}`` to
    ``journal.jsonl`` (``kept`` null when there was nothing: rollback then removes the new output).
    This relies on outputs being replaced, never modified in place (:func:`write_table` and
    ``save_artifact`` write a new file or folder and rename it over the old one).
    The first :meth:`keep` of a path in a run wins: a second write of the same output in one run
    still restores the state before the run. :meth:`discard` forgets it all (the run's outputs stay).
    """

    def __init__(self, data_dir: str | os.PathLike, dataset: str, run_id: str):
        self.data_dir = Path(data_dir)
        self.root = self.data_dir / RUNS_DIR / dataset / run_id
        self._seen: set[str] = set()

    @property
    def journal_path(self) -> Path:
        return self.root / "journal.jsonl"

    def entries(self) -> list[dict]:
        if not self.journal_path.exists():
            return []
        return [json.loads(line) for line in self.journal_path.read_text().splitlines() if line.strip()]

    def keep(self, path: str | os.PathLike) -> None:
        path = Path(path)
        key = str(path)
        if key in self._seen or any(e["path"] == key for e in self.entries()):
            self._seen.add(key)
            return
        kept = None
        if path.exists():
            kept = self.root / "kept" / str(len(self.entries()))
            kept.parent.mkdir(parents=True, exist_ok=True)
            if path.is_dir():
                shutil.copytree(path, kept, copy_function=os.link)
            else:
                os.link(path, kept)
        self.root.mkdir(parents=True, exist_ok=True)
        with self.journal_path.open("a") as fh:
            fh.write(json.dumps({"path": key, "kept": str(kept) if kept else None}) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        self._seen.add(key)

    def rollback(self) -> list[str]:
        """Puts every output the run replaced back as it was (newest first); returns their paths."""
        restored = []
        for entry in reversed(self.entries()):
            path = Path(entry["path"])
            if path.is_dir():
                shutil.rmtree(path)
            elif path.exists():
                path.unlink()
            if entry["kept"]:
                os.replace(entry["kept"], path)
            restored.append(str(path))
        tables = {Path(p).parent.parent.name for p in restored if Path(p).name == "part.parquet"}
        self.discard()
        refresh_views(self.data_dir, sorted(t for t in tables if (table_dir(self.data_dir, t)).is_dir()))
        return restored

    def discard(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)
        self._seen.clear()


def discard_stale_journals(data_dir: str | os.PathLike, dataset: str, keep: str | None = None) -> list[str]:
    """Removes the journals of ``dataset``'s runs that are over (a killed run's: what its finished steps
    wrote stays); call only while holding the partition. Returns the run ids removed."""
    root = Path(data_dir) / RUNS_DIR / dataset
    removed = []
    for run in sorted(root.glob("*")) if root.is_dir() else []:
        if run.name != keep:
            shutil.rmtree(run, ignore_errors=True)
            removed.append(run.name)
    return removed


def _is_vector_type(t: pa.DataType) -> bool:
    return (pa.types.is_fixed_size_list(t) or pa.types.is_list(t) or pa.types.is_large_list(t)) and pa.types.is_floating(t.value_type)


def _read_vectors(file: pq.ParquetFile, name: str) -> np.ndarray | None:
    """Column ``name`` (a list of floats per row) as one ``[rows, dim]`` matrix, filled row group by row
    group into a preallocated array; None when the rows differ in length, have nulls or there are none
    (the caller then converts the column the general way)."""
    matrix, at = None, 0
    for group in range(file.num_row_groups):
        column = file.read_row_group(group, columns=[name]).column(0).combine_chunks()
        if not len(column):
            continue
        if column.null_count:
            return None
        if pa.types.is_fixed_size_list(column.type):
            dim = column.type.list_size
        else:
            lengths = np.diff(column.offsets.to_numpy())
            dim = int(lengths[0])
            if (lengths != dim).any():
                return None
        flat = column.flatten()
        if flat.null_count or (matrix is not None and dim != matrix.shape[1]):
            return None
        if matrix is None:
            matrix = np.empty((file.metadata.num_rows, dim), dtype=flat.type.to_pandas_dtype())
        matrix[at : at + len(column)] = flat.to_numpy(zero_copy_only=False).reshape(len(column), dim)
        at += len(column)
    return matrix


def read_table(data_dir: str | os.PathLike, table: str, dataset: str) -> pd.DataFrame:
    """One dataset partition of a table as a DataFrame. An embedding column (a float list per row) is
    read row group by row group into one ``[rows, dim]`` matrix, and the column holds its rows (views,
    no copy): :func:`semid_pipeline.core.frames.embedding_matrix` stacks them back. Peak memory is the
    table plus one row group, where a plain ``to_pandas`` held the Arrow column, its decode buffers and
    per-row arrays (three copies of a 1.5 GB table at 10^6 items x 384 dims)."""
    path = table_path(data_dir, table, dataset)
    if not path.exists():
        raise FileNotFoundError(f"{path}: table {table!r} has not been materialized for dataset {dataset!r}")
    file = pq.ParquetFile(path)
    schema = file.schema_arrow
    vectors = {}
    for field in schema:
        if _is_vector_type(field.type):
            matrix = _read_vectors(file, field.name)
            if matrix is not None:
                vectors[field.name] = matrix
    rest = [f.name for f in schema if f.name not in vectors]
    df = file.read(columns=rest).to_pandas() if rest else pd.DataFrame(index=pd.RangeIndex(file.metadata.num_rows))
    for name, matrix in vectors.items():
        column = np.empty(len(matrix), dtype=object)
        for i, row in enumerate(matrix):  # element-wise: a slice assignment would broadcast the 2-D matrix
            column[i] = row
        df[name] = column
    return df if list(df.columns) == schema.names else df[schema.names]


def duckdb_path(data_dir: str | os.PathLike) -> Path:
    return Path(data_dir) / DUCKDB_FILE


def _view_sql(root: Path, name: str) -> str:
    glob = str(root / name / "dataset=*" / "part.parquet").replace("'", "''")
    return (
        f"create or replace view {_check_name(name)} as "
        f"select * from read_parquet('{glob}', hive_partitioning = true, union_by_name = true)"
    )


def _table_names(root: Path) -> list[str]:
    return sorted(p.name for p in root.glob("*") if p.is_dir() and _NAME.match(p.name) and any(p.glob("dataset=*/part.parquet")))


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
            con.execute(_view_sql(root, name))
            done.append(name)
    finally:
        con.close()
    return done


class QueryError(ValueError):
    """A query the read-only query path refuses or cannot run; ``str(err)`` is one line."""


READ_ONLY_STATEMENTS = ("SELECT",)
"""DuckDB statement types :func:`query` runs; everything else (COPY, ATTACH, SET, ...) is refused."""


def read_only_connection(data_dir: str | os.PathLike) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB connection with one view per table, locked down to reading ``<data_dir>/tables``.

    After the views exist: file access only under the tables folder, no extensions installed or
    loaded, and the configuration locked so a query cannot undo any of it. Never touches
    ``semid.duckdb``.
    """
    root = (Path(data_dir) / "tables").resolve()
    if not root.is_dir():
        raise QueryError(f"{root}: no tables here (materialize an asset first, or pass --data-dir / set SEMID_DATA_DIR)")
    con = duckdb.connect(":memory:")
    try:
        for name in _table_names(root):
            con.execute(_view_sql(root, name))
        allowed = str(root).replace("'", "''") + os.sep
        for setting in (
            f"set allowed_directories = ['{allowed}']",
            "set enable_external_access = false",
            "set autoinstall_known_extensions = false",
            "set autoload_known_extensions = false",
            "set lock_configuration = true",
        ):
            con.execute(setting)
    except BaseException:
        con.close()
        raise
    return con


def query(data_dir: str | os.PathLike, sql: str, max_rows: int | None = None) -> pd.DataFrame:
    """Runs ``sql`` (one or more SELECT statements; the last one's rows are returned) read-only.

    Raises :class:`QueryError` (one line) for a statement that is not a SELECT, a syntax error, an
    unknown table or column, or a file outside ``<data_dir>/tables``; the tables are never written.
    With ``max_rows`` at most that many rows are fetched (streamed in batches, so a query returning
    billions of rows costs no more memory than ``max_rows`` of them); ``df.attrs["truncated"]`` then
    says whether there were more.
    """
    if max_rows is not None and max_rows < 1:
        raise QueryError(f"max_rows must be >= 1, got {max_rows}")
    con = read_only_connection(data_dir)
    try:
        try:
            statements = con.extract_statements(sql)
        except duckdb.Error as e:
            raise QueryError(_one_line(e)) from None
        if not statements:
            raise QueryError("empty query: give one SELECT statement")
        for st in statements:
            kind = str(st.type).rsplit(".", 1)[-1]
            if kind not in READ_ONLY_STATEMENTS:
                raise QueryError(
                    f"refused: {kind} statement {_short(st.query)!r}; the query path is read-only and runs only SELECT "
                    "(select / with / from / describe / show / summarize)"
                )
        try:
            for st in statements[:-1]:
                con.execute(st)
            if max_rows is None:
                return con.execute(statements[-1]).df()
            return _first_rows(con, statements[-1].query, max_rows)
        except duckdb.Error as e:
            raise QueryError(_one_line(e)) from None
        except MemoryError:
            raise QueryError("out of memory computing the result: add a LIMIT or aggregate (count(*), group by)") from None
    finally:
        con.close()


def _first_rows(con: duckdb.DuckDBPyConnection, sql: str, max_rows: int) -> pd.DataFrame:
    """At most ``max_rows`` rows of ``sql``'s result, streamed in batches (the rest is never computed);
    ``attrs["truncated"]`` set."""
    relation = con.sql(sql)
    if relation is None:  # a statement without a result set
        return pd.DataFrame()
    reader = relation.to_arrow_reader(min(max_rows + 1, 100_000))
    batches, n = [], 0
    for batch in reader:
        batches.append(batch)
        n += batch.num_rows
        if n > max_rows:
            break
    table = pa.Table.from_batches(batches, schema=reader.schema).slice(0, max_rows)
    df = table.to_pandas()
    df.attrs["truncated"] = n > max_rows
    return df


def _one_line(err: BaseException) -> str:
    lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
    text = lines[0] if lines else type(err).__name__
    hint = next((ln for ln in lines[1:] if ln.lower().startswith("did you mean")), None)
    return f"{text} ({hint})" if hint else text


def _short(sql: str, n: int = 60) -> str:
    sql = " ".join(sql.split())
    return sql if len(sql) <= n else sql[: n - 3] + "..."


if __name__ == "__main__":  # pragma: no cover - tiny CLI
    import sys

    print("refreshed:", ", ".join(refresh_views(sys.argv[1] if len(sys.argv) > 1 else "data")))
