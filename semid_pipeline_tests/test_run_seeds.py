"""benchmarks/run_seeds.py: which config fields a seed sets, and the spread it reports."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from run_seeds import seed_paths, seeded_config, spread  # noqa: E402

from semid_pipeline.definitions import all_assets  # noqa: E402


def test_every_seed_field_of_the_graph_is_found_nested_ones_included():
    paths = seed_paths(all_assets)
    assert ("seed",) in paths["sasrec_model"]
    assert ("parallel", "seed") in paths["generative_recommender"]
    assert ("seed",) in paths["sid_tokenizer"]


def test_seeded_config_sets_every_seed_and_keeps_the_rest():
    paths = {"sasrec_model": [("seed",)], "generative_recommender": [("seed",), ("parallel", "seed")]}
    base = {"ops": {"generative_recommender": {"config": {"kind": "parallel", "parallel": {"d_model": 192, "seed": 0}}}}}
    got = seeded_config(base, 3, paths)
    assert got["ops"]["generative_recommender"]["config"] == {"kind": "parallel", "parallel": {"d_model": 192, "seed": 3}, "seed": 3}
    assert got["ops"]["sasrec_model"]["config"] == {"seed": 3}
    assert base["ops"]["generative_recommender"]["config"]["parallel"]["seed"] == 0  # the input is not modified


def test_spread_is_mean_and_sample_std():
    s = spread([0.08, 0.09, 0.10])
    assert s["mean"] == pytest.approx(0.09) and s["std"] == pytest.approx(0.01) and (s["min"], s["max"], s["n"]) == (0.08, 0.10, 3)
    assert spread([0.5])["std"] == 0.0
