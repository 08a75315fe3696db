"""A synthetic shop at catalog sizes from 10^4 to 10^6+ items, generated in seconds to minutes.

The sibling of the demo shop (``core/data/demo.py``: its category tree, brands and title /
description templates) built for scale: every step is vectorised numpy over items or events (no
per-row Python loop), memory is a few arrays of the event count, and the output is the generic
dataset format (an items and an interactions Parquet file) so it is declared and loaded like a
user's own data. Deterministic by seed.

How the data are drawn:

* Catalog: items spread over the demo's 72 leaf categories by a Zipf leaf popularity
  (``category_skew``); inside a leaf a Zipf popularity (``item_skew``) over a random ranking; an
  item's overall popularity is its leaf's share times its share inside the leaf (a Zipf-like long
  tail over the whole catalog). Brands, titles and descriptions come from the demo's templates.
* Counts: every item gets ``min_item_count`` events (so a 5-core keeps the whole catalog) plus a
  multinomial share of the rest by popularity: ``interactions_per_item * n_items`` events in all.
* Time: items arrive over the timeline; most uniformly over the first ``1 - new_item_window`` of
  it, a ``new_item_share`` only in its last ``new_item_window``. Each event happens at a uniform
  time between its item's arrival and the end. Late items' events are mostly the last events of
  their users, so some test (and validation) targets are cold: items without a training event.
* Sessions: events sorted by (leaf, time) are cut into sessions of mean ``mean_session_len``:
  consecutive purchases in one leaf category, close in time.
* Users: sessions are ordered by a level-1 category (their own, or with ``p_drift`` a random one)
  then randomly, and the event stream is cut into users of ``min_seq_len`` .. ``max_seq_len``
  events (geometric, mean about ``mean_seq_len``): a user's sessions share a level-1 category,
  their leaves differ. A user's events are ordered by time; an item a user already has is dropped
  (counted in the summary).

CLI: ``python -m semid_pipeline.core.data.scale --items 100000 --out DIR`` writes
``DIR/items.parquet``, ``DIR/interactions.parquet``, a datasets file ``DIR/datasets.yaml``
declaring it (``format: generic``; name it with ``SEMID_DATASETS_FILE``) and ``DIR/summary.json``.
"""

from __future__ import annotations

import argparse
import json
import string
import sys
import time
from pathlib import Path
from typing import Any, Dict, NamedTuple, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import Field, model_validator

from semid_pipeline.core.data.demo import EPOCH, RATING_P, STYLES, TREE, MAX_BRANDS, N_LEAVES, draw_catalog, Catalog, random_ids, Tree, category_tree, check_sequence_lengths
from semid_pipeline.core.params import StrictParams

_DAY = 86400
_HISTORY_DAYS = 6 * 365


class ScaleParams(StrictParams):
    """Size and behaviour of the synthetic scale shop."""

    seed: int = Field(0, description="Random seed; the same seed gives the same files.")
    n_items: int = Field(100_000, ge=N_LEAVES, description=f"Catalog size (at least {N_LEAVES}, one per leaf category).")
    interactions_per_item: float = Field(
        8.0, gt=0, description="Events per catalog item on average (before dropping a user's repeated items)."
    )
    min_item_count: int = Field(5, ge=1, description="Every item gets at least this many events (a 5-core keeps the catalog).")
    item_skew: float = Field(0.9, ge=0.0, description="Zipf exponent of item popularity inside a leaf category.")
    category_skew: float = Field(0.5, ge=0.0, description="Zipf exponent of leaf-category popularity.")
    n_brands: int = Field(MAX_BRANDS, ge=1, le=MAX_BRANDS, description="Number of brands.")
    p_no_brand: float = Field(0.15, ge=0.0, le=1.0, description="Share of items without a brand.")
    mean_session_len: float = Field(3.0, ge=1.0, description="Mean events of a session (consecutive events in one leaf).")
    p_drift: float = Field(0.15, ge=0.0, le=1.0, description="Share of sessions filed under a random level-1 category.")
    min_seq_len: int = Field(5, ge=3, description="Fewest events per user.")
    max_seq_len: int = Field(50, ge=3, description="Most events per user.")
    mean_seq_len: float = Field(10.0, description="Approximate mean events per user (geometric above min_seq_len).")
    new_item_share: float = Field(0.05, ge=0.0, lt=1.0, description="Share of items arriving at the end of the timeline.")
    new_item_window: float = Field(0.02, gt=0.0, lt=1.0, description="That end: this share of the timeline.")

    @model_validator(mode="after")
    def _consistent(self) -> "ScaleParams":
        check_sequence_lengths(self.min_seq_len, self.mean_seq_len, self.max_seq_len)
        if self.interactions_per_item < self.min_item_count:
            raise ValueError(f"interactions_per_item ({self.interactions_per_item}) must be >= min_item_count ({self.min_item_count})")
        return self


class ScaleData(NamedTuple):
    """Columnar output (numpy), one row per item / per event; ``stats``: counts for the summary."""

    items: Dict[str, np.ndarray]  # item_id, title, brand (None = no brand), leaf (index into tree paths), description
    interactions: Dict[str, np.ndarray]  # user_id, item_id (strings), timestamp (int64 s), rating (float64)
    paths: list  # per leaf: [level-1, level-2, leaf]
    stats: Dict[str, Any]


def _fill(template: str, fields: Dict[str, np.ndarray], n: int) -> np.ndarray:
    """``template.format(**row)`` for every row at once: literal text and object arrays concatenated."""
    out = np.full(n, "", dtype=object)
    for literal, name, _, _ in string.Formatter().parse(template):
        if literal:
            out = out + literal
        if name is not None:
            out = out + fields[name]
    return out


def _strip(values: np.ndarray) -> np.ndarray:
    return np.char.strip(values.astype(str)).astype(object)


def item_texts(cat: Catalog, tree: Tree, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Titles and descriptions from the demo's templates, vectorised per style."""
    n = len(cat.leaf)
    u = rng.random((n, 6))
    titles = np.empty(n, dtype=object)
    descriptions = np.empty(n, dtype=object)
    brand = np.where(cat.brand >= 0, cat.brand_names[np.maximum(cat.brand, 0)], "").astype(object)
    style_of_leaf = np.array(tree.styles, dtype=object)
    nouns = np.array(tree.nouns, dtype=object)
    for style_name, style in STYLES.items():
        rows = np.flatnonzero(style_of_leaf[cat.leaf] == style_name)
        if rows.size == 0:
            continue

        def pick(vocab: Sequence[str], col: int) -> np.ndarray:
            return np.array(vocab, dtype=object)[(u[rows, col] * len(vocab)).astype(np.int64)]

        adj, attr, aud, size = pick(style.adjectives, 0), pick(style.attributes, 1), pick(style.audiences, 2), pick(style.sizes, 3)
        noun = nouns[cat.leaf[rows]]
        b = brand[rows]
        titles[rows] = _strip(_fill(style.title, {"brand": b, "adj": adj, "attr": attr, "noun": noun, "aud": aud, "size": size}, rows.size))
        by = np.where((b != "") & (u[rows, 5] < 0.5), " by " + b, "").astype(object)
        lower = lambda a: np.char.lower(a.astype(str)).astype(object)  # noqa: E731
        fields = {"adj": lower(adj), "Adj": adj, "attr": attr, "noun": lower(noun), "aud": lower(aud), "by": by}
        which = (u[rows, 4] * len(style.descriptions)).astype(np.int64)
        desc = np.empty(rows.size, dtype=object)
        for k, template in enumerate(style.descriptions):
            sel = which == k
            desc[sel] = _fill(template, {f: v[sel] for f, v in fields.items()}, int(sel.sum()))
        descriptions[rows] = desc
    return titles, descriptions


def _user_lengths(n_events: int, p: ScaleParams, rng: np.random.Generator) -> np.ndarray:
    """User sequence lengths summing to ``n_events`` (the last user absorbs the remainder, kept in bounds)."""
    n_guess = int(n_events / p.mean_seq_len * 1.2) + 2
    lengths = np.minimum(p.min_seq_len + rng.geometric(1.0 / (p.mean_seq_len - p.min_seq_len + 1.0), n_guess) - 1, p.max_seq_len)
    ends = np.cumsum(lengths)
    n_users = int(np.searchsorted(ends, n_events, side="left")) + 1
    if n_users > len(lengths):
        raise ValueError("internal: too few user lengths drawn")
    lengths = lengths[:n_users].copy()
    lengths[-1] -= int(ends[n_users - 1] - n_events)
    if lengths[-1] < p.min_seq_len and n_users > 1:  # fold a short last user into the one before
        lengths[-2] += lengths[-1]
        lengths = lengths[:-1]
    return lengths


def _repeats(user: np.ndarray, item: np.ndarray, n_items: int) -> np.ndarray:
    """Indices of events whose (user, item) occurred earlier in the arrays."""
    key = user * n_items + item
    order = np.argsort(key, kind="stable")
    return order[1:][key[order][1:] == key[order][:-1]]


def _swap_repeats(
    user: np.ndarray, item: np.ndarray, t: np.ndarray, n_items: int, reach: int, rng: np.random.Generator, rounds: int = 20
) -> tuple[np.ndarray, np.ndarray]:
    item, t = item.copy(), t.copy()
    for _ in range(rounds):
        dup = _repeats(user, item, n_items)
        if dup.size == 0:
            break
        partner = (dup + rng.integers(1, 10 * reach, dup.size)) % len(item)
        ok = ~np.isin(partner, dup)
        dup, partner = dup[ok], partner[ok]
        partner, first = np.unique(partner, return_index=True)
        dup = dup[first]
        item[dup], item[partner] = item[partner], item[dup].copy()
        t[dup], t[partner] = t[partner], t[dup].copy()
    return item, t


def generate_scale(params: ScaleParams) -> ScaleData:
    """The scale shop for ``params``: vectorised, deterministic for ``params.seed``."""
    p = params
    rng = np.random.default_rng(p.seed)
    tree = category_tree()
    cat = draw_catalog(p, tree, rng)  # type: ignore[arg-type]  # reads n_items, n_brands, p_no_brand, the skews
    n = p.n_items

    # popularity: the leaf's share times the item's share inside its leaf
    leaf_total = np.bincount(cat.leaf, weights=cat.weight, minlength=N_LEAVES)
    popularity = cat.leaf_weight[cat.leaf] / cat.leaf_weight.sum() * cat.weight / leaf_total[cat.leaf]
    n_total = int(round(p.interactions_per_item * n))
    counts = p.min_item_count + rng.multinomial(n_total - p.min_item_count * n, popularity / popularity.sum())

    # arrival and event times, in days from the start of the timeline
    late = rng.random(n) < p.new_item_share
    edge = 1.0 - p.new_item_window
    arrival = np.where(late, edge + rng.random(n) * p.new_item_window, rng.random(n) * edge) * _HISTORY_DAYS
    item = np.repeat(np.arange(n, dtype=np.int64), counts)
    t = arrival[item] + rng.random(len(item)) * (_HISTORY_DAYS - arrival[item])

    # sessions: consecutive events of one leaf in time order
    leaf = cat.leaf[item]
    order = np.lexsort((t, leaf))
    item, t, leaf = item[order], t[order], leaf[order]
    session_len = rng.geometric(1.0 / p.mean_session_len, len(item))
    session_start = np.cumsum(session_len) - session_len
    session_start = session_start[session_start < len(item)]
    session = np.zeros(len(item), dtype=np.int64)
    session[session_start[1:]] = 1
    session = np.cumsum(session)
    n_sessions = len(session_start)

    # users: sessions grouped by level-1 category (with drift), the stream cut into users
    n_l1 = len(TREE)
    group = tree.l1[leaf[session_start]]
    drift = rng.random(n_sessions) < p.p_drift
    group = np.where(drift, rng.integers(0, n_l1, n_sessions), group)
    session_rank = np.empty(n_sessions, dtype=np.int64)
    session_rank[np.lexsort((rng.random(n_sessions), group))] = np.arange(n_sessions)
    stream = np.lexsort((t, session_rank[session]))
    item, t = item[stream], t[stream]
    lengths = _user_lengths(len(item), p, rng)
    user = np.repeat(np.arange(len(lengths), dtype=np.int64), lengths)

    # a user's repeated item: its event moves to a nearby user of the stream (same category group), swapped
    # with one of theirs, so item counts stay; what still repeats after a few rounds is dropped
    item, t = _swap_repeats(user, item, t, n, p.max_seq_len, rng)
    key = user * n + item
    _, first = np.unique(key, return_index=True)
    keep = np.zeros(len(item), dtype=bool)
    keep[first] = True
    n_repeats = int(len(item) - keep.sum())
    user, item, t = user[keep], item[keep], t[keep]
    by_time = np.lexsort((t, user))
    user, item, t = user[by_time], item[by_time], t[by_time]

    seconds = (EPOCH + t * _DAY).astype(np.int64)
    user_ids = random_ids("A", len(lengths), 12, rng)
    titles, descriptions = item_texts(cat, tree, rng)
    rating = (rng.choice(5, len(item), p=RATING_P) + 1).astype(np.float64)
    stats = {
        "n_items": n,
        "n_users": int(len(lengths)),
        "n_interactions": int(len(item)),
        "n_repeats_dropped": n_repeats,
        "n_late_items": int(late.sum()),
        "min_item_events": int(np.bincount(item, minlength=n).min()),
        **cold_target_stats(user, item, n),
    }
    items = {
        "item_id": cat.item_ids,
        "title": titles,
        "brand": np.where(cat.brand >= 0, cat.brand_names[np.maximum(cat.brand, 0)], None).astype(object),
        "leaf": cat.leaf,
        "description": descriptions,
    }
    interactions = {"user_id": user_ids[user], "item_id": cat.item_ids[item], "timestamp": seconds, "rating": rating}
    return ScaleData(items, interactions, tree.paths, stats)


def cold_target_stats(user: np.ndarray, item: np.ndarray, n_items: int) -> Dict[str, Any]:
    """Leave-one-out split of time-ordered events (``user`` sorted): how many test / validation targets
    are cold (their item has no training event of any user)."""
    last = np.r_[np.flatnonzero(np.diff(user)), len(user) - 1]
    is_test = np.zeros(len(user), dtype=bool)
    is_test[last] = True
    is_valid = np.zeros(len(user), dtype=bool)
    is_valid[last - 1] = True
    trained = np.bincount(item[~(is_test | is_valid)], minlength=n_items) > 0
    cold_test = ~trained[item[is_test]]
    cold_valid = ~trained[item[is_valid]]
    return {
        "cold_test_targets": int(cold_test.sum()),
        "cold_test_share": float(cold_test.mean()),
        "cold_valid_targets": int(cold_valid.sum()),
        "items_without_training_events": int((~trained).sum()),
    }


def write_scale(data: ScaleData, out: str | Path, name: str) -> Dict[str, Any]:
    """Writes ``items.parquet``, ``interactions.parquet`` (the generic format), ``datasets.yaml`` (one
    entry ``name``) and ``summary.json`` into ``out``; returns the entry's loader options."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    flat = np.array([c for path in data.paths for c in path], dtype=object)
    depth = len(data.paths[0])
    leaf = data.items["leaf"]
    values = pa.array(flat[(leaf[:, None] * depth + np.arange(depth)).ravel()].tolist(), type=pa.string())
    categories = pa.ListArray.from_arrays(pa.array(np.arange(0, depth * (len(leaf) + 1), depth, dtype=np.int32)), values)
    items = pa.table(
        {
            "item_id": pa.array(data.items["item_id"], type=pa.string()),
            "title": pa.array(data.items["title"], type=pa.string()),
            "brand": pa.array(data.items["brand"], type=pa.string()),
            "categories": categories,
            "description": pa.array(data.items["description"], type=pa.string()),
        }
    )
    inter = data.interactions
    interactions = pa.table(
        {
            "user_id": pa.array(inter["user_id"], type=pa.string()),
            "item_id": pa.array(inter["item_id"], type=pa.string()),
            "timestamp": pa.array(inter["timestamp"], type=pa.int64()),
            "rating": pa.array(inter["rating"], type=pa.float64()),
        }
    )
    pq.write_table(items, out / "items.parquet", row_group_size=100_000)
    pq.write_table(interactions, out / "interactions.parquet", row_group_size=1_000_000)
    options = {"items": "items.parquet", "interactions": "interactions.parquet", "timestamp_format": "epoch_seconds"}
    description = f"Synthetic scale shop: {data.stats['n_items']:,} items, {data.stats['n_interactions']:,} interactions (core/data/scale.py)."
    (out / "datasets.yaml").write_text(
        "# Written by python -m semid_pipeline.core.data.scale; declare it with SEMID_DATASETS_FILE=<this file>.\n"
        "datasets:\n"
        f"  {name}:\n"
        "    format: generic\n"
        f"    description: {json.dumps(description)}\n"
        f"    options: {json.dumps(options)}\n"
    )
    (out / "summary.json").write_text(json.dumps(data.stats, indent=2))
    return options


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m semid_pipeline.core.data.scale", description=__doc__.split("\n\n")[0])
    parser.add_argument("--items", type=int, required=True, help="catalog size (n_items)")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--interactions-per-item", type=float, default=None, help="events per item (default 8)")
    parser.add_argument("--name", default=None, help="dataset name in datasets.yaml (default scale-<items>)")
    args = parser.parse_args(argv)
    extra = {} if args.interactions_per_item is None else {"interactions_per_item": args.interactions_per_item}
    started = time.monotonic()
    data = generate_scale(ScaleParams(n_items=args.items, seed=args.seed, **extra))
    generated = time.monotonic() - started
    write_scale(data, args.out, args.name or f"scale-{args.items}")
    data.stats.update(generate_seconds=round(generated, 2), total_seconds=round(time.monotonic() - started, 2))
    (Path(args.out) / "summary.json").write_text(json.dumps(data.stats, indent=2))
    print(json.dumps(data.stats))
    return 0


if __name__ == "__main__":
    sys.exit(main())
