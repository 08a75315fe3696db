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


def test_resume_reads_back_finished_seeds_and_runs_only_the_rest(tmp_path, monkeypatch):
    import json

    import run_seeds

    ran = []

    def fake_run_graph(dataset, config, stem, data_dir, out_dir, chosen, options):
        ran.append((stem, chosen))
        data_dir.mkdir(parents=True, exist_ok=True)
        seed = int(stem.rsplit("seed", 1)[1])
        return {"success": True, "wall_seconds": 1.0, "git_commit": "x", "data_dir": str(data_dir), "hardware": {}, "asset_metadata": {},
                "metrics": {"m": {"test": {"recall@10": 0.1 + seed / 100}}}}

    monkeypatch.setattr(run_seeds, "run_graph", fake_run_graph)
    monkeypatch.setattr(run_seeds, "rescore", lambda data_dir, dataset, ks: {"agree": True, "max_abs_diff": 0.0})
    monkeypatch.setattr(run_seeds, "published_section", lambda dataset: [])
    out, root = tmp_path / "out", tmp_path / "data"
    out.mkdir()
    (root / "seed0").mkdir(parents=True)
    kept = {"success": True, "wall_seconds": 5.0, "git_commit": "y", "data_dir": str(root / "seed0"), "json": str(out / "n-seed0.json"), "hardware": {}, "asset_metadata": {}, "seed": 0,
            "metrics": {"m": {"test": {"recall@10": 0.5}}}, "rescore": {"agree": True, "max_abs_diff": 0.0}}
    (out / "n-seed0.json").write_text(json.dumps(kept))
    summary = run_seeds.run_seeds("demo", {}, "n", [0, 1], root, out, resume=True)
    assert [stem for stem, _ in ran] == ["n-seed1"]  # seed 0 read back, not run
    assert summary["metrics"]["m"]["test"]["recall@10"]["per_seed"] == [0.5, 0.11]
    (out / "n-seed0.json").write_text(json.dumps({**kept, "success": False}))  # a failed seed is run again
    ran.clear()
    run_seeds.run_seeds("demo", {}, "n", [0, 1], root, out, resume=True)
    assert [stem for stem, _ in ran] == ["n-seed0"]
    # every seed already finished (e.g. run on two cores apart): the summary is written from the files alone
    ran.clear()
    (out / "n-summary.json").unlink()
    summary = run_seeds.run_seeds("demo", {}, "n", [0, 1], root, out, resume=True)
    assert ran == [] and summary["metrics"]["m"]["test"]["recall@10"]["per_seed"] == [0.1, 0.11]
    assert json.loads((out / "n-summary.json").read_text())["seeds"] == [0, 1]
