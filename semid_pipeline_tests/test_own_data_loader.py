"""Bring your own data, the pure core: the generic loader (every file type, column mapping, times,
category strings, each validation error with its file, row and column), datasets files (unknown
keys and formats with their close match) and cold vs warm metrics on a hand-built case."""

import gzip
import logging
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from semid_pipeline.core.data.generic import GenericParams, load_generic, write_generic
from semid_pipeline.core.data.registry import BUILTIN_DATASETS_FILE, DATASETS, datasets_files, load_datasets, read_datasets_file
from semid_pipeline.core.errors import InputError
from semid_pipeline.core.metrics import COLD_NOT_RANKABLE, cold_targets, score_cold_warm, trained_items

ITEMS = pd.DataFrame({
    "sku": ["007", "a2", "a3", "new"],
    "title": ["Rose Shampoo", "Mint Conditioner", "Dry Shampoo", "Argan Hair Oil"],
    "brand": ["Acme", None, "Acme", "Oilco"],
    "category": ["Hair > Shampoo", "Hair > Conditioner", "Hair>Shampoo > Dry", ""],
    "description": ["gentle", None, "no water", "for dry ends"],
})
EVENTS = pd.DataFrame({
    "customer": ["u1", "u1", "u1", "u2", "u2"],
    "sku": ["007", "a2", "a3", "a3", "007"],
    "event_time": ["2024-03-01T10:00:00Z", "2024-03-02", "2024-03-02T00:00:00+02:00", "2024-03-05 08:30:00", "2024-03-06T00:00:00.750Z"],
})
ITEM_COLS = {"item_id": "sku", "categories": "category"}
EVENT_COLS = {"user_id": "customer", "item_id": "sku", "timestamp": "event_time"}


def _write(frame: pd.DataFrame, path: Path) -> Path:
    name = path.name.removesuffix(".gz")
    opener = gzip.open if path.name.endswith(".gz") else open
    if name.endswith(".parquet"):
        with opener(path, "wb") as f:
            frame.to_parquet(f, index=False)
    elif name.endswith(".csv"):
        with opener(path, "wt") as f:
            frame.to_csv(f, index=False)
    else:
        with opener(path, "wt") as f:
            f.write(frame.to_json(orient="records", lines=True))
    return path


def _params(items: Path, events: Path, **extra) -> GenericParams:
    return GenericParams(items={"path": str(items), "columns": ITEM_COLS},
                         interactions={"path": str(events), "columns": EVENT_COLS}, **extra)


@pytest.mark.parametrize("suffix", ["parquet", "csv", "jsonl", "parquet.gz", "csv.gz", "jsonl.gz"])
def test_every_file_type_reads_to_the_same_tables(tmp_path, suffix):
    raw = load_generic(_params(_write(ITEMS, tmp_path / f"items.{suffix}"), _write(EVENTS, tmp_path / f"events.{suffix}")))
    items, inter = raw.items, raw.interactions
    assert items["item_id"].tolist() == ["007", "a2", "a3", "new"]  # text ids: the leading zeros stay
    assert [list(p) for p in items["categories"]] == [["Hair", "Shampoo"], ["Hair", "Conditioner"], ["Hair", "Shampoo", "Dry"], []]
    assert items["brand"].isna().tolist() == [False, True, False, False] and items["title"].iloc[3] == "Argan Hair Oil"
    assert items["image"].isna().all()  # an optional column the file lacks
    # ISO 8601 with Z, date only, an offset, a space separator and fractions (floored to the second)
    assert inter["timestamp"].tolist() == [1709287200, 1709337600, 1709330400, 1709627400, 1709683200]
    assert inter["user_id"].tolist() == ["u1", "u1", "u1", "u2", "u2"] and inter["rating"].isna().all()
    assert "new" not in set(inter["item_id"])  # a cold item: in the catalog, never bought


def test_epoch_times_integer_ids_list_categories_and_write_generic_round_trip(tmp_path):
    items = pd.DataFrame({"item_id": [10, 11], "title": ["A", "B"], "categories": [["X", "Y"], ["X"]]})
    events = pd.DataFrame({"user_id": [1, 1], "item_id": [10, 11], "timestamp": [1_700_000_000.9, 1_700_000_100], "rating": [5, 4]})
    raw = load_generic(GenericParams(items=str(_write(items, tmp_path / "i.parquet")), interactions=str(_write(events, tmp_path / "e.parquet"))))
    assert raw.items["item_id"].tolist() == ["10", "11"] and raw.interactions["user_id"].tolist() == ["1", "1"]
    assert raw.interactions["timestamp"].tolist() == [1_700_000_000, 1_700_000_100]
    assert raw.interactions["rating"].tolist() == [5.0, 4.0]
    ms = pd.DataFrame({"user_id": ["u"], "item_id": ["10"], "timestamp": ["1700000000123"]})
    got = load_generic(GenericParams(items=str(tmp_path / "i.parquet"), interactions=str(_write(ms, tmp_path / "ms.csv")),
                                     timestamp_format="epoch_milliseconds"))
    assert got.interactions["timestamp"].tolist() == [1_700_000_000]
    # what write_generic writes reads back to the same tables, with renamed columns, ISO times and category strings
    opts = write_generic(raw, tmp_path / "out", "items.csv.gz", "events.jsonl", columns={"item_id": "sku"},
                         categories_as="string", times_as="iso8601")
    again = load_generic(GenericParams(**opts))
    assert again.items["item_id"].tolist() == ["10", "11"] and [list(p) for p in again.items["categories"]] == [["X", "Y"], ["X"]]
    assert again.interactions["timestamp"].tolist() == [1_700_000_000, 1_700_000_100]


def _refused(tmp_path, items=ITEMS, events=EVENTS, **extra) -> str:
    with pytest.raises(InputError) as err:
        load_generic(_params(_write(items, tmp_path / "items.parquet"), _write(events, tmp_path / "events.csv"), **extra))
    text = str(err.value)
    assert "\n" not in text
    return text


def test_missing_required_column_names_file_column_and_close_match(tmp_path):
    text = _refused(tmp_path, items=ITEMS.rename(columns={"title": "titel"}))
    assert text.startswith(f"{tmp_path / 'items.parquet'}: items: missing required column 'title'")
    assert "did you mean 'titel'?" in text
    text = _refused(tmp_path, events=EVENTS.drop(columns=["event_time"]))
    assert f"{tmp_path / 'events.csv'}: interactions: missing required column 'event_time' (mapped from timestamp)" in text


def test_duplicate_item_with_different_content_is_refused_exact_repeat_is_counted(tmp_path, caplog):
    twice = pd.concat([ITEMS, ITEMS.iloc[[1]].assign(title="Mint Conditioner XL")], ignore_index=True)
    text = _refused(tmp_path, items=twice)
    assert "item_id 'a2' appears on rows 2 and 5 with different 'title': 'Mint Conditioner' vs 'Mint Conditioner XL'" in text
    repeat = pd.concat([ITEMS, ITEMS.iloc[[1]]], ignore_index=True)
    with caplog.at_level(logging.WARNING, logger="semid_pipeline"):
        raw = load_generic(_params(_write(repeat, tmp_path / "items.parquet"), _write(EVENTS, tmp_path / "events.csv")))
    assert len(raw.items) == 4
    assert [r.semid_count for r in caplog.records if hasattr(r, "semid_count")] == [{"repeated_item_rows": 1}]


def test_unknown_items_dropped_and_counted_or_refused_by_option(tmp_path, caplog):
    events = pd.concat([EVENTS, pd.DataFrame({"customer": ["u3", "u3"], "sku": ["zzz", "007"],
                                              "event_time": ["2024-03-07", "2024-03-08"]})], ignore_index=True)
    text = _refused(tmp_path, events=events, unknown_items="refuse")
    assert "interactions: 1 rows name items missing from" in text and "row 6, column 'sku' (item_id): 'zzz'" in text
    with caplog.at_level(logging.WARNING, logger="semid_pipeline"):
        raw = load_generic(_params(tmp_path / "items.parquet", _write(events, tmp_path / "events.csv")))
    assert len(raw.interactions) == 6 and "zzz" not in set(raw.interactions["item_id"])
    assert [r.semid_count for r in caplog.records if hasattr(r, "semid_count")] == [{"unknown_item_interactions": 1}]


@pytest.mark.parametrize("bad, expected", [
    ("yesterday", "row 3, column 'event_time' (timestamp): unparseable time 'yesterday'"),
    ("2024-13-01", "row 3, column 'event_time' (timestamp): unparseable time '2024-13-01'"),
])
def test_unparseable_time_names_row_and_column(tmp_path, bad, expected):
    events = EVENTS.copy()
    events.loc[2, "event_time"] = bad
    assert expected in _refused(tmp_path, events=events)


def test_epoch_format_refuses_text_and_ratings_must_be_numbers(tmp_path):
    assert "row 1, column 'event_time' (timestamp): unparseable time '2024-03-01T10:00:00Z' (expected epoch seconds)" in \
        _refused(tmp_path, timestamp_format="epoch_seconds")
    bad_rating = EVENTS.assign(rating=["5", "4", "five", "3", "1"])
    assert "row 3, column 'rating': rating 'five' is not a number" in _refused(tmp_path, events=bad_rating)


def test_empty_tables_missing_ids_and_missing_files_are_named(tmp_path):
    assert "items: the table is empty (no rows)" in _refused(tmp_path, items=ITEMS.iloc[:0])
    assert "interactions: the table is empty (no rows)" in _refused(tmp_path, events=EVENTS.iloc[:0])
    no_user = EVENTS.copy()
    no_user.loc[3, "customer"] = None
    assert "row 4, column 'customer' (user_id): missing user_id" in _refused(tmp_path, events=no_user)
    with pytest.raises(InputError, match="items file not found"):
        load_generic(_params(tmp_path / "nope.parquet", tmp_path / "events.csv"))
    (tmp_path / "items.xlsx").write_text("x")
    with pytest.raises(InputError, match=r"unknown file type '\.xlsx'"):
        load_generic(_params(tmp_path / "items.xlsx", tmp_path / "events.csv"))


def test_an_id_with_spaces_is_refused_not_stripped(tmp_path):
    events = EVENTS.assign(sku=["007", "a2 ", "a3", "a3", "007"])
    with pytest.raises(InputError, match="whitespace"):
        load_generic(_params(_write(ITEMS, tmp_path / "items.parquet"), _write(events, tmp_path / "events.parquet")))


def test_broken_files_are_named(tmp_path):
    (tmp_path / "items.jsonl").write_text('{"sku": "a", "title": "A"}\n{"sku": "b", "title": \n')
    with pytest.raises(InputError) as err:
        load_generic(_params(tmp_path / "items.jsonl", _write(EVENTS, tmp_path / "events.csv")))
    assert str(err.value).startswith(f"{tmp_path / 'items.jsonl'}:2: not a JSON object")
    (tmp_path / "items.parquet").write_bytes(b"PAR1 truncated")
    with pytest.raises(InputError, match="cannot read as parquet"):
        load_generic(_params(tmp_path / "items.parquet", tmp_path / "events.csv"))


# ---------------------------------------------------------------------------------------------
# datasets files


def _file(tmp_path, text: str) -> Path:
    path = tmp_path / "datasets.yaml"
    path.write_text(text)
    return path


SHOP = """datasets:
  my-shop:
    format: generic
    description: a test shop
    options:
      items: {path: items.parquet, columns: {item_id: sku}}
      interactions: events.csv
"""


def test_a_datasets_file_declares_generic_entries_with_paths_relative_to_it(tmp_path):
    specs = read_datasets_file(_file(tmp_path, SHOP))
    spec = specs["my-shop"]
    assert spec.format.name == "generic" and spec.keep_all_items and spec.description == "a test shop"
    assert spec.options["items"] == {"path": str(tmp_path / "items.parquet"), "columns": {"item_id": "sku"}}
    assert spec.options["interactions"] == str(tmp_path / "events.csv")
    assert spec.declared_in == f"{tmp_path / 'datasets.yaml'}:2"
    both = load_datasets(datasets_files(str(tmp_path / "datasets.yaml")))
    assert list(both)[: len(DATASETS)] == list(DATASETS) and list(both)[-1] == "my-shop"


def test_the_builtin_six_are_entries_of_the_same_kind():
    specs = read_datasets_file(BUILTIN_DATASETS_FILE)
    assert list(specs) == ["demo", "amazon-beauty", "amazon-sports", "amazon-toys", "esci", "kuairand"]
    assert {s.format.name for s in specs.values()} == {"demo", "amazon", "esci", "kuairand"}
    assert specs["esci"].keep_all_items and not specs["amazon-beauty"].keep_all_items
    assert (Path(__file__).resolve().parents[1] / "datasets.yaml").resolve() == BUILTIN_DATASETS_FILE


@pytest.mark.parametrize("text, expected", [
    (SHOP.replace("format: generic", "format: generik"), ":3: dataset 'my-shop': unknown format 'generik' (did you mean 'generic'?)"),
    (SHOP.replace("description:", "descripton:"), ":4: dataset 'my-shop': unknown key 'descripton' (did you mean 'description'?)"),
    (SHOP.replace("interactions: events.csv", "interaction: events.csv"),
     ":7: dataset 'my-shop': options: unknown key 'interaction' (did you mean 'interactions'?)"),
    (SHOP.replace("{item_id: sku}", "{itemid: sku}"), "options: items: columns: unknown key 'itemid' (did you mean 'item_id'?)"),
    (SHOP.replace("datasets:", "dataset:"), ":1: unknown key 'dataset' (did you mean 'datasets'?)"),
    (SHOP.replace("my-shop:", "my shop:"), ":2: dataset name 'my shop' must be"),
    (SHOP + "  my-shop:\n    format: demo\n", ":8: key 'my-shop' given twice (first on line 2)"),
    (SHOP.replace("events.csv", "[events.csv"), "invalid YAML"),
    (SHOP.replace("    format: generic\n", ""), ":2: dataset 'my-shop': missing key 'format'; formats: amazon, demo, esci, generic, kuairand"),
])
def test_a_bad_datasets_file_is_refused_naming_line_and_close_match(tmp_path, text, expected):
    with pytest.raises(InputError) as err:
        read_datasets_file(_file(tmp_path, text))
    assert str(err.value).startswith(str(tmp_path / "datasets.yaml")) and expected in str(err.value)


def test_a_name_declared_twice_across_files_and_a_missing_file_are_refused(tmp_path):
    path = _file(tmp_path, "datasets:\n  demo:\n    format: demo\n")
    with pytest.raises(InputError, match=r"datasets.yaml:2: dataset 'demo' is already declared at .*configs/datasets.yaml:10"):
        load_datasets([BUILTIN_DATASETS_FILE, path])
    with pytest.raises(InputError, match="datasets file not found \\(named by SEMID_DATASETS_FILE\\)"):
        datasets_files(str(tmp_path / "missing.yaml"))


# ---------------------------------------------------------------------------------------------
# cold vs warm metrics


def test_cold_and_warm_metrics_on_a_hand_built_case():
    # items 0..5; training sequences hold items 0, 1, 2, 3 only: items 4 and 5 are cold
    seqs = pd.DataFrame({
        "user_idx": [0, 1, 2, 3],
        "user_id": ["a", "b", "c", "d"],
        "train_items": [np.array([0, 1]), np.array([2, 3]), np.array([1, 0]), np.array([3])],
        "valid_item": [2, 4, 3, 0],
        "test_item": [4, 1, 5, 2],
        "n_interactions": [4, 4, 4, 3],
    })
    assert trained_items(seqs).tolist() == [0, 1, 2, 3]
    assert cold_targets(seqs).tolist() == [True, False, True, False]  # item 4 was a validation target only: still cold

    def lists(model, ranked):
        return pd.DataFrame([{"model": model, "split": "test", "user_idx": u, "rank": r, "item_idx": i}
                             for u, row in enumerate(ranked) for r, i in enumerate(row)])

    recs = pd.concat([
        # semantic-ID model: user 0 finds cold 4 at rank 0, user 2 finds cold 5 at rank 2; warm: user 1 hit at rank 1, user 3 miss
        lists("generative", [[4, 0, 1], [0, 1, 2], [0, 1, 5], [0, 1, 3]]),
        lists("sasrec", [[0, 1, 2], [1, 0, 2], [0, 1, 2], [2, 0, 1]]),
    ], ignore_index=True)
    table = score_cold_warm(recs, seqs, [1, 3])
    got = table.set_index(["model", "split", "metric", "k"]).sort_index()
    assert got.loc[("generative", "test_cold", "recall", 1), "value"] == 0.5
    assert got.loc[("generative", "test_cold", "recall", 3), "value"] == 1.0
    assert got.loc[("generative", "test_cold", "ndcg", 3), "value"] == pytest.approx((1 + 1 / math.log2(4)) / 2)
    assert got.loc[("generative", "test_warm", "recall", 3), "value"] == 0.5
    assert got.loc[("generative", "test_warm", "ndcg", 3), "value"] == pytest.approx((1 / math.log2(3)) / 2)
    assert (got.xs("test_cold", level="split")["n_users"] == 2).all() and (got.xs("test_warm", level="split")["n_users"] == 2).all()
    assert got.loc[("sasrec", "test_warm", "recall", 1), "value"] == 1.0  # users 1 and 3 hit at rank 0
    cold_sasrec = got.loc[("sasrec", "test_cold")]
    assert cold_sasrec["value"].isna().all() and set(cold_sasrec["note"]) == {COLD_NOT_RANKABLE["sasrec"]}
    assert COLD_NOT_RANKABLE["sasrec"] == "n/a: ID model cannot rank unseen items"
    assert set(got.loc[("generative", "test_cold")]["note"]) == {""}
    # no cold target at all: NaN with the reason, not a zero
    warm_only = seqs.assign(test_item=[0, 1, 2, 3])
    none = score_cold_warm(recs, warm_only, [1]).set_index(["model", "split", "metric", "k"]).sort_index()
    assert none.loc[("generative", "test_cold", "recall", 1), "note"] == "no cold targets"
    assert math.isnan(none.loc[("generative", "test_cold", "recall", 1), "value"])
