"""Trie-constrained beam search over SIDs, batched over users and beams.

Scoring
-------
At step ``l`` every live beam's next-token distribution is ``log_softmax`` over the FULL
vocabulary; the level-``l`` slice is taken, codes with no child in the trie are set to ``-inf``,
the beam's score is added and the best ``beam_size`` of the ``W * K_l`` candidates survive (step 0
has a single live beam; the last step keeps ``top_k``). A SID's score is therefore the sum of its
tokens' log-probabilities with no renormalisation over allowed tokens, which is what HF ``generate``
with ``prefix_allowed_tokens_fn`` computes (it masks after ``log_softmax``). All SIDs have the same
length, so no length penalty applies. With ``beam_size >=`` the number of items the search is exact
(equals scoring every item by teacher forcing; tested).

Design (what makes it fast; every step is exact, only float summation order differs)
--------------------------------------------------------------------------------------
* The encoder runs once per user, and the cross-attention keys/values of its output once per
  decoder layer (:meth:`GenerativeRecommender.memory_kv`). Beams never copy them: cross-attention
  treats the ``W`` beams of a user as ``W`` queries of one attention call (``[B, h, W, Le]``).
* Step 0 decodes one beam (``BOS``) per user, not ``beam_size``.
* Decoder self-attention without a reordered KV cache. SIDs are ``D`` tokens long, so a beam at
  step ``s`` attends to exactly ``s + 1`` keys: ``BOS`` (one per user, broadcast over its beams),
  one ancestor per earlier step, and itself. Every step's keys/values stay where the projection
  wrote them (per layer ``[B, W_j, 2*h*dh]``); a beam carries the index of its ancestor among step
  ``j``'s beams, which after ``topk`` is gathered from its parent's (int ``[B, W]`` per step,
  shared by all layers). Attention is ``s - 1`` row gathers per beam and a softmax over ``s + 1``
  scores, computed elementwise: no per-step ``cat`` or reorder of a cache, and no tiny batched
  matmuls (which cost more than the arithmetic).
* The self-attention query and key/value projections run as one matmul (weights concatenated
  once per search); the MLP's ReLU runs in place.
* The normaliser of the ``log_softmax`` over the model's output vocabulary
  (``model.output_logits``) is a ``logsumexp``, on CPU over chunks of :data:`HEAD_CHUNK_ROWS` rows
  whose logits stay in cache; only the level's ``K_l`` log-probabilities are materialised, and
  ``topk`` runs over the trie-masked children.
* The last step skips beams that cannot reach the top ``top_k`` (:func:`_last_level`): it expands
  the ``top_k`` best beams, whose ``top_k``-th best candidate bounds the final list from below,
  then only the other beams scoring at least that bound (a candidate never scores above its beam),
  gathered as single-beam rows. Exact. With the Beauty models of ``benchmarks/results/`` the
  last step expands 11-12 of 20 beams per user (d 64 model, 16 epochs) and 17 (TIGER size, 3
  epochs: prefixes with several items split the de-duplication token's probability).
* No Python loops over users or beams in the step loop, and one host sync (the number of beams
  the last step expands); the same code runs on CUDA.

The decoder block is written out here (pre-LN self-attention, cross-attention, MLP, as in
``model.DecoderLayer``) on the layers' own submodules and weights; ``model.py`` is untouched.
Equality with the teacher-forced model is tested (``test_recommender_model``), and with HF
``generate`` (``test_recommender_hf_parity``).

Blocking on CPU: users are independent, so a CPU batch is decoded in blocks of users whose largest
tensor, the ``[users * beams, vocab]`` logits, stays under :data:`CPU_BLOCK_BYTES` (each block's
encoder input is trimmed to its longest history), so that the step's working set stays in cache.
GPU batches run whole.

Measured against Hugging Face ``generate`` + ``prefix_allowed_tokens_fn`` on the same model, trie
and users (``benchmarks/beam_search.py``; 12,101 items, beam 20, top 10, 1 thread on a shared
2-core Xeon, both methods interleaved per group of users; every user's top-10 list identical,
largest score difference <= 2.3e-5), best batch size against best batch size:

* trained Beauty models (``beam_search-beauty-*-cpu-1thread.json``): d 64, 1+1 layers (the CPU
  config) with the SID-code output layer 10.0x (730 vs 73 users/s), the same size with a
  full-vocabulary output 7.9x (945 vs 119), TIGER size (d 128, 2+2, 3 epochs) 4.2x (353 vs 84);
* a random-weight TIGER-size model (d 128, 4+4, SID-code output; ``beam_search-cpu-1thread.json``,
  load average ~1): 3.0x (96 vs 32 users/s), 6.8x at the same batch size. A random model's last
  token is far from forced, so the last-step skipping saves nothing there. (The same benchmark
  with a full-vocabulary output and the previous version of this module measured 3.7x at load
  15-20, where HF's Python-heavy loop suffered more.)

At TIGER width roughly 55-60% of our time is the matrix products both methods share and ~25% the
encoder (the same ``model.encode`` as the HF path), so the ratio comes from work HF does and this
search skips (``beam_size`` beams at step 0, cross-attention keys/values projected and reordered
for every beam, full-vocabulary masks built by per-beam Python trie lookups), and it falls as the
model widens: the 5x target of issue 3 holds for the small model trained on this CPU, not at
TIGER width on this CPU.
"""

from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from semid_pipeline.core.progress import ProgressFn, Throttle
from semid_pipeline.core.recommender.data import PAD_ITEM, SIDBatch, build_inference_rows, sorted_batches
from semid_pipeline.core.recommender.model import GenerativeRecommender
from semid_pipeline.core.recommender.trie import SIDTrie
from semid_pipeline.core.recommender.vocab import BOS

#: On CPU, the most bytes of float32 logits (``users * beam_size * vocab_size * 4``; ``vocab_size`` bounds the output width) decoded at once.
CPU_BLOCK_BYTES = 8 * 2**20


@torch.no_grad()
def constrained_beam_search(
    model: GenerativeRecommender,
    batch: SIDBatch,
    trie: SIDTrie,
    beam_size: int = 20,
    top_k: int = 10,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Top-``top_k`` items for every user of an inference ``batch`` (already on the model's device).

    Args:
        model: the recommender (put it in eval mode: dropout is not applied here).
        batch: encoder inputs ``enc_tokens`` / ``enc_item`` ``[B, Le]`` (``data.build_inference_rows``).
        trie: :class:`SIDTrie` of the catalogue, on the model's device, built with the model's
            vocabulary level sizes.
        beam_size: beams kept per user after every step (``>= top_k``).
        top_k: items returned per user.

    Returns:
        ``(items int64 [B, top_k], scores float32 [B, top_k])`` sorted by descending score (sum of
        log-probabilities). Every returned item is a real catalogue item; when fewer than
        ``top_k`` items exist, the tail is padded with item ``-1`` and score ``-inf``.
    """
    vocab = model.vocab
    if beam_size < top_k:
        raise ValueError(f"beam_size ({beam_size}) must be >= top_k ({top_k})")
    if trie.level_sizes != vocab.level_sizes:
        raise ValueError(f"trie level sizes {trie.level_sizes} differ from the model vocabulary's {vocab.level_sizes}")
    n_users = batch.enc_tokens.shape[0]
    block = max(1, CPU_BLOCK_BYTES // (beam_size * vocab.vocab_size * 4)) if batch.enc_tokens.device.type == "cpu" else n_users
    if n_users <= block:
        return _search(model, batch.enc_tokens, batch.enc_item, trie, beam_size, top_k)
    parts = []
    for start in range(0, n_users, block):
        enc_item = batch.enc_item[start : start + block]
        length = int((enc_item != PAD_ITEM).sum(dim=1).max())  # padding is at the end: drop the block's unused columns
        parts.append(_search(model, batch.enc_tokens[start : start + block, :length], enc_item[:, :length], trie, beam_size, top_k))
    return torch.cat([items for items, _ in parts]), torch.cat([scores for _, scores in parts])


class _BeamDecoder:
    """Incremental decoder of one block of ``B`` users (see the module docstring).

    Self-attention keys/values of step ``j`` are kept per decoder layer as ``[B, W_j, 2*h*dh]``
    (the projection's output itself, never copied or reordered). :meth:`step` takes the newest
    token of every live beam and, for every earlier step ``j >= 1``, the index of the beam's
    ancestor among that step's ``W_j`` beams; step 0 is the single ``BOS`` beam every beam descends from.
    """

    def __init__(self, model: GenerativeRecommender, enc_tokens: torch.Tensor, enc_item: torch.Tensor):
        p = model.params
        self.model, self.n_heads, self.d_head = model, p.n_heads, p.d_head
        self.scale = p.d_head**-0.5  # scaled_dot_product_attention's default, as in model.Attention
        self.layers = list(model.decoder_layers)
        self.qkv_weights = [torch.cat([layer.self_attn.q.weight, layer.self_attn.kv.weight]) for layer in self.layers]
        memory = model.encode(enc_tokens, enc_item)
        # cross-attention keys (transposed) and values, made contiguous once so every step's matmuls read them in place
        self.memory = [(k.contiguous().transpose(-1, -2), v.contiguous()) for k, v in model.memory_kv(memory)]
        self.memory_bias = model.memory_bias(enc_item).to(self.memory[0][1].dtype)  # [B, h, 1, Le]
        self.past: List[List[torch.Tensor]] = [[] for _ in self.layers]  # per layer, per step: [B, W_j, 2*h*dh]

    def step(
        self, tokens: torch.Tensor, ancestors: List[torch.Tensor], keep: bool = True, users: Optional[torch.Tensor] = None
    ) -> torch.Tensor:
        """``tokens [B, W]``; ``ancestors[j - 1]`` int64 ``[B*W]``: flat row (``user * W_j + beam``) of every
        beam's ancestor at step ``j = 1 .. s-1`` -> decoder output ``[B*W, d_model]``.

        ``keep=False`` (the last step) does not store this step's keys/values. ``users`` (int64 ``[R]``,
        after step 0 only) decodes ``R`` single beams of arbitrary users: ``tokens [R, 1]``, whose
        user's memory and ``BOS`` keys are gathered by row.
        """
        if users is not None and (keep or not self.past[0]):
            raise ValueError("a step over gathered users must come after step 0 and not keep its keys/values")
        memory, memory_bias = self.memory, self.memory_bias
        if users is not None:
            memory = [(k.index_select(0, users), v.index_select(0, users)) for k, v in memory]
            memory_bias = memory_bias.index_select(0, users)
        b, w = tokens.shape
        n, heads, d_head = b * w, self.n_heads, self.d_head
        hd = heads * d_head
        x = self.model.embed(tokens).reshape(n, -1).clone()  # our own tensor: residuals are added in place
        for layer, w_qkv, (mem_kt, mem_v), past in zip(self.layers, self.qkv_weights, memory, self.past):
            # self-attention of every beam over its s + 1 keys: BOS (shared by the user's beams), ancestors, itself
            h = layer.norm1(x)
            qkv = F.linear(h, w_qkv)  # [n, 3 * h * dh]: q, then k and v in model.Attention's kv layout
            q = qkv[:, :hd].view(b, w, heads, d_head)
            current = qkv[:, hd:].view(b, w, 2 * hd)
            bos = current if not past else past[0] if users is None else past[0].index_select(0, users)
            keys_values = [bos.view(b, 1, 2, heads, d_head)]  # BOS: broadcast over beams
            keys_values += [past[j].reshape(-1, 2 * hd).index_select(0, rows).view(b, w, 2, heads, d_head) for j, rows in enumerate(ancestors, 1)]
            if past:
                keys_values.append(current.view(b, w, 2, heads, d_head))
            if keep:
                past.append(current)
            scores = torch.stack([(q * kv[:, :, 0]).sum(-1) for kv in keys_values], dim=-1)  # [B, W, h, s+1]
            attn = scores.mul_(self.scale).softmax(dim=-1)
            out = attn[..., 0, None] * keys_values[0][:, :, 1]
            for j in range(1, len(keys_values)):
                out.addcmul_(attn[..., j, None], keys_values[j][:, :, 1])
            x = x.add_(layer.self_attn.out(out.view(n, hd)))
            # cross-attention: the W beams of a user are W queries against the shared memory
            q = layer.cross_attn.q(layer.norm2(x)).view(b, w, heads, d_head).transpose(1, 2)  # [B, h, W, dh]
            attn = torch.matmul(q, mem_kt).mul_(self.scale).add_(memory_bias).softmax(dim=-1)  # [B, h, W, Le]
            x = x.add_(layer.cross_attn.out(torch.matmul(attn, mem_v).transpose(1, 2).reshape(n, hd)))
            x = x.add_(_mlp(layer.mlp, layer.norm3(x)))
        return self.model.decoder_norm(x)


def _mlp(mlp: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``mlp(x)``; for an ``nn.Sequential`` MLP (``model.MLP``) its ReLUs run in place (saves one ``[n, d_ff]`` pass)."""
    if not isinstance(mlp, nn.Sequential):
        return mlp(x)
    for module in mlp:
        x = F.relu_(x) if isinstance(module, nn.ReLU) else module(x)
    return x


#: On CPU, rows of decoder states scored at once by the output head, so that their logits stay in cache.
HEAD_CHUNK_ROWS = 128


def _level_log_probs(model: GenerativeRecommender, states: torch.Tensor, level: int) -> torch.Tensor:
    """``log_softmax(output logits)[:, level's codes]`` for ``states [n, d_model]`` -> float32 ``[n, K_level]``.

    The softmax runs over the model's output vocabulary (``model.output_logits``: the SID codes, or
    every token for ``output_vocab='full'``). Only the level's slice is materialised; the normaliser
    is a ``logsumexp``. On CPU the rows go through in chunks of :data:`HEAD_CHUNK_ROWS`, so each
    chunk's logits are normalised while still in cache (one pass over memory instead of three).
    """
    level_slice = model.vocab.level_slice(level)
    codes = slice(level_slice.start - model.output_offset, level_slice.stop - model.output_offset)
    chunk = HEAD_CHUNK_ROWS if states.device.type == "cpu" else states.shape[0]
    parts = []
    for start in range(0, states.shape[0], chunk):
        logits = model.output_logits(states[start : start + chunk]).float()
        parts.append(logits[:, codes] - logits.logsumexp(dim=-1, keepdim=True))
    return parts[0] if len(parts) == 1 else torch.cat(parts)


def _search(
    model: GenerativeRecommender, enc_tokens: torch.Tensor, enc_item: torch.Tensor, trie: SIDTrie, beam_size: int, top_k: int
) -> Tuple[torch.Tensor, torch.Tensor]:
    """The beam search of one block of users (encoder inputs ``[B, Le]``); same result as :func:`constrained_beam_search`."""
    vocab = model.vocab
    n_users = enc_tokens.shape[0]
    device = enc_tokens.device
    decoder = _BeamDecoder(model, enc_tokens, enc_item)
    tokens = torch.full((n_users, 1), BOS, dtype=torch.long, device=device)
    scores = torch.zeros(n_users, 1, device=device)
    nodes = torch.zeros(n_users, 1, dtype=torch.long, device=device)  # the root
    ancestors: List[torch.Tensor] = []  # per step j = 1 .. s-1: [B, W] index of each beam's ancestor among step j's beams
    widths: List[int] = []  # live beams per user at every step
    user = torch.arange(n_users, device=device).unsqueeze(1)
    for level in range(vocab.n_levels):
        w = tokens.shape[1]
        widths.append(w)

        last = level == vocab.n_levels - 1

        def expand(beams: torch.Tensor, users: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, torch.Tensor]:
            """Candidate scores (``-inf`` where the trie has no child) and children, ``S + [K]``, of the
            beams ``beams`` of every user (``[B, W']`` result), or of beam ``beams[r]`` of user
            ``users[r]`` (``[R]``)."""
            if users is None:
                rows = [(a[:, beams] + user * width).flatten() for a, width in zip(ancestors, widths[1:])]
                beam_tokens, beam_scores, beam_nodes = tokens[:, beams], scores[:, beams], nodes[:, beams]
            else:
                rows = [a[users, beams] + users * width for a, width in zip(ancestors, widths[1:])]
                beam_tokens, beam_scores, beam_nodes = tokens[users, beams, None], scores[users, beams], nodes[users, beams]
            states = decoder.step(beam_tokens, rows, keep=not last, users=users)
            log_probs = _level_log_probs(model, states, level).view(*beam_nodes.shape, -1)
            children = trie.child_table(level, beam_nodes)
            return torch.where(children >= 0, beam_scores.unsqueeze(-1) + log_probs, float("-inf")), children

        if not last:
            candidates, children = expand(torch.arange(w, device=device))
            size = children.shape[-1]
            scores, flat = candidates.flatten(1).topk(min(beam_size, w * size), dim=1)
            nodes = torch.where(torch.isfinite(scores), children.flatten(1).gather(1, flat).long(), -1)
            parent = flat // size  # [B, W']
            tokens = flat % size + vocab.level_offsets[level]
            ancestors = [a.gather(1, parent) for a in ancestors]
            if level > 0:  # step 0's beam is BOS, the common ancestor
                ancestors.append(parent)
        else:
            scores, nodes = _last_level(expand, scores, top_k)

    items = torch.where(nodes >= 0, trie.leaf_item[nodes.clamp(min=0)], -1)
    if items.shape[1] < top_k:  # fewer candidates than top_k in the whole catalogue
        pad = top_k - items.shape[1]
        items = F.pad(items, (0, pad), value=-1)
        scores = F.pad(scores, (0, pad), value=float("-inf"))
    return items, scores


def _last_level(expand, scores: torch.Tensor, top_k: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """The last step, skipping beams that cannot reach the top ``top_k`` (exact).

    A candidate's score is its beam's score plus a log-probability ``<= 0``, so a beam whose score is
    below the ``top_k``-th best candidate already found can only produce candidates below it. Beams
    are sorted by score (``topk`` output), so the first ``top_k`` beams of every user are expanded
    first; their ``top_k``-th best candidate ``T`` is a lower bound of the user's final ``top_k``-th
    score, and of the remaining beams only those scoring ``>= T`` are expanded, gathered into one
    batch of single beams (``expand(beams, users)``). With a trained model the last token (often the
    de-duplication token, forced when a prefix has one item) costs little log-probability, so most
    of beams ``top_k .. W-1`` are skipped. The candidates are laid out as in a full expansion
    (beam-major, skipped beams ``-inf``), so ``topk`` returns the same ``(scores, trie nodes)``
    ``[B, top_k]``.
    """
    n_users, width = scores.shape
    device = scores.device
    first = min(top_k, width)
    candidates, children = expand(torch.arange(first, device=device))
    if width > first:
        found = candidates.flatten(1)
        kth = found.topk(min(top_k, found.shape[1]), dim=1).values[:, -1:]  # [B, 1]; -inf when fewer candidates
        rest = scores[:, first:]
        users, beams = ((rest >= kth) & torch.isfinite(rest)).nonzero(as_tuple=True)
        size = candidates.shape[-1]
        more = torch.full((n_users, width - first, size), float("-inf"), device=device)
        more_children = torch.full((n_users, width - first, size), -1, dtype=children.dtype, device=device)
        if users.numel() > 0:
            more[users, beams], more_children[users, beams] = expand(beams + first, users)
        candidates, children = torch.cat([candidates, more], dim=1), torch.cat([children, more_children], dim=1)
    found = candidates.flatten(1)
    top, flat = found.topk(min(top_k, found.shape[1]), dim=1)
    return top, torch.where(torch.isfinite(top), children.flatten(1).gather(1, flat).long(), -1)


@torch.no_grad()
def recommend(
    model: GenerativeRecommender,
    trie: SIDTrie,
    histories: Sequence[np.ndarray],
    user_ids: np.ndarray,
    beam_size: int = 20,
    top_k: int = 10,
    batch_size: int = 512,
    progress: Optional[ProgressFn] = None,
) -> Tuple[np.ndarray, np.ndarray]:
    """Top-``top_k`` items for every user by trie-constrained beam search.

    Args:
        model: trained recommender (switched to eval mode here); runs on its current device.
        trie: catalogue trie (``SIDTrie.from_sids(sids, model.vocab.level_sizes)``), any device;
            its SIDs also give the history items' tokens.
        histories: per user, the chronological item indices the model may see (``train_items``
            for validation, ``train_items + [valid_item]`` for test); the last
            ``max_history_items`` are used.
        user_ids: int ``[U]`` user indices (hashed into user tokens).
        beam_size, top_k, batch_size: beams per user, items returned, users per batch.
        progress: optional one-line progress callback (throttled to every ~10 s).

    Returns:
        ``(items int64 [U, top_k], scores float32 [U, top_k])`` in input order; ``-1`` / ``-inf``
        pad lists when the catalogue has fewer than ``top_k`` items.
    """
    model.eval()
    device = model.device
    trie = trie.to(device)
    vocab = model.vocab
    rows = build_inference_rows(
        histories, vocab.user_tokens(user_ids), vocab.item_tokens(trie.sids), model.params.max_history_items
    )
    items = np.full((rows.n_rows, top_k), -1, dtype=np.int64)
    scores = np.full((rows.n_rows, top_k), -np.inf, dtype=np.float32)
    report = Throttle(progress)
    done = 0
    for idx in sorted_batches(rows.enc_lengths, batch_size):
        top_items, top_scores = constrained_beam_search(model, rows.batch(idx).to(device), trie, beam_size, top_k)
        items[idx] = top_items.cpu().numpy()
        scores[idx] = top_scores.cpu().numpy()
        done += len(idx)
        report(f"recommend: {done:,}/{rows.n_rows:,} users")
    return items, scores
