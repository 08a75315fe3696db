"""Versioned semantic-ID assignments: tokenizer version ids, the ``sid_versions`` table, diffs.

A living catalog is re-tokenized again and again, so every assignment is kept:

- The **tokenizer version** is a content hash of the saved tokenizer, ``tok-<16 hex>`` = SHA-256 of
  its artifact config (canonical JSON) and every tensor (name, dtype, shape, raw bytes, in name
  order). Same weights + config -> same id, on any machine, also after save and reload; it does
  not depend on the run, the time or the file path.
- The **assignment id** names one assignment made with a tokenizer version: ``<tokenizer
  version>/a-<12 hex>``, the hash of the sorted ``(item_id, sid)`` pairs. A frozen re-tokenization
  that adds items keeps the tokenizer version but gets a new assignment id, so "what changed"
  between two assignments of one tokenizer is answerable too.
- ``sid_versions`` (one row per item per assignment): ``assignment_id, tokenizer_version,
  item_id, item_idx, codes, sid, sid_str, mode ('full'|'frozen'), assigned_at`` (UTC ISO time).
  The table is append-only. Re-running the assignment that is already the latest adds nothing;
  returning to an earlier one (sinkhorn, then back to append_token) appends its rows again with
  the new time, so the latest assignment is always the one ``semantic_ids`` holds.

:func:`diff_versions` compares two assignments (or tokenizer versions, meaning their latest
assignment): items added, removed, moved (same item, different SID), unchanged, and each side's
pre-resolution collision rate and codebook use. ``python -m semid_pipeline.versions``
prints the versions and diffs from the Parquet table (the DuckDB view ``sid_versions`` reads the same file).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Dict, List, Mapping

import numpy as np
import pandas as pd
import torch

from semid_pipeline.core.artifacts import content_hash
from semid_pipeline.core.tokenizers.collisions import collision_rate

SID_VERSION_COLUMNS: tuple[str, ...] = (
    "assignment_id",
    "tokenizer_version",
    "item_id",
    "item_idx",
    "codes",
    "sid",
    "sid_str",
    "mode",
    "assigned_at",
)


class VersionMismatchError(RuntimeError):
    """A model trained on one tokenizer version is asked to decode SIDs of another."""


def tokenizer_version(config: Mapping[str, Any], tensors: Mapping[str, torch.Tensor]) -> str:
    """Content hash of a tokenizer: ``tok-`` + the first 16 hex digits of SHA-256 over config + tensors.

    Pass ``model.artifact_config()`` and ``model.artifact_tensors()``; tensors are hashed on the
    CPU in their stored dtype, so a reloaded model hashes to the same id.
    """
    return "tok-" + content_hash(config, tensors)[:16]


def model_version(model: Any) -> str:
    """:func:`tokenizer_version` of an :class:`~semid_pipeline.core.artifacts.Artifact` tokenizer."""
    return tokenizer_version(model.artifact_config(), model.artifact_tensors())


def assignment_id(tok_version: str, item_ids: Any, sid_strs: Any) -> str:
    """``<tok_version>/a-<12 hex>``: hash of the sorted ``(item_id, sid_str)`` pairs (order-free)."""
    pairs = sorted(zip(map(str, item_ids), map(str, sid_strs)))
    h = hashlib.sha256("\n".join(f"{i}\t{s}" for i, s in pairs).encode()).hexdigest()[:12]
    return f"{tok_version}/a-{h}"


def version_rows(assignment: pd.DataFrame, tok_version: str, mode: str, assigned_at: str | None = None) -> pd.DataFrame:
    """The ``sid_versions`` rows of one assignment (a ``semantic_ids`` table: item_idx, item_id, codes, sid, sid_str)."""
    if mode not in ("full", "frozen"):
        raise ValueError(f"mode must be 'full' or 'frozen', got {mode!r}")
    df = assignment.sort_values("item_idx")
    aid = assignment_id(tok_version, df["item_id"], df["sid_str"])
    stamp = assigned_at or datetime.now(timezone.utc).isoformat(timespec="seconds")
    return pd.DataFrame(
        {
            "assignment_id": aid,
            "tokenizer_version": tok_version,
            "item_id": df["item_id"].astype(str).to_numpy(),
            "item_idx": df["item_idx"].to_numpy(np.int64),
            "codes": [np.asarray(c, dtype=np.int64) for c in df["codes"]],
            "sid": [np.asarray(s, dtype=np.int64) for s in df["sid"]],
            "sid_str": df["sid_str"].astype(str).to_numpy(),
            "mode": mode,
            "assigned_at": stamp,
        },
        columns=list(SID_VERSION_COLUMNS),
    )


def append_versions(table: pd.DataFrame | None, rows: pd.DataFrame) -> pd.DataFrame:
    """``table`` plus ``rows`` (one assignment), append-only: every row of ``table`` is kept.

    Nothing is added when ``rows``' assignment is already the latest (re-materializing an unchanged
    assignment keeps its original ``assigned_at``); an earlier assignment becoming current again is
    appended again, so that :func:`resolve_version` ``"latest"`` names it.
    """
    if table is None or table.empty:
        return rows.reset_index(drop=True)
    latest = str(table["assignment_id"].iloc[-1])
    if set(rows["assignment_id"].unique()) == {latest}:
        return table.reset_index(drop=True)
    return pd.concat([table, rows], ignore_index=True)


def check_append_only(before: pd.DataFrame | None, after: pd.DataFrame) -> None:
    """Raises ``RuntimeError`` unless ``after`` starts with every row of ``before`` (same assignment ids, in order)."""
    if before is None or before.empty:
        return
    head = after["assignment_id"].iloc[: len(before)].astype(str).tolist()
    if len(after) < len(before) or head != before["assignment_id"].astype(str).tolist():
        raise RuntimeError(
            f"sid_versions would lose history: {len(before)} recorded rows, {len(after)} after the update; refusing to write"
        )


def assignment_rows(table: pd.DataFrame, assignment: str) -> pd.DataFrame:
    """The rows of one recorded assignment (its last recording when it was appended again), one per item."""
    rows = table[table["assignment_id"] == assignment]
    return rows.drop_duplicates("item_id", keep="last")


def list_versions(table: pd.DataFrame) -> pd.DataFrame:
    """One row per assignment, ordered by when it last became current (the last row is the current
    one): id, tokenizer version, mode, time it last became current, first time, item count."""
    if table.empty:
        return pd.DataFrame(columns=["assignment_id", "tokenizer_version", "mode", "assigned_at", "first_assigned_at", "n_items"])
    groups = table.reset_index(drop=True).reset_index().groupby("assignment_id", sort=False)
    out = groups.agg(
        tokenizer_version=("tokenizer_version", "first"),
        mode=("mode", "first"),
        assigned_at=("assigned_at", "last"),
        first_assigned_at=("assigned_at", "first"),
        n_items=("item_id", "nunique"),
        order=("index", "max"),
    )
    return out.sort_values("order").drop(columns="order").reset_index()


def resolve_version(table: pd.DataFrame, version: str) -> str:
    """An assignment id for ``version``: an assignment id as is, a tokenizer version -> its latest
    assignment, ``"latest"`` / ``"previous"`` -> the last / second-to-last assignment."""
    versions = list_versions(table)
    ids = versions["assignment_id"].tolist()
    if not ids:
        raise KeyError("sid_versions is empty: no assignment has been recorded yet")
    if version == "latest":
        return ids[-1]
    if version == "previous":
        if len(ids) < 2:
            raise KeyError("only one assignment recorded; there is no previous one")
        return ids[-2]
    if version in ids:
        return version
    by_tok = versions[versions["tokenizer_version"] == version]["assignment_id"].tolist()
    if by_tok:
        return by_tok[-1]
    raise KeyError(f"unknown version {version!r}; known assignments: {ids}")


@dataclass
class VersionDiff:
    """What changed from assignment ``a`` to assignment ``b`` (item ids sorted)."""

    a: str
    b: str
    added: List[str] = field(default_factory=list)
    removed: List[str] = field(default_factory=list)
    moved: List[str] = field(default_factory=list)
    n_unchanged: int = 0
    collision_rate_a: float = 0.0
    collision_rate_b: float = 0.0
    codebook_use_a: List[Dict[str, Any]] = field(default_factory=list)
    codebook_use_b: List[Dict[str, Any]] = field(default_factory=list)

    def summary(self) -> Dict[str, Any]:
        """Counts and rates (no item lists): for logs and asset metadata."""
        return {
            "a": self.a,
            "b": self.b,
            "n_added": len(self.added),
            "n_removed": len(self.removed),
            "n_moved": len(self.moved),
            "n_unchanged": self.n_unchanged,
            "collision_rate_a": self.collision_rate_a,
            "collision_rate_b": self.collision_rate_b,
        }


def _codebook_use(codes: np.ndarray) -> List[Dict[str, Any]]:
    """Per level: distinct codes used and the perplexity ``exp(H)`` of their use."""
    out = []
    for level in range(codes.shape[1] if codes.ndim == 2 else 0):
        _, counts = np.unique(codes[:, level], return_counts=True)
        p = counts / counts.sum()
        out.append({"level": level, "used_codes": int(len(counts)), "perplexity": float(np.exp(-(p * np.log(p)).sum()))})
    return out


def _codes(df: pd.DataFrame) -> np.ndarray:
    return np.stack(df["codes"].to_numpy()).astype(np.int64) if len(df) else np.zeros((0, 0), dtype=np.int64)


def diff_versions(table: pd.DataFrame, a: str, b: str) -> VersionDiff:
    """Compares two recorded assignments of ``table`` (``sid_versions`` rows).

    ``a`` / ``b``: assignment ids, tokenizer versions (their latest assignment), or
    ``"previous"`` / ``"latest"``. *Moved* means the item is in both and its full SID differs.
    Collision rates are of the tokenizer's codes before resolution; codebook use per level.
    """
    a_id, b_id = resolve_version(table, a), resolve_version(table, b)
    ta = assignment_rows(table, a_id).set_index("item_id")
    tb = assignment_rows(table, b_id).set_index("item_id")
    common = ta.index.intersection(tb.index)
    moved = common[ta.loc[common, "sid_str"].to_numpy() != tb.loc[common, "sid_str"].to_numpy()]
    ca, cb = _codes(ta), _codes(tb)
    return VersionDiff(
        a=a_id,
        b=b_id,
        added=sorted(tb.index.difference(ta.index).astype(str)),
        removed=sorted(ta.index.difference(tb.index).astype(str)),
        moved=sorted(moved.astype(str)),
        n_unchanged=int(len(common) - len(moved)),
        collision_rate_a=collision_rate(ca) if len(ta) else 0.0,
        collision_rate_b=collision_rate(cb) if len(tb) else 0.0,
        codebook_use_a=_codebook_use(ca),
        codebook_use_b=_codebook_use(cb),
    )


def check_same_version(trained_on: str | None, current: str | None, what: str = "model") -> None:
    """Raises :class:`VersionMismatchError` unless ``trained_on == current``.

    ``None`` on either side means "not recorded" and is refused as well when the other side is
    known: a model whose tokenizer version is unknown cannot be shown to match the catalog's SIDs.
    """
    if trained_on is None and current is None:
        return
    if trained_on != current:
        raise VersionMismatchError(
            f"{what} was trained on SIDs of tokenizer version {trained_on!r}, but the current semantic_ids "
            f"come from tokenizer version {current!r}; its token ids would decode to the wrong items. "
            "Re-train it on the current semantic_ids (materialize generative_recommender) first."
        )


def current_assignment_id(semantic_ids: pd.DataFrame) -> str | None:
    """The assignment id of a ``semantic_ids`` table (as ``sid_versions`` names it), None when it records no tokenizer version."""
    if "tokenizer_version" not in semantic_ids or not len(semantic_ids):
        return None
    return assignment_id(str(semantic_ids["tokenizer_version"].iloc[0]), semantic_ids["item_id"], semantic_ids["sid_str"])


def check_same_assignment(
    trained_on: str | None,
    semantic_ids: pd.DataFrame,
    history: pd.DataFrame | None,
    what: str = "model",
) -> None:
    """Raises :class:`VersionMismatchError` unless every item the model was trained on still has its SID.

    ``trained_on`` is the assignment id recorded when the model was trained; ``semantic_ids`` the
    current table; ``history`` the ``sid_versions`` table (None when absent). The same assignment
    passes; a later one passes only when ``history`` shows that it kept the SID of every item of the
    trained-on assignment (a frozen re-tokenization that only added items). A moved or removed item,
    or a trained-on assignment ``history`` has no record of, is refused: the same tokenizer version
    is not enough (a full re-assignment after a lost previous table, or another collision strategy,
    moves SIDs without changing the tokenizer).
    """
    current = current_assignment_id(semantic_ids)
    if trained_on == current:
        return
    if trained_on is None:
        raise VersionMismatchError(
            f"{what} records no SID assignment (it was saved before assignments were recorded), so it cannot be shown "
            f"to match the current semantic_ids ({current}); retrain it (materialize generative_recommender)."
        )
    if history is None or not (history["assignment_id"] == trained_on).any():
        raise VersionMismatchError(
            f"{what} was trained on SID assignment {trained_on!r}, the current semantic_ids are {current!r}, and "
            "sid_versions has no record of the former, so unchanged SIDs cannot be shown; retrain it "
            "(materialize generative_recommender)."
        )
    old = assignment_rows(history, trained_on)[["item_id", "sid_str"]]
    now = semantic_ids.set_index(semantic_ids["item_id"].astype(str))["sid_str"].astype(str)
    then = old.set_index(old["item_id"].astype(str))["sid_str"].astype(str)
    found = now.reindex(then.index)
    removed = found.isna()
    moved = ~removed & (found != then)
    if removed.any() or moved.any():
        examples = [f"{i}: {then[i]} -> {found[i]}" for i in then.index[moved][:3]]
        raise VersionMismatchError(
            f"{what} was trained on SID assignment {trained_on!r}; since then {int(moved.sum())} items moved to another "
            f"SID (e.g. {examples}) and {int(removed.sum())} items left the catalog (current assignment {current!r}): "
            "its token ids would decode to the wrong items. Retrain it (materialize generative_recommender)."
        )


def check_decodable(sids: np.ndarray, level_sizes: Any, item_ids: Any = None) -> None:
    """Raises :class:`VersionMismatchError` when a SID uses a token the model's vocabulary lacks.

    A frozen re-tokenization keeps the tokenizer version, but a new item may still get a code or a
    de-duplication token no item had when the recommender was trained (``level_sizes`` = its
    vocabulary's tokens per level); such an item cannot be decoded until the model is retrained.
    """
    arr = np.asarray(sids, dtype=np.int64)
    sizes = np.asarray(tuple(level_sizes), dtype=np.int64)
    if arr.ndim != 2 or arr.shape[1] != len(sizes):
        raise VersionMismatchError(f"SIDs have {arr.shape[-1]} tokens but the model was trained on {len(sizes)}-token SIDs; retrain it")
    bad = (arr >= sizes).any(axis=1)
    if bad.any():
        example = list(np.asarray(item_ids, dtype=object)[bad][:3]) if item_ids is not None else np.flatnonzero(bad)[:3].tolist()
        raise VersionMismatchError(
            f"{int(bad.sum())} items (e.g. {example}) have SID tokens outside the vocabulary the model was trained "
            f"with (tokens per level {sizes.tolist()}): new items from a frozen re-tokenization; retrain "
            "generative_recommender on the current semantic_ids to recommend them."
        )
