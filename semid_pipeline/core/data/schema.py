"""The source-independent raw dataset every loader returns, and its validation.

``RawDataset.items`` has one row per item:

=============  ===================  ==========================================================
column         values               meaning
=============  ===================  ==========================================================
item_id        str, unique          the source's item id (an ASIN for Amazon)
title          str                  product title, ``""`` when the source has none
brand          str or missing       brand name
categories     list[str]            one category path, root -> leaf, store root stripped; may
                                    be empty
description    str or missing       free text
image          str or missing       image URL or local path
=============  ===================  ==========================================================

``RawDataset.interactions`` has one row per event: ``user_id`` (str), ``item_id`` (str, present
in ``items``), ``timestamp`` (integer: unix seconds, or the position in the user's sequence when
the source has no times) and ``rating`` (float, ``NaN`` when unknown).

Ids (``item_id``, ``user_id``) are non-empty and hold no whitespace or control characters
(:func:`id_problem`); loaders return them in Unicode NFC (:func:`normalize_ids` merges the NFD
spelling of an id into the NFC one and counts it). Timestamps are between 0 and one day from now
(:func:`timestamp_problem`): a negative or far-future time would silently decide which event is
the test item.

"Missing" is ``None`` or ``NaN``: pandas >= 3 stores ``None`` in a string column as ``NaN``, so
consumers should test with ``pd.isna``.
"""

from __future__ import annotations

import logging
import re
import time
import unicodedata
from typing import NamedTuple, Optional

import numpy as np
import pandas as pd

from semid_pipeline.core.errors import InputError

_log = logging.getLogger(__name__)
_BAD_ID_CHAR = re.compile(r"[\s\x00-\x1f\x7f-\x9f]")  # whitespace (any kind) or a control character

MAX_FUTURE_S = 86_400
"""How far past the current time a timestamp may be (clock skew between machines): one day."""

ITEM_COLUMNS: tuple[str, ...] = ("item_id", "title", "brand", "categories", "description", "image")
INTERACTION_COLUMNS: tuple[str, ...] = ("user_id", "item_id", "timestamp", "rating")


class RawDataset(NamedTuple):
    """What every source loader returns: an item catalog and the user-item events."""

    items: pd.DataFrame
    interactions: pd.DataFrame


def id_problem(value: object) -> Optional[str]:
    """Why ``value`` cannot be an item or user id (None when it can): not a string, empty,
    only whitespace, or holding whitespace or control characters (a tab, a space, a newline)."""
    if not isinstance(value, str):
        return f"must be a string, got {type(value).__name__}"
    if value == "":
        return "is empty"
    if value.strip() == "":
        return f"is only whitespace ({value!r})"
    if _BAD_ID_CHAR.search(value):
        return f"holds whitespace or a control character ({value[:60]!r}); ids must be single tokens"
    return None


def timestamp_problem(value: int, now: Optional[float] = None) -> Optional[str]:
    """Why ``value`` cannot be an event time in unix seconds (None when it can): negative, or more
    than :data:`MAX_FUTURE_S` after ``now`` (default: the current time)."""
    limit = int((time.time() if now is None else now) + MAX_FUTURE_S)
    if value < 0:
        return f"timestamp {value} is negative"
    if value > limit:
        return f"timestamp {value} is in the future (after {limit}, now + 1 day)"
    return None


def normalize_ids(raw: RawDataset, source: str) -> RawDataset:
    """``raw`` with every item and user id in Unicode NFC. Ids whose spelling changed are counted
    (logged with ``semid_count`` ``ids_normalized_nfc``); an item whose NFD and NFC spellings both
    had a row keeps its first row (``items_merged_by_nfc``)."""
    items, inter = raw.items, raw.interactions
    changed = 0
    merged = 0
    if len(items) and "item_id" in items:
        nfc = items["item_id"].map(lambda v: unicodedata.normalize("NFC", v) if isinstance(v, str) else v)
        changed += int((nfc != items["item_id"]).sum())
        items = items.assign(item_id=nfc)
        dup = items["item_id"].duplicated()
        merged = int(dup.sum())
        items = items[~dup].reset_index(drop=True)
    if len(inter):
        for col in ("user_id", "item_id"):
            if col in inter:
                nfc = inter[col].map(lambda v: unicodedata.normalize("NFC", v) if isinstance(v, str) else v)
                changed += int((nfc != inter[col]).sum())
                inter = inter.assign(**{col: nfc})
    if changed:
        _log.warning(
            "%s: %d ids rewritten to their Unicode NFC spelling (%d items had both spellings and were merged)",
            source, changed, merged, extra={"semid_count": {"ids_normalized_nfc": changed, "items_merged_by_nfc": merged}},
        )
    return RawDataset(items, inter)


def _first_bad(values: pd.Series, problem) -> Optional[tuple[int, str]]:
    if problem is id_problem:  # fast path: most catalogs have no bad id at all
        suspects = values.astype(str).str.contains(_BAD_ID_CHAR) | (values.astype(str) == "")
        values = values[suspects.to_numpy()]
    for row, value in values.items():
        why = problem(value)
        if why:
            return row, why
    return None


def _check_columns(df: pd.DataFrame, expected: tuple[str, ...], table: str, source: str) -> None:
    if not isinstance(df, pd.DataFrame):
        raise InputError(source, None, f"{table} must be a pandas DataFrame, got {type(df).__name__}")
    missing = [c for c in expected if c not in df.columns]
    extra = [str(c) for c in df.columns if c not in expected]
    if missing or extra:
        raise InputError(
            source,
            None,
            f"{table} columns must be exactly {list(expected)}"
            + (f"; missing {missing}" if missing else "")
            + (f"; unexpected {extra}" if extra else ""),
        )


def _check_str(df: pd.DataFrame, column: str, table: str, source: str, nullable: bool) -> None:
    s = df[column]
    if not nullable and s.isna().any():
        raise InputError(source, None, f"{table}.{column} has {int(s.isna().sum())} missing values")
    kind = pd.api.types.infer_dtype(s, skipna=True)
    if kind not in ("string", "empty"):
        raise InputError(source, None, f"{table}.{column} must hold strings, found {kind!r} values")


def _is_str_path(value: object) -> bool:
    return isinstance(value, (list, tuple, np.ndarray)) and all(isinstance(v, str) for v in value)


def validate_raw(raw: RawDataset, source: str) -> None:
    """Checks ``raw`` against the contract above; raises ``InputError(source, None, ...)`` on the first violation.

    Checked: exact column sets; string columns hold strings (``title``, ``item_id``, ``user_id``
    without missing values); ids pass :func:`id_problem`; ``item_id`` unique in ``items``; ``categories`` are lists of strings;
    ``timestamp`` has an integer dtype, within :func:`timestamp_problem`'s range, and ``rating`` a numeric one; there is at least one
    interaction and every interaction's ``item_id`` is in ``items``.
    """
    items, inter = raw.items, raw.interactions
    _check_columns(items, ITEM_COLUMNS, "items", source)
    _check_columns(inter, INTERACTION_COLUMNS, "interactions", source)

    _check_str(items, "item_id", "items", source, nullable=False)
    _check_str(items, "title", "items", source, nullable=False)
    for col in ("brand", "description", "image"):
        _check_str(items, col, "items", source, nullable=True)
    bad = _first_bad(items["item_id"], id_problem)
    if bad is not None:
        raise InputError(source, None, f"items row {bad[0]}: item_id {bad[1]}")
    dup = items["item_id"].duplicated()
    if dup.any():
        example = items["item_id"][dup].iloc[0]
        raise InputError(source, None, f"items.item_id is not unique: {int(dup.sum())} duplicates, e.g. {example!r}")
    bad_paths = ~items["categories"].map(_is_str_path).astype(bool)
    if bad_paths.any():
        first = items["item_id"][bad_paths].iloc[0]
        raise InputError(
            source, None, f"items.categories must be lists of strings; {int(bad_paths.sum())} are not, e.g. {first!r}"
        )

    if len(inter) == 0:
        raise InputError(source, None, "interactions is empty")
    _check_str(inter, "user_id", "interactions", source, nullable=False)
    _check_str(inter, "item_id", "interactions", source, nullable=False)
    for col in ("user_id", "item_id"):
        bad = _first_bad(inter[col].drop_duplicates(), id_problem)
        if bad is not None:
            raise InputError(source, None, f"interactions row {bad[0]}: {col} {bad[1]}")
    ts = inter["timestamp"]
    if not pd.api.types.is_integer_dtype(ts) or pd.api.types.is_bool_dtype(ts):
        raise InputError(source, None, f"interactions.timestamp must have an integer dtype, found {ts.dtype}")
    now = time.time()
    out_of_range = (ts < 0) | (ts > now + MAX_FUTURE_S)
    if out_of_range.any():
        row = out_of_range.idxmax()
        raise InputError(
            source, None,
            f"interactions row {row} (user {inter.at[row, 'user_id']!r}, item {inter.at[row, 'item_id']!r}): "
            f"{timestamp_problem(int(ts[row]), now)}; {int(out_of_range.sum())} rows are out of range. Times are unix "
            "seconds (or positions): a negative or future time would decide which event is the test item",
        )
    rating = inter["rating"]
    if not pd.api.types.is_numeric_dtype(rating) or pd.api.types.is_bool_dtype(rating):
        raise InputError(source, None, f"interactions.rating must be numeric (NaN when unknown), found {rating.dtype}")
    unknown = ~inter["item_id"].isin(items["item_id"])
    if unknown.any():
        raise InputError(
            source,
            None,
            f"{int(unknown.sum())} interactions refer to items missing from items, "
            f"e.g. {inter['item_id'][unknown].iloc[0]!r}",
        )
