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

"Missing" is ``None`` or ``NaN``: pandas >= 3 stores ``None`` in a string column as ``NaN``, so
consumers should test with ``pd.isna``.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import pandas as pd

from semid_pipeline.core.errors import InputError

ITEM_COLUMNS: tuple[str, ...] = ("item_id", "title", "brand", "categories", "description", "image")
INTERACTION_COLUMNS: tuple[str, ...] = ("user_id", "item_id", "timestamp", "rating")


class RawDataset(NamedTuple):
    """What every source loader returns: an item catalog and the user-item events."""

    items: pd.DataFrame
    interactions: pd.DataFrame


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
    without missing values); ``item_id`` unique in ``items``; ``categories`` are lists of strings;
    ``timestamp`` has an integer dtype and ``rating`` a numeric one; there is at least one
    interaction and every interaction's ``item_id`` is in ``items``.
    """
    items, inter = raw.items, raw.interactions
    _check_columns(items, ITEM_COLUMNS, "items", source)
    _check_columns(inter, INTERACTION_COLUMNS, "interactions", source)

    _check_str(items, "item_id", "items", source, nullable=False)
    _check_str(items, "title", "items", source, nullable=False)
    for col in ("brand", "description", "image"):
        _check_str(items, col, "items", source, nullable=True)
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
    ts = inter["timestamp"]
    if not pd.api.types.is_integer_dtype(ts) or pd.api.types.is_bool_dtype(ts):
        raise InputError(source, None, f"interactions.timestamp must have an integer dtype, found {ts.dtype}")
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
