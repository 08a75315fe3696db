"""From a :class:`RawDataset` to the prepared tables: cleaning, k-core, ids, text, leave-one-out.

The pipeline (:func:`build_tables`) follows the standard preprocessing of the sequential
recommendation benchmarks (SASRec / S3-Rec / P5 / TIGER on Amazon 5-core data):

1. :func:`clean_items` normalises the catalog's text fields and cuts titles and descriptions
   longer than ``max_title_chars`` / ``max_description_chars`` (counted).
2. :func:`clean_interactions` orders each user's events chronologically (stable: events with
   equal timestamps keep their input order) and removes repeats: exact
   ``(user, item, timestamp)`` duplicates always, and with ``drop_duplicates`` every repeat of a
   ``(user, item)`` pair after its first occurrence, so a sequence never holds an item twice.
   No rating filter is applied. On the shared Beauty 5-core data this keeps all 198,502 events.
3. :func:`kcore_filter` keeps the largest subset where every user has at least ``k_user`` and
   every item at least ``k_item`` events.
4. ``item_idx`` / ``user_idx`` are the ranks of ``item_id`` / ``user_id`` in sorted order over the
   survivors; category paths are cut to ``max_category_depth``; the last event of each user is the
   test target, the one before it the validation target, the rest the training history.

Nothing is dropped uncounted: :func:`prepare` returns, beside the tables, the counts of what each
step removed or changed (repeats removed by de-duplication, users, items and interactions removed
by the k-core filter, users whose events were re-ordered by time, truncated texts), which the
``prepared_dataset`` asset shows in its metadata. Fewer than 2 items left is refused: semantic IDs
cannot be learned for one item.
"""

from __future__ import annotations

import logging
from typing import NamedTuple, Optional

import numpy as np
import pandas as pd
from pydantic import Field

from semid_pipeline.core.data.schema import RawDataset, validate_raw
from semid_pipeline.core.errors import InputError
from semid_pipeline.core.metrics import sample_users
from semid_pipeline.core.params import StrictParams

_log = logging.getLogger(__name__)

_STR = pd.StringDtype(na_value=np.nan)

# Brand values the Amazon metadata uses for "no brand"; compared case-insensitively.
PLACEHOLDER_BRANDS = frozenset({"unknown", "n/a", "na", "none", "null", "-"})


class PreprocessParams(StrictParams):
    """Filtering and shaping of the prepared tables."""

    k_core_user: int = Field(
        5, ge=3, description="Minimum interactions per user (k-core); at least 3 so leave-one-out keeps a history."
    )
    k_core_item: int = Field(5, ge=1, description="Minimum interactions per item (k-core).")
    max_category_depth: int = Field(3, ge=1, description="Category paths are cut to this many levels below the root.")
    drop_duplicates: bool = Field(
        True,
        description="Keep only the first (chronological) interaction of each (user, item) pair. "
        "Exact (user, item, timestamp) duplicates are always removed.",
    )
    max_title_chars: int = Field(
        1000, ge=1, description="Titles longer than this are cut to it (counted in the metadata): a runaway field must not "
        "reach the text encoder whole.",
    )
    max_description_chars: int = Field(
        20000, ge=1, description="Descriptions longer than this are cut to it (counted in the metadata).",
    )
    keep_all_items: Optional[bool] = Field(
        None,
        description="Keep catalog items without interactions after the k-core (a retrieval corpus such as ESCI, "
        "whose every product needs a SID); no interaction surviving is then allowed. None: the dataset's default.",
    )
    eval_users: Optional[int] = Field(
        None, ge=1,
        description="Score validation and test on a seeded random sample of this many users (user_sequences.in_eval); "
        "None: every user. Large catalogues need it: ranking every item for every user is users x items work. "
        "Every model is scored on the same sample, and the evaluation states its size.",
    )
    eval_seed: int = Field(0, description="Seed of the evaluation user sample (eval_users).")


class PreparedDataset(NamedTuple):
    """The prepared tables (schemas in docs/DESIGN.md)."""

    items: pd.DataFrame
    interactions: pd.DataFrame
    user_sequences: pd.DataFrame


def _normalise_text(s: pd.Series) -> pd.Series:
    """Whitespace runs collapsed to one space and stripped; empty strings become missing."""
    s = s.str.replace(r"\s+", " ", regex=True).str.strip()
    return s.mask(s == "")


def _cap(s: pd.Series, limit: int) -> tuple[pd.Series, int]:
    long = s.str.len() > limit
    return s.mask(long, s.str.slice(0, limit)), int(long.sum())


def clean_items(items: pd.DataFrame, max_title_chars: int | None = None, max_description_chars: int | None = None,
                counts: dict | None = None) -> pd.DataFrame:
    """Returns a copy of a RawDataset ``items`` table with normalised text fields.

    Whitespace is collapsed in ``title``, ``brand``, ``description`` and category names; empty
    brands/descriptions/images and the placeholder brands in :data:`PLACEHOLDER_BRANDS` (such as
    ``"Unknown"``) become missing; a missing title becomes ``""``; empty category names are dropped.
    Titles / descriptions longer than the given limits are cut to them; ``counts`` (when given)
    gets ``titles_truncated`` / ``descriptions_truncated``.
    """
    out = items.copy()
    out["title"] = _normalise_text(out["title"]).fillna("")
    brand = _normalise_text(out["brand"])
    out["brand"] = brand.mask(brand.str.lower().isin(PLACEHOLDER_BRANDS))
    out["description"] = _normalise_text(out["description"])
    for column, limit in (("title", max_title_chars), ("description", max_description_chars)):
        if limit is not None:
            out[column], n = _cap(out[column], limit)
            if counts is not None:
                counts[f"{column}s_truncated"] = n
    out["image"] = _normalise_text(out["image"])
    out["categories"] = [[" ".join(n.split()) for n in path if n.strip()] for path in out["categories"]]
    return out


def clean_interactions(interactions: pd.DataFrame, drop_duplicates: bool = True) -> pd.DataFrame:
    """Chronologically ordered, de-duplicated interactions.

    Rows come back sorted by ``user_id``, then ``timestamp``, with the input order breaking ties
    (a stable sort), with a fresh index. Exact ``(user_id, item_id, timestamp)`` duplicates are
    removed; with ``drop_duplicates`` only the chronologically first event of each
    ``(user_id, item_id)`` pair is kept.
    """
    user_codes = pd.factorize(interactions["user_id"], sort=True)[0]
    order = np.lexsort((interactions["timestamp"].to_numpy(), user_codes))
    out = interactions.iloc[order]
    out = out.drop_duplicates(["user_id", "item_id", "timestamp"])
    if drop_duplicates:
        out = out.drop_duplicates(["user_id", "item_id"])
    return out.reset_index(drop=True)


def kcore_filter(interactions: pd.DataFrame, k_user: int, k_item: int) -> pd.DataFrame:
    """The rows of the largest subset in which every user has ``>= k_user`` and every item ``>= k_item`` rows.

    Users and items below the thresholds are removed together, round after round, until nothing
    changes; that fixed point is the unique maximal k-core whatever the removal order. Row order
    is kept; the index is reset.
    """
    users = pd.factorize(interactions["user_id"])[0]
    items = pd.factorize(interactions["item_id"])[0]
    n_users, n_items = int(users.max(initial=-1)) + 1, int(items.max(initial=-1)) + 1
    keep = np.ones(len(interactions), dtype=bool)
    while True:
        user_counts = np.bincount(users[keep], minlength=n_users)
        item_counts = np.bincount(items[keep], minlength=n_items)
        new_keep = keep & (user_counts[users] >= k_user) & (item_counts[items] >= k_item)
        if np.array_equal(new_keep, keep):
            return interactions[keep].reset_index(drop=True)
        keep = new_keep


def build_item_text(items: pd.DataFrame, include_categories: bool = True) -> pd.Series:
    """The text embedded for each item, from ``title``, ``brand``, ``category_path``, ``description``.

    ``"Title: <title>; Brand: <brand>; Categories: <A > B > C>; Description: <description>"``, with
    each missing or empty part left out; an item with none of them gets ``"Item ID: <item_id>"``.
    ``include_categories=False`` leaves the categories out, for generating tags with the true
    ones hidden.
    """

    def join(item_id, title, brand, path, description) -> str:
        parts = [
            f"Title: {title}" if isinstance(title, str) and title else None,
            f"Brand: {brand}" if isinstance(brand, str) and brand else None,
            f"Categories: {' > '.join(path)}" if include_categories and path is not None and len(path) else None,
            f"Description: {description}" if isinstance(description, str) and description else None,
        ]
        return "; ".join(p for p in parts if p) or f"Item ID: {item_id}"

    texts = map(join, items["item_id"], items["title"], items["brand"], items["category_path"], items["description"])
    return pd.Series(list(texts), index=items.index, dtype=object)


def eval_sample(n_users: int, eval_users: Optional[int], seed: int) -> np.ndarray:
    """bool ``[n_users]``: the users validation and test are scored on; all of them when ``eval_users`` is
    None or not below ``n_users``, else a uniform sample of ``eval_users`` drawn with ``seed`` (the same
    users for the same seed and user order, whatever model reads them)."""
    mask = np.zeros(n_users, dtype=bool)
    mask[sample_users(n_users, eval_users, seed)] = True
    return mask


def build_tables(raw: RawDataset, params: PreprocessParams, source: str = "RawDataset") -> PreparedDataset:
    """Validates, cleans and filters ``raw`` and builds the prepared ``items``, ``interactions`` and ``user_sequences``.

    ``source`` names the input in errors. Raises ``InputError`` when ``raw`` breaks the RawDataset
    contract, when no interactions survive the k-core filter or fewer than 2 items are left.
    :func:`prepare` does the same and also returns what each step removed.
    """
    return prepare(raw, params, source)[0]


def _users_reordered(interactions: pd.DataFrame) -> int:
    """Users whose events are not in chronological order in the input (stable-sorted by time later)."""
    frame = pd.DataFrame({"u": interactions["user_id"].to_numpy(), "t": interactions["timestamp"].to_numpy()})
    backwards = frame.groupby("u", sort=False)["t"].diff() < 0
    return int(frame.loc[backwards.to_numpy(), "u"].nunique())


def prepare(raw: RawDataset, params: PreprocessParams, source: str = "RawDataset") -> tuple[PreparedDataset, dict]:
    """:func:`build_tables` plus the counts of what was removed or changed on the way (for the metadata):
    ``raw_interactions``, ``exact_duplicates_removed``, ``repeats_removed`` (later events of a
    (user, item) pair with ``drop_duplicates``), ``users_reordered_by_time``, ``kcore_users_removed``,
    ``kcore_items_removed``, ``kcore_interactions_removed``, ``items_without_interactions_removed``,
    ``titles_truncated``, ``descriptions_truncated``."""
    validate_raw(raw, source)
    report: dict = {"raw_interactions": len(raw.interactions), "users_reordered_by_time": _users_reordered(raw.interactions)}
    exact = clean_interactions(raw.interactions, drop_duplicates=False)
    interactions = clean_interactions(raw.interactions, params.drop_duplicates)
    report["exact_duplicates_removed"] = len(raw.interactions) - len(exact)
    report["repeats_removed"] = len(exact) - len(interactions)
    n_clean = len(interactions)
    before_users, before_items = interactions["user_id"].nunique(), interactions["item_id"].nunique()
    interactions = kcore_filter(interactions, params.k_core_user, params.k_core_item)
    report["kcore_users_removed"] = int(before_users - interactions["user_id"].nunique())
    report["kcore_items_removed"] = int(before_items - interactions["item_id"].nunique())
    report["kcore_interactions_removed"] = n_clean - len(interactions)
    if interactions.empty and not params.keep_all_items:
        raise InputError(
            source,
            None,
            f"no interactions survive the {params.k_core_user}/{params.k_core_item} (user/item) k-core filter "
            f"({n_clean:,} interactions of {before_users:,} users and {before_items:,} items after de-duplication; every user "
            f"needs >= k_core_user = {params.k_core_user} events on items that have >= k_core_item = {params.k_core_item}): "
            "give more interactions per user, or lower k_core_user (>= 3) / k_core_item in the prepared_dataset config",
        )

    items = clean_items(raw.items, params.max_title_chars, params.max_description_chars, report)
    surviving = pd.Index(interactions["item_id"].unique())
    if not params.keep_all_items:
        n_before = len(items)
        items = items[surviving.get_indexer(items["item_id"]) >= 0]
        report["items_without_interactions_removed"] = n_before - len(items)
    else:
        report["items_without_interactions_removed"] = 0
    if len(items) < 2:
        left = ", ".join(repr(i) for i in items["item_id"]) or "none"
        raise InputError(
            source,
            None,
            f"only {len(items)} item ({left}) left of {len(raw.items):,} in the catalog after de-duplication and the "
            f"{params.k_core_user}/{params.k_core_item} k-core filter; semantic IDs need at least 2 items (the smallest "
            "codebook has 2 codes): give a catalog with more items that users interact with",
        )
    items = items.sort_values("item_id", kind="stable")
    items = items.reset_index(drop=True)
    items.insert(0, "item_idx", np.arange(len(items), dtype=np.int64))
    items["category_path"] = [list(p[: params.max_category_depth]) for p in items["categories"]]
    items["text"] = build_item_text(items)
    items = items[["item_idx", "item_id", "title", "brand", "category_path", "description", "image", "text"]]
    # pandas' default string dtype (missing = NaN), so an all-missing column (no images) stays a string column on disk.
    items = items.astype({c: _STR for c in ("item_id", "title", "brand", "description", "image", "text")})

    # clean_interactions sorted the rows by (user_id, timestamp, input order) and k-core kept that
    # order, so ranking user ids in sorted order leaves each user's rows contiguous and chronological.
    user_idx, user_ids = pd.factorize(interactions["user_id"], sort=True)
    user_idx = user_idx.astype(np.int64)
    item_idx = pd.Index(items["item_id"]).get_indexer(interactions["item_id"]).astype(np.int64)
    counts = np.bincount(user_idx, minlength=len(user_ids))
    ends = np.cumsum(counts)
    starts = ends - counts
    position = np.arange(len(interactions), dtype=np.int64) - starts[user_idx]
    table = pd.DataFrame(
        {
            "user_idx": user_idx,
            "item_idx": item_idx,
            "timestamp": interactions["timestamp"].to_numpy(dtype=np.int64),
            "position": position,
        }
    )

    sequences = np.split(item_idx, ends[:-1]) if len(ends) else []  # keep_all_items may leave no user
    user_sequences = pd.DataFrame(
        {
            "user_idx": np.arange(len(user_ids), dtype=np.int64),
            "user_id": pd.Series(np.asarray(user_ids), dtype=_STR),
            "train_items": pd.Series([s[:-2] for s in sequences], dtype=object),
            "valid_item": item_idx[ends - 2],
            "test_item": item_idx[ends - 1],
            "n_interactions": counts.astype(np.int64),
            "in_eval": eval_sample(len(user_ids), params.eval_users, params.eval_seed),
        }
    )
    _log.info(
        "%s: %d users, %d items, %d interactions (%d raw, %d after de-duplication, k-core %d/%d)",
        source,
        len(user_sequences),
        len(items),
        len(table),
        len(raw.interactions),
        n_clean,
        params.k_core_user,
        params.k_core_item,
    )
    return PreparedDataset(items, table, user_sequences), report
