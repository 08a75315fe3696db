"""Sinkhorn re-assignment of the last SID level: unique IDs without an appended token.

CAT-ID2 (section 3, "we adopt the Sinkhorn algorithm as a post-processing step to reassign unique
DocIDs") and LETTER resolve collisions by re-solving the last level's assignment as a balanced
optimal-transport problem over the codewords instead of appending TIGER's dedup token. The papers
give no algorithmic detail beyond that; what is implemented here (our choices, stated):

1. Items are grouped by their prefix ``(c_1..c_{L-1})``. Only groups that contain a collision
   are touched; every other item keeps its codes.
2. Inside such a group, every item whose full tuple is unique keeps its last code, and in each
   colliding tuple the item *nearest* to the shared codeword (smallest last-level distance; ties
   to the lower row) keeps it. The remaining items ("movers") are re-assigned among the codewords
   no kept item uses ("free codes"). Codes already taken by ``reserved`` SIDs (e.g. a frozen
   catalogue that new items join) are never free.
3. The movers' assignment is a balanced OT problem: cost ``C[i, k] = d(r_i, e_k)`` (the squared
   last-level distance, min-max scaled to [0, 1] inside the group), uniform mass ``1/m`` on the
   ``m`` movers and ``1/f`` on the ``f`` free codes, entropic regularisation ``epsilon``, solved
   with log-domain Sinkhorn-Knopp iterations (float64).
4. A one-to-one assignment is read off the transport plan greedily: repeatedly take the largest
   remaining entry (ties broken by lowest cost, then by a seeded random priority per mover), assign
   that mover to that code and strike both row and column. Since each group has at most K items,
   every mover receives a distinct free code, so one pass makes the IDs unique.
5. Overflow ("iterate until unique"): a prefix ``(c_1..c_{L-1})`` with more than K items cannot be
   made unique at the last level alone. Before step 1, prefixes are therefore brought under their
   capacity top-down (:func:`_enforce_capacity`): at level ``j`` a code may hold at most
   ``K^(L-1-j)`` items of its parent prefix; the excess items of an over-full code (those farthest
   from it when per-level distances are given, else the highest rows) move to the sibling code with
   spare capacity that is nearest (per-level distances) or has the most room (ties: lowest code).
   Their deeper codes are kept as they are. Only a catalogue larger than ``K^L`` raises ``ValueError``.

Everything is numpy and deterministic: same inputs + seed -> same output.
"""

from __future__ import annotations

import numpy as np


def sinkhorn_plan(cost: np.ndarray, epsilon: float = 0.05, n_iters: int = 200) -> np.ndarray:
    """Entropic balanced OT plan for ``cost`` ``(m, f)`` with uniform marginals ``1/m`` and ``1/f``.

    Log-domain Sinkhorn-Knopp: ``P = diag(u) exp(-C/eps) diag(v)``, alternately rescaled so that
    rows sum to ``1/m`` and columns to ``1/f``. Returns ``P`` (float64, sums to 1).
    """
    c = np.asarray(cost, dtype=np.float64)
    if c.ndim != 2 or c.shape[0] == 0 or c.shape[1] == 0:
        raise ValueError(f"cost must be a non-empty 2-D array, got shape {c.shape}")
    if epsilon <= 0:
        raise ValueError(f"epsilon must be > 0, got {epsilon}")
    m, f = c.shape
    log_k = -c / epsilon
    log_a = np.full(m, -np.log(m))
    log_b = np.full(f, -np.log(f))
    log_u = np.zeros(m)
    log_v = np.zeros(f)
    for _ in range(n_iters):
        log_u = log_a - _logsumexp(log_k + log_v[None, :], axis=1)
        log_v = log_b - _logsumexp(log_k + log_u[:, None], axis=0)
    return np.exp(log_u[:, None] + log_k + log_v[None, :])


def _logsumexp(a: np.ndarray, axis: int) -> np.ndarray:
    mx = a.max(axis=axis, keepdims=True)
    return (mx + np.log(np.exp(a - mx).sum(axis=axis, keepdims=True))).squeeze(axis)


def _greedy_match(plan: np.ndarray, cost: np.ndarray, priority: np.ndarray) -> np.ndarray:
    """One distinct column per row of ``plan`` (needs rows <= cols), largest plan entries first."""
    m, f = plan.shape
    order = np.lexsort((np.broadcast_to(priority[:, None], (m, f)).ravel(), cost.ravel(), -plan.ravel()))
    row_done = np.zeros(m, dtype=bool)
    col_done = np.zeros(f, dtype=bool)
    out = np.full(m, -1, dtype=np.int64)
    left = m
    for flat in order:
        i, j = divmod(int(flat), f)
        if row_done[i] or col_done[j]:
            continue
        out[i] = j
        row_done[i] = col_done[j] = True
        left -= 1
        if left == 0:
            break
    return out


def sinkhorn_reassign_last_level(
    codes: np.ndarray,
    last_distances: np.ndarray,
    seed: int = 0,
    epsilon: float = 0.05,
    n_iters: int = 200,
    reserved: np.ndarray | None = None,
    level_distances: np.ndarray | None = None,
) -> np.ndarray:
    """Returns a copy of ``codes`` ``(N, L)`` whose rows are unique (and differ from ``reserved``).

    ``last_distances`` ``(N, K)``: each item's distance to every codeword of the last level (for an
    RQ-VAE, ``||r_{L-1} - e^L_k||^2``; for RQ-KMeans the same against the last level's centroids).
    ``reserved`` ``(M, L)``: SIDs already in use that the result must not repeat (optional). Only
    the last column changes, and only for items of a colliding tuple (see the module docstring),
    except when a prefix is over-full (step 5): then upper codes of the excess items change too;
    ``level_distances`` ``(N, L, K)`` (optional) guides those moves.
    """
    arr = np.asarray(codes, dtype=np.int64)
    dist = np.asarray(last_distances, dtype=np.float64)
    if arr.ndim != 2 or arr.shape[1] < 1:
        raise ValueError(f"codes must be a 2-D (items, levels) array, got shape {arr.shape}")
    n, n_levels = arr.shape
    if dist.ndim != 2 or dist.shape[0] != n:
        raise ValueError(f"last_distances must be (N={n}, K), got shape {dist.shape}")
    k = dist.shape[1]
    if n and (arr[:, -1].min() < 0 or arr[:, -1].max() >= k):
        raise ValueError(f"last-level codes must lie in [0, {k}) to match last_distances")
    res = np.zeros((0, n_levels), dtype=np.int64) if reserved is None else np.asarray(reserved, dtype=np.int64).reshape(-1, n_levels)
    if n == 0:
        return arr.copy()
    arr = _enforce_capacity(arr, res, k, level_distances)
    out = arr.copy()

    # Which rows collide (with another new row or with a reserved SID)?
    allrows = np.concatenate([arr, res], axis=0)
    _, inv_full, cnt_full = np.unique(allrows, axis=0, return_inverse=True, return_counts=True)
    inv_full = inv_full.reshape(-1)
    collides = cnt_full[inv_full[:n]] > 1
    if not collides.any():
        return out

    prefix_all = allrows[:, :-1] if n_levels > 1 else np.zeros((allrows.shape[0], 0), dtype=np.int64)
    if prefix_all.shape[1]:
        _, pinv = np.unique(prefix_all, axis=0, return_inverse=True)
        pinv = pinv.reshape(-1)
    else:
        pinv = np.zeros(allrows.shape[0], dtype=np.int64)
    rng = np.random.default_rng(seed)
    priority_all = rng.permutation(n)  # seeded tie-break priority per item
    bad_groups = np.unique(pinv[:n][collides])
    order = np.argsort(pinv, kind="stable")
    bounds = np.searchsorted(pinv[order], np.arange(pinv.max() + 2))
    for g in bad_groups.tolist():
        members = order[bounds[g] : bounds[g + 1]]
        new = members[members < n]
        old = members[members >= n]
        if members.size > k:
            raise ValueError(
                f"prefix {arr[new[0], :-1].tolist()} holds {members.size} items but the last level has only {k} "
                "codewords: Sinkhorn re-assignment cannot make them unique (use collision_strategy='append_token' "
                "or a larger codebook)"
            )
        taken = np.zeros(k, dtype=bool)
        taken[allrows[old, -1]] = True  # reserved SIDs keep their codes
        keep = np.zeros(new.size, dtype=bool)
        # Per last code: the nearest new item keeps it unless a reserved SID holds it.
        last = arr[new, -1]
        d_own = dist[new, last]
        by = np.lexsort((new, d_own, last))
        first_of_code = np.ones(by.size, dtype=bool)
        first_of_code[1:] = last[by][1:] != last[by][:-1]
        for pos in np.flatnonzero(first_of_code):
            i = by[pos]
            if not taken[last[i]]:
                keep[i] = True
                taken[last[i]] = True
        movers = new[~keep]
        if movers.size == 0:
            continue
        free = np.flatnonzero(~taken)
        cost = dist[np.ix_(movers, free)]
        lo, hi = cost.min(), cost.max()
        scaled = (cost - lo) / (hi - lo) if hi > lo else np.zeros_like(cost)
        plan = sinkhorn_plan(scaled, epsilon=epsilon, n_iters=n_iters)
        match = _greedy_match(plan, scaled, priority_all[movers])
        out[movers, -1] = free[match]
    return out


def _enforce_capacity(codes: np.ndarray, reserved: np.ndarray, k: int, level_distances: np.ndarray | None) -> np.ndarray:
    """Moves new rows so that every prefix ``(c_0..c_j)`` holds at most ``k^(L-1-j)`` rows (step 5)."""
    n, n_levels = codes.shape
    out = codes.copy()
    total = n + reserved.shape[0]
    if total > k**n_levels:
        raise ValueError(f"{total} items cannot get unique {n_levels}-level SIDs from {k} codes per level ({k ** n_levels} SIDs)")
    ld = None if level_distances is None else np.asarray(level_distances, dtype=np.float64)
    for j in range(n_levels - 1):
        cap = k ** (n_levels - 1 - j)
        allrows = np.concatenate([out, reserved], axis=0)
        _, inv, cnt = np.unique(allrows[:, : j + 1], axis=0, return_inverse=True, return_counts=True)
        inv = inv.reshape(-1)
        if cnt.max() <= cap:
            continue
        over_rows = np.flatnonzero(cnt[inv] > cap)
        parent_keys = {tuple(r) for r in allrows[over_rows, :j].tolist()}
        for parent in sorted(parent_keys):
            in_parent = np.flatnonzero((allrows[:, :j] == np.asarray(parent, dtype=np.int64)).all(1)) if j else np.arange(total)
            col = allrows[in_parent, j]
            counts = np.bincount(col, minlength=k)
            movers = []
            for code in np.flatnonzero(counts > cap).tolist():
                rows = in_parent[(col == code) & (in_parent < n)]
                if ld is not None:
                    far = rows[np.lexsort((rows, -ld[rows, j, code]))]
                else:
                    far = rows[::-1]
                excess = far[: counts[code] - cap]
                counts[code] -= excess.size
                movers.extend(excess.tolist())
            for row in sorted(movers):
                spare = np.flatnonzero(counts < cap)
                if ld is not None:
                    target = spare[np.argmin(ld[row, j, spare])]
                else:
                    room = cap - counts[spare]
                    target = spare[np.argmax(room)]
                out[row, j] = target
                counts[target] += 1
            allrows = np.concatenate([out, reserved], axis=0)
    return out
