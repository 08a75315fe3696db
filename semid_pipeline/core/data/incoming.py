"""Incoming item files of a living catalog: ``<data_dir>/incoming/<dataset>/*.jsonl``.

Each line is one item in the RawDataset item schema (``core/data/schema.py``)::

    {"item_id": "B00NEW1", "title": "Rose lip balm", "brand": "Acme",
     "categories": ["Makeup", "Lips"], "description": "...", "image": null}

``item_id`` and ``title`` are required; ``brand``, ``description``, ``image`` may be missing or
null; ``categories`` may be missing (empty path). Unknown keys are refused, so a typo does not
silently drop a field. Files are read in name order and a later line for the same ``item_id``
replaces an earlier one (a "changed" item); blank lines are skipped. Any bad line raises
:class:`~semid_pipeline.core.errors.InputError` naming the file and the 1-based line.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import unicodedata
from pathlib import Path
from typing import Dict, List, Tuple

import pandas as pd

from semid_pipeline.core.data.schema import ITEM_COLUMNS, id_problem
from semid_pipeline.core.errors import InputError
from semid_pipeline.core.params import unknown_keys_problem

_log = logging.getLogger(__name__)
INCOMING_SUFFIX = ".jsonl"
"""Incoming files end in ``.jsonl`` in any letter case (``items.JSONL`` is read too)."""

INCOMING_COLUMNS: tuple[str, ...] = (*ITEM_COLUMNS, "source")
_OPTIONAL = ("brand", "description", "image")


def incoming_dir(data_dir: str | os.PathLike, dataset: str) -> Path:
    return Path(data_dir) / "incoming" / dataset


def _is_incoming(p: Path) -> bool:
    return p.is_file() and p.suffix.lower() == INCOMING_SUFFIX and not p.name.startswith(".")


def list_incoming(directory: str | os.PathLike) -> List[Tuple[str, int, int]]:
    """``(file name, mtime_ns, size)`` of every ``*.jsonl`` file (any case), by name (empty when the folder is missing)."""
    root = Path(directory)
    if not root.is_dir():
        return []
    out = []
    for p in sorted(root.iterdir()):
        if _is_incoming(p):
            st = p.stat()
            out.append((p.name, int(st.st_mtime_ns), int(st.st_size)))
    return out


def ignored_incoming(directory: str | os.PathLike) -> List[str]:
    """Names of the files in the folder that are *not* read (not ``*.jsonl``; hidden files and folders excepted)."""
    root = Path(directory)
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if p.is_file() and not p.name.startswith(".") and not _is_incoming(p))


def fingerprint(files: List[Tuple[str, int, int]]) -> str:
    """A short hash of a file listing: changes when a file is added, removed, rewritten or touched."""
    return hashlib.sha256(json.dumps(files).encode()).hexdigest()[:16]


def _parse_line(path: Path, lineno: int, line: str) -> Dict[str, object]:
    try:
        row = json.loads(line)
    except json.JSONDecodeError as exc:
        raise InputError(path, lineno, f"not valid JSON ({exc.msg} at column {exc.colno})") from None
    except RecursionError:
        raise InputError(path, lineno, "JSON nested too deeply to be an item") from None
    if not isinstance(row, dict):
        raise InputError(path, lineno, f"expected a JSON object per line, got {type(row).__name__}")
    problem = unknown_keys_problem(list(row), ITEM_COLUMNS)
    if problem:
        raise InputError(path, lineno, problem)
    for key in ("item_id", "title"):
        if not isinstance(row.get(key), str) or not row[key].strip():
            raise InputError(path, lineno, f"{key!r} must be a non-empty string, got {row.get(key)!r}")
    for key in _OPTIONAL:
        if row.get(key) is not None and not isinstance(row[key], str):
            raise InputError(path, lineno, f"{key!r} must be a string or null, got {type(row[key]).__name__}")
    cats = row.get("categories")
    if cats is None:
        cats = []
    if not isinstance(cats, list) or not all(isinstance(c, str) for c in cats):
        raise InputError(path, lineno, f"'categories' must be a list of strings, got {cats!r}")
    item_id = unicodedata.normalize("NFC", row["item_id"].strip())  # the spelling raw ids have (schema.normalize_ids)
    bad_id = id_problem(item_id)
    if bad_id:
        raise InputError(path, lineno, f"'item_id' {bad_id}")
    return {
        "item_id": item_id,
        "title": row["title"],
        "brand": row.get("brand"),
        "categories": list(cats),
        "description": row.get("description"),
        "image": row.get("image"),
        "source": f"{path.name}:{lineno}",
    }


def load_incoming_items(directory: str | os.PathLike) -> pd.DataFrame:
    """Every item of every incoming file (columns ``INCOMING_COLUMNS``), one row per ``item_id``
    (the last occurrence wins), sorted by ``item_id``. Empty frame when there is nothing."""
    rows: Dict[str, Dict[str, object]] = {}
    root = Path(directory)
    for name, _, _ in list_incoming(root):
        path = root / name
        with path.open("rb") as fh:
            for lineno, raw in enumerate(fh, start=1):
                try:
                    line = raw.decode("utf-8-sig" if lineno == 1 else "utf-8")
                except UnicodeDecodeError as exc:
                    raise InputError(path, lineno, f"not valid UTF-8 ({exc.reason} at byte {exc.start} of the line)") from None
                if not line.strip():
                    continue
                row = _parse_line(path, lineno, line)
                rows[row["item_id"]] = row
    skipped = ignored_incoming(root)
    if skipped:
        _log.warning("%s: %d files ignored, not *.jsonl: %s", root, len(skipped), ", ".join(skipped[:10]),
                     extra={"semid_count": {"incoming_files_ignored": len(skipped)}})
    df = pd.DataFrame([rows[k] for k in sorted(rows)], columns=list(INCOMING_COLUMNS))
    return df.astype({"item_id": object, "title": object, "source": object})
