"""Hugging Face ``generate`` on a :class:`GenerativeRecommender`: the reference decoder for beam search.

:class:`HFRecommender` exposes the recommender (the same module, so exactly the same weights) to
``transformers``' ``GenerationMixin``, so that ``generate(num_beams=..., prefix_allowed_tokens_fn=...)``
runs Hugging Face's own beam search over our decoder. It is what
:func:`~semid_pipeline.core.recommender.beam.constrained_beam_search` is checked against (same top-K
lists up to ties in score) and timed against (``benchmarks/beam_search.py``).

How the model is wired into ``generate``, the way a Hugging Face seq2seq model such as T5 runs:

* The encoder runs outside ``generate`` (:meth:`HFRecommender.encode`); its memory and the
  cross-attention bias the decoder needs are packed into one :class:`RecommenderEncoderOutput`,
  passed as ``encoder_outputs``. ``generate`` repeats every tensor of it ``num_beams`` times
  (``repeat_interleave`` on the batch dimension), so row ``b * num_beams + j`` is beam ``j`` of user
  ``b``.
* :meth:`HFRecommender.forward` takes ``decoder_input_ids`` and returns ``Seq2SeqLMOutput(logits)``.
  With the default ``use_cache=True`` it reads ``generate``'s ``EncoderDecoderCache``: the
  cross-attention keys/values of the (expanded) memory are computed at the first step and kept in
  its cross-attention half, decoder self-attention keys/values in its self-attention half, and
  ``generate`` reorders both to the surviving beams after every step. With ``use_cache=False`` the
  whole decoder prefix is recomputed at every step.
* The config has ``decoder_start_token_id = BOS`` and no EOS, so generation with
  ``max_new_tokens = D`` emits exactly one SID (``D`` tokens) per beam; with ``length_penalty=0``
  a sequence score is the plain sum of its tokens' log-probabilities.

Scores: Hugging Face applies logits processors to ``log_softmax`` over the FULL vocabulary, so
:class:`TriePrefixAllowedTokens` (disallowed tokens at ``-inf``) yields the same SID scores as our
beam search, which masks the full-vocabulary log-probabilities by the trie the same way.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import torch
from transformers import GenerationMixin, PreTrainedModel, PretrainedConfig
from transformers.cache_utils import EncoderDecoderCache
from transformers.modeling_outputs import Seq2SeqLMOutput
from transformers.utils import ModelOutput

from semid_pipeline.core.recommender.data import SIDBatch
from semid_pipeline.core.recommender.model import KV, GenerativeRecommender
from semid_pipeline.core.recommender.trie import SIDTrie
from semid_pipeline.core.recommender.vocab import BOS, PAD, SIDVocab


class RecommenderHFConfig(PretrainedConfig):
    """``transformers`` config of :class:`HFRecommender` (generation settings only; the architecture
    lives in the wrapped recommender's ``RecommenderParams``)."""

    model_type = "semid_generative_recommender"

    def __init__(self, vocab_size: int = 2, n_levels: int = 1, num_hidden_layers: int = 1, **kwargs: Any):
        kwargs.update(is_encoder_decoder=True, decoder_start_token_id=BOS, pad_token_id=PAD, bos_token_id=None, eos_token_id=None)
        super().__init__(**kwargs)
        self.vocab_size = vocab_size
        self.n_levels = n_levels
        self.num_hidden_layers = num_hidden_layers


@dataclass
class RecommenderEncoderOutput(ModelOutput):
    """Encoder output handed to ``generate`` as ``encoder_outputs``; every field is a batch-first tensor,
    so ``generate``'s beam expansion repeats all of them.

    Attributes:
        last_hidden_state: float ``[B, Le, d_model]`` encoder memory.
        memory_bias: float ``[B, h, 1, Le]`` cross-attention bias (``GenerativeRecommender.memory_bias``).
    """

    last_hidden_state: Optional[torch.Tensor] = None
    memory_bias: Optional[torch.Tensor] = None


class HFRecommender(PreTrainedModel, GenerationMixin):
    """A :class:`GenerativeRecommender` as a Hugging Face encoder-decoder (no weights of its own).

    Build with ``HFRecommender(model)``; the recommender becomes the submodule ``recommender``
    (shared, not copied). Use :meth:`encode` for ``encoder_outputs`` and :func:`hf_beam_search` for
    constrained top-K lists.
    """

    config_class = RecommenderHFConfig
    base_model_prefix = "recommender"

    def __init__(self, recommender: GenerativeRecommender):
        vocab = recommender.vocab
        super().__init__(
            RecommenderHFConfig(
                vocab_size=vocab.vocab_size, n_levels=vocab.n_levels, num_hidden_layers=recommender.params.n_decoder_layers
            )
        )
        self.recommender = recommender

    def encode(self, batch: SIDBatch) -> RecommenderEncoderOutput:
        """Runs our encoder on an inference ``batch`` (on the model's device): the ``encoder_outputs`` for ``generate``."""
        rec = self.recommender
        return RecommenderEncoderOutput(
            last_hidden_state=rec.encode(batch.enc_tokens, batch.enc_item), memory_bias=rec.memory_bias(batch.enc_item)
        )

    def forward(
        self,
        decoder_input_ids: torch.Tensor,
        encoder_outputs: RecommenderEncoderOutput,
        cache: Optional[EncoderDecoderCache] = None,
        use_cache: Optional[bool] = None,
        **kwargs: Any,
    ) -> Seq2SeqLMOutput:
        """Next-token logits ``[N, L, vocab_size]`` for ``decoder_input_ids [N, L]`` (``N`` = users x beams).

        With a cache, ``decoder_input_ids`` holds the tokens not yet in it (one per row during beam
        search) and the cache is updated in place; without, the whole prefix is decoded causally.
        ``kwargs`` (``return_dict``, the dummy encoder ``attention_mask``, ...) are not needed.

        transformers 5 renamed the cache argument and output field from ``past_key_values`` to
        ``cache`` (``prepare_inputs_for_generation`` passes ``cache=``; ``generate`` reads
        ``outputs.cache``). A forward that still took ``past_key_values`` got ``cache`` in ``kwargs``,
        saw no cache, and decoded only the newest token as if it were the whole prefix: the scores
        drifted from ours by up to 0.74 (issue 15). The pinned version is in ``requirements.lock``.
        """
        rec = self.recommender
        memory, bias = encoder_outputs.last_hidden_state, encoder_outputs.memory_bias
        x = rec.embed(decoder_input_ids)
        if cache is None or use_cache is False:
            length = decoder_input_ids.shape[1]
            causal = torch.ones(length, length, dtype=torch.bool, device=x.device).tril()
            for layer, kv in zip(rec.decoder_layers, rec.memory_kv(memory)):
                x, _ = layer(x, kv, bias, self_mask=causal)
            return Seq2SeqLMOutput(logits=rec.logits(rec.decoder_norm(x)))

        if decoder_input_ids.shape[1] != 1:
            raise ValueError(f"cached decoding takes one new token per row, got {decoder_input_ids.shape[1]}")
        # Cached step, written the way Hugging Face seq2seq models (T5, BART) do it: the new token's
        # self-attention keys/values go through ``Cache.update``; the block structure is DecoderLayer's.
        self_cache = cache.self_attention_cache
        for i, layer in enumerate(rec.decoder_layers):
            h = layer.norm1(x)
            k, v = self_cache.update(*layer.self_attn.keys_values(h), i)
            x = x + layer.drop(layer.self_attn(h, k, v, None))
            x = x + layer.drop(layer.cross_attn(layer.norm2(x), *self._cross_kv(cache, i, memory), bias))
            x = x + layer.drop(layer.mlp(layer.norm3(x)))
        return Seq2SeqLMOutput(logits=rec.logits(rec.decoder_norm(x)), cache=cache)

    def _cross_kv(self, cache: EncoderDecoderCache, layer_idx: int, memory: torch.Tensor) -> KV:
        """Cross-attention keys/values of decoder layer ``layer_idx``: computed from ``memory`` at the
        first step, then read from the cache's cross-attention half."""
        cross = cache.cross_attention_cache
        if cache.is_updated.get(layer_idx):
            return cross.layers[layer_idx].keys, cross.layers[layer_idx].values
        k, v = cross.update(*self.recommender.decoder_layers[layer_idx].cross_attn.keys_values(memory), layer_idx)
        cache.is_updated[layer_idx] = True
        return k, v


class TriePrefixAllowedTokens:
    """``prefix_allowed_tokens_fn`` for ``generate``: the trie's allowed next tokens of a decoder prefix.

    ``fn(batch_id, input_ids)`` takes one beam's decoder tokens ``[BOS, t_0, .., t_{l-1}]`` (token ids
    in the :class:`SIDVocab` layout) and returns the token ids of level ``l`` that extend the prefix
    to at least one catalogue SID. The trie is walked once at construction into a dict keyed by the
    prefix, so a call costs one ``tolist`` and one lookup. A prefix outside the trie (only reachable
    through a beam whose score is already ``-inf``) gets ``[PAD]``, keeping that beam dead.
    """

    def __init__(self, trie: SIDTrie, vocab: SIDVocab):
        if trie.level_sizes != vocab.level_sizes:
            raise ValueError(f"trie level sizes {trie.level_sizes} differ from the vocabulary's {vocab.level_sizes}")
        self._allowed: Dict[Tuple[int, ...], List[int]] = {}
        prefixes: List[Tuple[int, ...]] = [(BOS,)]  # prefix of every node at the current depth
        for level, table in enumerate(trie.children):
            children = table.cpu().numpy()
            nodes, codes = np.nonzero(children >= 0)  # row-major: grouped by node, codes ascending
            tokens = (codes + vocab.level_offsets[level]).tolist()
            child_ids = children[nodes, codes].tolist()
            next_prefixes: List[Tuple[int, ...]] = [()] * (max(child_ids) + 1)
            for node, token, child in zip(nodes.tolist(), tokens, child_ids):
                self._allowed.setdefault(prefixes[node], []).append(token)
                next_prefixes[child] = prefixes[node] + (token,)
            prefixes = next_prefixes

    def __call__(self, batch_id: int, input_ids: torch.Tensor) -> List[int]:
        return self._allowed.get(tuple(input_ids.tolist()), [PAD])


@torch.no_grad()
def hf_beam_search(
    model: HFRecommender,
    batch: SIDBatch,
    trie: SIDTrie,
    allowed_tokens: TriePrefixAllowedTokens,
    beam_size: int = 20,
    top_k: int = 10,
    use_cache: bool = True,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Top-``top_k`` items per user by Hugging Face ``generate`` (beam search, ``prefix_allowed_tokens_fn``).

    Same contract as :func:`~semid_pipeline.core.recommender.beam.constrained_beam_search`:
    ``batch`` holds encoder inputs on the model's device, ``trie`` is on that device, and the result
    is ``(items int64 [B, top_k], scores float32 [B, top_k])`` by descending score (sum of the SID's
    full-vocabulary log-probabilities). Needs ``beam_size >= top_k`` and at least ``top_k`` items
    (with fewer, ``generate`` would fill the list with repeated or off-trie beams, not ``-1``).
    The vocabulary has no EOS, so every beam runs exactly ``max_new_tokens = D`` steps.
    """
    if beam_size < top_k:
        raise ValueError(f"beam_size ({beam_size}) must be >= top_k ({top_k})")
    if trie.n_items < top_k:
        raise ValueError(f"generate cannot return top_k={top_k} distinct items from a {trie.n_items}-item catalogue")
    vocab = model.recommender.vocab
    out = model.generate(
        encoder_outputs=model.encode(batch),
        max_new_tokens=vocab.n_levels,
        num_beams=beam_size,
        num_return_sequences=top_k,
        do_sample=False,
        length_penalty=0.0,
        early_stopping=True,
        prefix_allowed_tokens_fn=allowed_tokens,
        use_cache=use_cache,
        output_scores=True,
        return_dict_in_generate=True,
    )
    n_users = batch.enc_tokens.shape[0]
    codes = out.sequences[:, 1:] - torch.tensor(vocab.level_offsets, device=out.sequences.device)
    node = torch.zeros(codes.shape[0], dtype=torch.long, device=codes.device)
    for level in range(vocab.n_levels):  # walk the trie: the leaf reached is the item
        node = trie.child_table(level, node).gather(1, codes[:, level : level + 1].clamp(0, vocab.level_sizes[level] - 1)).squeeze(1).long()
    items = torch.where(node >= 0, trie.leaf_item[node.clamp(min=0)], -1)
    return items.view(n_users, top_k), out.sequences_scores.float().view(n_users, top_k)
