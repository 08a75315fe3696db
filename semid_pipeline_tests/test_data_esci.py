"""ESCI loader: files written in the official schema (with the bad inputs a user meets), the real
fragments in ../shared/datasets/esci-sample, and the demo generator's queries."""

import json

import numpy as np
import pandas as pd
import pytest
from pydantic import ValidationError

from semid_pipeline.core.data.esci import (
    EXAMPLES_FILE,
    PRODUCTS_FILE,
    QUERY_COLUMNS,
    EsciParams,
    cat_id2_filter,
    load_esci,
    load_esci_queries,
    read_examples,
    read_products,
)
from semid_pipeline.core.data.registry import load_queries, load_raw
from semid_pipeline.core.data.schema import validate_raw
from semid_pipeline.core.errors import InputError

from .conftest import shared_dir


def _examples(rows):
    cols = ["query", "query_id", "product_id", "product_locale", "esci_label", "split"]
    df = pd.DataFrame(rows, columns=cols)
    df.insert(0, "example_id", np.arange(len(df)))
    df["small_version"] = 1
    df["large_version"] = 1
    return df


def _products(ids, locale="us"):
    return pd.DataFrame(
        {
            "product_id": ids,
            "product_title": [f"Title of {i} <b>bold</b>" for i in ids],
            "product_description": ["<p>Nice &amp; cheap</p>"] * len(ids),
            "product_bullet_point": ["fits all"] * len(ids),
            "product_brand": ["Acme"] * len(ids),
            "product_color": ["red"] * len(ids),
            "product_locale": locale,
        }
    )


def _write(root, examples, products):
    root.mkdir(parents=True, exist_ok=True)
    examples.to_parquet(root / EXAMPLES_FILE)
    products.to_parquet(root / PRODUCTS_FILE)
    return root


@pytest.fixture()
def official(tmp_path):
    ex = _examples(
        [
            ("usb cable", 1, "A", "us", "E", "train"), ("usb cable", 1, "B", "us", "S", "train"),
            ("usb cable", 1, "C", "us", "I", "train"), ("charger", 2, "A", "us", "E", "test"),
            ("charger", 2, "D", "us", "E", "test"), ("charger", 2, "C", "us", "C", "test"),
            ("lamp", 3, "D", "us", "E", "test"), ("cable usb", 4, "B", "us", "E", "train"),
            ("cable", 5, "X", "es", "E", "train"),
        ]
    )
    ex.loc[ex["query_id"] == 4, "small_version"] = 0  # large version only
    ex["extra_column"] = "ignored"
    products = pd.concat([_products(["A", "B", "C", "D"]), _products(["X"], "es")], ignore_index=True)
    products["extra"] = 1
    return _write(tmp_path / "esci", ex, products)


def test_official_files_load_with_cat_id2_preprocessing(official):
    params = EsciParams(root=str(official))
    raw = load_esci(params)
    validate_raw(raw, "esci")
    q = load_esci_queries(params)
    assert list(q.columns) == list(QUERY_COLUMNS)
    train, test = q[q["split"] == "train"], q[q["split"] == "test"]
    assert sorted(zip(train["query_id"], train["item_id"], train["esci_label"])) == [("1", "A", "E"), ("1", "B", "S")]
    # test: D never trained -> dropped (and query 3 with it); the C-labelled row of query 2 stays as graded relevance
    assert sorted(zip(test["query_id"], test["item_id"], test["esci_label"])) == [("2", "A", "E"), ("2", "C", "C")]
    assert sorted(raw.items["item_id"]) == ["A", "B", "C"]
    a = raw.items.set_index("item_id").loc["A"]
    assert a["title"] == "Title of A bold" and a["brand"] == "Acme"
    assert a["description"] == "Colour: red Nice & cheap fits all" and list(a["categories"]) == []
    assert sorted(zip(raw.interactions["user_id"], raw.interactions["item_id"])) == [("q1", "A"), ("q1", "B")]
    assert raw.interactions["timestamp"].tolist() == [0, 1]

    large = load_esci_queries(EsciParams(root=str(official), version="large"))
    assert "4" in set(large["query_id"])
    es = load_esci_queries(EsciParams(root=str(official), locale="es"))
    assert set(es["item_id"]) == {"X"}


def test_category_paths_are_cut_to_three_and_short_ones_dropped(official, tmp_path):
    cats = pd.DataFrame({"asin": ["A", "B", "C"], "category": [["Electronics", "Cables", "USB", "USB-C"], "Electronics > Cables", ["Home", "Lamps", "Desk"]]})
    path = tmp_path / "esci_s.jsonl"
    cats.to_json(path, orient="records", lines=True)
    raw = load_esci(EsciParams(root=str(official), categories_path=str(path)))
    paths = dict(zip(raw.items["item_id"], map(list, raw.items["categories"])))
    assert paths == {"A": ["Electronics", "Cables", "USB"], "C": ["Home", "Lamps", "Desk"]}  # B (depth 2) dropped
    assert set(raw.interactions["item_id"]) == {"A"}


def test_bad_inputs_are_named(official, tmp_path):
    with pytest.raises(ValidationError):
        EsciParams(root=str(official), locale="fr")
    # a valid locale with no rows in the file
    ex = pd.read_parquet(official / EXAMPLES_FILE)
    ex = ex[ex["product_locale"] == "us"]
    only_us = _write(tmp_path / "us_only", ex, pd.read_parquet(official / PRODUCTS_FILE))
    with pytest.raises(InputError, match=r"no small-version examples for locale 'jp'.*\['us'\]") as err:
        load_esci(EsciParams(root=str(only_us), locale="jp"))
    assert EXAMPLES_FILE in str(err.value)
    # products missing for some examples
    products = pd.read_parquet(official / PRODUCTS_FILE)
    short = _write(tmp_path / "short", ex, products[products["product_id"] != "B"])
    with pytest.raises(InputError, match=r"1 examples refer to products missing.*'B'"):
        load_esci(EsciParams(root=str(short)))
    raw = load_esci(EsciParams(root=str(short), missing_products="drop"))
    assert "B" not in set(raw.items["item_id"])
    # an examples file without the split column
    nosplit = _write(tmp_path / "nosplit", ex.drop(columns=["split"]), products)
    with pytest.raises(InputError, match=r"missing columns \['split'\].*train/test"):
        load_esci(EsciParams(root=str(nosplit)))
    # bad labels, missing files, no training pairs
    bad = ex.copy()
    bad.loc[bad.index[0], "esci_label"] = "X"
    with pytest.raises(InputError, match="esci_label must be one of"):
        load_esci(EsciParams(root=str(_write(tmp_path / "bad", bad, products))))
    with pytest.raises(InputError, match="products file not found"):
        load_esci(EsciParams(root=str(official), products_file="nope.parquet"))
    all_test = ex.assign(split="test")
    with pytest.raises(InputError, match="no training"):
        load_esci(EsciParams(root=str(_write(tmp_path / "alltest", all_test, products))))


def test_registry_partition_names_missing_folder(tmp_path):
    with pytest.raises(InputError, match="ESCI folder not found") as err:
        load_raw("esci", str(tmp_path))
    assert str(tmp_path / "datasets" / "esci") in str(err.value)
    with pytest.raises(InputError, match="has no search queries"):
        load_queries("amazon-beauty", str(tmp_path))


def _sample_dir():
    path = shared_dir() / "datasets" / "esci-sample"
    if not (path / "examples_sample.parquet").exists():
        pytest.skip(f"ESCI sample not found at {path} (set SEMID_SHARED_DIR to the folder holding datasets/)")
    return path


def _vespa_products(path):
    """The sample's search-engine feed rewritten in the official products schema (same real rows)."""
    rows = [json.loads(line)["fields"] for line in path.read_text().splitlines() if line.strip()]
    return pd.DataFrame(
        {
            "product_id": [r["id"] for r in rows],
            "product_title": [r.get("title") for r in rows],
            "product_description": [r.get("description") for r in rows],
            "product_bullet_point": [r.get("bullets") for r in rows],
            "product_brand": [r.get("brand") for r in rows],
            "product_color": [r.get("color") for r in rows],
            "product_locale": [r.get("locale") for r in rows],
        }
    )


def test_real_sample_rows(tmp_path):
    sample = _sample_dir()
    ex = read_examples(sample / "examples_sample.parquet", "us")
    assert len(ex) == 16 and ex["query_id"].nunique() == 1 and set(ex["split"]) == {"test"}
    products = _vespa_products(sample / "products_sample_vespa_feed.jsonl")
    products.to_parquet(tmp_path / "products.parquet")
    parsed = read_products(tmp_path / "products.parquet", "us")
    assert set(parsed["item_id"]) == set(ex["product_id"])
    assert parsed["title"].str.len().min() > 10 and not parsed["description"].str.contains("<br>").any()
    # the real query in the official schema, half of its products moved to a training split
    ex = pd.read_parquet(sample / "examples_sample.parquet")
    ex["split"] = np.where(np.arange(len(ex)) % 2 == 0, "train", "test")
    _write(tmp_path / "real", ex, products)
    raw = load_esci(EsciParams(root=str(tmp_path / "real")))
    validate_raw(raw, "esci-sample")
    q = load_esci_queries(EsciParams(root=str(tmp_path / "real")))
    assert set(q.loc[q["split"] == "train", "esci_label"]) <= {"E", "S"}
    # the 150-query judgments as an examples file: no product rows for most of them
    judg = pd.read_csv(sample / "us_judgments_150_queries.tsv", sep="\t")
    jex = _examples(
        list(zip(judg["query"], pd.factorize(judg["query"])[0], judg["product_id"], ["us"] * len(judg),
                 judg["esci_label_inferred"], np.where(pd.factorize(judg["query"])[0] % 5 == 0, "test", "train")))
    )
    _write(tmp_path / "judg", jex, products)
    with pytest.raises(InputError, match="refer to products missing from the products file"):
        load_esci(EsciParams(root=str(tmp_path / "judg")))


def test_demo_queries_follow_the_esci_schema_and_labels():
    from semid_pipeline.core.data.demo import DemoParams, DemoQueryParams, generate_demo, generate_demo_queries

    params = DemoParams(n_items=240, n_users=300, seed=7)
    raw = generate_demo(params)
    q = generate_demo_queries(raw.items, DemoQueryParams(n_queries=150), seed=7)
    again = generate_demo_queries(raw.items, DemoQueryParams(n_queries=150), seed=7)
    pd.testing.assert_frame_equal(q, again)
    assert list(q.columns) == list(QUERY_COLUMNS) and q["query_id"].nunique() == 150
    assert set(q["esci_label"]) == {"E", "S", "C", "I"} and set(q["split"]) == {"train", "test"}
    items = raw.items.set_index("item_id")
    for _, g in q.groupby("query_id"):
        leaf = {tuple(items.loc[i, "categories"]) for i in g.loc[g["esci_label"].isin(["E", "S"]), "item_id"]}
        assert len(leaf) <= 1  # exact and substitute products share the query's leaf category
        others = {tuple(items.loc[i, "categories"]) for i in g.loc[g["esci_label"] == "I", "item_id"]}
        assert not (leaf & others)
    # queries do not change the demo catalog or interactions
    pd.testing.assert_frame_equal(raw.interactions, generate_demo(params).interactions)
    filtered = cat_id2_filter(q, ["E", "S"], ["E", "S"])
    trained = set(filtered.loc[filtered["split"] == "train", "item_id"])
    rel = filtered[(filtered["split"] == "test") & filtered["esci_label"].isin(["E", "S"])]
    assert len(rel) and set(rel["item_id"]) <= trained
    assert load_queries("demo", "", {"n_items": 240, "n_users": 300, "seed": 7, "n_queries": 150}).equals(q)
