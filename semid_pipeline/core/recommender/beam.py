"""Trie-constrained beam search over SIDs, batched over users and beams.

Per batch the encoder runs once and the cross-attention keys/values of its output are computed
once per decoder layer; beams share them without copies (the decoder folds the beam dimension into
the cross-attention query length). Decoder self-attention uses a KV cache that is reordered to the
surviving beams' parents after every step (``D`` steps in all, one decoder token per beam and step).

Scoring: at step ``l`` every live beam's next-token distribution is ``log_softmax`` over the FULL
vocabulary; the level-``l`` slice is taken, codes with no child in the trie are set to ``-inf``,
the beam's score is added and the best ``beam_size`` of the ``W * K_l`` candidates survive (step 0
has a single live beam). A SID's score is therefore the sum of its tokens' log-probabilities with
no renormalisation over allowed tokens, which is what HF ``generate`` with
``prefix_allowed_tokens_fn`` computes (it masks after ``log_softmax``). All SIDs have the same
length, so no length penalty applies. With ``beam_size >= `` the number of items the search is
exact (equals scoring every item by teacher forcing).

Blocking on CPU: users are independent, so a CPU batch is decoded in blocks of users whose largest
tensor, the ``[users * beams, vocab]`` logits, stays under :data:`CPU_BLOCK_BYTES` (each block's
encoder input is trimmed to its longest history). Bigger tensors come from fresh ``mmap``s whose
pages fault in at every step and fall out of cache: at the TIGER size, 256-user batches took ~3x
fewer page faults and ran 10-30% faster with 1 or 2 threads on a 2-core Xeon. (On an oversubscribed
machine, with more busy threads than cores, the extra parallel regions can cost more than that;
use fewer threads there.) GPU batches run whole.
"""

from __future__ import annotations

from typing import Tuple

import torch
import torch.nn.functional as F

from semid_pipeline.core.recommender.data import PAD_ITEM, SIDBatch
from semid_pipeline.core.recommender.model import GenerativeRecommender
from semid_pipeline.core.recommender.trie import SIDTrie
from semid_pipeline.core.recommender.vocab import BOS

#: On CPU, the most bytes of float32 logits (``users * beam_size * vocab_size * 4``) decoded at once.
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
        model: the recommender (put it in eval mode for deterministic output).
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


def _search(
    model: GenerativeRecommender, enc_tokens: torch.Tensor, enc_item: torch.Tensor, trie: SIDTrie, beam_size: int, top_k: int
) -> Tuple[torch.Tensor, torch.Tensor]:
    """The beam search of one block of users (encoder inputs ``[B, Le]``); same result as :func:`constrained_beam_search`."""
    vocab = model.vocab
    n_users = enc_tokens.shape[0]
    device = enc_tokens.device

    memory_kv = model.memory_kv(model.encode(enc_tokens, enc_item))
    memory_mask = model.memory_bias(enc_item)
    tokens = torch.full((n_users, 1), BOS, dtype=torch.long, device=device)
    scores = torch.zeros(n_users, 1, device=device)
    nodes = torch.zeros(n_users, 1, dtype=torch.long, device=device)  # the root
    cache = None
    for level in range(vocab.n_levels):
        logits, cache = model.decode_step(tokens, memory_kv, memory_mask, cache)
        log_probs = F.log_softmax(logits.float(), dim=-1)[..., vocab.level_slice(level)]  # [B, W, K]
        children = trie.child_table(level, nodes)  # [B, W, K]
        size = children.shape[-1]
        candidates = torch.where(children >= 0, scores.unsqueeze(-1) + log_probs, float("-inf")).flatten(1)
        last = level == vocab.n_levels - 1
        scores, flat = candidates.topk(min(top_k if last else beam_size, candidates.shape[1]), dim=1)
        nodes = torch.where(torch.isfinite(scores), children.flatten(1).gather(1, flat).long(), -1)
        if not last:
            parent = flat // size  # [B, W']
            tokens = flat % size + vocab.level_offsets[level]
            rows = (parent + torch.arange(n_users, device=device).unsqueeze(1) * children.shape[1]).flatten()
            cache = [(k[rows], v[rows]) for k, v in cache]

    items = torch.where(nodes >= 0, trie.leaf_item[nodes.clamp(min=0)], -1)
    if items.shape[1] < top_k:  # fewer candidates than top_k in the whole catalogue
        pad = top_k - items.shape[1]
        items = F.pad(items, (0, pad), value=-1)
        scores = F.pad(scores, (0, pad), value=float("-inf"))
    return items, scores
