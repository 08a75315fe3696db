"""Data-parallel (torch.distributed, gloo on CPU) training of the generative recommender: 2 ranks, tiny data."""

import json
import os
import socket
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as torch_mp

from semid_pipeline.core.artifacts import load_artifact, save_artifact
from semid_pipeline.core.recommender.model import RecommenderParams
from semid_pipeline.core.recommender.train import TrainParams, recommend, train_recommender
from semid_pipeline.core.recommender.trie import SIDTrie
from semid_pipeline.core.training import TORCHRUN_VARS, plan_data_parallel as plan, needs_launch
from semid_pipeline_tests.test_recommender_trie import random_sids

pytestmark = pytest.mark.timeout(180)  # a hung collective fails the test instead of the suite

N_ITEMS, SIZES = 40, (4, 4, 4)


def tiny_data(n_users: int = 16, seed: int = 0):
    """Users walking the item cycle with histories of 3..8 training items (so batches differ in token count)."""
    rng = np.random.default_rng(seed)
    lengths = 3 + np.arange(n_users) % 6
    starts = rng.integers(0, N_ITEMS, n_users)
    seqs = [(s + np.arange(n + 1)) % N_ITEMS for s, n in zip(starts, lengths)]
    train = [q[:-1] for q in seqs]
    valid = np.array([q[-1] for q in seqs], dtype=np.int64)
    return random_sids(N_ITEMS, SIZES, seed=3), train, valid, np.arange(n_users)


def params(**kw) -> tuple[RecommenderParams, TrainParams]:
    model = RecommenderParams(
        d_model=32, n_encoder_layers=1, n_decoder_layers=1, n_heads=2, d_head=16, d_ff=64, dropout=0.0,
        max_history_items=8, n_user_buckets=8,
    )
    train = {"epochs": 2, "batch_size": 8, "lr": 4e-3, "warmup_steps": 4, "eval_every_epochs": 2, "patience": 2,
             "eval_beam_size": 10, "seed": 0, "device": "cpu", "num_threads": 1, **kw}
    return model, TrainParams(**train)


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    for var in TORCHRUN_VARS:
        monkeypatch.delenv(var, raising=False)
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


def assert_valid_recommendations(model, sids, train, users):
    items, _ = recommend(model, SIDTrie.from_sids(sids), train, users, beam_size=10, top_k=10, batch_size=16)
    assert items.shape == (len(users), 10)
    assert ((items >= 0) & (items < len(sids))).all()
    assert (np.diff(np.sort(items, axis=1), axis=1) != 0).all()


def test_two_ranks_match_one_process_on_the_union_batch():
    """World 2 x batch 8 vs one process x batch 16 on 16 rows: every epoch is one optimiser step on all
    rows, whose two halves (the sampler sorts by length) hold different token counts; the models
    agree only if the DDP step equals the single-process step on the union (token-weighted mean)."""
    sids, train, valid, users = tiny_data()
    mp, tp = params()
    single = train_recommender(sids, train, valid, train, users, mp, tp.model_copy(update={"batch_size": 16}))
    ddp = train_recommender(sids, train, valid, train, users, mp, tp.model_copy(update={"world_size": 2}))
    assert ddp.best_epoch == single.best_epoch == 2 and len(ddp.history) == 2
    for a, b in zip(single.history, ddp.history):
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-5)
    single_state, ddp_state = single.model.state_dict(), ddp.model.state_dict()
    assert single_state.keys() == ddp_state.keys()
    for name, value in single_state.items():
        torch.testing.assert_close(ddp_state[name], value, rtol=1e-4, atol=2e-6, msg=lambda m: f"{name}: {m}")
    assert ddp.model.device.type == "cpu" and not ddp.model.training
    assert_valid_recommendations(ddp.model, sids, train, users)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _torchrun_rank(rank: int, world: int, port: int, out_dir: str) -> None:
    """What torchrun would start: the environment names the rank; the trainer joins from it."""
    os.environ.update({"RANK": str(rank), "WORLD_SIZE": str(world), "LOCAL_RANK": str(rank), "LOCAL_WORLD_SIZE": str(world),
                       "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)})
    sids, train, valid, users = tiny_data(n_users=20)
    mp, tp = params(epochs=3, batch_size=4, eval_every_epochs=1, dist_timeout_minutes=2.0)
    result = train_recommender(sids, train, valid, train, users, mp, tp)  # world_size stays 1: the env decides
    save_artifact(result.model, Path(out_dir) / f"rank{rank}")
    (Path(out_dir) / f"rank{rank}.json").write_text(json.dumps({"history": result.history, "best_epoch": result.best_epoch}))


def test_torchrun_style_ranks_end_with_identical_weights(tmp_path):
    world = 2
    procs = torch_mp.start_processes(
        _torchrun_rank, args=(world, _free_port(), str(tmp_path)), nprocs=world, join=False, start_method="spawn"
    )
    deadline = time.monotonic() + 120
    while not procs.join(timeout=1.0):
        if time.monotonic() > deadline:
            for p in procs.processes:
                p.kill()
            pytest.fail("torchrun-style ranks did not finish within 120 s")
    models = [load_artifact(tmp_path / f"rank{r}") for r in range(world)]
    runs = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(world)]
    state0, state1 = models[0].state_dict(), models[1].state_dict()
    for name, value in state0.items():
        assert torch.equal(value, state1[name]), f"{name} differs between ranks"
    assert runs[0]["best_epoch"] == runs[1]["best_epoch"] >= 1
    strip = lambda h: [{k: v for k, v in r.items() if k not in ("seconds", "samples_per_s")} for r in h]  # noqa: E731
    assert strip(runs[0]["history"]) == strip(runs[1]["history"])  # loss all-reduced, validation broadcast
    assert all("valid_recall@10" in h for h in runs[0]["history"])
    sids, train, _, users = tiny_data(n_users=20)
    assert_valid_recommendations(models[0], sids, train, users)


def test_bad_distributed_config_is_rejected_before_any_process_starts(monkeypatch):
    sids, train, valid, users = tiny_data()
    mp, tp = params(world_size=2)
    assert plan(tp).backend == "gloo" and plan(tp).device_type == "cpu" and plan(tp).launch == "spawn"
    assert plan(tp.model_copy(update={"device": "auto"})).device_type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ValueError, match="pins one GPU"):
        train_recommender(sids, train, valid, train, users, mp, tp.model_copy(update={"device": "cuda:1"}))
    with pytest.raises(ValueError, match="nccl' needs CUDA"):
        train_recommender(sids, train, valid, train, users, mp, tp.model_copy(update={"dist_backend": "nccl"}))
    # one visible GPU for two CUDA ranks
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(ValueError, match=r"needs 2 visible GPU\(s\).*torch sees 1"):
        train_recommender(sids, train, valid, train, users, mp, tp.model_copy(update={"device": "cuda"}))
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    two_gpus = plan(tp.model_copy(update={"device": "auto", "dist_backend": "gloo"}), rank=1)
    assert (two_gpus.device_type, two_gpus.backend, str(two_gpus.device())) == ("cuda", "gloo", "cuda:1")
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    # torchrun environment that disagrees with the config, or a local rank without its GPU
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "4")
    with pytest.raises(ValueError, match="WORLD_SIZE=4"):
        plan(tp)
    monkeypatch.setenv("LOCAL_RANK", "1")
    with pytest.raises(ValueError, match="needs 2 visible GPU"):
        plan(tp.model_copy(update={"world_size": 1, "device": "cuda"}))
    monkeypatch.setenv("WORLD_SIZE", "four")
    with pytest.raises(ValueError, match="not an integer"):
        needs_launch(tp.model_copy(update={"world_size": 1}))
    with pytest.raises(ValueError, match="world_size"):
        TrainParams(world_size=0)


def test_dagster_config_and_k8s_overlay_carry_the_knob():
    from dagster_shared.yaml_utils import merge_yamls

    from semid_pipeline.assets.recommender import RecommenderConfig

    config = RecommenderConfig(world_size=2, dist_backend="gloo")
    assert (config.world_size, config.dist_backend, RecommenderConfig().world_size) == (2, "gloo", 1)
    repo = Path(__file__).resolve().parents[1]
    scale_out = repo / "docker" / "scale-out"
    # what `dagster job launch -c model.yaml -c k8s_executor.yaml -c k8s_multi_gpu_recommender.yaml` merges
    merged = merge_yamls([str(repo / "configs" / "beauty_cpu.yaml"), str(scale_out / "k8s_executor.yaml"),
                          str(scale_out / "k8s_multi_gpu_recommender.yaml")])
    per_step = merged["execution"]["config"]["per_step_k8s_config"]
    step = per_step["generative_recommender"]
    gpus = int(step["container_config"]["resources"]["limits"]["nvidia.com/gpu"])
    model_config = merged["ops"]["generative_recommender"]["config"]
    assert gpus == model_config["world_size"] > 1 and step["pod_spec_config"]["node_selector"] == {"nvidia.com/gpu.present": "true"}
    assert per_step["sasrec_model"]["container_config"]["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert model_config["d_model"] == 128  # the model config survives the merge
    assert RecommenderConfig(**model_config).world_size == gpus
