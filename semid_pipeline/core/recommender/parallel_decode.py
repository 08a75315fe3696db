"""Decoding the parallel (RPG) recommender into catalogue items: exact scoring and graph-constrained decoding.

Both decoders read one vector per user, the per-digit score table ``[D, K]`` of the next item, and
return only catalogue items (rows of the SID matrix passed in, which may hold items added after
training: a new item is scored through its digits alone).

* ``exact``: every catalogue item is scored, chunked over users (an ``embedding_bag`` over the
  score table: ``O(N * D)`` per user), then the top-K; past ``SCORE_BUDGET`` scores per user batch
  the catalogue is also chunked (a running top-K), so memory stays bounded at any catalogue size.
* ``graph`` (RPG, Sec. 3.3): an item graph links each item to its ``n_edges`` most similar items by
  SID (similarity = mean over digits of the cosine between the two items' code embeddings of that
  digit, RPG's ``(cos + 1) / 2`` up to an affine map); decoding starts from ``beam_size`` seeded
  random items and, ``steps`` times, replaces the beam by the best ``beam_size`` items among the
  beam's neighbours. It scores ``beam_size * n_edges`` items per step instead of the catalogue. When
  the graph covers the catalogue (``n_edges >= N``) one step scores every item and the result equals
  exact scoring.

Scores (``score``): ``digit_logprob`` = sum over digits of the per-digit log-softmax (RPG's), or
``item_logit`` = the item-level logit the ``item`` loss trains (mean digit cosine / item temperature).
``auto`` picks the one matching the model's training loss.
"""

from __future__ import annotations

from typing import Literal, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field

from semid_pipeline.core.params import StrictParams
from semid_pipeline.core.progress import ProgressFn, Throttle
from semid_pipeline.core.recommender.data import SCORE_BUDGET, sorted_batches
from semid_pipeline.core.recommender.parallel import ParallelRecommender, catalog_tensor, flat_codes


class DecodeParams(StrictParams):
    """How the parallel recommender's top-K lists are produced."""

    decoding: Literal["exact", "graph"] = Field("exact", description="exact: score every catalogue item; graph: RPG's graph-constrained walk.")
    score: Literal["auto", "digit_logprob", "item_logit"] = Field(
        "auto", description="Item score: sum of per-digit log-probs (RPG), item-level logit, or auto (the model's training loss)."
    )
    top_k: int = Field(10, ge=1, description="Items returned per user.")
    batch_size: int = Field(512, ge=1, description="Users scored together.")
    beam_size: int = Field(50, ge=1, description="graph: items kept per step (at least top_k).")
    n_edges: int = Field(100, ge=1, description="graph: neighbours per item.")
    steps: int = Field(3, ge=1, description="graph: propagation steps.")
    seed: int = Field(0, description="graph: seeds the random initial beam.")


def user_windows(histories: Sequence[np.ndarray], width: int) -> Tuple[np.ndarray, np.ndarray]:
    """``([U, width]`` shifted items, each history's last ``width`` items right-aligned, 0-padded; lengths ``[U]``)."""
    lengths = np.fromiter((len(h) for h in histories), dtype=np.int64, count=len(histories))
    out = np.zeros((len(histories), max(width, 1)), dtype=np.int64)
    for row, h in enumerate(histories):  # one slice copy per user (inference only)
        h = np.asarray(h, dtype=np.int64)[-width:]
        if len(h):
            out[row, width - len(h) :] = h + 1
    return out, np.minimum(lengths, width)


def score_kind(model: ParallelRecommender, score: str) -> str:
    if score != "auto":
        return score
    return "digit_logprob" if model.params.loss == "per_digit" else "item_logit"


@torch.no_grad()
def digit_tables(model: ParallelRecommender, histories: Sequence[np.ndarray], sids: torch.Tensor, score: str, batch_size: int):
    """Yields ``(rows, table [B, D, K])``: per-user digit score tables of the next item, in length-sorted batches."""
    windows, lengths = user_windows(histories, model.params.max_len)
    kind = score_kind(model, score)
    for rows in sorted_batches(lengths, batch_size):
        width = max(int(lengths[rows].max()), 1)
        batch = torch.from_numpy(windows[rows, windows.shape[1] - width :]).to(model.device)
        hidden = model(batch, sids)[:, -1]
        if kind == "digit_logprob":
            table = model.digit_log_probs(hidden)
        else:
            table = model.digit_cosines(hidden).float() / (model.n_digits * model.item_tau)
        yield rows, table


@torch.no_grad()
def recommend_exact(
    model: ParallelRecommender,
    sids: np.ndarray,
    histories: Sequence[np.ndarray],
    top_k: int = 10,
    batch_size: int = 512,
    score: str = "auto",
    progress: Optional[ProgressFn] = None,
) -> Tuple[np.ndarray, np.ndarray]:
    """Top-``top_k`` catalogue items per user by exact scoring; ``(items int64 [U, K], scores float32 [U, K])``."""
    model.eval()
    cat = catalog_tensor(sids, model.device)
    check_catalog(model, cat)
    k = min(top_k, cat.shape[0])
    items = np.full((len(histories), top_k), -1, dtype=np.int64)
    scores = np.full((len(histories), top_k), -np.inf, dtype=np.float32)
    report = Throttle(progress)
    done = 0
    for rows, table in digit_tables(model, histories, cat, score, batch_size):
        s, i = top_k_over_catalog(model, table, cat, k)
        items[rows, :k], scores[rows, :k] = i.cpu().numpy(), s.cpu().numpy()
        done += len(rows)
        report(f"parallel exact scoring: {done:,}/{len(histories):,} users")
    return items, scores


def top_k_over_catalog(model: ParallelRecommender, table: torch.Tensor, cat: torch.Tensor, k: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """Top-``k`` ``(scores, items)`` of every row of ``table`` over the catalogue ``cat``, holding at most
    about ``SCORE_BUDGET`` scores: the catalogue is scored in item chunks of ``SCORE_BUDGET // rows``
    (at least ``4 k``) and a running top-``k`` is merged. One chunk (the whole catalogue at once)
    while ``rows * N`` fits the budget."""
    n = cat.shape[0]
    chunk = max(SCORE_BUDGET // max(table.shape[0], 1), 4 * k)
    if chunk >= n:
        return torch.topk(model.composed_scores(table, cat), k, dim=1)
    best_s = best_i = None
    for start in range(0, n, chunk):
        s, i = torch.topk(model.composed_scores(table, cat[start : start + chunk]), min(k, min(chunk, n - start)), dim=1)
        i = i + start
        if best_s is not None:
            s, j = torch.topk(torch.cat([best_s, s], dim=1), k, dim=1)
            i = torch.gather(torch.cat([best_i, i], dim=1), 1, j)
        best_s, best_i = s, i
    return best_s, best_i


def check_catalog(model: ParallelRecommender, sids: torch.Tensor) -> None:
    """The catalogue must use the model's digits: same length, codes inside its codebooks."""
    if sids.ndim != 2 or sids.shape[1] != model.n_digits:
        raise ValueError(f"the model was trained on {model.n_digits}-digit SIDs, the catalogue has shape {tuple(sids.shape)}")
    if int(sids.min()) < 0 or int(sids.max()) >= model.codebook_size:
        bad = int(((sids < 0) | (sids >= model.codebook_size)).any(1).nonzero()[0, 0])
        raise ValueError(f"item_idx {bad}: SID {sids[bad].tolist()} uses a code outside the model's codebooks (size {model.codebook_size})")


@torch.no_grad()
def item_graph(model: ParallelRecommender, sids: np.ndarray, n_edges: int, chunk: int = 2048) -> torch.Tensor:
    """``[N, min(n_edges, N)]`` neighbours of every catalogue item by SID similarity (RPG's item graph):
    ``sim(i, j) = sum_k cos(E[k, c_ik], E[k, c_jk])``, computed in column chunks with a running top-n."""
    cat = catalog_tensor(sids, model.device)
    check_catalog(model, cat)
    n = cat.shape[0]
    e = min(n_edges, n)
    emb = F.normalize(model.digit_emb.float(), dim=-1)
    token_sims = torch.bmm(emb, emb.transpose(1, 2))  # [D, K, K]
    codes = flat_codes(cat, model.codebook_size)
    best_v = torch.full((n, 0), -float("inf"), device=cat.device)
    best_i = torch.zeros((n, 0), dtype=torch.long, device=cat.device)
    for start in range(0, n, chunk):
        cols = cat[start : start + chunk]  # [C, D]
        table = torch.stack([token_sims[k][:, cols[:, k]] for k in range(model.n_digits)])  # [D, K, C]
        sims = F.embedding_bag(codes, table.reshape(-1, cols.shape[0]), mode="sum")  # [N, C]
        v = torch.cat([best_v, sims], 1)
        i = torch.cat([best_i, torch.arange(start, start + cols.shape[0], device=cat.device).expand(n, -1)], 1)
        best_v, pos = torch.topk(v, min(e, v.shape[1]), dim=1)
        best_i = i.gather(1, pos)
    return best_i


@torch.no_grad()
def recommend_graph(
    model: ParallelRecommender,
    sids: np.ndarray,
    histories: Sequence[np.ndarray],
    graph: torch.Tensor,
    top_k: int = 10,
    beam_size: int = 50,
    steps: int = 3,
    batch_size: int = 512,
    score: str = "auto",
    seed: int = 0,
    progress: Optional[ProgressFn] = None,
) -> Tuple[np.ndarray, np.ndarray]:
    """Top-``top_k`` items per user by RPG's graph-constrained decoding over ``graph`` (:func:`item_graph`)."""
    model.eval()
    cat = catalog_tensor(sids, model.device)
    check_catalog(model, cat)
    n = cat.shape[0]
    if graph.shape[0] != n:
        raise ValueError(f"the item graph has {graph.shape[0]} nodes but the catalogue {n} items; rebuild it")
    beam = min(max(beam_size, top_k), n)
    codes = flat_codes(cat, model.codebook_size)  # [N, D]
    gen = torch.Generator(device="cpu").manual_seed(seed)
    items = np.full((len(histories), top_k), -1, dtype=np.int64)
    scores = np.full((len(histories), top_k), -np.inf, dtype=np.float32)
    report = Throttle(progress)
    done = 0
    for rows, table in digit_tables(model, histories, cat, score, batch_size):
        u = table.shape[0]
        flat = table.reshape(u, -1)
        nodes = torch.stack([torch.randperm(n, generator=gen)[:beam] for _ in range(u)]).to(cat.device)  # [U, B]
        for _ in range(steps):
            cand = graph[nodes].reshape(u, -1)  # [U, B*E]
            cand, _ = torch.sort(cand, dim=1)
            dup = torch.zeros_like(cand, dtype=torch.bool)
            dup[:, 1:] = cand[:, 1:] == cand[:, :-1]
            s = flat.gather(1, codes[cand].reshape(u, -1)).reshape(*cand.shape, -1).sum(-1)
            s = s.masked_fill(dup, -float("inf"))
            top_s, pos = torch.topk(s, min(beam, s.shape[1]), dim=1)
            nodes = cand.gather(1, pos)
        k = min(top_k, nodes.shape[1])
        valid = torch.isfinite(top_s[:, :k])
        items[rows, :k] = torch.where(valid, nodes[:, :k], -1).cpu().numpy()
        scores[rows, :k] = top_s[:, :k].cpu().numpy()
        done += len(rows)
        report(f"parallel graph decoding: {done:,}/{len(histories):,} users")
    return items, scores


def recommend_parallel(
    model: ParallelRecommender, sids: np.ndarray, histories: Sequence[np.ndarray], params: DecodeParams, progress: Optional[ProgressFn] = None
) -> Tuple[np.ndarray, np.ndarray]:
    """Top-K lists by the decoder ``params.decoding`` (builds the item graph for ``graph``)."""
    if params.decoding == "exact":
        return recommend_exact(model, sids, histories, params.top_k, params.batch_size, params.score, progress)
    graph = item_graph(model, sids, params.n_edges)
    return recommend_graph(
        model, sids, histories, graph, params.top_k, params.beam_size, params.steps, params.batch_size, params.score, params.seed, progress
    )

