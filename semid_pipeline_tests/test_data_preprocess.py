"""Cleaning, k-core, id assignment, item text and leave-one-out; the shared Beauty counts."""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from semid_pipeline.core.data.amazon import load_p5_sequences
from semid_pipeline.core.data.preprocess import (
    PreprocessParams,
    build_item_text,
    build_tables,
    clean_interactions,
    clean_items,
    kcore_filter,
)
from semid_pipeline.core.data.schema import RawDataset
from semid_pipeline.core.errors import InputError


def _shared_dir() -> Path:
    root = os.environ.get("SEMID_SHARED_DIR")
    return Path(root) if root else Path(__file__).resolve().parents[1].parent / "shared"


def _interactions(rows: list[tuple[str, str, int]]) -> pd.DataFrame:
    users, items, times = zip(*rows)
    return pd.DataFrame(
        {"user_id": list(users), "item_id": list(items), "timestamp": np.asarray(times, dtype=np.int64),
         "rating": np.full(len(rows), 5.0)}
    )


def _items(ids: list[str], **columns) -> pd.DataFrame:
    n = len(ids)
    data = {"item_id": ids, "title": [f"Title {i}" for i in ids], "brand": [None] * n,
            "categories": [["Root", "Mid", "Leaf", "Deeper"]] * n, "description": [None] * n, "image": [None] * n}
    data.update(columns)
    return pd.DataFrame(data)


def test_clean_interactions_duplicates_and_stable_order():
    inter = _interactions([
        ("u1", "b", 20), ("u1", "a", 10), ("u1", "c", 20), ("u1", "a", 10),  # exact duplicate of row 1
        ("u1", "a", 30),  # repeat of (u1, a) later in time
        ("u0", "x", 5),
    ])
    out = clean_interactions(inter, drop_duplicates=True)
    assert list(zip(out.user_id, out.item_id, out.timestamp)) == [
        ("u0", "x", 5), ("u1", "a", 10), ("u1", "b", 20), ("u1", "c", 20)  # b before c: input order on the tie
    ]
    kept = clean_interactions(inter, drop_duplicates=False)
    assert list(zip(kept.item_id, kept.timestamp))[1:] == [("a", 10), ("b", 20), ("c", 20), ("a", 30)]


def test_kcore_reaches_the_fixed_point():
    # d has one event -> u4 drops to one -> c drops to one -> u3 drops to one; a single pass is not enough.
    inter = _interactions([
        ("u1", "a", 1), ("u1", "b", 2), ("u2", "a", 1), ("u2", "b", 2),
        ("u3", "b", 1), ("u3", "c", 2), ("u4", "c", 1), ("u4", "d", 2),
    ])
    out = kcore_filter(inter, k_user=2, k_item=2)
    assert list(zip(out.user_id, out.item_id)) == [("u1", "a"), ("u1", "b"), ("u2", "a"), ("u2", "b")]
    assert kcore_filter(inter, k_user=3, k_item=1).empty


def test_clean_items_normalises_text():
    items = _items(["i1", "i2"], title=["  Rose   Oil ", "x"], brand=["Unknown", " OPI "],
                   description=["", "two\n lines"], categories=[[" Skin  Care", "", "Oils"], []])
    out = clean_items(items)
    assert out.title.tolist() == ["Rose Oil", "x"]
    assert pd.isna(out.brand[0]) and out.brand[1] == "OPI"
    assert pd.isna(out.description[0]) and out.description[1] == "two lines"
    assert out.categories.tolist() == [["Skin Care", "Oils"], []]


def test_build_item_text_omits_missing_parts():
    items = pd.DataFrame({
        "item_id": ["i1", "i2", "i3"], "title": ["Rose Oil", "", ""], "brand": ["Lumina", None, None],
        "category_path": [["Skin Care", "Oils"], ["Hair Care"], []], "description": ["Light.", None, None],
    })
    assert build_item_text(items).tolist() == [
        "Title: Rose Oil; Brand: Lumina; Categories: Skin Care > Oils; Description: Light.",
        "Categories: Hair Care",
        "Item ID: i3",
    ]
    assert build_item_text(items, include_categories=False).tolist()[:2] == [
        "Title: Rose Oil; Brand: Lumina; Description: Light.",
        "Item ID: i2",
    ]


def test_build_tables_ids_and_leave_one_out():
    rows = []
    sequences = {"uB": ["i3", "i1", "i2", "i4"], "uA": ["i2", "i3", "i4", "i1", "i5"], "uC": ["i5", "i4", "i3"]}
    for u, seq in sequences.items():
        rows += [(u, it, 100 + 10 * k) for k, it in enumerate(seq)]
    rows.append(("uD", "i9", 1))  # a one-event user and an item only it has: both removed by k-core 3/1
    raw = RawDataset(_items(["i5", "i9", "i1", "i4", "i2", "i3", "i0"]), _interactions(rows[::-1]))
    items, inter, seqs = build_tables(raw, PreprocessParams(k_core_user=3, k_core_item=1, max_category_depth=2))

    assert items.item_id.tolist() == ["i1", "i2", "i3", "i4", "i5"]
    assert items.item_idx.tolist() == [0, 1, 2, 3, 4]
    assert items.category_path.tolist()[0] == ["Root", "Mid"]
    assert items.text[0] == "Title: Title i1; Categories: Root > Mid"
    assert list(items.columns) == [
        "item_idx", "item_id", "title", "brand", "category_path", "description", "image", "text"
    ]

    assert seqs.user_id.tolist() == ["uA", "uB", "uC"] and seqs.user_idx.tolist() == [0, 1, 2]
    idx = {f"i{k}": k - 1 for k in range(1, 6)}
    train = [[idx["i2"], idx["i3"], idx["i4"]], [idx["i3"], idx["i1"]], [idx["i5"]]]
    assert [list(t) for t in seqs.train_items] == train
    assert seqs.valid_item.tolist() == [idx["i1"], idx["i2"], idx["i4"]]
    assert seqs.test_item.tolist() == [idx["i5"], idx["i4"], idx["i3"]]
    assert seqs.n_interactions.tolist() == [5, 4, 3]

    assert list(inter.columns) == ["user_idx", "item_idx", "timestamp", "position"]
    assert (inter.dtypes == "int64").all()
    assert inter.user_idx.tolist() == [0] * 5 + [1] * 4 + [2] * 3
    assert inter.position.tolist() == [0, 1, 2, 3, 4, 0, 1, 2, 3, 0, 1, 2]
    assert (inter.groupby("user_idx").timestamp.diff().dropna() > 0).all()


def test_build_tables_rejects_bad_input():
    good_items = _items(["i1"])
    with pytest.raises(InputError, match="my-source: interactions columns must be exactly"):
        build_tables(RawDataset(good_items, _interactions([("u", "i1", 1)]).drop(columns="rating")),
                     PreprocessParams(), source="my-source")
    with pytest.raises(InputError, match="refer to items missing from items"):
        build_tables(RawDataset(good_items, _interactions([("u", "i2", 1)])), PreprocessParams())
    with pytest.raises(InputError, match="no interactions survive"):
        build_tables(RawDataset(good_items, _interactions([("u", "i1", 1)])), PreprocessParams())


def test_shared_beauty_counts():
    data = _shared_dir() / "datasets" / "amazon-beauty"
    if not (data / "user_sequence.txt").exists():
        pytest.skip(f"shared Amazon Beauty data not found at {data}")
    start = time.perf_counter()
    prepared = build_tables(load_p5_sequences(data, category="Beauty"), PreprocessParams(), source=str(data))
    elapsed = time.perf_counter() - start
    items, inter, seqs = prepared
    assert (len(seqs), len(items), len(inter)) == (22_363, 12_101, 198_502)
    assert int(seqs.n_interactions.sum()) == 198_502 and seqs.n_interactions.min() >= 5
    assert items.category_path.map(len).max() == 3
    assert (items.category_path.str[0] == "Skin Care").sum() > 3000
    assert elapsed < 20, f"loading + preprocessing Beauty took {elapsed:.1f} s"
