"""Loaders for the Amazon Review Data, as users download it, for any category.

Three layouts are read, each into a :class:`~semid_pipeline.core.data.schema.RawDataset`:

* ``p5``: the P5 / S3-Rec sequence format, ``user_sequence.txt`` (``reviewerID ASIN ASIN ...``,
  chronological) plus ``meta_<Category>.jsonl`` (JSON lines with the 2014 metadata field names).
  The files carry no times: ``timestamp`` is the 0-based position in the user's line, and
  ``rating`` is ``NaN``.
* ``2014``: ``reviews_<Category>_5.json.gz`` (JSON lines) plus ``meta_<Category>.json.gz``, whose
  lines are Python literals (parsed with ``ast.literal_eval``; strict JSON lines are accepted too).
* ``2018``: ``<Category>_5.json.gz`` plus ``meta_<Category>.json.gz``, both JSON lines.

Choices where the formats are ambiguous:

* Files are gzip when they start with the gzip magic bytes, whatever their name; else plain text.
  Blank lines are skipped; line numbers in errors are 1-based and count every line.
* Only items that occur in the interactions are kept. Metadata lines whose ``asin`` comes first
  (the 2014 and P5 layouts) are skipped unparsed when the item has no interactions, so damage on
  such lines goes unreported. The first metadata line of an item wins over later duplicates.
  Items with interactions but no metadata get ``title=""`` and no categories; their count is
  logged as a warning (``semid_count`` ``items_without_metadata``, which the ingestion asset shows
  in the Dagster log and its metadata), and above ``max_missing_metadata`` (default half the items;
  an empty or unrelated metadata file) loading fails naming the metadata file. Duplicate metadata
  lines are counted the same way (``duplicate_metadata_lines``).
* Category path: the 2014/P5 metadata give several root-first paths per item, the 2018 metadata
  one. The path kept is the longest of those under the dataset's main store (the root most items
  have a path under), the first among equally long ones; when an item has no path under the main
  store, its longest path. The root (the store name, e.g. ``Beauty``) is then dropped.
* HTML entities are unescaped once (``html.unescape``) in titles, brands, categories and
  descriptions; HTML tags are removed from descriptions and category names (2018 metadata holds
  some), not from titles, where ``<`` is a legitimate character. Lists of description paragraphs
  (2018) are joined with a space. ``image`` is the first ``imageURLHighRes`` (else ``imageURL``)
  for 2018 and ``imUrl`` for 2014.
* ``rating`` is the review's ``overall``, ``NaN`` when absent. Whitespace and empty strings are
  left for :func:`semid_pipeline.core.data.preprocess.clean_items` to normalise.
"""

from __future__ import annotations

import ast
import gzip
import html
import io
import json
import logging
import os
import re
import time
import zlib
from collections import Counter
from pathlib import Path
from typing import Callable, Iterator, Literal, Optional, Sequence

import numpy as np
import pandas as pd
from pydantic import Field

from semid_pipeline.core.data.schema import ITEM_COLUMNS, RawDataset, id_problem, timestamp_problem
from semid_pipeline.core.errors import InputError
from semid_pipeline.core.params import StrictParams
from semid_pipeline.core.progress import ProgressFn, Throttle

_log = logging.getLogger(__name__)

PathLike = str | os.PathLike

_GZIP_MAGIC = b"\x1f\x8b"
_TAG = re.compile(r"<[^>]*>")
# The asin of a metadata line whose first key is "asin" (2014 python literals, P5 JSON lines).
_LEADING_ASIN = re.compile(rb"""^\{\s*["']asin["']\s*:\s*["']([^"'\\]*)["']""")
_PROGRESS_EVERY = 1 << 16  # lines between progress checks

# (asin, title, brand, candidate root-first paths, description, image), straight from the source.
_MetaRecord = tuple[str, str, Optional[str], list[list[str]], Optional[str], Optional[str]]


# ---------------------------------------------------------------------------------------------
# line reading and field access


def _lines(path: Path, progress: Optional[ProgressFn]) -> Iterator[tuple[int, bytes]]:
    """Yields ``(line_no, raw_bytes)`` for the non-blank lines of a plain or gzip file."""
    if not path.is_file():
        raise InputError(path, None, "file not found")
    with path.open("rb") as fh:
        compressed = fh.read(2) == _GZIP_MAGIC
    throttle = Throttle(progress)
    line_no = 0
    try:
        with path.open("rb") as fh:
            stream = io.BufferedReader(gzip.GzipFile(fileobj=fh), 1 << 20) if compressed else fh
            for line_no, raw in enumerate(stream, 1):
                if not raw.isspace():
                    yield line_no, raw
                if line_no % _PROGRESS_EVERY == 0:
                    throttle(f"{path.name}: read {line_no:,} lines")
    except (OSError, EOFError, zlib.error) as err:
        # the 1 MiB read-ahead fails before the lines it holds are yielded: find the line the damage is in
        bad_line = _first_unreadable_line(path) if compressed else line_no + 1
        raise InputError(path, bad_line, f"cannot read the file: {err}") from err
    throttle(f"{path.name}: read {line_no:,} lines", force=True)


def _first_unreadable_line(path: Path) -> int:
    """1-based number of the line a damaged gzip file breaks in (lines before it decompress fully)."""
    complete = 0
    try:
        with gzip.open(path, "rb") as fh:
            for raw in fh:
                if not raw.endswith(b"\n"):
                    break
                complete += 1
    except (OSError, EOFError, zlib.error):
        pass
    return complete + 1


def _decode(path: Path, line_no: int, raw: bytes) -> str:
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise InputError(path, line_no, f"not valid UTF-8 ({err.reason} at byte {err.start})") from err


def _json_object(path: Path, line_no: int, raw: bytes) -> dict:
    try:
        obj = json.loads(_decode(path, line_no, raw))
    except json.JSONDecodeError as err:
        raise InputError(path, line_no, f"not valid JSON: {err.msg} at column {err.colno}") from err
    except RecursionError:
        raise InputError(path, line_no, "JSON nested too deeply to be an item record") from None
    if not isinstance(obj, dict):
        raise InputError(path, line_no, f"expected a JSON object, got {type(obj).__name__}")
    return obj


def _literal_object(path: Path, line_no: int, raw: bytes) -> dict:
    """A 2014 metadata line: a Python dict literal (strict JSON is accepted as well)."""
    text = _decode(path, line_no, raw)
    try:
        obj = json.loads(text)
    except RecursionError:
        raise InputError(path, line_no, "nested too deeply to be an item record") from None
    except json.JSONDecodeError:
        try:
            obj = ast.literal_eval(text.strip())
        except ValueError as err:  # parsed, but holds something that is not a literal: say what and where
            raise InputError(path, line_no, f"neither a Python literal nor JSON: {_not_literal(text.strip())}") from err
        except (SyntaxError, TypeError, MemoryError, RecursionError) as err:
            raise InputError(path, line_no, f"neither a Python literal nor JSON: {err}") from err
    if not isinstance(obj, dict):
        raise InputError(path, line_no, f"expected a dict, got {type(obj).__name__}")
    return obj


_LITERAL_NODES = (ast.Expression, ast.Constant, ast.Dict, ast.List, ast.Tuple, ast.Set, ast.UnaryOp, ast.BinOp,
                  ast.USub, ast.UAdd, ast.Add, ast.Sub, ast.Load)
_NODE_WORDS = {"Call": "a function call", "Name": "a name", "Attribute": "an attribute access", "Lambda": "a lambda",
               "Subscript": "a subscript", "JoinedStr": "an f-string", "BoolOp": "a boolean expression",
               "Compare": "a comparison", "ListComp": "a comprehension", "GeneratorExp": "a generator"}


def _not_literal(text: str) -> str:
    """What in ``text`` (which parses as an expression) ``ast.literal_eval`` refuses, with its column."""
    try:
        tree = ast.parse(text, mode="eval")
    except (SyntaxError, ValueError, MemoryError, RecursionError) as err:
        return str(err)
    for node in ast.walk(tree):
        if not isinstance(node, _LITERAL_NODES):
            kind = type(node).__name__
            col = getattr(node, "col_offset", None)
            where = f" at column {col + 1}" if col is not None else ""
            snippet = text[col: col + 40] if col is not None else ""
            return (f"it holds {_NODE_WORDS.get(kind, kind)}{where} ({snippet!r}); metadata lines may hold only dicts, "
                    "lists, strings and numbers, and code is never run")
    return "a value literal_eval does not accept"


def _required_str(rec: dict, key: str, path: Path, line_no: int) -> str:
    value = rec.get(key)
    if not isinstance(value, str) or not value:
        problem = "missing" if value is None else f"must be a non-empty string, got {value!r:.60}"
        raise InputError(path, line_no, f"field {key!r} {problem}")
    return value


def _required_id(rec: dict, key: str, path: Path, line_no: int) -> str:
    value = _required_str(rec, key, path, line_no)
    problem = id_problem(value)
    if problem:
        raise InputError(path, line_no, f"field {key!r} {problem}")
    return value


def _optional_str(rec: dict, key: str, path: Path, line_no: int) -> Optional[str]:
    value = rec.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise InputError(path, line_no, f"field {key!r} must be a string, got {type(value).__name__}")
    return html.unescape(value)


def _str_list(value: object, key: str, path: Path, line_no: int) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise InputError(path, line_no, f"field {key!r} must be a list of strings")
    return value


def _clean_category(names: list[str]) -> list[str]:
    cleaned = (_TAG.sub("", html.unescape(n)).strip() for n in names)
    return [n for n in cleaned if n]


def _description(value: object, path: Path, line_no: int) -> Optional[str]:
    if isinstance(value, list):
        value = " ".join(_str_list(value, "description", path, line_no))
    elif value is not None and not isinstance(value, str):
        raise InputError(path, line_no, "field 'description' must be a string or a list of strings")
    return _TAG.sub(" ", html.unescape(value)) if value else None


# ---------------------------------------------------------------------------------------------
# metadata records


def _meta_2014(rec: dict, path: Path, line_no: int) -> _MetaRecord:
    """2014 / P5 metadata: ``categories`` is a list of root-first paths, ``imUrl`` one URL."""
    cats = rec.get("categories") or []
    if not isinstance(cats, list):
        raise InputError(path, line_no, "field 'categories' must be a list of category paths")
    paths = [_clean_category(_str_list(p, "categories", path, line_no)) for p in cats]
    return (
        _required_id(rec, "asin", path, line_no),
        _optional_str(rec, "title", path, line_no) or "",
        _optional_str(rec, "brand", path, line_no),
        paths,
        _description(rec.get("description"), path, line_no),
        _optional_str(rec, "imUrl", path, line_no),
    )


def _meta_2018(rec: dict, path: Path, line_no: int) -> _MetaRecord:
    """2018 metadata: ``category`` is one flat root-first list, images come as URL lists."""
    images = _str_list(rec.get("imageURLHighRes"), "imageURLHighRes", path, line_no) or _str_list(
        rec.get("imageURL"), "imageURL", path, line_no
    )
    return (
        _required_id(rec, "asin", path, line_no),
        _optional_str(rec, "title", path, line_no) or "",
        _optional_str(rec, "brand", path, line_no),
        [_clean_category(_str_list(rec.get("category"), "category", path, line_no))],
        _description(rec.get("description"), path, line_no),
        images[0] if images else None,
    )


def _read_meta(
    path: Path,
    wanted: set[str],
    parse: Callable[[Path, int, bytes], dict],
    to_record: Callable[[dict, Path, int], _MetaRecord],
    progress: Optional[ProgressFn],
) -> dict[str, _MetaRecord]:
    """Metadata of the ``wanted`` items, keyed by asin; the first line of an item wins."""
    found: dict[str, _MetaRecord] = {}
    duplicates = 0
    for line_no, raw in _lines(path, progress):
        lead = _LEADING_ASIN.match(raw)
        if lead is not None and lead.group(1).decode("utf-8", "replace") not in wanted:
            continue
        record = to_record(parse(path, line_no, raw), path, line_no)
        if record[0] not in wanted:
            continue
        if record[0] in found:
            duplicates += 1
            continue
        found[record[0]] = record
    if duplicates:
        _log.warning("%s: %d duplicate metadata lines ignored (the first line of each item kept)", path, duplicates,
                     extra={"semid_count": {"duplicate_metadata_lines": duplicates}})
    return found


def _choose_path(paths: list[list[str]], main_root: Optional[str]) -> list[str]:
    """The longest path under ``main_root`` (else the longest overall), first on ties, root dropped."""
    paths = [p for p in paths if p]
    under_main = [p for p in paths if p[0] == main_root]
    candidates = under_main or paths
    return max(candidates, key=len)[1:] if candidates else []


MAX_MISSING_METADATA = 0.5
"""Default largest share of items with interactions but no metadata line before loading fails."""


def _items_frame(item_ids: Sequence[str], meta: dict[str, _MetaRecord], source: Path,
                 max_missing: float = MAX_MISSING_METADATA) -> pd.DataFrame:
    """One row per item id (sorted), metadata filled in, placeholders for items without any.

    More than ``max_missing`` of the items without metadata (an empty, truncated or unrelated
    metadata file) is an ``InputError`` naming the file; fewer are logged and counted.
    """
    roots = Counter(root for rec in meta.values() for root in {p[0] for p in rec[3] if p})
    main_root = roots.most_common(1)[0][0] if roots else None
    missing = [i for i in item_ids if i not in meta]
    if item_ids and len(missing) / len(item_ids) > max_missing:
        raise InputError(
            source, None,
            f"{len(missing):,} of {len(item_ids):,} items with interactions have no metadata line here (e.g. "
            f"{missing[0]!r}), more than max_missing_metadata = {max_missing:g}: empty, truncated or another "
            "category's file?",
        )
    if missing:
        _log.warning(
            "%s: %d of %d items with interactions have no metadata (e.g. %r); they get an empty title and no categories",
            source,
            len(missing),
            len(item_ids),
            missing[0],
            extra={"semid_count": {"items_without_metadata": len(missing)}},
        )
    rows = [
        (i, rec[1], rec[2], _choose_path(rec[3], main_root), rec[4], rec[5])
        if (rec := meta.get(i)) is not None
        else (i, "", None, [], None, None)
        for i in item_ids
    ]
    return pd.DataFrame.from_records(rows, columns=list(ITEM_COLUMNS))


def _interactions_frame(users: Sequence[str], items: Sequence[str], timestamps, ratings) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "user_id": pd.Series(users, dtype=object),
            "item_id": pd.Series(items, dtype=object),
            "timestamp": np.asarray(timestamps, dtype=np.int64),
            "rating": np.asarray(ratings, dtype=np.float64),
        }
    )


# ---------------------------------------------------------------------------------------------
# interactions


def _read_reviews(path: Path, progress: Optional[ProgressFn]) -> pd.DataFrame:
    """Review JSON lines (2014 and 2018 alike): ``reviewerID``, ``asin``, ``unixReviewTime``, ``overall``."""
    users: list[str] = []
    items: list[str] = []
    times: list[int] = []
    ratings: list[float] = []
    now = time.time()
    for line_no, raw in _lines(path, progress):
        rec = _json_object(path, line_no, raw)
        users.append(_required_id(rec, "reviewerID", path, line_no))
        items.append(_required_id(rec, "asin", path, line_no))
        t = rec.get("unixReviewTime")
        if isinstance(t, str) and t.strip().isdigit():
            t = int(t)
        if isinstance(t, bool) or not isinstance(t, int):
            raise InputError(path, line_no, f"field 'unixReviewTime' must be an integer, got {t!r:.40}")
        problem = timestamp_problem(t, now)
        if problem:
            raise InputError(path, line_no, f"field 'unixReviewTime': {problem}")
        times.append(t)
        r = rec.get("overall")
        if r is not None and (isinstance(r, bool) or not isinstance(r, (int, float))):
            raise InputError(path, line_no, f"field 'overall' must be a number, got {r!r:.40}")
        ratings.append(np.nan if r is None else float(r))
    if not users:
        raise InputError(path, None, "no reviews in the file")
    return _interactions_frame(users, items, times, ratings)


def _read_sequences(path: Path, progress: Optional[ProgressFn]) -> pd.DataFrame:
    """``user_sequence.txt``: ``user_id item_id item_id ...`` per line; timestamp = 0-based position."""
    users: list[str] = []
    sequences: list[list[str]] = []
    first_line: dict[str, int] = {}
    for line_no, raw in _lines(path, progress):
        tokens = _decode(path, line_no, raw).split()
        if len(tokens) < 2:
            raise InputError(path, line_no, "expected 'user_id item_id [item_id ...]' separated by whitespace")
        if tokens[0] in first_line:
            problem = f"user {tokens[0]!r} already has a sequence on line {first_line[tokens[0]]}"
            raise InputError(path, line_no, problem)
        first_line[tokens[0]] = line_no
        users.append(tokens[0])
        sequences.append(tokens[1:])
    if not users:
        raise InputError(path, None, "no sequences in the file")
    lengths = np.fromiter(map(len, sequences), dtype=np.int64, count=len(sequences))
    starts = np.cumsum(lengths) - lengths
    positions = np.arange(int(lengths.sum()), dtype=np.int64) - np.repeat(starts, lengths)
    flat_items = [item for seq in sequences for item in seq]
    user_col = np.repeat(np.asarray(users, dtype=object), lengths)
    return _interactions_frame(user_col, flat_items, positions, np.full(len(flat_items), np.nan))


# ---------------------------------------------------------------------------------------------
# public loaders


def load_p5_sequences(
    dir_or_files: PathLike | tuple[PathLike, PathLike],
    category: str = "Beauty",
    progress: Optional[ProgressFn] = None,
    max_missing_metadata: float = MAX_MISSING_METADATA,
) -> RawDataset:
    """Reads the P5 / S3-Rec layout.

    ``dir_or_files`` is either the folder holding ``user_sequence.txt`` and
    ``meta_<category>.jsonl``, or the pair ``(sequence_file, meta_file)``. A user that appears on
    two lines is an error. ``timestamp`` is the item's 0-based position in its user's line.
    """
    if isinstance(dir_or_files, tuple):
        seq_path, meta_path = (Path(p) for p in dir_or_files)
    else:
        seq_path = Path(dir_or_files) / "user_sequence.txt"
        meta_path = Path(dir_or_files) / f"meta_{category}.jsonl"
    interactions = _read_sequences(seq_path, progress)
    item_ids = sorted(interactions["item_id"].unique())
    meta = _read_meta(meta_path, set(item_ids), _json_object, _meta_2014, progress)
    return RawDataset(_items_frame(item_ids, meta, meta_path, max_missing_metadata), interactions)


def load_amazon_2014(reviews_path: PathLike, meta_path: PathLike, progress: Optional[ProgressFn] = None,
                     max_missing_metadata: float = MAX_MISSING_METADATA) -> RawDataset:
    """Reads a 2014-release category: review JSON lines plus Python-literal metadata lines."""
    reviews_path, meta_path = Path(reviews_path), Path(meta_path)
    interactions = _read_reviews(reviews_path, progress)
    item_ids = sorted(interactions["item_id"].unique())
    meta = _read_meta(meta_path, set(item_ids), _literal_object, _meta_2014, progress)
    return RawDataset(_items_frame(item_ids, meta, meta_path, max_missing_metadata), interactions)


def load_amazon_2018(reviews_path: PathLike, meta_path: PathLike, progress: Optional[ProgressFn] = None,
                     max_missing_metadata: float = MAX_MISSING_METADATA) -> RawDataset:
    """Reads a 2018-release category: review and metadata JSON lines."""
    reviews_path, meta_path = Path(reviews_path), Path(meta_path)
    interactions = _read_reviews(reviews_path, progress)
    item_ids = sorted(interactions["item_id"].unique())
    meta = _read_meta(meta_path, set(item_ids), _json_object, _meta_2018, progress)
    return RawDataset(_items_frame(item_ids, meta, meta_path, max_missing_metadata), interactions)


class AmazonParams(StrictParams):
    """Which Amazon release and category to load, and from where."""

    format: Literal["p5", "2014", "2018"] = Field(
        "p5", description="File layout: 'p5' (user_sequence.txt + meta_<cat>.jsonl), '2014' or '2018' release."
    )
    category: str = Field(
        "Beauty",
        description="Category as spelled in the file names, e.g. 'Beauty', 'Sports_and_Outdoors', 'Toys_and_Games'.",
    )
    root: str = Field(description="Folder holding the downloaded files.")
    reviews_file: Optional[str] = Field(
        None,
        description="Interactions file name (relative to root) overriding the default for the format: "
        "'user_sequence.txt' (p5), 'reviews_<cat>_5.json.gz' (2014), '<cat>_5.json.gz' (2018).",
    )
    meta_file: Optional[str] = Field(
        None,
        description="Metadata file name (relative to root) overriding the default: "
        "'meta_<cat>.jsonl' (p5), 'meta_<cat>.json.gz' (2014, 2018).",
    )
    max_missing_metadata: float = Field(
        MAX_MISSING_METADATA, ge=0, le=1,
        description="Largest share of items with interactions but no metadata line (untitled) before loading fails.",
    )

    def resolved_paths(self) -> tuple[Path, Path]:
        """``(interactions_file, metadata_file)``; a default ``x.gz`` that is absent falls back to plain ``x``."""
        cat = self.category
        default_reviews, default_meta = {
            "p5": ("user_sequence.txt", f"meta_{cat}.jsonl"),
            "2014": (f"reviews_{cat}_5.json.gz", f"meta_{cat}.json.gz"),
            "2018": (f"{cat}_5.json.gz", f"meta_{cat}.json.gz"),
        }[self.format]
        root = Path(self.root)
        return (
            root / self.reviews_file if self.reviews_file else _gz_or_plain(root / default_reviews),
            root / self.meta_file if self.meta_file else _gz_or_plain(root / default_meta),
        )


def _gz_or_plain(path: Path) -> Path:
    if path.suffix == ".gz" and not path.exists() and path.with_suffix("").exists():
        return path.with_suffix("")
    return path


def load_amazon(params: AmazonParams, progress: Optional[ProgressFn] = None) -> RawDataset:
    """Loads the files ``params`` points at with the loader for ``params.format``."""
    reviews, meta = params.resolved_paths()
    if params.format == "p5":
        return load_p5_sequences((reviews, meta), progress=progress, max_missing_metadata=params.max_missing_metadata)
    loader = load_amazon_2014 if params.format == "2014" else load_amazon_2018
    return loader(reviews, meta, progress=progress, max_missing_metadata=params.max_missing_metadata)
