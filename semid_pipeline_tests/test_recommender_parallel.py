"""The parallel (RPG) recommender: losses, training through fit, exact and graph-constrained decoding,
save/reload, determinism, new items without retraining, and the Dagster path (kind: parallel)."""

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from dagster import DagsterInstance, materialize

from semid_pipeline.core import storage
from semid_pipeline.core.artifacts import load_artifact, save_artifact
from semid_pipeline.core.metrics import recall_at_k
from semid_pipeline.core.recommender.parallel import ParallelParams, ParallelRecommender
from semid_pipeline.core.recommender.parallel_decode import item_graph, recommend_exact, recommend_graph
from semid_pipeline.core.recommender.parallel_train import train_parallel, training_windows
from semid_pipeline.definitions import all_assets
from semid_pipeline_tests.conftest import tiny_resources
from semid_pipeline_tests.test_recommender_assets import FakeTextEncoderResource, write_inputs
from semid_pipeline_tests.test_recommender_train import CHAIN, N_CHAINS, chain_data

N = N_CHAINS * CHAIN


def opq_like_sids(n=N, digits=4, k=8, seed=0):
    """Random multi-digit SIDs, unique rows."""
    rng = np.random.default_rng(seed)
    while True:
        s = rng.integers(0, k, (n, digits))
        if len({tuple(r) for r in s.tolist()}) == n:
            return s


def small(**kw) -> ParallelParams:
    base = dict(d_model=32, n_layers=1, n_heads=2, d_ff=64, dropout=0.0, epochs=12, batch_size=32, lr=1e-2, warmup_steps=10,
                temperature=0.1, item_temperature=0.1, num_threads=1, seed=0)
    return ParallelParams(**{**base, **kw})


@pytest.fixture(scope="module")
def trained():
    sids = opq_like_sids()
    train, valid, test = chain_data(n_users=200)
    res = train_parallel(sids, train, valid, small(loss="item", item_id_embedding=True), codebook_size=8)
    return sids, train, valid, test, res


def test_training_windows_left_pad_and_shift():
    inputs, targets, n = training_windows([np.array([3, 1, 2]), np.array([5]), np.array([0, 4])], n_items=6, max_len=3)
    np.testing.assert_array_equal(inputs, [[0, 4, 2], [0, 0, 1]])  # the one-item user has no target
    real = inputs != 0  # targets only count where the input is a real item
    np.testing.assert_array_equal(np.where(real, targets, 0), [[0, 2, 3], [0, 0, 5]])
    np.testing.assert_array_equal(n, [2, 1])
    with pytest.raises(ValueError, match=r"\[0, 6\)"):
        training_windows([np.array([1, 9])], n_items=6, max_len=3)


def test_composed_scores_and_losses_match_brute_force():
    sids = opq_like_sids()
    torch.manual_seed(0)
    model = ParallelRecommender(torch.from_numpy(sids), 8, small(loss="item"))
    hidden = torch.randn(5, 32)
    cos = model.digit_cosines(hidden)
    assert cos.shape == (5, 4, 8) and float(cos.detach().abs().max()) <= 1.0 + 1e-5
    brute = torch.stack([cos[:, torch.arange(4), torch.as_tensor(s)].sum(1) for s in sids], 1)
    torch.testing.assert_close(model.composed_scores(cos, torch.from_numpy(sids)), brute)
    x = torch.tensor([[0, 3, 7], [5, 6, 1]]) + 1
    y = torch.tensor([[3, 7, 9], [6, 1, 2]]) + 1
    x[0, 0], y[0, 0] = 0, 0  # one padding position
    real = x != 0
    h = model(x)[real]
    item = F.cross_entropy(model.item_logits(h), y[real] - 1)
    torch.testing.assert_close(model.loss(x, y), item)
    model.params = small(loss="per_digit")
    labels = torch.from_numpy(sids)[y[real] - 1]
    per_digit = torch.stack([F.cross_entropy(model.digit_cosines(h)[:, j] / 0.1, labels[:, j]) for j in range(4)]).mean()
    torch.testing.assert_close(model.loss(x, y), per_digit)
    model.params = small(loss="item", item_negatives=7)
    assert torch.isfinite(model.loss(x, y, generator=torch.Generator().manual_seed(0)))


def test_label_smoothing_mixes_uniform_digit_targets():
    sids = opq_like_sids()
    torch.manual_seed(0)
    model = ParallelRecommender(torch.from_numpy(sids), 8, small(label_smoothing=0.2))
    x = torch.tensor([[0, 3, 7], [5, 6, 1]]) + 1
    y = torch.tensor([[3, 7, 9], [6, 1, 2]]) + 1
    h = model(x).reshape(-1, 32)
    logp = F.log_softmax(model.digit_cosines(h) / 0.1, dim=-1)  # [6, 4, 8]
    labels = torch.from_numpy(sids)[(y - 1).reshape(-1)]
    nll = -logp.gather(-1, labels[..., None]).squeeze(-1).mean()
    uniform = -logp.mean()
    torch.testing.assert_close(model.loss(x, y), 0.8 * nll + 0.2 * uniform)


def test_item_id_dropout_swaps_in_the_new_item_row_only_in_training():
    sids = torch.from_numpy(opq_like_sids())
    torch.manual_seed(0)
    model = ParallelRecommender(sids, 8, small(item_id_embedding=True, item_id_dropout=0.999))
    with torch.no_grad():
        model.item_emb.weight[1:].normal_()
    x = torch.arange(1, 41).reshape(2, 20)  # 40 known items, no padding
    model.eval()
    clean = model(x)
    as_new = model(torch.arange(N + 1, N + 41).reshape(2, 20), torch.cat([sids, sids[:40]]))  # same digits, new-item row
    assert not torch.allclose(clean, as_new)
    model.train()  # (no other dropout in small())
    torch.manual_seed(1)
    torch.testing.assert_close(model(x), as_new)  # every ID row dropped (p = 0.999 with this seed)
    model.params = small(item_id_embedding=True, item_id_dropout=0.0)
    torch.testing.assert_close(model(x), clean)


class LookupTeacher(torch.nn.Module):
    """A next-item 'model' whose scores depend on the current item only (a fixed score table)."""

    def __init__(self, scores: torch.Tensor):
        super().__init__()
        self.table = torch.nn.Parameter(torch.cat([torch.zeros(1, scores.shape[1]), scores]), requires_grad=False)
        self.n_items = scores.shape[1]

    @property
    def device(self):
        return self.table.device

    def forward(self, items):
        return self.table[items]

    def item_scores(self, hidden):
        return hidden


def test_teacher_targets_and_distillation_loss_match_brute_force():
    from semid_pipeline.core.recommender.parallel_train import position_index, teacher_top_items

    sids = torch.from_numpy(opq_like_sids())
    g = torch.Generator().manual_seed(0)
    teacher = LookupTeacher(torch.randn(N, N, generator=g) * 3)
    x = torch.tensor([[0, 3, 7], [5, 6, 1]]) + 1
    y = torch.tensor([[3, 7, 9], [6, 1, 2]]) + 1
    x[0, 0] = 0  # padding
    items, probs = teacher_top_items(teacher, x.numpy(), top_k=5, temperature=2.0, batch_size=1)
    assert items.shape == probs.shape == (5, 5)  # 5 real positions, row-major
    top = torch.topk(teacher.table[x[1, 1]] / 2.0, 5)  # the 4th real position: current item 6
    np.testing.assert_array_equal(items[3], top.indices.numpy())
    np.testing.assert_allclose(probs[3].astype(np.float32), torch.softmax(top.values, 0).numpy(), atol=1e-3)
    np.testing.assert_array_equal(position_index(np.array([2, 3]), np.array([1, 0])), [2, 3, 4, 0, 1])
    # a score budget of two positions at a time (memory bounded at any catalogue size) changes nothing
    import semid_pipeline.core.recommender.parallel_train as pt

    budget = pt.SCORE_BUDGET
    try:
        pt.SCORE_BUDGET = 2 * N
        chunked = teacher_top_items(teacher, x.numpy(), top_k=5, temperature=2.0, batch_size=2)
    finally:
        pt.SCORE_BUDGET = budget
    np.testing.assert_array_equal(chunked[0], items)
    np.testing.assert_array_equal(chunked[1], probs)

    torch.manual_seed(0)
    model = ParallelRecommender(sids, 8, small(distill_weight=0.3))
    it, pr = torch.from_numpy(items), torch.from_numpy(probs)
    q = model.teacher_digit_targets(it, pr)  # [P, D, K]
    for k in range(4):
        expected = torch.zeros(8).index_add_(0, sids[it[3].long(), k], pr[3].float())
        torch.testing.assert_close(q[3, k], expected)
    real = x != 0
    h = model(x)[real]
    logp = F.log_softmax(model.digit_cosines(h) / 0.1, dim=-1)
    labels = sids[y[real] - 1]
    hard = -logp.gather(-1, labels[..., None]).mean()
    soft = -(q * logp).sum(-1).mean()
    torch.testing.assert_close(model.loss(x, y, teacher=(it, pr)), 0.7 * hard + 0.3 * soft)
    torch.testing.assert_close(model.loss(x, y), hard)  # no teacher given: the hard loss
    assert model.model_name == "rpg_kd"
    # the listwise term: the teacher's renormalised top-item distribution against the student's summed
    # digit log-probabilities, softmaxed over the same items; a padded slot (-1) drops out of both
    it_pad, pr_pad = it.clone(), pr.clone()
    it_pad[:, -1] = -1
    p_t = pr_pad.float()[:, :-1] / pr_pad.float()[:, :-1].sum(-1, keepdim=True)
    rank = 0.0
    for t in range(len(h)):
        s = torch.stack([logp[t, torch.arange(4), sids[i]].sum() for i in it_pad[t, :-1].long()])
        rank = rank - (p_t[t] * torch.log_softmax(s, 0)).sum()
    rank = rank / len(h)
    torch.testing.assert_close(model.rank_distillation(logp, it_pad, pr_pad), rank)
    s = torch.stack([logp[1, torch.arange(4), sids[i]].sum() / 4.0 for i in it_pad[1, :-1].long()])
    one = ParallelRecommender(sids, 8, small(distill_rank_temperature=4.0)).rank_distillation(logp[1:2], it_pad[1:2], pr_pad[1:2])
    torch.testing.assert_close(one, -(p_t[1] * torch.log_softmax(s, 0)).sum())
    ranked = ParallelRecommender(sids, 8, small(distill_weight=0.3, distill_rank_weight=2.0))
    ranked.load_state_dict(model.state_dict())
    torch.testing.assert_close(ranked.loss(x, y, teacher=(it_pad, pr_pad)), model.loss(x, y, teacher=(it_pad, pr_pad)) + 2.0 * rank)
    assert ParallelRecommender(sids, 8, small(distill_rank_weight=1.0)).model_name == "rpg_kd"
    for knob in ("distill_weight", "distill_rank_weight"):
        with pytest.raises(ValueError, match="need loss: per_digit"):
            small(loss="item", **{knob: 0.5})


def test_distillation_needs_a_matching_teacher_and_learns_from_one():
    sids = opq_like_sids()
    train, valid, test = chain_data(n_users=200)
    for knob in ("distill_weight", "distill_rank_weight"):
        with pytest.raises(ValueError, match="need a teacher"):
            train_parallel(sids, train, valid, small(**{knob: 0.5}), codebook_size=8)
    with pytest.raises(ValueError, match="teacher scores 3 items"):
        train_parallel(sids, train, valid, small(distill_weight=0.5), codebook_size=8, teacher=LookupTeacher(torch.zeros(3, 3)))
    # an oracle teacher (the chain's next item) trains the model even when every hard label is dropped
    nxt = torch.full((N, N), -20.0)
    for i in range(N):  # users walk cycles of CHAIN items
        nxt[i, (i // CHAIN) * CHAIN + (i + 1) % CHAIN] = 20.0
    res = train_parallel(sids, train, valid, small(distill_weight=1.0), codebook_size=8, teacher=LookupTeacher(nxt))
    hist = [np.append(t, v) for t, v in zip(train, valid)]
    items, _ = recommend_exact(res.model, sids, hist, 10)
    assert recall_at_k(items, test, 10).mean() > 0.9


def test_fused_composed_cross_entropy_equals_unfused_value_and_gradient():
    from semid_pipeline.core.recommender.parallel import composed_cross_entropy, flat_codes

    g = torch.Generator().manual_seed(0)
    codes = flat_codes(torch.randint(0, 8, (50, 4), generator=g), 8)
    table = torch.randn(37, 32, generator=g, requires_grad=True)
    y = torch.randint(0, 50, (37,), generator=g)
    ref = F.cross_entropy(F.embedding_bag(codes, table.T.contiguous(), mode="sum").T, y)
    (ref_grad,) = torch.autograd.grad(ref, table)
    fused = composed_cross_entropy(table, codes, y, chunk=5)  # several chunks, a ragged last one
    (grad,) = torch.autograd.grad(fused * 3.0, table)
    torch.testing.assert_close(fused, ref)
    torch.testing.assert_close(grad, 3.0 * ref_grad)


@pytest.mark.parametrize("loss,extra", [("per_digit", {}), ("item", {}), ("per_digit", {"item_id_embedding": True, "sparse_embeddings": True})])
def test_both_losses_learn_the_chains(loss, extra):
    sids = opq_like_sids()
    train, valid, test = chain_data(n_users=200)
    res = train_parallel(sids, train, valid, small(loss=loss, **extra), codebook_size=8)
    assert res.model.item_emb is None or res.model.item_emb.sparse == bool(extra)
    assert res.history[-1]["loss"] < res.history[0]["loss"]
    hist = [np.append(t, v) for t, v in zip(train, valid)]
    items, scores = recommend_exact(res.model, sids, hist, 10)
    assert recall_at_k(items, test, 10).mean() > 0.9
    assert (np.diff(scores, axis=1) <= 1e-6).all()  # best first
    assert res.model.model_name == ("rpg" if loss == "per_digit" else "rpg_item")


def test_same_seed_same_model_and_save_reload(trained, tmp_path):
    sids, train, valid, test, res = trained
    again = train_parallel(sids, train, valid, small(loss="item", item_id_embedding=True), codebook_size=8).model
    for (name, a), b in zip(res.model.state_dict().items(), again.state_dict().values()):
        torch.testing.assert_close(a, b, msg=name)
    save_artifact(res.model, tmp_path / "m")
    loaded = load_artifact(tmp_path / "m")
    assert isinstance(loaded, ParallelRecommender)
    a, sa = recommend_exact(res.model, sids, train, 10)
    b, sb = recommend_exact(loaded, sids, train, 10)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(sa, sb)


@pytest.mark.parametrize("score", ["digit_logprob", "item_logit"])
def test_graph_decoding_returns_catalog_items_and_equals_exact_when_graph_covers_catalog(trained, score):
    sids, train, valid, test, res = trained
    hist = [np.append(t, v) for t, v in zip(train, valid)]
    exact, exact_scores = recommend_exact(res.model, sids, hist, 10, score=score)
    full = item_graph(res.model, sids, n_edges=N)  # every item links to every item
    assert full.shape == (N, N) and (np.sort(full.numpy(), 1) == np.arange(N)).all()
    items, scores = recommend_graph(res.model, sids, hist, full, 10, beam_size=10, steps=1, score=score)
    np.testing.assert_array_equal(items, exact)
    np.testing.assert_allclose(scores, exact_scores, rtol=1e-5, atol=1e-5)
    sparse = item_graph(res.model, sids, n_edges=6)
    assert sparse.shape == (N, 6) and ((sparse >= 0) & (sparse < N)).all()
    assert (sparse[:, 0] == torch.arange(N)).all()  # an item is its own most similar item
    items, _ = recommend_graph(res.model, sids, hist, sparse, 10, beam_size=12, steps=3, score=score)
    assert ((items >= 0) & (items < N)).all()  # lists are catalogue items only, distinct
    assert all(len(set(r)) == 10 for r in items.tolist())
    overlap = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(items.tolist(), exact.tolist())])
    assert overlap > 0.3


def test_new_item_is_recommended_without_retraining(trained):
    sids, train, valid, test, res = trained
    hist = [np.append(t, v) for t, v in zip(train, valid)]
    before, _ = recommend_exact(res.model, sids, hist[:20], 10)
    # a new item (item_idx N, never trained on) whose SID is what the model predicts best for user 0:
    # the top item's digits with one digit changed to the user's next-best code of that digit
    new = sids[before[0, 0]].copy()
    grown = np.vstack([sids, new[None]])
    after, _ = recommend_exact(res.model, grown, hist[:20], 10)
    assert N in after[0].tolist()  # scored through its digits alone, no retraining
    with pytest.raises(ValueError, match="outside the model's codebooks"):
        recommend_exact(res.model, np.vstack([sids, [[9, 0, 0, 0]]]), hist[:2], 10)


def test_generative_recommender_kind_parallel_asset_and_frozen_new_item(tmp_path):
    sids, _ = write_inputs(tmp_path)
    config = {
        "ops": {
            "generative_recommender": {"config": {"kind": "parallel", "parallel": {
                "d_model": 32, "n_layers": 1, "n_heads": 2, "d_ff": 64, "epochs": 8, "batch_size": 16, "lr": 0.01,
                "warmup_steps": 10, "loss": "item", "item_temperature": 0.1, "temperature": 0.1, "item_id_embedding": True,
            }}},
            "generative_recommendations": {"config": {"top_k": 10, "batch_size": 64, "decoding": "graph", "graph_edges": 20,
                                                      "graph_beam_size": 20, "graph_steps": 3}},
        }
    }
    resources = {**tiny_resources(tmp_path), "text_encoder": FakeTextEncoderResource()}
    selection = ["generative_recommender", "generative_recommendations"]
    result = materialize(all_assets, selection=selection, partition_key="demo", resources=resources, run_config=config,
                         instance=DagsterInstance.ephemeral())
    assert result.success
    meta = result.asset_materializations_for_node("generative_recommender")[0].metadata
    assert meta["recommender_kind"].value == "parallel" and meta["model_name"].value == "rpg_item"
    recs = storage.read_table(tmp_path, "generative_recommendations", "demo")
    assert set(recs["model"]) == {"rpg_item"} and set(recs["split"]) == {"valid", "test"}
    assert recs.groupby(["split", "user_idx"]).size().eq(10).all()
    # frozen re-tokenization: one new item (copy of user 0's top test item's SID, unseen by the model)
    top = int(recs[(recs["split"] == "test") & (recs["user_idx"] == 0) & (recs["rank"] == 0)]["item_idx"].iloc[0])
    table = storage.read_table(tmp_path, "semantic_ids", "demo")
    n = len(table)
    new = pd.DataFrame({"item_idx": [n], "item_id": ["new-item"], "codes": [list(sids[top])], "dedup": [0],
                        "sid": [list(sids[top])], "sid_str": ["new"], "collided": [False]})
    storage.write_table(tmp_path, "semantic_ids", "demo", pd.concat([table, new], ignore_index=True))
    decode_only = {"ops": {"generative_recommendations": {"config": {"top_k": 10, "decoding": "exact"}}}}
    again = materialize(all_assets, selection=["generative_recommendations"], partition_key="demo", resources=resources,
                        run_config=decode_only, instance=DagsterInstance.ephemeral())
    assert again.success
    recs = storage.read_table(tmp_path, "generative_recommendations", "demo")
    user0 = recs[(recs["split"] == "test") & (recs["user_idx"] == 0)]
    assert "new-item" in set(user0["item_id"])


def test_generative_recommender_distils_from_the_runs_sasrec_model(tmp_path):
    write_inputs(tmp_path)  # with an untrained sasrec_model as the teacher
    config = {"ops": {"generative_recommender": {"config": {"kind": "parallel", "parallel": {
        "d_model": 32, "n_layers": 1, "n_heads": 2, "d_ff": 64, "epochs": 2, "batch_size": 16, "distill_weight": 0.5, "distill_top_k": 8,
    }}}}}
    resources = {**tiny_resources(tmp_path), "text_encoder": FakeTextEncoderResource()}
    result = materialize(all_assets, selection=["generative_recommender"], partition_key="demo", resources=resources,
                         run_config=config, instance=DagsterInstance.ephemeral())
    meta = result.asset_materializations_for_node("generative_recommender")[0].metadata
    assert meta["model_name"].value == "rpg_kd" and meta["distill_weight"].value == 0.5


def test_exact_scoring_in_catalogue_chunks_equals_one_pass(trained, monkeypatch):
    """Past the score budget the catalogue is scored in chunks with a running top-K: same lists."""
    from semid_pipeline.core.recommender import parallel_decode

    sids, train, _, _, res = trained
    whole_items, whole_scores = recommend_exact(res.model, sids, train[:40], 10, 16)
    monkeypatch.setattr(parallel_decode, "SCORE_BUDGET", 16 * 7)  # chunks of 7 items (at least 4 x top-k = 40)
    chunked_items, chunked_scores = recommend_exact(res.model, sids, train[:40], 10, 16)
    np.testing.assert_allclose(chunked_scores, whole_scores, rtol=1e-6)
    assert (chunked_items == whole_items).mean() > 0.98  # only exact ties may swap
