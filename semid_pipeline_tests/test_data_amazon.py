"""Amazon loaders on small files written in each real layout (2014, 2018, P5)."""

from __future__ import annotations

import gzip
import json
import math
from pathlib import Path

import pandas as pd
import pytest
from pydantic import ValidationError

from semid_pipeline.core.data.amazon import (
    AmazonParams,
    load_amazon,
    load_amazon_2014,
    load_amazon_2018,
    load_p5_sequences,
)
from semid_pipeline.core.data.schema import ITEM_COLUMNS, INTERACTION_COLUMNS, validate_raw
from semid_pipeline.core.errors import InputError


def _write(path: Path, lines: list[str]) -> Path:
    text = "\n".join(lines) + "\n"
    if path.suffix == ".gz":
        with gzip.open(path, "wt", encoding="utf-8") as fh:
            fh.write(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


def _review(user: str, asin: str, t: int, overall: float | None = 5.0) -> str:
    rec = {"reviewerID": user, "asin": asin, "reviewerName": "x", "helpful": [0, 0], "reviewText": "ok",
           "summary": "fine", "unixReviewTime": t, "reviewTime": "01 1, 2014"}
    if overall is not None:
        rec["overall"] = overall
    return json.dumps(rec)


def _write_2014(tmp_path: Path) -> tuple[Path, Path]:
    reviews = _write(
        tmp_path / "reviews_Beauty_5.json.gz",
        [_review("U1", "A1", 300, 4.0), _review("U1", "A2", 100), _review("U2", "A1", 200, 3.0),
         _review("U2", "A3", 50)],
    )
    meta = _write(
        tmp_path / "meta_Beauty.json.gz",
        [
            # Python literals, as in the 2014 release: single quotes, several category paths.
            "{'asin': 'A1', 'title': 'Rose &amp; Oud Eau de Parfum', 'brand': 'L&#39;Atelier', "
            "'categories': [['Beauty', 'Fragrance'], ['Health & Personal Care', 'Household', 'Air', 'Fresheners'], "
            "['Beauty', 'Fragrance', 'Women&#39;s', 'Eau de Parfum']], "
            "'description': 'Notes of rose &amp; oud.', 'imUrl': 'http://img/a1.jpg', 'price': 12.5}",
            "{'asin': 'A2', 'title': 'Shampoo', 'categories': [['Beauty', 'Hair Care', 'Shampoo'], "
            "['Beauty', 'Hair Care', 'Conditioner']], 'salesRank': {'Beauty': 12}}",
            "{'asin': 'ZZ', 'title': 'never reviewed', 'categories': [['Beauty']]}",
        ],
    )
    return reviews, meta


def test_2014_reviews_and_python_literal_metadata(tmp_path):
    raw = load_amazon_2014(*_write_2014(tmp_path))
    validate_raw(raw, "2014")
    assert list(raw.items.columns) == list(ITEM_COLUMNS)
    assert list(raw.interactions.columns) == list(INTERACTION_COLUMNS)
    items = raw.items.set_index("item_id")
    assert list(items.index) == ["A1", "A2", "A3"]  # ZZ has no interactions
    a1, a2, a3 = items.loc["A1"], items.loc["A2"], items.loc["A3"]
    assert a1.title == "Rose & Oud Eau de Parfum" and a1.brand == "L'Atelier"
    # longest path under the main store ("Beauty"), not the longer Health & Personal Care one; root dropped
    assert a1.categories == ["Fragrance", "Women's", "Eau de Parfum"]
    assert a1.description == "Notes of rose & oud." and a1.image == "http://img/a1.jpg"
    assert a2.categories == ["Hair Care", "Shampoo"]  # equally long paths: the first
    assert pd.isna(a2.brand) and pd.isna(a2.description)
    assert a3.title == "" and a3.categories == [] and pd.isna(a3.brand)  # no metadata line
    inter = raw.interactions
    assert inter["timestamp"].dtype == "int64" and inter["rating"].dtype == "float64"
    assert inter.to_dict("list")["timestamp"] == [300, 100, 200, 50]
    assert inter["rating"].tolist() == [4.0, 5.0, 3.0, 5.0]


def test_2018_json_metadata_plain_files(tmp_path):
    reviews = _write(
        tmp_path / "Toys_and_Games_5.json",
        [_review("U1", "B1", 10), _review("U1", "B2", 20, overall=None), _review("U2", "B1", 5)],
    )
    meta = _write(
        tmp_path / "meta_Toys_and_Games.json",
        [
            json.dumps({"category": ["Toys &amp; Games", "Puzzles", "Jigsaw Puzzles", "</span></span></span>"],
                        "description": ["<b>1000 pieces</b>", "Ages 12 &amp; up"], "title": "Map &quot;World&quot;",
                        "brand": "", "imageURL": ["http://small/b1.jpg"], "imageURLHighRes": ["http://big/b1.jpg"],
                        "asin": "B1"}),
            json.dumps({"category": [], "description": "Plain text", "title": "Yo-yo", "brand": "Duncan",
                        "imageURL": [], "asin": "B2"}),
            json.dumps({"category": ["Toys & Games", "Other"], "title": "duplicate line", "asin": "B2"}),
        ],
    )
    raw = load_amazon_2018(reviews, meta)
    validate_raw(raw, "2018")
    items = raw.items.set_index("item_id")
    b1, b2 = items.loc["B1"], items.loc["B2"]
    assert b1.title == 'Map "World"' and b1.brand == ""
    assert b1.categories == ["Puzzles", "Jigsaw Puzzles"]  # root dropped, tag-only entry removed
    assert " ".join(b1.description.split()) == "1000 pieces Ages 12 & up"
    assert b1.image == "http://big/b1.jpg"
    assert b2.title == "Yo-yo" and b2.categories == [] and b2.description == "Plain text" and pd.isna(b2.image)
    assert math.isnan(raw.interactions["rating"].iloc[1])


def test_p5_sequences_directory(tmp_path):
    _write(tmp_path / "user_sequence.txt", ["U1 A2 A1 A3", "U2 A3 A1"])
    _write(
        tmp_path / "meta_Beauty.jsonl",
        [
            json.dumps({"asin": "A1", "title": "Nail &amp; Cuticle Oil", "brand": "OPI",
                        "categories": [["Beauty", "Makeup", "Nails", "Nail Polish"]]}),
            json.dumps({"asin": "A2", "title": "Lip Balm", "categories": [["Beauty", "Skin Care", "Lips"]]}),
            json.dumps({"asin": "A3", "title": "Mascara", "categories": [["Beauty"]]}),
        ],
    )
    raw = load_p5_sequences(tmp_path)
    validate_raw(raw, "p5")
    inter = raw.interactions
    assert inter["user_id"].tolist() == ["U1", "U1", "U1", "U2", "U2"]
    assert inter["item_id"].tolist() == ["A2", "A1", "A3", "A3", "A1"]
    assert inter["timestamp"].tolist() == [0, 1, 2, 0, 1]
    assert inter["rating"].isna().all()
    items = raw.items.set_index("item_id")
    assert items.loc["A1"].title == "Nail & Cuticle Oil"
    assert items.loc["A1"].categories == ["Makeup", "Nails", "Nail Polish"]
    assert items.loc["A3"].categories == []
    same = load_amazon(AmazonParams(format="p5", root=str(tmp_path)))
    pd.testing.assert_frame_equal(same.interactions, inter)


def test_params_resolve_default_names_and_plain_fallback(tmp_path):
    reviews, meta = _write_2014(tmp_path)
    params = AmazonParams(format="2014", category="Beauty", root=str(tmp_path))
    assert params.resolved_paths() == (reviews, meta)
    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "reviews_Beauty_5.json").write_bytes(gzip.decompress(reviews.read_bytes()))
    (plain / "meta_Beauty.json").write_bytes(gzip.decompress(meta.read_bytes()))
    raw = load_amazon(AmazonParams(format="2014", root=str(plain)))
    assert len(raw.interactions) == 4 and len(raw.items) == 3
    p18 = AmazonParams(format="2018", category="Toys_and_Games", root="/d")
    assert p18.resolved_paths() == (Path("/d/Toys_and_Games_5.json.gz"), Path("/d/meta_Toys_and_Games.json.gz"))
    with pytest.raises(ValidationError):
        AmazonParams(format="2020", root="/d")


def test_malformed_json_line_names_file_and_line(tmp_path):
    reviews = _write(tmp_path / "r.json.gz", [_review("U1", "A1", 1), "", '{"reviewerID": "U2", "asin": '])
    meta = _write(tmp_path / "m.json.gz", ["{'asin': 'A1', 'title': 't'}"])
    with pytest.raises(InputError) as err:
        load_amazon_2014(reviews, meta)
    assert err.value.line == 3 and err.value.path == str(reviews)
    assert str(err.value).startswith(f"{reviews}:3: not valid JSON")


def test_malformed_literal_and_missing_field(tmp_path):
    reviews = _write(tmp_path / "r.json", [_review("U1", "A1", 1), _review("U1", "A2", 2)])
    meta = _write(tmp_path / "m.json", ["{'asin': 'A1', 'title': 't'}", "{'asin': 'A2', 'title': oops}"])
    with pytest.raises(InputError, match=r"m\.json:2: neither a Python literal nor JSON"):
        load_amazon_2014(reviews, meta)
    bad = _write(tmp_path / "bad.json", [_review("U1", "A1", 1), json.dumps({"reviewerID": "U1", "asin": "A2"})])
    with pytest.raises(InputError, match=r"bad\.json:2: field 'unixReviewTime' must be an integer"):
        load_amazon_2014(bad, meta)
    seq = _write(tmp_path / "user_sequence.txt", ["U1 A1 A2", "U2", "U1 A1"])
    with pytest.raises(InputError, match=r"user_sequence\.txt:2: expected"):
        load_p5_sequences((seq, meta))
    seq = _write(tmp_path / "user_sequence.txt", ["U1 A1 A2", "U1 A1"])
    with pytest.raises(InputError, match=r"user_sequence\.txt:2: user 'U1' already has a sequence on line 1"):
        load_p5_sequences((seq, meta))


def test_missing_file(tmp_path):
    with pytest.raises(InputError) as err:
        load_amazon(AmazonParams(format="2018", category="Nope", root=str(tmp_path)))
    assert err.value.line is None and err.value.path.endswith("Nope_5.json.gz")
    assert "file not found" in str(err.value)


def test_truncated_gzip_and_bad_utf8(tmp_path):
    meta = _write(tmp_path / "m.json", ["{'asin': 'A1', 'title': 't'}"])
    whole = _write(tmp_path / "whole.json.gz", [_review("U1", f"A{k}", k) for k in range(2000)]).read_bytes()
    cut = tmp_path / "cut.json.gz"
    cut.write_bytes(whole[: len(whole) // 2])
    with pytest.raises(InputError, match=r"cut\.json\.gz:\d+: cannot read the file"):
        load_amazon_2014(cut, meta)
    bad = tmp_path / "bad.json"
    bad.write_bytes(_review("U1", "A1", 1).encode() + b"\n" + b'{"reviewerID": "\xff"}\n')
    with pytest.raises(InputError, match=r"bad\.json:2: not valid UTF-8"):
        load_amazon_2014(bad, meta)
