"""Readable metadata: number formatting, metric order, learning curves on separate axes, native
row count / column schema for tables, and IO managers that keep an asset's own metadata."""

import math

import numpy as np
import pandas as pd
import pytest
from dagster import Output, asset, materialize

from semid_pipeline.core.tokenizers.rqvae import RQVAE, RQVAEParams
from semid_pipeline.metadata import (
    curve_figure,
    fmt_number,
    md_table,
    order_metric_columns,
    readable,
    round_sig,
    table_metadata,
)

from .conftest import tiny_resources


def test_numbers_are_formatted_for_people():
    assert fmt_number(64.0) == "64" and fmt_number(np.int64(64)) == "64" and fmt_number(np.float32(3.0)) == "3"
    assert fmt_number(0.05275279502113701) == "0.05275"
    assert fmt_number(0.7020423253377278) == "0.702"
    assert fmt_number(13.26585531531493) == "13.27"
    assert fmt_number(1380.5383) == "1381"  # from 1000 up the integer part stays
    assert fmt_number(float("nan")) == "" and fmt_number(None) == ""
    assert fmt_number(1.5e-6) == "1.5e-06"
    assert fmt_number(True) == "True" and fmt_number("Skin Care") == "Skin Care"
    assert round_sig(0.05275279502113701) == 0.05275 and round_sig(0.0) == 0.0 and math.isnan(round_sig(float("nan")))


def test_md_table_prints_integers_as_integers_and_four_significant_digits():
    df = pd.DataFrame({"level": [1.0, 2.0], "used_codes": [64.0, 12.0], "perplexity": [0.05275279502113701, 13.26585531531493], "name": ["a", None]})
    text = md_table(df).value
    assert "64.0000" not in text and "1.0000" not in text and "0.05275279502113701" not in text
    cells = [[c.strip() for c in line.strip("|").split("|")] for line in text.splitlines()]
    assert cells[0] == ["level", "used_codes", "perplexity", "name"]
    assert cells[2] == ["1", "64", "0.05275", "a"] and cells[3] == ["2", "12", "13.27", ""]
    assert cells[1][0].endswith(":") and cells[1][3].startswith(":")  # numbers right-aligned, text left
    mixed = pd.DataFrame({"value": [64.0, 0.05275279502113701]}, dtype=object)  # object columns too
    assert [line.strip("| ") for line in md_table(mixed).value.splitlines()[2:]] == ["64", "0.05275"]


def test_metric_columns_in_reading_order():
    df = pd.DataFrame(columns=["model", "split", "ndcg@10", "ndcg@5", "recall@10", "recall@5"])
    assert list(order_metric_columns(df).columns) == ["model", "split", "recall@5", "recall@10", "ndcg@5", "ndcg@10"]
    hist = pd.DataFrame(columns=["epoch", "loss", "valid_ndcg@10", "valid_recall@10", "seconds"])
    assert list(order_metric_columns(hist).columns) == ["epoch", "loss", "seconds", "valid_recall@10", "valid_ndcg@10"]


def test_readable_rounds_floats_and_keeps_other_values():
    out = readable({"a": 0.05275279502113701, "b": np.int64(7), "c": "x", "d": np.float64(13.26585531531493), "e": True})
    assert out == {"a": 0.05275, "b": 7, "c": "x", "d": 13.27, "e": True}
    assert type(out["b"]) is int and type(out["e"]) is bool


def test_learning_curve_puts_loss_and_validation_metrics_on_separate_axes():
    history = [
        {"epoch": 1, "loss": 3.9, "valid_recall@10": 0.04, "valid_ndcg@10": 0.015},
        {"epoch": 2, "loss": 3.1},  # no validation this epoch: skipped, not drawn as zero
        {"epoch": 3, "loss": 2.5, "valid_recall@10": 0.09, "valid_ndcg@10": 0.03},
    ]
    fig = curve_figure(history, {"training loss": ["loss"], "validation": ["valid_recall@10", "valid_ndcg@10"]}, "t")
    axes = fig.axes
    assert len(axes) == 2
    loss_ax, valid_ax = axes
    assert [line.get_label() for line in loss_ax.get_lines()] == ["loss"]
    assert [line.get_label() for line in valid_ax.get_lines()] == ["valid_recall@10", "valid_ndcg@10"]
    assert list(valid_ax.get_lines()[0].get_xdata()) == [1, 3]
    assert valid_ax.get_ylim()[1] < 0.2 < loss_ax.get_ylim()[0]  # recall is not flattened against the loss scale
    import matplotlib.pyplot as plt

    plt.close(fig)


def test_curve_figure_reference_line_and_empty_panels_left_out():
    history = [{"epoch": e, "total": 1.0 / e, "used_codes_l1": 10 + e, "collision_rate": 0.5 / e} for e in range(1, 6)]
    fig = curve_figure(history, {"loss": ["total"], "codes used": ["used_codes_l1"], "collision rate": ["collision_rate"], "absent": ["nope"]},
                       "t", hlines={"codes used": 64})
    assert [ax.get_ylabel() for ax in fig.axes] == ["loss", "codes used", "collision rate"]
    assert any(list(line.get_ydata()) == [64, 64] for line in fig.axes[1].get_lines())
    import matplotlib.pyplot as plt

    plt.close(fig)


def test_table_metadata_row_count_and_schema_from_parquet(tmp_path):
    df = pd.DataFrame({"item_idx": np.arange(3, dtype=np.int64), "sid": [[1, 2], [3, 4], [5, 6]], "title": ["a", "b", "c"]})
    path = tmp_path / "t.parquet"
    df.to_parquet(path)
    meta = table_metadata(df, path)
    assert meta["dagster/row_count"].value == 3
    cols = meta["dagster/column_schema"].schema.columns
    assert [c.name for c in cols] == ["item_idx", "sid", "title"]
    assert cols[0].type == "int64" and cols[1].type == "list<int64>" and cols[2].type == "string"


@asset(io_manager_key="table_io", metadata={})
def tiny_table() -> Output:
    return Output(pd.DataFrame({"a": [1, 2, 3], "b": [0.5, 0.25, 0.125]}), metadata={"path": "the asset's own value"})


@asset(io_manager_key="model_io")
def tiny_model() -> Output:
    model = RQVAE.from_params(8, RQVAEParams(hidden_dims=[8], latent_dim=4, n_levels=2, codebook_size=4))
    return Output(model, metadata={"kind": "rqvae (the asset's own)"})


def test_io_managers_add_native_table_metadata_and_keep_the_assets_own(tmp_path):
    result = materialize([tiny_table, tiny_model], resources=tiny_resources(tmp_path))
    assert result.success
    meta = {e.asset_key.to_user_string(): e.materialization.metadata for e in result.get_asset_materialization_events()}
    table = meta["tiny_table"]
    assert table["dagster/row_count"].value == 3
    assert [c.name for c in table["dagster/column_schema"].schema.columns] == ["a", "b"]
    assert table["path"].value == "the asset's own value"  # the IO manager does not overwrite the asset's entry
    assert "select * from tiny_table" in table["duckdb_view"].value
    model = meta["tiny_model"]
    assert model["kind"].value == "rqvae (the asset's own)"
    assert model["artifact_kind"].value == RQVAE.KIND and model["n_tensor_values"].value > 0


@pytest.mark.parametrize("value,expected", [(12345.678, "12346"), (-0.000123456, "-0.0001235"), (float("inf"), "inf")])
def test_fmt_number_edges(value, expected):
    assert fmt_number(value) == expected
