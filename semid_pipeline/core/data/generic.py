"""The generic format: a shop's own catalog and logs, two tables, into a :class:`RawDataset`.

A dataset in this format is two files, each Parquet, CSV (or TSV) or JSON Lines, optionally
gzip-compressed (``.gz``); the type comes from the file name (``items.parquet``, ``events.csv.gz``,
``log.jsonl``) or from ``file_format``.

Items table (one row per item):

=============  ========  =====================================================================
column         required  values
=============  ========  =====================================================================
item_id        yes       the item's id (strings or integers; read as text, ``"007"`` stays)
title          yes       product title (an empty or missing title is allowed per row)
brand          no        brand name
categories     no        one category path, root first: a list (Parquet / JSON) or a string
                         ``"A > B > C"`` split on ``category_separator``
description    no        free text
image          no        image URL or local path
=============  ========  =====================================================================

Interactions table (one row per event): ``user_id``, ``item_id``, ``timestamp`` required,
``rating`` optional. ``timestamp`` is epoch seconds (``timestamp_format: epoch_milliseconds`` for
milliseconds), an ISO 8601 string (``2024-03-01T12:30:00Z``; without a zone it is read as UTC)
or a Parquet timestamp column; ``auto`` (the default) takes epoch numbers when every value is a
number and ISO 8601 otherwise. Times are kept in whole seconds; events of a user at the same
second keep their file order.

``columns`` maps these names to the file's own (``{item_id: sku, timestamp: event_time}``);
other columns of the file are ignored.

Checked before anything is returned, each failure an ``InputError`` naming the file, the row
(1-based data row: row 1 is the first row after a CSV header) and the column: the file exists
and has every required column (the close match of a misspelt one is named), the table is not
empty, ids are present, an item id that appears twice has the same content both times (exact
repeats are counted and dropped), every time parses, ratings are numbers. Interactions naming
an item the items table lacks are counted and dropped (``unknown_items: drop``, a warning with
the count) or refused (``unknown_items: refuse``). Items without interactions stay in the
catalog: they are the cold items, and they still get semantic IDs.

:func:`write_generic` writes a :class:`RawDataset` in this format: a generator (the synthetic
scale data, the Beauty conversion benchmark) writes files and a datasets-file entry points at
them, so generated data goes through exactly the path a user's files take.
"""

from __future__ import annotations

import difflib
import gzip
import json
import logging
from pathlib import Path
from typing import Any, Dict, Literal, Optional

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
from pydantic import Field, field_validator

from semid_pipeline.core.data.schema import RawDataset, id_problem, validate_raw
from semid_pipeline.core.errors import InputError
from semid_pipeline.core.params import StrictParams, unknown_keys_problem

_log = logging.getLogger(__name__)

_STR = pd.StringDtype(na_value=np.nan)  # the text dtype the other loaders' id columns have

ITEM_REQUIRED: tuple[str, ...] = ("item_id", "title")
ITEM_OPTIONAL: tuple[str, ...] = ("brand", "categories", "description", "image")
INTERACTION_REQUIRED: tuple[str, ...] = ("user_id", "item_id", "timestamp")
INTERACTION_OPTIONAL: tuple[str, ...] = ("rating",)

FileFormat = Literal["parquet", "csv", "jsonl"]
_SUFFIXES: Dict[str, FileFormat] = {
    ".parquet": "parquet", ".pq": "parquet", ".csv": "csv", ".tsv": "csv", ".txt": "csv",
    ".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "jsonl",
}


class TableSource(StrictParams):
    """One table of a generic dataset: its file, type and column names."""

    path: str = Field(description="The file (Parquet, CSV/TSV or JSON Lines, optionally .gz); relative paths are "
                                  "relative to the datasets file that declares them.")
    columns: Dict[str, str] = Field(default_factory=dict, description="Pipeline column name -> the file's column name, "
                                                                      "for the names that differ (e.g. item_id: sku).")
    file_format: Optional[FileFormat] = Field(None, description="parquet | csv | jsonl; None: from the file name.")
    delimiter: Optional[str] = Field(None, description="CSV field separator; None: ',' (a tab for .tsv).")


class GenericParams(StrictParams):
    """A dataset in the generic format: an items table and an interactions table."""

    items: TableSource = Field(description="The catalog: item_id, title [, brand, categories, description, image].")
    interactions: TableSource = Field(description="The logs: user_id, item_id, timestamp [, rating].")
    timestamp_format: Literal["auto", "epoch_seconds", "epoch_milliseconds", "iso8601"] = Field(
        "auto", description="How interactions.timestamp is written; auto: epoch seconds when every value is a number, "
                            "else ISO 8601.")
    unknown_items: Literal["drop", "refuse"] = Field(
        "drop", description="Interactions naming an item missing from the items table: drop them (counted, warned) or "
                            "refuse the dataset.")
    category_separator: str = Field(">", min_length=1, description="Splits a categories string into a path "
                                                                   "('A > B > C'); names are stripped.")

    @field_validator("items", "interactions", mode="before")
    @classmethod
    def _path_shorthand(cls, value: Any) -> Any:
        return {"path": value} if isinstance(value, str) else value

    @field_validator("items")
    @classmethod
    def _item_columns(cls, value: TableSource) -> TableSource:
        return _check_mapping(value, ITEM_REQUIRED + ITEM_OPTIONAL)

    @field_validator("interactions")
    @classmethod
    def _interaction_columns(cls, value: TableSource) -> TableSource:
        return _check_mapping(value, INTERACTION_REQUIRED + INTERACTION_OPTIONAL)


def _check_mapping(source: TableSource, known: tuple[str, ...]) -> TableSource:
    problem = unknown_keys_problem(list(source.columns), known)
    if problem:
        raise ValueError(f"columns: {problem}")
    return source


# ---------------------------------------------------------------------------------------------
# reading one table


def file_format(source: TableSource) -> FileFormat:
    """The declared ``file_format``, else the one the file name ends with (``.gz`` looked through)."""
    if source.file_format:
        return source.file_format
    name = Path(source.path).name.lower()
    if name.endswith(".gz"):
        name = name[:-3]
    kind = _SUFFIXES.get(Path(name).suffix)
    if kind is None:
        raise InputError(source.path, None, f"unknown file type {Path(name).suffix or name!r}; name it .parquet, .csv, .tsv or "
                                            f".jsonl (optionally .gz) or set file_format")
    return kind


def _open(path: Path):
    return gzip.open(path, "rb") if path.name.lower().endswith(".gz") else open(path, "rb")


def _file_columns(path: Path, kind: FileFormat, delimiter: str) -> list[str]:
    if kind == "parquet":
        with _open(path) as f:
            return list(pq.read_schema(f).names)
    if kind == "csv":
        return [str(c) for c in pd.read_csv(path, sep=delimiter, nrows=0).columns]
    return []  # JSON Lines: the keys are known after reading


def _read_jsonl(path: Path, wanted: list[str]) -> pd.DataFrame:
    """Every line a JSON object (blank lines skipped); ``InputError`` naming the line of one that is not."""
    records = []
    with _open(path) as f:
        for line_no, raw in enumerate(f, start=1):
            if not raw.strip():
                continue
            try:
                rec = json.loads(raw)
            except (UnicodeDecodeError, json.JSONDecodeError) as e:
                raise InputError(path, line_no, f"not a JSON object ({e})") from None
            if not isinstance(rec, dict):
                raise InputError(path, line_no, f"expected a JSON object per line, got {type(rec).__name__}")
            records.append({k: rec.get(k) for k in wanted if k in rec})
    frame = pd.DataFrame.from_records(records, columns=wanted) if records else pd.DataFrame(columns=wanted)
    present = {k for rec in records for k in rec}
    return frame[[c for c in wanted if c in present]] if records else frame.iloc[:, :0]


def read_source(source: TableSource, required: tuple[str, ...], optional: tuple[str, ...], table: str) -> pd.DataFrame:
    """The table with the pipeline's column names (the required ones and those optional ones present).

    ``InputError`` naming the file for a missing file, an unknown type, a missing required column
    (with the close match among the file's columns) or no rows.
    """
    path = Path(source.path)
    if not path.is_file():
        raise InputError(path, None, f"{table} file not found")
    kind = file_format(source)
    delimiter = source.delimiter or ("\t" if ".tsv" in path.name.lower() else ",")
    wanted = {name: source.columns.get(name, name) for name in required + optional}
    try:
        if kind == "jsonl":
            frame = _read_jsonl(path, list(dict.fromkeys(wanted.values())))
            available = list(frame.columns)
        else:
            available = _file_columns(path, kind, delimiter)
            use = [c for c in dict.fromkeys(wanted.values()) if c in available]
            if kind == "parquet":
                with _open(path) as f:
                    frame = pq.read_table(f, columns=use).to_pandas()
            else:
                # text as text: ids keep leading zeros; only an empty field is missing
                frame = pd.read_csv(path, sep=delimiter, usecols=use, dtype=str, keep_default_na=False, na_values=[""])
    except InputError:
        raise
    except Exception as e:  # a truncated Parquet file, a CSV with a broken quote, a bad gzip stream
        raise InputError(path, None, f"cannot read as {kind}: {type(e).__name__}: {e}") from None
    missing = [name for name in required if wanted[name] not in available]
    if missing:
        parts = []
        for name in missing:
            col = wanted[name]
            close = difflib.get_close_matches(col, available, n=1, cutoff=0.6)
            hint = f" (did you mean {close[0]!r}? map it with columns: {{{name}: {close[0]}}})" if close else ""
            parts.append(f"{col!r}{hint}" if col == name else f"{col!r} (mapped from {name}){hint}")
        noun = "column" if len(missing) == 1 else "columns"
        shown = available if kind != "jsonl" or available else "none (no rows)"
        raise InputError(path, None, f"{table}: missing required {noun} {', '.join(parts)}; the file has {shown}")
    if len(frame) == 0:
        raise InputError(path, None, f"{table}: the table is empty (no rows)")
    out = pd.DataFrame({name: frame[col].to_numpy() for name, col in wanted.items() if col in frame.columns})
    out.index = pd.RangeIndex(len(out))
    return out


def _where(row: int, name: str, source: TableSource) -> str:
    col = source.columns.get(name, name)
    return f"row {row + 1}, column {col!r}" + (f" ({name})" if col != name else "")


def _ids(values: pd.Series, name: str, source: TableSource, table: str) -> pd.Series:
    """Ids as text: strings stay, integers (and integral floats) are written without a decimal point."""
    missing = values.isna() | (values.astype(object).map(lambda v: isinstance(v, str) and not v.strip()))
    if missing.any():
        row = int(np.flatnonzero(missing.to_numpy())[0])
        raise InputError(source.path, None, f"{table}: {_where(row, name, source)}: missing {name} "
                                            f"({int(missing.sum())} rows)")
    if pd.api.types.is_float_dtype(values):
        whole = np.equal(np.mod(values.to_numpy(), 1), 0)
        if not whole.all():
            row = int(np.flatnonzero(~whole)[0])
            raise InputError(source.path, None, f"{table}: {_where(row, name, source)}: "
                                                f"{name} {values.iloc[row]!r} is not a whole number or text")
        values = values.astype(np.int64)
    text = values.map(_id_text).astype(object)
    problems = text.map(id_problem)
    bad = problems.notna().to_numpy()
    if bad.any():  # the shared id rule, named here with the file's own row and column
        row = int(np.flatnonzero(bad)[0])
        raise InputError(source.path, None, f"{table}: {_where(row, name, source)}: {name} {problems.iloc[row]} "
                                            f"({int(bad.sum())} rows)")
    return text


def _id_text(value: Any) -> str:
    """The id as text, unchanged otherwise: an id with surrounding spaces is refused by the shared id
    check (``schema.id_problem``), never silently stripped into another item's id."""
    if isinstance(value, (bytes, bytearray)):
        return value.decode("utf-8")
    return str(value)


def _optional_text(values: pd.Series) -> pd.Series:
    return values.map(lambda v: None if v is None or (isinstance(v, float) and np.isnan(v)) else str(v)).astype(object)


def _category_path(value: Any, separator: str) -> list[str]:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return []
    if isinstance(value, str):
        names = value.split(separator)
    elif isinstance(value, (list, tuple, np.ndarray)):
        names = [str(v) for v in value if v is not None]
    else:
        names = [str(value)]
    return [n.strip() for n in names if n.strip()]


def _times(values: pd.Series, fmt: str, source: TableSource) -> np.ndarray:
    """int64 epoch seconds; ``InputError`` naming the first value that does not parse."""
    name = "timestamp"
    if pd.api.types.is_datetime64_any_dtype(values):
        stamps = pd.to_datetime(values, utc=True)
        bad = stamps.isna()
        if bad.any():
            row = int(np.flatnonzero(bad.to_numpy())[0])
            raise InputError(source.path, None, f"interactions: {_where(row, name, source)}: missing time")
        return _seconds(stamps)
    numbers = pd.to_numeric(values, errors="coerce")
    as_epoch = fmt in ("epoch_seconds", "epoch_milliseconds") or (fmt == "auto" and numbers.notna().all())
    if as_epoch:
        bad = numbers.isna() | ~np.isfinite(numbers.astype(float))
        if bad.any():
            row = int(np.flatnonzero(bad.to_numpy())[0])
            raise InputError(source.path, None, f"interactions: {_where(row, name, source)}: unparseable time "
                                                f"{values.iloc[row]!r} (expected epoch "
                                                f"{'milliseconds' if fmt == 'epoch_milliseconds' else 'seconds'})")
        scale = 1000 if fmt == "epoch_milliseconds" else 1
        return np.floor(numbers.astype(float).to_numpy() / scale).astype(np.int64)
    text = values.astype(object).map(lambda v: v if isinstance(v, str) else (None if v is None or v != v else str(v)))
    stamps = pd.to_datetime(text, format="ISO8601", utc=True, errors="coerce")
    bad = stamps.isna()
    if bad.any():
        row = int(np.flatnonzero(bad.to_numpy())[0])
        expected = "ISO 8601, e.g. '2024-03-01T12:30:00Z'" + (" or epoch seconds" if fmt == "auto" else "")
        raise InputError(source.path, None, f"interactions: {_where(row, name, source)}: unparseable time "
                                            f"{values.iloc[row]!r} (expected {expected}); {int(bad.sum())} rows do not parse")
    return _seconds(stamps)


def _seconds(stamps: pd.Series) -> np.ndarray:
    """Whole epoch seconds of a UTC datetime series, whatever its unit."""
    delta = stamps - pd.Timestamp(0, tz="UTC")
    return (delta // pd.Timedelta(seconds=1)).to_numpy(np.int64)


# ---------------------------------------------------------------------------------------------
# the two tables


def _items(params: GenericParams) -> pd.DataFrame:
    source = params.items
    raw = read_source(source, ITEM_REQUIRED, ITEM_OPTIONAL, "items")
    items = pd.DataFrame({"item_id": _ids(raw["item_id"], "item_id", source, "items")})
    items["title"] = _optional_text(raw["title"]).fillna("")
    for col in ("brand", "description", "image"):
        items[col] = _optional_text(raw[col]) if col in raw else pd.Series([None] * len(raw), dtype=object)
    if "categories" in raw:
        items["categories"] = [_category_path(v, params.category_separator) for v in raw["categories"]]
    else:
        items["categories"] = [[] for _ in range(len(raw))]
    items = items[["item_id", "title", "brand", "categories", "description", "image"]]
    items = _drop_repeated_items(items, source)
    return items.astype({"item_id": _STR, "title": _STR})


def _drop_repeated_items(items: pd.DataFrame, source: TableSource) -> pd.DataFrame:
    """Exact repeats of an item row are counted and dropped; an id with two different contents is refused."""
    dup = items["item_id"].duplicated(keep=False)
    if not dup.any():
        return items
    key = items[dup].assign(categories=items.loc[dup, "categories"].map(" \x1f ".join)).astype(object)
    for _, group in key.groupby("item_id", sort=False):
        first = group.iloc[0]
        for row_no, row in group.iloc[1:].iterrows():
            differs = [c for c in group.columns if not _same(row[c], first[c])]
            if differs:
                col = differs[0]
                shown = source.columns.get(col, col)
                raise InputError(
                    source.path, None,
                    f"items: item_id {first['item_id']!r} appears on rows {group.index[0] + 1} and {row_no + 1} with different "
                    f"{shown!r}: {_shown(first[col])} vs {_shown(row[col])}; give each item one row",
                )
    repeats = int(items["item_id"].duplicated().sum())
    _log.warning("%s: %d exact repeats of item rows dropped (same id, same content)", source.path, repeats,
                 extra={"semid_count": {"repeated_item_rows": repeats}})
    return items.drop_duplicates("item_id").reset_index(drop=True)


def _same(a: Any, b: Any) -> bool:
    return bool(pd.isna(a) and pd.isna(b)) if pd.isna(a) or pd.isna(b) else a == b


def _shown(value: Any) -> str:
    text = repr(value.replace(" \x1f ", " > ") if isinstance(value, str) else value)
    return text if len(text) <= 80 else text[:77] + "..."


def _interactions(params: GenericParams, item_ids: pd.Index) -> pd.DataFrame:
    source = params.interactions
    raw = read_source(source, INTERACTION_REQUIRED, INTERACTION_OPTIONAL, "interactions")
    inter = pd.DataFrame({
        "user_id": _ids(raw["user_id"], "user_id", source, "interactions"),
        "item_id": _ids(raw["item_id"], "item_id", source, "interactions"),
        "timestamp": _times(raw["timestamp"], params.timestamp_format, source),
    })
    if "rating" in raw:
        rating = pd.to_numeric(raw["rating"], errors="coerce")
        bad = rating.isna() & raw["rating"].notna()
        if bad.any():
            row = int(np.flatnonzero(bad.to_numpy())[0])
            raise InputError(source.path, None, f"interactions: {_where(row, 'rating', source)}: "
                                                f"rating {raw['rating'].iloc[row]!r} is not a number")
        inter["rating"] = rating.astype(np.float64).to_numpy()
    else:
        inter["rating"] = np.nan
    unknown = item_ids.get_indexer(inter["item_id"]) < 0
    if unknown.any():
        n, row = int(unknown.sum()), int(np.flatnonzero(unknown)[0])
        example = f"{_where(row, 'item_id', source)}: {inter['item_id'].iloc[row]!r}"
        if params.unknown_items == "refuse":
            raise InputError(source.path, None, f"interactions: {n} rows name items missing from {params.items.path}, first "
                                                f"{example}; add the items or set unknown_items: drop")
        if n == len(inter):
            raise InputError(source.path, None, f"interactions: none of the {n} rows names an item of {params.items.path} "
                                                f"(first {example}); are item_id columns mapped to the same ids?")
        _log.warning("%s: %d of %d interactions name items missing from %s and were dropped (first %s)",
                     source.path, n, len(inter), params.items.path, example,
                     extra={"semid_count": {"unknown_item_interactions": n}})
        inter = inter[~unknown].reset_index(drop=True)
    return inter.astype({"user_id": _STR, "item_id": _STR})


def load_generic(params: GenericParams) -> RawDataset:
    """Reads, checks and converts a generic-format dataset (module docstring: format and checks)."""
    items = _items(params)
    interactions = _interactions(params, pd.Index(items["item_id"]))
    n_cold = int((~items["item_id"].isin(interactions["item_id"])).sum())
    if n_cold:
        _log.info("%s: %d of %d items have no interactions (cold items: they still get semantic IDs)",
                  params.items.path, n_cold, len(items))
    raw = RawDataset(items, interactions)
    validate_raw(raw, source=f"{params.items.path} + {params.interactions.path}")
    return raw


# ---------------------------------------------------------------------------------------------
# writing


def write_generic(
    raw: RawDataset,
    folder: str | Path,
    items_name: str = "items.parquet",
    interactions_name: str = "interactions.parquet",
    columns: Optional[Dict[str, str]] = None,
    categories_as: Literal["list", "string"] = "list",
    times_as: Literal["epoch", "iso8601"] = "epoch",
    separator: str = " > ",
) -> Dict[str, Any]:
    """Writes ``raw`` as generic-format files in ``folder``; returns the matching loader options.

    The file names choose the types (``.parquet``, ``.csv``, ``.jsonl``, each optionally ``.gz``).
    ``columns`` renames pipeline columns in the files (``{"item_id": "sku"}``, applied to both
    tables) and the returned options map them back; ``categories_as="string"`` writes paths as
    ``"A > B > C"``; ``times_as="iso8601"`` writes times as ISO 8601 UTC strings.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    columns = dict(columns or {})
    items = raw.items[["item_id", "title", "brand", "categories", "description", "image"]].copy()
    if categories_as == "string":
        items["categories"] = [separator.join(p) for p in items["categories"]]
    else:
        items["categories"] = [list(p) for p in items["categories"]]
    inter = raw.interactions[["user_id", "item_id", "timestamp", "rating"]].copy()
    if times_as == "iso8601":
        inter["timestamp"] = pd.to_datetime(inter["timestamp"], unit="s", utc=True).dt.strftime("%Y-%m-%dT%H:%M:%SZ")
    options: Dict[str, Any] = {}
    for key, name, frame, known in (("items", items_name, items, ITEM_REQUIRED + ITEM_OPTIONAL),
                                    ("interactions", interactions_name, inter, INTERACTION_REQUIRED + INTERACTION_OPTIONAL)):
        mapping = {k: v for k, v in columns.items() if k in known}
        _write_table(frame.rename(columns=mapping), folder / name)
        options[key] = {"path": str(folder / name), "columns": mapping} if mapping else str(folder / name)
    options["category_separator"] = separator.strip() or separator
    return options


def _write_table(frame: pd.DataFrame, path: Path) -> None:
    kind = file_format(TableSource(path=str(path)))
    compression = "gzip" if path.name.lower().endswith(".gz") else None
    if kind == "parquet":
        if compression:
            with gzip.open(path, "wb") as f:
                frame.to_parquet(f, index=False)
        else:
            frame.to_parquet(path, index=False)
    elif kind == "csv":
        out = frame.copy()
        for col in out.columns:
            if out[col].map(lambda v: isinstance(v, (list, np.ndarray))).any():
                raise ValueError(f"column {col!r} holds lists; CSV needs categories_as='string'")
        out.to_csv(path, index=False, compression=compression, sep="\t" if ".tsv" in path.name.lower() else ",")
    else:
        records = frame.astype(object).where(frame.notna(), None).to_dict("records")
        with (gzip.open(path, "wt", encoding="utf-8") if compression else open(path, "w", encoding="utf-8")) as f:
            for rec in records:
                f.write(json.dumps({k: _jsonable(v) for k, v in rec.items()}, ensure_ascii=False) + "\n")


def _jsonable(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, float) and np.isnan(value):
        return None
    return value
