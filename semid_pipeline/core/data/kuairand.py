"""KuaiRand loader (Gao et al., CIKM 2022; https://kuairand.com): KuaiRand-Pure, -1K and -27K.

Official files (``<variant>`` = ``pure``, ``1k`` or ``27k``; the 27K logs come in ``_part1``,
``_part2`` pieces):

* ``log_standard_4_08_to_4_21_<variant>.csv``, ``log_standard_4_22_to_5_08_<variant>.csv`` - the
  normal recommendation feed; ``log_random_4_22_to_5_08_<variant>.csv`` - randomly exposed videos.
  Columns ``user_id, video_id, date, hourmin, time_ms, is_click, is_like, is_follow, is_comment,
  is_forward, is_hate, long_view, play_time_ms, duration_ms, profile_stay_time,
  comment_stay_time, is_profile_enter, is_rand, tab``.
* ``video_features_basic_<variant>.csv`` - ``video_id, author_id, video_type, upload_dt,
  upload_type, visible_status, video_duration, server_width, server_height, music_id,
  music_type, tag``.
* ``user_features_<variant>.csv`` - user-side features (the RawDataset contract has no user table,
  so they are not read).

What the loader does:

* Reads the chosen logs (``logs``, default the standard ones; or explicit ``log_files``), comma- or
  tab-separated (sniffed from the header), in chunks, only the needed columns; extra columns are
  ignored, a missing needed column is an ``InputError`` naming the file.
* A row is a positive interaction when ANY of the ``positive`` signals holds: a 0/1 log column
  (``is_click``, ``is_like``, ``long_view``, ``is_follow``, ``is_comment``, ``is_forward``,
  ``is_profile_enter``, ...) equal to 1, or ``play_ratio``: ``play_time_ms / duration_ms >=
  min_play_ratio``. Default ``["is_click"]`` (the usual KuaiRand positive in sequential
  recommendation; HiD-VAE does not state its choice).
* ``time_ms`` (milliseconds) becomes ``timestamp`` in unix seconds (floor). Values below 1e11 (before
  1973 read as milliseconds) are rejected: they are seconds, not the official milliseconds.
* Items are the videos with a positive. KuaiRand has no titles and no category hierarchy, so
  ``categories`` is empty and the item text (``description``) is built from the fields it has:
  duration (with a duration class), video type, upload type, music type, tag ids and author id
  (video features when the file is there; otherwise only the duration seen in the logs).
* The same preprocessing (k-core, leave-one-out) as Amazon follows in ``preprocess.build_tables``.

Tags: :func:`kuairand_tag_pool` gives the tag stage a three-level pool from those fields
(duration class > video type > upload type); the tag stage then picks each video's path by
retrieve-then-classify (HiD-VAE section 3.4 / appendix B) like for any dataset without categories.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Literal, Optional

import numpy as np
import pandas as pd
from pydantic import Field

from semid_pipeline.core.data.schema import ITEM_COLUMNS, RawDataset
from semid_pipeline.core.errors import InputError
from semid_pipeline.core.params import StrictParams

_log = logging.getLogger(__name__)

#: Durations (seconds) separating the duration classes of the item text and the tag pool.
DURATION_CLASSES = ((15.0, "short video"), (60.0, "medium-length video"), (float("inf"), "long video"))
MIN_MS = 10**11  # 1973-03-03 in milliseconds: a smaller time_ms is a time in seconds
_CHUNK_ROWS = 2_000_000


class KuaiRandParams(StrictParams):
    """Which KuaiRand files to read and what counts as a positive interaction."""

    root: str = Field(description="Folder holding the official KuaiRand CSV files.")
    variant: Literal["pure", "1k", "27k"] = Field("pure", description="KuaiRand-Pure, -1K or -27K (file name suffix).")
    logs: list[Literal["standard", "random"]] = Field(["standard"], description="Which logs to read: the standard feed, the random exposures, or both.")
    log_files: Optional[list[str]] = Field(None, description="Explicit log file names (inside root or absolute), instead of variant/logs.")
    positive: list[str] = Field(
        ["is_click"],
        min_length=1,
        description="Signals making a row positive (any of them): 0/1 log columns (is_click, is_like, long_view, "
        "is_follow, is_comment, is_forward, is_profile_enter, ...) or 'play_ratio' (see min_play_ratio).",
    )
    min_play_ratio: float = Field(1.0, gt=0, description="'play_ratio' holds when play_time_ms / duration_ms >= this.")
    video_features_file: Optional[str] = Field(
        None, description="Video features file (default video_features_basic_<variant>.csv; skipped when absent)."
    )


def _files(params: KuaiRandParams) -> list[Path]:
    root = Path(params.root)
    if params.log_files:
        paths = [Path(f) if Path(f).is_absolute() else root / f for f in params.log_files]
        for p in paths:
            if not p.exists():
                raise InputError(p, None, "KuaiRand log file not found")
        return paths
    pattern = re.compile(rf"^log_({'|'.join(params.logs)})_.*_{params.variant}(_part\d+)?\.csv$")
    paths = sorted(p for p in root.iterdir() if pattern.match(p.name)) if root.exists() else []
    if not paths:
        raise InputError(root, None, f"no KuaiRand {params.logs} log files for variant {params.variant!r} "
                                     f"(expected e.g. log_standard_4_08_to_4_21_{params.variant}.csv)")
    return paths


def _separator(path: Path) -> str:
    with open(path, "r", encoding="utf-8", errors="replace") as f:
        header = f.readline()
    return "\t" if header.count("\t") > header.count(",") else ","


def _header(path: Path, sep: str) -> list[str]:
    try:
        return [c.strip() for c in pd.read_csv(path, sep=sep, nrows=0).columns]
    except pd.errors.EmptyDataError:
        raise InputError(path, 1, "empty file: no header line (a KuaiRand CSV starts with its column names)") from None
    except (pd.errors.ParserError, UnicodeDecodeError) as e:
        raise InputError(path, 1, f"unreadable CSV header ({type(e).__name__}: {str(e).splitlines()[0]})") from None


def _numeric(chunk: pd.DataFrame, col: str, path: Path, first_line: int) -> np.ndarray:
    values = pd.to_numeric(chunk[col], errors="coerce")
    bad = values.isna() & chunk[col].notna()
    if bad.any():
        row = int(np.flatnonzero(bad.to_numpy())[0])
        raise InputError(path, first_line + row, f"{col} must be numeric, got {chunk[col].iloc[row]!r}")
    return values.to_numpy(dtype=np.float64)


def _csv_chunks(path: Path, sep: str, use: list[str]):
    """``pd.read_csv`` in chunks; a malformed row or undecodable bytes become an ``InputError`` naming the file."""
    try:
        yield from pd.read_csv(path, sep=sep, usecols=use, chunksize=_CHUNK_ROWS, dtype=str)
    except (pd.errors.ParserError, UnicodeDecodeError) as e:
        raise InputError(path, None, f"malformed CSV ({type(e).__name__}: {str(e).splitlines()[0]})") from None


def _read_log(path: Path, params: KuaiRandParams) -> pd.DataFrame:
    """Positive rows of one log: ``user_id, video_id, timestamp (s), duration_ms``."""
    sep = _separator(path)
    header = _header(path, sep)
    signals = [s for s in params.positive if s != "play_ratio"]
    need = ["user_id", "video_id", "time_ms"] + signals
    if "play_ratio" in params.positive:
        need += ["play_time_ms", "duration_ms"]
    missing = [c for c in dict.fromkeys(need) if c not in header]
    if missing:
        hint = " (the official logs have time_ms in milliseconds)" if "time_ms" in missing else ""
        raise InputError(path, 1, f"missing columns {missing}{hint}; the header has {header}")
    use = list(dict.fromkeys(need + (["duration_ms"] if "duration_ms" in header else [])))
    parts = []
    line = 2  # 1-based file line of the chunk's first row (line 1 is the header)
    for chunk in _csv_chunks(path, sep, use):
        chunk.columns = [c.strip() for c in chunk.columns]
        for col in ("user_id", "video_id", "time_ms"):
            if chunk[col].isna().any():
                row = int(np.flatnonzero(chunk[col].isna().to_numpy())[0])
                raise InputError(path, line + row, f"{col} is empty")
        positive = np.zeros(len(chunk), dtype=bool)
        for s in signals:
            v = _numeric(chunk, s, path, line)
            odd = ~np.isin(v, (0.0, 1.0)) & ~np.isnan(v)
            if odd.any():
                row = int(np.flatnonzero(odd)[0])
                raise InputError(path, line + row, f"{s} must be 0 or 1, got {chunk[s].iloc[row]!r}")
            positive |= v == 1.0
        if "play_ratio" in params.positive:
            play, dur = _numeric(chunk, "play_time_ms", path, line), _numeric(chunk, "duration_ms", path, line)
            with np.errstate(divide="ignore", invalid="ignore"):
                positive |= (dur > 0) & (play / dur >= params.min_play_ratio)
        t = _numeric(chunk, "time_ms", path, line)
        small = t < MIN_MS
        if small.any():
            row = int(np.flatnonzero(small)[0])
            raise InputError(path, line + row, f"time_ms must be unix time in milliseconds; {chunk['time_ms'].iloc[row]!r} "
                                               "looks like seconds (convert with * 1000)")
        keep = np.flatnonzero(positive)
        parts.append(
            pd.DataFrame(
                {
                    "user_id": chunk["user_id"].to_numpy()[keep],
                    "video_id": chunk["video_id"].to_numpy()[keep],
                    "timestamp": (t[keep] // 1000).astype(np.int64),
                    "duration_ms": _numeric(chunk, "duration_ms", path, line)[keep] if "duration_ms" in chunk else np.nan,
                }
            )
        )
        line += len(chunk)
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=["user_id", "video_id", "timestamp", "duration_ms"])


def duration_class(seconds: float) -> Optional[str]:
    if not np.isfinite(seconds) or seconds <= 0:
        return None
    return next(name for bound, name in DURATION_CLASSES if seconds < bound)


def _clean(value: object) -> Optional[str]:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return None
    s = str(value).strip()
    return s if s and s.lower() not in ("nan", "unknown", "none") else None


def _video_features(params: KuaiRandParams) -> Optional[pd.DataFrame]:
    name = params.video_features_file or f"video_features_basic_{params.variant}.csv"
    path = Path(name) if Path(name).is_absolute() else Path(params.root) / name
    if not path.exists():
        if params.video_features_file:
            raise InputError(path, None, "video features file not found")
        _log.warning("%s not found: item texts use only the durations in the logs", path)
        return None
    sep = _separator(path)
    header = _header(path, sep)
    if "video_id" not in header:
        raise InputError(path, 1, f"missing column 'video_id'; the header has {header}")
    df = pd.read_csv(path, sep=sep, dtype=str)
    df.columns = [c.strip() for c in df.columns]
    return df.drop_duplicates("video_id").set_index("video_id")


def item_description(fields: dict) -> str:
    """``"Duration: 12 s (short video). Video type: NORMAL. Upload type: ShortImport. Music type: 9. Tags: 12,61. Author: 4231."``
    from the fields that are known (missing ones are left out)."""
    parts = []
    if fields.get("duration_s") is not None and duration_class(fields["duration_s"]):
        parts.append(f"Duration: {fields['duration_s']:.0f} s ({duration_class(fields['duration_s'])})")
    for key, label in (("video_type", "Video type"), ("upload_type", "Upload type"), ("music_type", "Music type"),
                       ("tag", "Tags"), ("author_id", "Author")):
        if fields.get(key):
            parts.append(f"{label}: {fields[key]}")
    return ". ".join(parts) + "." if parts else ""


def load_kuairand(params: KuaiRandParams) -> RawDataset:
    """Positive interactions and the videos they touch (see the module docstring)."""
    logs = [_read_log(p, params) for p in _files(params)]
    events = pd.concat(logs, ignore_index=True)
    if events.empty:
        raise InputError(params.root, None, f"no positive interactions ({' or '.join(params.positive)}) in the logs")
    events["user_id"] = events["user_id"].astype(str).str.strip()
    events["video_id"] = events["video_id"].astype(str).str.strip()
    interactions = pd.DataFrame(
        {
            "user_id": events["user_id"].to_numpy(dtype=object),
            "item_id": events["video_id"].to_numpy(dtype=object),
            "timestamp": events["timestamp"].to_numpy(dtype=np.int64),
            "rating": np.full(len(events), np.nan),
        }
    )
    videos = np.sort(events["video_id"].unique())
    dur = events.assign(duration_ms=pd.to_numeric(events["duration_ms"], errors="coerce").where(lambda d: d > 0))
    log_duration = dur.groupby("video_id")["duration_ms"].median()
    features = _video_features(params)
    descriptions = []
    for vid in videos:
        f: dict = {}
        row = features.loc[vid] if features is not None and vid in features.index else None
        if row is not None:
            f = {k: _clean(row.get(k)) for k in ("video_type", "upload_type", "music_type", "tag", "author_id")}
            vd = pd.to_numeric(row.get("video_duration"), errors="coerce")
            if pd.notna(vd) and vd > 0:
                f["duration_s"] = float(vd) / 1000.0
        if f.get("duration_s") is None and pd.notna(log_duration.get(vid, np.nan)):
            f["duration_s"] = float(log_duration[vid]) / 1000.0
        descriptions.append(item_description(f) or None)
    items = pd.DataFrame(
        {
            "item_id": videos.astype(object),
            "title": [f"Video {v}" for v in videos],
            "brand": pd.Series([None] * len(videos), dtype=object),
            "categories": [[] for _ in videos],
            "description": pd.Series(descriptions, dtype=object),
            "image": pd.Series([None] * len(videos), dtype=object),
        },
        columns=list(ITEM_COLUMNS),
    )
    return RawDataset(items, interactions)


_FIELD = re.compile(r"(Duration|Video type|Upload type): ([^.()]+?)(?: \(([^)]+)\))?\.")


def field_path(description: object) -> list[str]:
    """The three-level field path of a KuaiRand item text: duration class > video type > upload type
    (``"unknown ..."`` for a missing field)."""
    found = {m.group(1): (m.group(3) or m.group(2)).strip() for m in _FIELD.finditer(description if isinstance(description, str) else "")}
    return [
        found.get("Duration", "unknown duration"),
        f"{found['Video type'].lower()} video" if "Video type" in found else "unknown video type",
        f"{found['Upload type']} upload" if "Upload type" in found else "unknown upload type",
    ]


def kuairand_tag_pool(items: pd.DataFrame) -> pd.DataFrame:
    """A three-level tag pool (``level, name, parent``) from the fields KuaiRand has: every duration
    class > video type > upload type combination seen in ``items`` (their ``description``), plus every
    duration class at level 1. The tag stage still chooses each video's path by retrieve-then-classify."""
    paths = {tuple(field_path(d)) for d in items["description"]}
    paths |= {(name, "unknown video type", "unknown upload type") for _, name in DURATION_CLASSES}
    rows = set()
    for p in paths:
        for level in range(1, 4):
            rows.add((level, p[level - 1], " > ".join(p[: level - 1]) if level > 1 else None))
    frame = pd.DataFrame(sorted(rows, key=lambda r: (r[0], r[2] or "", r[1])), columns=["level", "name", "parent"])
    return frame.astype({"level": "int64"})
