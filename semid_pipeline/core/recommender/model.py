"""TIGER-style generative recommender: a pre-LN encoder-decoder transformer over SID tokens.

Architecture
------------
* :class:`TokenEmbedding`: learned token embedding + token-type embedding (PAD / BOS / user /
  SID level ``l``; the type follows from the token id, since every level owns its own token
  range). A separate module with a small interface (``__init__(vocab, d_model)``,
  ``forward(tokens)``) so a hierarchy-aware embedding can replace it.
* Item order enters as :class:`RelativeItemBias`: a learned per-head attention bias indexed by
  item distance (T5's relative position bias, at item level; one table for encoder
  self-attention, one for cross-attention, shared by all layers). Decoder positions need none:
  the token type tells the step.
* ``n_encoder_layers`` / ``n_decoder_layers`` pre-LN blocks (attention with ``n_heads`` heads of
  ``d_head``, ReLU MLP of ``d_ff``), all attention through ``F.scaled_dot_product_attention``
  (masks as boolean tensors, or as the additive relative bias with ``-inf`` on masked pairs),
  final layer norms, and an untied output head over the full vocabulary.

Why no absolute item-position embedding: the per-user packing shares one encoder pass between all
targets of a user, so an item's embedding cannot depend on which target reads it, and absolute
indices (counted from the start of the history) tie "most recent item" to the history length.
On a synthetic next-item task with equal-length histories (so the validation history's last index
is never a training target's last index) adding a learned absolute item-position embedding cut
validation Recall@10 from 1.0 to ~0.5. Item distance is the same in packed rows, per-prefix rows
and at inference, so the relative bias keeps the three exactly consistent.

Training formulation (the key speed decision)
---------------------------------------------
Classic TIGER makes every prefix of every user a separate example, so the encoder re-reads the
same history ``O(n)`` times per user (``O(n^2)`` work). In ``per_user`` mode one forward pass
computes the loss of *every* next-item target of a user's sequence:

* encoder input ``[user] + SID tokens of items 0 .. n-2`` with an **item-level causal mask**: a
  token of item ``j`` attends to the user token and to the tokens of items ``(j - H, j]``
  (``H = max_history_items``; tokens of the same item see each other); the user token sees itself.
* decoder input packs all targets ``t = 1 .. n-1``: segment ``[BOS, sid_t[0..D-2]]`` predicting
  ``sid_t[0..D-1]``; decoder self-attention is causal within a segment (block diagonal).
* cross-attention of target ``t``'s segment sees the user token and encoder items ``[t - H, t)``.

Since an item's encoder states only depend on itself and earlier items, target ``t`` gets exactly
the states it would get from a separate example holding items ``[t - H, t)``, as long as
``n <= H + 1``: the per-user loss then *equals* the mean of the per-prefix losses (tested). For
longer histories, an item's state may depend on items older than the target's window (receptive
field grows by ``H`` items per layer), a mild and standard sliding-window approximation; very long
users are cut into rows of at most ``H`` targets (see ``data.build_training_rows``) to bound memory.
``per_prefix`` mode (one example per target, history window ``[t - H, t)``) is kept for the
``bidirectional`` encoder, whose states are not shareable across targets.

Inference encodes ``[user] + the last H history items`` (same causal mask) and decodes a target
that follows the last history item, with cross-attention on every encoder token.
"""

from __future__ import annotations

from typing import Any, Dict, List, Literal, Optional, Tuple

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from semid_pipeline.core.artifacts import Artifact, register_artifact
from semid_pipeline.core.params import StrictParams
from semid_pipeline.core.recommender.hierarchy import LevelTags
from semid_pipeline.core.recommender.data import IGNORE_LABEL, PAD_ITEM, USER_ITEM, SIDBatch
from semid_pipeline.core.recommender.vocab import N_SPECIAL, SIDVocab

KV = Tuple[torch.Tensor, torch.Tensor]


class RecommenderParams(StrictParams):
    """Architecture of the generative recommender; defaults are TIGER's (Rajput et al. 2023)."""

    d_model: int = Field(128, ge=1, description="Width of token embeddings and of the residual stream.")
    n_encoder_layers: int = Field(4, ge=1, description="Transformer encoder blocks.")
    n_decoder_layers: int = Field(4, ge=1, description="Transformer decoder blocks.")
    n_heads: int = Field(6, ge=1, description="Attention heads per attention layer.")
    d_head: int = Field(64, ge=1, description="Width of one attention head (n_heads * d_head may differ from d_model, as in T5).")
    d_ff: int = Field(1024, ge=1, description="Hidden width of the ReLU MLP in every block.")
    dropout: float = Field(0.1, ge=0, lt=1, description="Dropout on embeddings, attention probabilities and every residual branch.")
    max_history_items: int = Field(20, ge=1, description="History items the model sees per prediction (the most recent ones).")
    n_user_buckets: int = Field(2000, ge=1, description="User ids are hashed into this many user tokens (TIGER: 2000).")
    output_vocab: Literal["sid_codes", "full"] = Field(
        "sid_codes",
        description="sid_codes: the next-token softmax runs over the SID code tokens only (the decoder never emits PAD, "
        "BOS or a user token); full: over the whole vocabulary, user tokens included, as a T5 head over TIGER's vocabulary. "
        "With 2,000 user buckets and 3 x 256 codes, sid_codes makes the output layer 3.6x smaller.",
    )
    tie_embeddings: bool = Field(
        True,
        description="Share the token embedding with the output head (as T5, which TIGER uses). A code seen in the "
        "history is then directly scorable as output, which makes the model learn from far fewer steps.",
    )
    embedding: Literal["standard", "hierarchy"] = Field(
        "standard",
        description="standard: learned token + token-type embedding (TIGER); hierarchy: HiD-VAE Sec. 3.7 hierarchy-aware "
        "embedding, Linear(concat(ID emb, level-type emb, frozen sentence embedding of the code's tag)) -> d_model.",
    )
    d_id_embedding: int = Field(128, ge=1, description="hierarchy embedding: width of the learned ID embedding.")
    d_type_embedding: int = Field(32, ge=1, description="hierarchy embedding: width of the level-type embedding.")
    encoder_mask: Literal["causal_items", "bidirectional"] = Field(
        "causal_items",
        description="causal_items: a history item's tokens attend to the user token and earlier items (required by "
        "per_user training); bidirectional: every history token attends to every other (classic TIGER, per_prefix only).",
    )


class TokenEmbedding(nn.Module):
    """Token + token-type embedding: ``forward(tokens [B, L]) -> [B, L, d_model]``.

    The type (PAD / BOS / user / SID level ``l``) follows from the token id. Item order is not
    embedded here but enters attention as :class:`RelativeItemBias`. Replace this module (same
    ``__init__(vocab, d_model)`` / ``forward(tokens)`` interface) for a hierarchy-aware embedding.
    """

    def __init__(self, vocab: SIDVocab, d_model: int):
        super().__init__()
        self.tokens = nn.Embedding(vocab.vocab_size, d_model)
        self.types = nn.Embedding(vocab.n_types, d_model)
        self.register_buffer("type_of_token", torch.from_numpy(vocab.token_types()), persistent=False)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.tokens(tokens) + self.types(self.type_of_token[tokens])


class HierarchicalTokenEmbedding(nn.Module):
    """HiD-VAE Sec. 3.7 hierarchy-aware semantic embedding: ``forward(tokens [B, L]) -> [B, L, d_model]``.

    Token ``v``'s vector is ``proj(concat(ids[v], types[type(v)], tag[v]))`` where ``tag[v]`` is the
    frozen sentence embedding of the tag text of ``v``'s ``(level, code)`` (see
    ``hierarchy.build_level_tags``), or one learned ``no_tag`` vector for tokens without a tag (special
    tokens, user tokens, the de-duplication level, unused codes). :meth:`table` gives all
    ``vocab_size`` vectors at once; the tied output head scores against that table.
    """

    def __init__(self, vocab: SIDVocab, d_model: int, d_id: int, d_type: int, tag_table: torch.Tensor, has_tag: torch.Tensor):
        super().__init__()
        if tag_table.shape[0] != vocab.vocab_size or has_tag.shape != (vocab.vocab_size,):
            raise ValueError(f"tag table {tuple(tag_table.shape)} / has_tag {tuple(has_tag.shape)} do not match vocab size {vocab.vocab_size}")
        self.ids = nn.Embedding(vocab.vocab_size, d_id)
        self.types = nn.Embedding(vocab.n_types, d_type)
        self.register_buffer("tag_table", tag_table.float().clone())  # persistent: saved with the model
        self.register_buffer("has_tag", has_tag.bool().clone())
        self.no_tag = nn.Parameter(torch.zeros(tag_table.shape[1]))
        self.proj = nn.Linear(d_id + d_type + tag_table.shape[1], d_model)
        self.register_buffer("type_of_token", torch.from_numpy(vocab.token_types()), persistent=False)
        self._memo: Optional[Tuple[Any, torch.Tensor]] = None

    def table(self) -> torch.Tensor:
        """``[vocab_size, d_model]`` embedding of every token.

        Memoised: the encoder, the decoder and the tied head of one forward pass (and every step of a
        beam search) share one computation. The memo key holds the weights' identities and in-place
        version counters (an optimizer step invalidates it), whether autograd records, and the
        autocast state, so a table is never reused across a weight update, into a graph it was not
        built in, or in another dtype."""
        params = (self.ids.weight, self.types.weight, self.no_tag, self.proj.weight, self.proj.bias, self.tag_table)
        key = (
            tuple((id(t), t.data_ptr(), t._version) for t in params),
            torch.is_grad_enabled(),
            torch.is_autocast_enabled(self.proj.weight.device.type),
        )
        if self._memo is not None and self._memo[0] == key:
            return self._memo[1]
        tag = torch.where(self.has_tag[:, None], self.tag_table, self.no_tag.to(self.tag_table.dtype))
        table = self.proj(torch.cat([self.ids.weight, self.types(self.type_of_token), tag], dim=-1))
        self._memo = (key, table)
        return table

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return F.embedding(tokens, self.table())


class TiedHead(nn.Module):
    """Output head tied to a :class:`HierarchicalTokenEmbedding`: logits = ``x @ table().T``."""

    def __init__(self, embed: HierarchicalTokenEmbedding):
        super().__init__()
        self._embed = [embed]  # a plain list: not a submodule, so its weights are not registered twice

    @property
    def weight(self) -> torch.Tensor:
        """``[vocab_size, d_model]``: the embedding table, as ``nn.Linear.weight`` of an untied head."""
        return self._embed[0].table()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight)


class Attention(nn.Module):
    """Multi-head attention through ``F.scaled_dot_product_attention``; keys/values computed separately
    (:meth:`keys_values`) so the decoder can cache them (self-attention) or share them across beams
    (cross-attention)."""

    def __init__(self, d_model: int, n_heads: int, d_head: int, dropout: float):
        super().__init__()
        self.n_heads, self.d_head, self.dropout = n_heads, d_head, dropout
        self.q = nn.Linear(d_model, n_heads * d_head, bias=False)
        self.kv = nn.Linear(d_model, 2 * n_heads * d_head, bias=False)
        self.out = nn.Linear(n_heads * d_head, d_model, bias=False)

    def _split(self, x: torch.Tensor) -> torch.Tensor:  # [B, L, h*dh] -> [B, h, L, dh]
        return x.unflatten(-1, (self.n_heads, self.d_head)).transpose(1, 2)

    def keys_values(self, x: torch.Tensor) -> KV:
        """``x [B, L, d] -> (k, v)``, each ``[B, h, L, dh]``."""
        k, v = self.kv(x).chunk(2, dim=-1)
        return self._split(k), self._split(v)

    def forward(self, x: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: Optional[torch.Tensor]) -> torch.Tensor:
        """Queries from ``x [B, Lq, d]`` attend ``k, v [B, h, Lk, dh]``. ``mask`` is broadcastable to
        ``[B, h, Lq, Lk]``: bool (True = may attend) or a float additive bias (``-inf`` = masked);
        every query row must allow one key. Returns ``[B, Lq, d]``."""
        q = self._split(self.q(x))
        if mask is not None and mask.is_floating_point():
            mask = mask.to(q.dtype)  # autocast: SDPA wants the bias in the query dtype
        o = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=self.dropout if self.training else 0.0)
        return self.out(o.transpose(1, 2).flatten(2))


class RelativeItemBias(nn.Module):
    """Learned per-head attention bias by item distance (T5-style relative position bias at item level).

    Shared by every layer of a stack. The bucket of a (query item ``q``, key item ``k``) pair is
    ``clamp(q - k, -H, H) + H``; a key that is the user token has bucket ``2H + 1``. The bias is a
    function of item distance only, so it is identical whether a target is trained in a packed
    per-user row, in its own per-prefix row, or decoded at inference.
    """

    def __init__(self, max_distance: int, n_heads: int):
        super().__init__()
        self.max_distance = max_distance
        self.bias = nn.Embedding(2 * max_distance + 2, n_heads)

    def forward(self, q_item: torch.Tensor, k_item: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
        """``q_item [B, Lq]``, ``k_item [B, Lk]``, ``allowed`` bool ``[B, Lq, Lk]`` -> float ``[B, h, Lq, Lk]``
        (``-inf`` where not allowed; every query row must allow one key)."""
        h = self.max_distance
        bucket = (q_item[:, :, None] - k_item[:, None, :]).clamp(-h, h) + h
        bucket = torch.where((k_item == USER_ITEM)[:, None, :], 2 * h + 1, bucket)
        return self.bias(bucket).permute(0, 3, 1, 2).masked_fill(~allowed.unsqueeze(1), float("-inf"))


class MLP(nn.Sequential):
    """``d_model -> d_ff -> d_model`` ReLU MLP. No dropout on the ``d_ff``-wide hidden units (T5 has
    one): on CPU drawing that mask cost ~1/3 of a training step; the block output is still dropped."""

    def __init__(self, d_model: int, d_ff: int):
        super().__init__(nn.Linear(d_model, d_ff), nn.ReLU(), nn.Linear(d_ff, d_model))


class EncoderLayer(nn.Module):
    def __init__(self, p: RecommenderParams):
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(p.d_model), nn.LayerNorm(p.d_model)
        self.attn = Attention(p.d_model, p.n_heads, p.d_head, p.dropout)
        self.mlp = MLP(p.d_model, p.d_ff)
        self.drop = nn.Dropout(p.dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        h = self.norm1(x)
        x = x + self.drop(self.attn(h, *self.attn.keys_values(h), mask))
        return x + self.drop(self.mlp(self.norm2(x)))


class DecoderLayer(nn.Module):
    def __init__(self, p: RecommenderParams):
        super().__init__()
        self.norm1, self.norm2, self.norm3 = (nn.LayerNorm(p.d_model) for _ in range(3))
        self.self_attn = Attention(p.d_model, p.n_heads, p.d_head, p.dropout)
        self.cross_attn = Attention(p.d_model, p.n_heads, p.d_head, p.dropout)
        self.mlp = MLP(p.d_model, p.d_ff)
        self.drop = nn.Dropout(p.dropout)

    def forward(
        self,
        x: torch.Tensor,
        memory_kv: KV,
        cross_mask: torch.Tensor,
        self_mask: Optional[torch.Tensor] = None,
        cache: Optional[KV] = None,
    ) -> Tuple[torch.Tensor, KV]:
        """Returns ``(x, (k, v) of this layer's self-attention)``.

        Full mode (``cache is None``): ``x [B, Ld, d]`` with ``self_mask [B, 1, Ld, Ld]``.
        Incremental mode (``cache`` given): ``x [B, W, d]`` holds ONE new token for each of ``W``
        beams; self-attention runs per beam (``[B*W, 1]`` queries against the beam's cached keys
        ``[B*W, h, step, dh]`` plus the new one), while cross-attention folds the beams into the
        query length, so the memory keys/values ``[B, h, Le, dh]`` are shared without copying.
        """
        h = self.norm1(x)
        if cache is None:
            k, v = self.self_attn.keys_values(h)
            x = x + self.drop(self.self_attn(h, k, v, self_mask))
        else:
            b, w, d = h.shape
            h = h.reshape(b * w, 1, d)
            k, v = self.self_attn.keys_values(h)
            k, v = torch.cat([cache[0], k], dim=2), torch.cat([cache[1], v], dim=2)
            x = x + self.drop(self.self_attn(h, k, v, None).view(b, w, d))
        x = x + self.drop(self.cross_attn(self.norm2(x), *memory_kv, cross_mask))
        return x + self.drop(self.mlp(self.norm3(x))), (k, v)


@register_artifact
class GenerativeRecommender(nn.Module, Artifact):
    """Encoder-decoder that reads a user's history as SID tokens and generates the next item's SID.

    See the module docstring for the training formulation. Main entry points:
    :meth:`loss` (training), :meth:`encode` + :meth:`memory_kv` + :meth:`decode_step` (beam search).
    """

    KIND = "tiger"

    def __init__(
        self,
        params: RecommenderParams,
        vocab: SIDVocab,
        tag_table: Optional[torch.Tensor] = None,
        has_tag: Optional[torch.Tensor] = None,
        level_tags: Optional[LevelTags] = None,
    ):
        """``tag_table [vocab_size, d_text]`` / ``has_tag [vocab_size]`` (``hierarchy.tag_embedding_table``)
        are required for ``params.embedding == 'hierarchy'``; ``level_tags`` (the text map) is kept in
        the saved config so a reloaded model can explain its SIDs."""
        super().__init__()
        if params.n_user_buckets != vocab.n_user_buckets:
            raise ValueError(f"params.n_user_buckets={params.n_user_buckets} but vocab has {vocab.n_user_buckets}")
        self.params, self.vocab, self.level_tags = params, vocab, level_tags
        p = params
        if p.embedding == "hierarchy":
            if tag_table is None or has_tag is None:
                raise ValueError("embedding='hierarchy' needs the tag embedding table (build it with hierarchy.tag_embedding_table)")
            self.embed = HierarchicalTokenEmbedding(vocab, p.d_model, p.d_id_embedding, p.d_type_embedding, torch.as_tensor(tag_table), torch.as_tensor(has_tag))
        else:
            self.embed = TokenEmbedding(vocab, p.d_model)
        self.embed_drop = nn.Dropout(p.dropout)
        self.encoder_layers = nn.ModuleList(EncoderLayer(p) for _ in range(p.n_encoder_layers))
        self.encoder_norm = nn.LayerNorm(p.d_model)
        self.encoder_rel = RelativeItemBias(p.max_history_items, p.n_heads)
        self.cross_rel = RelativeItemBias(p.max_history_items, p.n_heads)
        self.decoder_layers = nn.ModuleList(DecoderLayer(p) for _ in range(p.n_decoder_layers))
        self.decoder_norm = nn.LayerNorm(p.d_model)
        if p.embedding == "hierarchy" and p.tie_embeddings:
            self.head: nn.Module = TiedHead(self.embed)
        else:
            self.head = nn.Linear(p.d_model, vocab.vocab_size, bias=False)
        self.apply(self._init_weights)
        if p.tie_embeddings and p.embedding == "standard":
            self.head.weight = self.embed.tokens.weight

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, std=0.02)
            if isinstance(m, nn.Linear) and m.bias is not None:
                nn.init.zeros_(m.bias)

    @property
    def device(self) -> torch.device:
        return self.decoder_norm.weight.device

    # ------------------------------------------------------------------------- masks and biases
    def encoder_bias(self, enc_item: torch.Tensor) -> torch.Tensor:
        """``enc_item [B, Le]`` -> float ``[B, h, Le, Le]`` encoder self-attention bias (``-inf`` = masked)."""
        key_ok = (enc_item != PAD_ITEM)[:, None, :]
        if self.params.encoder_mask == "bidirectional":
            allowed = key_ok.expand(-1, enc_item.shape[1], -1)
        else:
            q, k = enc_item[:, :, None], enc_item[:, None, :]
            allowed = ((k == USER_ITEM) | ((k <= q) & (k > q - self.params.max_history_items))) & key_ok
        return self.encoder_rel(enc_item, enc_item, allowed)  # padding queries still see the user token

    def cross_bias(self, enc_item: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Target ``t`` sees the user token and items ``[t - H, t)``: ``enc_item [B, Le]``,
        ``target [B, Lq]`` -> float ``[B, h, Lq, Le]``. Padding targets (``-1``) see the user token."""
        t, k = target[:, :, None], enc_item[:, None, :]
        seen = (k >= 0) & (k < t) & (k >= t - self.params.max_history_items)
        return self.cross_rel(target, enc_item, (k == USER_ITEM) | seen)

    def memory_bias(self, enc_item: torch.Tensor) -> torch.Tensor:
        """Inference cross-attention bias ``[B, h, 1, Le]``: the target follows the last history item."""
        return self.cross_bias(enc_item, enc_item.max(dim=1, keepdim=True).values + 1)

    @staticmethod
    def decoder_mask(dec_target: torch.Tensor) -> torch.Tensor:
        """Causal within each target's segment: bool ``[B, 1, Ld, Ld]`` (padding attends padding)."""
        ld = dec_target.shape[1]
        causal = torch.ones(ld, ld, dtype=torch.bool, device=dec_target.device).tril()
        return ((dec_target[:, :, None] == dec_target[:, None, :]) & causal).unsqueeze(1)

    # --------------------------------------------------------------------------------- forward
    def encode(self, enc_tokens: torch.Tensor, enc_item: torch.Tensor) -> torch.Tensor:
        """``[B, Le]`` tokens and item indices -> memory ``[B, Le, d_model]``."""
        x = self.embed_drop(self.embed(enc_tokens))
        bias = self.encoder_bias(enc_item)
        for layer in self.encoder_layers:
            x = layer(x, bias)
        return self.encoder_norm(x)

    def memory_kv(self, memory: torch.Tensor) -> List[KV]:
        """Cross-attention keys/values of ``memory [B, Le, d]`` for every decoder layer (computed once)."""
        return [layer.cross_attn.keys_values(memory) for layer in self.decoder_layers]

    def decode(self, batch: SIDBatch, memory: torch.Tensor) -> torch.Tensor:
        """Teacher-forced decoder states ``[B, Ld, d_model]`` for ``batch.dec_tokens``."""
        x = self.embed_drop(self.embed(batch.dec_tokens))
        self_mask = self.decoder_mask(batch.dec_target)
        cross_mask = self.cross_bias(batch.enc_item, batch.dec_target)
        for layer, kv in zip(self.decoder_layers, self.memory_kv(memory)):
            x, _ = layer(x, kv, cross_mask, self_mask=self_mask)
        return self.decoder_norm(x)

    # ---------------------------------------------------------------------------- output layer
    @property
    def output_offset(self) -> int:
        """Token id of :meth:`output_logits`' first column (``N_SPECIAL`` for ``sid_codes``, 0 for ``full``)."""
        return N_SPECIAL if self.params.output_vocab == "sid_codes" else 0

    def output_logits(self, states: torch.Tensor) -> torch.Tensor:
        """Logits of the tokens the decoder can emit, ``[..., n_out]``: column ``j`` is token
        ``output_offset + j``. ``sid_codes``: the SID code tokens only (ids ``N_SPECIAL ..
        user_offset - 1``; the head's weight rows of the other tokens are never multiplied);
        ``full``: every token."""
        if self.params.output_vocab == "full":
            return self.head(states)
        return F.linear(states, self.head.weight[N_SPECIAL : self.vocab.user_offset])

    def logits(self, states: torch.Tensor) -> torch.Tensor:
        """Full-vocabulary logits ``[..., vocab_size]`` (``-inf`` for tokens outside the output vocabulary)."""
        out = self.output_logits(states)
        if self.params.output_vocab == "full":
            return out
        return F.pad(out, (N_SPECIAL, self.vocab.vocab_size - self.vocab.user_offset), value=float("-inf"))

    def forward(self, batch: SIDBatch) -> torch.Tensor:
        """Logits ``[B, Ld, vocab_size]`` of every decoder position."""
        return self.logits(self.decode(batch, self.encode(batch.enc_tokens, batch.enc_item)))

    def loss(self, batch: SIDBatch, label_smoothing: float = 0.0) -> torch.Tensor:
        """Mean cross-entropy over every labelled decoder token of the batch (output layer only on those;
        over the output vocabulary, so label smoothing spreads over the SID codes with ``sid_codes``)."""
        states = self.decode(batch, self.encode(batch.enc_tokens, batch.enc_item))
        keep = batch.dec_labels != IGNORE_LABEL
        logits = self.output_logits(states[keep])
        return F.cross_entropy(logits.float(), batch.dec_labels[keep] - self.output_offset, label_smoothing=label_smoothing)

    def decode_step(
        self,
        tokens: torch.Tensor,
        memory_kv: List[KV],
        memory_mask: torch.Tensor,
        cache: Optional[List[KV]],
    ) -> Tuple[torch.Tensor, List[KV]]:
        """One incremental decoder step for ``W`` beams per user.

        Args:
            tokens: int64 ``[B, W]``, the newest token of every beam (``BOS`` at step 0).
            memory_kv: from :meth:`memory_kv`, ``[B, h, Le, dh]`` per layer (shared by all beams).
            memory_mask: float ``[B, h, 1, Le]`` cross-attention bias from :meth:`memory_bias`.
            cache: per layer self-attention ``(k, v)`` ``[B*W, h, step, dh]`` of the beams' earlier
                tokens (already reordered to the beams' parents), or ``None`` at step 0.

        Returns:
            ``(logits [B, W, vocab_size], cache)`` with the new cache ``[B*W, h, step+1, dh]``.
        """
        b, w = tokens.shape
        x = self.embed(tokens)
        if cache is None:
            cache = [
                (x.new_zeros(b * w, self.params.n_heads, 0, self.params.d_head),) * 2 for _ in self.decoder_layers
            ]
        new_cache = []
        for layer, kv, past in zip(self.decoder_layers, memory_kv, cache):
            x, kv_self = layer(x, kv, memory_mask, cache=past)
            new_cache.append(kv_self)
        return self.logits(self.decoder_norm(x)), new_cache

    # -------------------------------------------------------------------------------- artifact
    def artifact_config(self) -> Dict[str, Any]:
        config = {"params": self.params.model_dump(), "vocab": self.vocab.to_dict()}
        if self.level_tags is not None:
            config["level_tags"] = self.level_tags.to_dict()
        return config

    def artifact_tensors(self) -> Dict[str, torch.Tensor]:
        tensors = dict(self.state_dict())
        if "head.weight" in tensors and self.params.tie_embeddings:  # stored once; the tie is rebuilt on load
            tensors.pop("head.weight")
        return tensors

    @classmethod
    def from_artifact(cls, config: Dict[str, Any], tensors: Dict[str, torch.Tensor]) -> "GenerativeRecommender":
        params = RecommenderParams(**{"output_vocab": "full", **config["params"]})  # saved before output_vocab existed: full
        level_tags = LevelTags.from_dict(config["level_tags"]) if config.get("level_tags") else None
        tag_table = tensors.get("embed.tag_table") if params.embedding == "hierarchy" else None
        has_tag = tensors.get("embed.has_tag") if params.embedding == "hierarchy" else None
        model = cls(params, SIDVocab.from_dict(config["vocab"]), tag_table, has_tag, level_tags)
        tensors = dict(tensors)
        if params.tie_embeddings and params.embedding == "standard":
            tensors["head.weight"] = tensors["embed.tokens.weight"]
        model.load_state_dict(tensors, strict=True)
        return model.eval()
