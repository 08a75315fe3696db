"""Tag pool, FAISS retrieval with the real MiniLM, parent constraint, accuracy, item_tags table."""

import math

import numpy as np
import pandas as pd
import pytest

from semid_pipeline.core.enrich.tags import (
    TagParams,
    TagPool,
    TagRequest,
    TopRetrievedClassifier,
    generate_tags,
    tag_accuracy,
    tag_items,
    tagging_texts,
)
from semid_pipeline.core.enrich.text_encoder import TextEncoder, TextEncoderParams
from semid_pipeline.core.errors import InputError

PATHS = [
    ["Hair Care", "Shampoo"],
    ["Hair Care", "Shampoo"],
    ["Hair Care", "Conditioner"],
    ["Hair Care", "Styling", "Hair Spray"],
    ["Skin Care", "Face", "Cleansers"],
    ["Skin Care", "Face", "Moisturizers"],
    ["Skin Care", "Body", "Moisturizers"],
    ["Makeup", "Lips", "Lipstick"],
    ["Makeup", "Face", "Foundation"],
    ["Fragrance"],
    [],
]


@pytest.fixture(scope="module")
def encoder() -> TextEncoder:
    return TextEncoder(TextEncoderParams(device="cpu"))


@pytest.fixture(scope="module")
def pool() -> TagPool:
    return TagPool.from_paths(PATHS, depth=3)


def test_pool_from_paths(pool):
    assert [len(level) for level in pool.levels] == [4, 7, 6]
    frame = pool.to_frame()
    assert list(frame.columns) == ["level", "tag", "name", "parent", "n_items"]
    row = frame.set_index("tag").loc["Skin Care > Body > Moisturizers"]
    assert (row["level"], row["name"], row["parent"], row["n_items"]) == (3, "Moisturizers", "Skin Care > Body", 1)
    assert frame.set_index("tag").loc["Hair Care", "n_items"] == 4
    assert frame.set_index("tag").loc["Hair Care > Shampoo", "n_items"] == 2
    # the same name under two parents is two tags
    assert set(frame.loc[frame["name"] == "Face", "tag"]) == {"Skin Care > Face", "Makeup > Face"}
    assert [len(level) for level in TagPool.from_paths(PATHS, depth=1).levels] == [4]


def test_pool_table_round_trip_and_errors():
    pool = TagPool.from_paths(PATHS)
    again = TagPool.from_table(pool.to_frame())
    pd.testing.assert_frame_equal(again.to_frame(), pool.to_frame())

    flat = TagPool.from_table(pd.DataFrame({"level": [1, 1, 2, 2], "name": ["Hair", "Skin", "Dry", "Oily"]}))
    assert not flat.knows_parents(1) and flat.levels[1][0].parent is None

    with pytest.raises(InputError, match=r"tags\.csv:3: parent 'Nope' is not a level-1 tag"):
        TagPool.from_table(
            pd.DataFrame({"level": [1, 2, 2], "name": ["A", "B", "C"], "parent": [None, "A", "Nope"]}),
            source="tags.csv",
        )
    with pytest.raises(InputError, match=r":2: duplicate tag 'A'"):
        TagPool.from_table(pd.DataFrame({"level": [1, 1], "name": ["A", "A"]}))
    with pytest.raises(InputError, match="level 2 has no tags"):
        TagPool.from_table(pd.DataFrame({"level": [1, 3], "name": ["A", "B"], "parent": [None, ["A", "X"]]}))
    with pytest.raises(InputError, match="missing column 'name'"):
        TagPool.from_table(pd.DataFrame({"level": [1]}))


def test_retrieval_picks_the_obvious_tag(pool, encoder):
    texts = ["shampoo for oily hair", "matte red lipstick that lasts all day", "gentle foaming face wash"]
    frame, stats = generate_tags(texts, pool, encoder, TagParams(top_k=3))
    assert frame["generated_path"][0][:2] == ["Hair Care", "Shampoo"]
    assert frame["generated_path"][1] == ["Makeup", "Lips", "Lipstick"]
    assert frame["generated_path"][2] == ["Skin Care", "Face", "Cleansers"]
    assert frame["candidates"][0][0][0] == "Hair Care" and frame["candidates"][0][1][0] == "Hair Care > Shampoo"
    assert len(frame["candidates"][0][0]) == 3
    assert all(len(s) == len(p) for s, p in zip(frame["scores"], frame["generated_path"]))
    assert stats["n_items"] == 3 and stats["fallbacks"] == 0 and stats["llm_calls"] == 0
    # "Hair Care > Shampoo" has no level-3 children: the path ends there
    assert frame["generated_path"][0] == ["Hair Care", "Shampoo"] and stats["ended_early"] == 1


def test_constrain_to_parent_keeps_paths_consistent(pool, encoder):
    texts = ["moisturizing face cream", "body lotion", "hair spray strong hold", "lipstick", "perfume", "foundation"]
    valid = {tuple(t.path) for level in pool.levels for t in level}
    frame, _ = generate_tags(texts, pool, encoder, TagParams(top_k=10))
    for path, cands in zip(frame["generated_path"], frame["candidates"]):
        assert tuple(path) in valid
        for level, keys in enumerate(cands[1:], 1):  # every candidate is a child of the chosen parent
            assert all(k.startswith(" > ".join(path[:level]) + " > ") for k in keys)
    free, _ = generate_tags(texts, pool, encoder, TagParams(top_k=10, constrain_to_parent=False))
    assert all(len(c[1]) == 7 for c in free["candidates"])  # the whole level-2 pool


def test_tag_accuracy_by_hand():
    pred = [["A", "B", "C"], ["A", "X", "C"], ["B"], ["A", "B"]]
    true = [["A", "B", "C"], ["A", "B", "C"], ["A", "B"], ["A"]]
    acc = tag_accuracy(pred, true)
    assert acc == [3 / 4, 1 / 3, 1 / 2]  # level 2 excludes item 4, level 3 only items 1-2
    assert tag_accuracy([np.array(["A"]), ["A"]], [["A"], None]) == [1.0]
    assert math.isnan(tag_accuracy([["A"]], [["A"]], depth=2)[1])
    with pytest.raises(ValueError):
        tag_accuracy([["A"]], [])


def test_tagging_texts_hide_true_tags():
    items = pd.DataFrame(
        {
            "title": ["Oil Control Shampoo"],
            "brand": [None],
            "category_path": [["Hair Care", "Shampoo"]],
            "description": ["For oily hair."],
        }
    )
    assert tagging_texts(items) == ["Title: Oil Control Shampoo. Description: For oily hair."]
    assert "Hair Care > Shampoo" in tagging_texts(items, hide_true_tags=False)[0]


def test_tag_items_table(pool, encoder):
    items = pd.DataFrame(
        {
            "item_idx": [0, 1],
            "item_id": ["i0", "i1"],
            "title": ["Daily shampoo for oily hair", "Velvet matte lipstick"],
            "brand": ["Acme", None],
            "category_path": [["Hair Care", "Shampoo"], []],
            "description": [None, "Long lasting colour for lips."],
        }
    )
    table, stats = tag_items(items, pool, encoder, TagParams())
    assert list(table.columns) == [
        "item_idx", "item_id", "tag_path", "generated_path", "true_path", "candidates", "scores", "tag_source"
    ]
    assert table["tag_source"].tolist() == ["true", "retrieval"]
    assert table["tag_path"][0] == ["Hair Care", "Shampoo"] and table["true_path"][1] is None
    assert table["tag_path"][1] == table["generated_path"][1] == ["Makeup", "Lips", "Lipstick"]
    assert stats["accuracy"][:2] == [1.0, 1.0]


def test_classifier_sees_previous_tags(pool, encoder):
    seen: list[TagRequest] = []

    class Recording(TopRetrievedClassifier):
        def classify(self, requests, progress=None):
            seen.extend(requests)
            return [len(r.candidates) - 1 if r.level == 1 else None for r in requests]  # worst at level 1

    deep = TagPool.from_paths([p for p in PATHS if len(p) == 3])  # every level-1 tag has children
    frame, stats = generate_tags(["shampoo for oily hair"], deep, encoder, TagParams(top_k=2), Recording())
    assert [r.level for r in seen] == [1, 2, 3]
    assert frame["generated_path"][0][0] != "Hair Care"  # the classifier's pick, not the top candidate
    assert seen[1].previous_tags == frame["generated_path"][0][:1]
    assert seen[2].previous_tags == frame["generated_path"][0][:2]
    assert stats["fallbacks"] == 2  # None at levels 2 and 3 -> top retrieved candidate
