"""Reinforcement stage after supervised training: GRPO with gated quality rewards (DeepInterestGR, Sec. III-E).

Per query (a user's training history without its last item; the target is that last training
item, so validation and test items stay unseen) the current policy samples a group of ``G`` SIDs.
Sampling is *trie-constrained*: at every step the codes with no child under the sampled prefix are
masked before the softmax, so every sample is a catalogue item. The policy whose log-probabilities
enter the objective is that masked distribution (temperature 1).

Rewards (Eqs. 11-14; the equations' symbols are not in our copy of the paper, so the forms below
are our reading of the text, with weights as config):

* exact match ``R_exact = 1[item(y) = target]`` (Eq. 11);
* SID-format credit ``R_format = w_valid * 1[y in V] + w_prefix * LCP(y, y*) / L`` (Eq. 12, "partial
  credit when a candidate is syntactically valid or shares a correct prefix"). Under constrained
  sampling ``1[y in V]`` is always 1, a constant that group normalisation removes; it is kept so the
  reward matches the paper for unconstrained samples;
* quality bonus gated by exact decoding ``R_q = 1[item(y) = target] * q(item)`` (Eq. 13), total
  ``R = R_exact + R_format + lambda * R_q`` (Eq. 14).

Reward variants (Table VI): ``standard`` (exact + format), ``prefix`` (standard plus a dense
prefix-match term ``w_prefix_match * LCP / L``), ``uniform_bonus`` (``q = 1`` for every item: the
paper notes it collapses to standard), ``random_labels`` (``q`` a seeded Bernoulli(0.5) label per
item), ``qarm`` (``q`` = the item's quality score in [0, 1], e.g. the ``item_quality_scores`` asset;
the variant refuses to run without scores).

Advantages are group-normalised (Eq. 15): ``A_i = (r_i - mean(r)) / (std(r) + eps)`` (population
std; ``eps`` keeps groups with identical rewards at zero advantage). Objective (Eq. 16, GRPO as in
DeepSeekMath): per token ``-min(rho * A, clip(rho, 1 - eps_clip, 1 + eps_clip) * A) + beta * KL``
with ``rho = pi / pi_old`` (``updates_per_batch`` gradient steps per sampled batch; with one, rho = 1
and the clipped term is the plain policy gradient) and the unbiased KL estimator
``pi_ref / pi - log(pi_ref / pi) - 1`` against the frozen supervised model; averaged over the ``D``
tokens, the group and the batch. Dropout is off during RL (policy and reference are compared on
the same deterministic network).

Model selection: the supervised model is validated as "epoch 0"; after every RL epoch the policy is
validated with the usual beam search (Recall@10, ties NDCG@10) and the best checkpoint is kept, so
RL that hurts validation is rolled back (and reported per epoch).
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass
from typing import Any, Dict, List, Literal, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field

from semid_pipeline.core.metrics import ndcg_at_k, recall_at_k, sample_users
from semid_pipeline.core.progress import ProgressFn
from semid_pipeline.core.recommender.beam import recommend
from semid_pipeline.core.recommender.data import build_inference_rows
from semid_pipeline.core.recommender.model import GenerativeRecommender
from semid_pipeline.core.recommender.prepare import EVAL_K, SELECT_ON
from semid_pipeline.core.recommender.trie import SIDTrie
from semid_pipeline.core.recommender.vocab import BOS
from semid_pipeline.core.training import OptimParams, autocast, fit, start_run

RewardVariant = Literal["standard", "prefix", "uniform_bonus", "random_labels", "qarm"]


class GRPOParams(OptimParams):
    """GRPO stage settings; defaults follow DeepInterestGR Sec. IV (2 epochs, KL 0.001) where given.
    Validated every epoch by default; ``patience`` None never stops early (a worse policy is rolled back)."""

    group_size: int = Field(16, ge=2, description="SIDs sampled per user history (G).")
    batch_size: int = Field(64, ge=1, description="User histories per GRPO step (each with G samples).")
    lr: float = Field(1e-4, gt=0, description="AdamW learning rate of the RL stage (constant by default).")
    lr_schedule: Literal["inverse_sqrt", "cosine", "constant"] = Field("constant", description="As OptimParams.lr_schedule.")
    warmup_steps: int = Field(0, ge=0, description="Linear warmup steps.")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay (none by default).")
    patience: Optional[int] = Field(None, ge=1, description="Stop after this many validations without improvement (None: never).")
    epochs: int = Field(2, ge=1, description="Passes over the RL queries (DeepInterestGR: 2).")
    kl_beta: float = Field(0.001, ge=0, description="Weight of the KL penalty to the supervised reference policy.")
    clip_eps: float = Field(0.2, ge=0, description="PPO clip range of the probability ratio.")
    updates_per_batch: int = Field(1, ge=1, description="Gradient steps per sampled batch (>1 makes the ratio/clip active).")
    reward: RewardVariant = Field("standard", description="Reward variant (DeepInterestGR Table VI).")
    w_exact: float = Field(1.0, ge=0, description="Weight of the exact-match reward.")
    w_valid: float = Field(0.1, ge=0, description="SID-format credit for a valid SID (constant under constrained sampling).")
    w_prefix: float = Field(0.1, ge=0, description="SID-format credit per matching prefix level: w_prefix * LCP / L.")
    w_prefix_match: float = Field(0.5, ge=0, description="'prefix' variant: extra dense credit w_prefix_match * LCP / L.")
    quality_weight: float = Field(0.5, ge=0, description="lambda: weight of the exact-match-gated quality bonus.")
    adv_eps: float = Field(1e-4, gt=0, description="eps of the group normalisation (reward std + eps).")
    temperature: float = Field(1.0, gt=0, description="Sampling temperature of the group samples.")
    max_queries_per_epoch: Optional[int] = Field(None, ge=1, description="Seeded sample of users per epoch (None: all).")
    max_minutes: Optional[float] = Field(
        None, gt=0, description="Wall-clock budget; stops after a final validation (the older name of max_train_minutes; either works)."
    )
    eval_max_users: Optional[int] = Field(None, ge=1, description="Validate on a fixed seeded sample of users (None: all).")
    eval_beam_size: int = Field(20, ge=10, description="Beam size of the validation beam search.")
    eval_batch_size: int = Field(512, ge=1, description="Users per validation beam-search batch.")
    seed: int = Field(0, description="Seeds sampling, query order and random labels.")


# ------------------------------------------------------------------------------------- rewards
def item_quality(params: GRPOParams, n_items: int, quality_scores: Optional[np.ndarray]) -> Optional[np.ndarray]:
    """The per-item ``q`` of the variant (``None``: the variant has no quality bonus)."""
    if params.reward in ("standard", "prefix"):
        return None
    if params.reward == "uniform_bonus":
        return np.ones(n_items, dtype=np.float32)
    if params.reward == "random_labels":
        return np.random.default_rng(params.seed + 7919).integers(0, 2, n_items).astype(np.float32)
    if quality_scores is None:
        raise ValueError(
            "reward='qarm' needs per-item quality scores (the item_quality_scores asset: item_idx, quality_score); none were given"
        )
    q = np.asarray(quality_scores, dtype=np.float32)
    if q.shape != (n_items,):
        raise ValueError(f"quality_scores must have one score per item ({n_items}), got shape {q.shape}")
    if not np.isfinite(q).all() or q.min() < 0 or q.max() > 1:
        raise ValueError("quality_scores must be finite and lie in [0, 1]")
    return q


def compute_rewards(
    sampled_sids: torch.Tensor,
    sampled_items: torch.Tensor,
    target_sids: torch.Tensor,
    target_items: torch.Tensor,
    params: GRPOParams,
    quality: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """Rewards ``[B, G]`` of sampled SIDs ``[B, G, D]`` (``sampled_items`` ``[B, G]``, ``-1`` = invalid SID)
    against targets (``target_sids [B, D]``, ``target_items [B]``); ``quality [N]`` from :func:`item_quality`."""
    depth = sampled_sids.shape[-1]
    valid = sampled_items >= 0
    exact = (sampled_items == target_items[:, None]) & valid
    same = (sampled_sids == target_sids[:, None, :]).long()
    lcp = same.cumprod(dim=-1).sum(dim=-1).float()  # longest common prefix length
    reward = params.w_exact * exact.float() + params.w_valid * valid.float() + params.w_prefix * lcp / depth
    if params.reward == "prefix":
        reward = reward + params.w_prefix_match * lcp / depth
    if quality is not None:
        q = quality[sampled_items.clamp(min=0)]
        reward = reward + params.quality_weight * exact.float() * q  # gated: only an exact target decode earns it
    return reward


def group_advantages(rewards: torch.Tensor, eps: float) -> torch.Tensor:
    """``(r - mean_G r) / (std_G r + eps)`` over the last (group) dimension."""
    mean = rewards.mean(dim=-1, keepdim=True)
    std = rewards.std(dim=-1, unbiased=False, keepdim=True)
    return (rewards - mean) / (std + eps)


# ------------------------------------------------------------------------ sampling and scoring
@dataclass
class Samples:
    """``codes [B, G, D]`` sampled codes, ``items [B, G]`` their items, ``allowed`` per level ``[B, G, K_l]``."""

    codes: torch.Tensor
    items: torch.Tensor
    allowed: List[torch.Tensor]


@torch.no_grad()
def sample_sids(
    model: GenerativeRecommender,
    enc_tokens: torch.Tensor,
    enc_item: torch.Tensor,
    trie: SIDTrie,
    group_size: int,
    temperature: float = 1.0,
    generator: Optional[torch.Generator] = None,
) -> Samples:
    """Samples ``group_size`` SIDs per user from the trie-masked policy; every sample is a catalogue item."""
    vocab = model.vocab
    n_users = enc_tokens.shape[0]
    device = enc_tokens.device
    memory_kv = model.memory_kv(model.encode(enc_tokens, enc_item))
    memory_mask = model.memory_bias(enc_item)
    tokens = torch.full((n_users, group_size), BOS, dtype=torch.long, device=device)
    nodes = torch.zeros(n_users, group_size, dtype=torch.long, device=device)
    cache = None
    codes, allowed = [], []
    for level in range(vocab.n_levels):
        logits, cache = model.decode_step(tokens, memory_kv, memory_mask, cache)
        children = trie.child_table(level, nodes)  # [B, G, K]
        ok = children >= 0
        level_logits = logits[..., vocab.level_slice(level)].float() / temperature
        probs = F.softmax(level_logits.masked_fill(~ok, float("-inf")), dim=-1)
        code = torch.multinomial(probs.flatten(0, 1), 1, generator=generator).view(n_users, group_size)
        nodes = children.gather(-1, code.unsqueeze(-1)).squeeze(-1).long()
        codes.append(code)
        allowed.append(ok)
        tokens = code + vocab.level_offsets[level]
    items = trie.leaf_item[nodes.clamp(min=0)].masked_fill(nodes < 0, -1)
    return Samples(torch.stack(codes, dim=-1), items, allowed)


def sequence_log_probs(
    model: GenerativeRecommender, enc_tokens: torch.Tensor, enc_item: torch.Tensor, samples: Samples
) -> torch.Tensor:
    """Per-token log-probabilities ``[B, G, D]`` of ``samples`` under ``model``'s trie-masked policy (with grad)."""
    vocab = model.vocab
    n_users, group = samples.items.shape
    memory_kv = model.memory_kv(model.encode(enc_tokens, enc_item))
    memory_mask = model.memory_bias(enc_item)
    tokens = torch.full((n_users, group), BOS, dtype=torch.long, device=enc_tokens.device)
    cache = None
    out = []
    for level in range(vocab.n_levels):
        logits, cache = model.decode_step(tokens, memory_kv, memory_mask, cache)
        level_logits = logits[..., vocab.level_slice(level)].float().masked_fill(~samples.allowed[level], float("-inf"))
        log_probs = F.log_softmax(level_logits, dim=-1)
        code = samples.codes[..., level]
        out.append(log_probs.gather(-1, code.unsqueeze(-1)).squeeze(-1))
        tokens = code + vocab.level_offsets[level]
    return torch.stack(out, dim=-1)


def grpo_loss(
    log_probs: torch.Tensor,
    old_log_probs: torch.Tensor,
    ref_log_probs: torch.Tensor,
    advantages: torch.Tensor,
    clip_eps: float,
    kl_beta: float,
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """GRPO objective (module docstring). Token tensors ``[B, G, D]``, advantages ``[B, G]``.
    Returns ``(loss, policy term, kl term)``, each a scalar mean over tokens, group and batch."""
    ratio = torch.exp(log_probs - old_log_probs)
    adv = advantages.unsqueeze(-1)
    policy = -torch.minimum(ratio * adv, ratio.clamp(1 - clip_eps, 1 + clip_eps) * adv)
    log_ref_ratio = ref_log_probs - log_probs
    kl = torch.exp(log_ref_ratio) - log_ref_ratio - 1
    policy_term, kl_term = policy.mean(), kl.mean()
    return policy_term + kl_beta * kl_term, policy_term, kl_term


# ----------------------------------------------------------------------------------- training
@dataclass
class GRPOResult:
    """``model``: best policy by validation (epoch 0 = the supervised model). ``history``: one dict per
    epoch (``epoch, reward, exact_rate, kl, loss, train_seconds, seconds, queries, queries_per_s, valid_recall@10,
    valid_ndcg@10``; epoch 0 has the validation and ``seconds`` only)."""

    model: GenerativeRecommender
    history: List[Dict[str, Any]]
    best_epoch: int


def train_grpo(
    model: GenerativeRecommender,
    sids: np.ndarray,
    train_histories: Sequence[np.ndarray],
    valid_targets: np.ndarray,
    user_ids: np.ndarray,
    params: GRPOParams,
    quality_scores: Optional[np.ndarray] = None,
    progress: Optional[ProgressFn] = None,
) -> GRPOResult:
    """Fine-tunes a supervised ``model`` (a copy; the input is not modified) with GRPO.

    Args:
        model: the supervised recommender (also the frozen KL reference).
        sids: int ``[N, D]`` catalogue SIDs (row = item index).
        train_histories: per user, the chronological training items; the query is all but the
            last one, the target the last one (users with fewer than 2 items are skipped).
        valid_targets: int ``[U]`` validation item per user (history = the full training items).
        user_ids: int ``[U]`` user indices.
        params: :class:`GRPOParams`.
        quality_scores: float ``[N]`` in [0, 1] per item, required by the ``qarm`` variant.
    """
    p = params
    device = start_run(p)
    sids = np.asarray(sids, dtype=np.int64)
    n_items = sids.shape[0]
    q = item_quality(p, n_items, quality_scores)

    policy = copy.deepcopy(model).to(device).eval()
    reference = copy.deepcopy(model).to(device).eval()
    for t in reference.parameters():
        t.requires_grad_(False)
    vocab = policy.vocab
    trie = SIDTrie.from_sids(sids, vocab.level_sizes).to(device)
    quality = torch.from_numpy(q).to(device) if q is not None else None
    item_tokens = vocab.item_tokens(sids)
    user_ids = np.asarray(user_ids, dtype=np.int64)
    n_users = len(train_histories)

    queries = np.asarray([u for u in range(n_users) if len(train_histories[u]) >= 2], dtype=np.int64)
    if len(queries) == 0:
        raise ValueError("no RL queries: every user has fewer than two training items")
    query_hist = [np.asarray(train_histories[u][:-1], dtype=np.int64) for u in queries]
    query_target = np.asarray([train_histories[u][-1] for u in queries], dtype=np.int64)
    rows = build_inference_rows(query_hist, vocab.user_tokens(user_ids[queries]), item_tokens, policy.params.max_history_items)

    eval_users = sample_users(n_users, p.eval_max_users, p.seed)
    eval_hist = [np.asarray(train_histories[u], dtype=np.int64) for u in eval_users]
    eval_targets = np.asarray(valid_targets, dtype=np.int64)[eval_users]

    def validate(m: GenerativeRecommender) -> Dict[str, float]:
        ranked, _ = recommend(m, trie, eval_hist, user_ids[eval_users], p.eval_beam_size, EVAL_K, p.eval_batch_size)
        return {"recall@10": float(recall_at_k(ranked, eval_targets, EVAL_K).mean()), "ndcg@10": float(ndcg_at_k(ranked, eval_targets, EVAL_K).mean())}

    generator = torch.Generator(device=device).manual_seed(p.seed)
    rng = np.random.default_rng(p.seed)
    tq_sids = torch.from_numpy(sids).to(device)
    sums: Dict[str, float] = {}

    def epoch_batches(epoch: int):
        """Samples a group per query with the current policy, then yields it ``updates_per_batch`` times."""
        order = rng.permutation(len(queries))
        if p.max_queries_per_epoch is not None:
            order = order[: p.max_queries_per_epoch]
        sums.update(reward=0.0, exact_rate=0.0, kl=0.0, loss=0.0, steps=0, queries=0, start=time.monotonic())
        for lo in range(0, len(order), p.batch_size):
            idx = order[lo : lo + p.batch_size]
            batch = rows.batch(idx).to(device)
            target_items = torch.from_numpy(query_target[idx]).to(device)
            with torch.no_grad(), autocast(device, p.mixed_precision):
                samples = sample_sids(policy, batch.enc_tokens, batch.enc_item, trie, p.group_size, p.temperature, generator)
                rewards = compute_rewards(samples.codes, samples.items, tq_sids[target_items], target_items, p, quality)
                advantages = group_advantages(rewards, p.adv_eps)
                old = sequence_log_probs(policy, batch.enc_tokens, batch.enc_item, samples)
                ref = sequence_log_probs(reference, batch.enc_tokens, batch.enc_item, samples)
            stats = {"reward": float(rewards.mean()), "exact_rate": float((samples.items == target_items[:, None]).float().mean())}
            for update in range(p.updates_per_batch):
                yield batch, samples, old, ref, advantages, stats if update == p.updates_per_batch - 1 else None
        sums["end"] = time.monotonic()  # reached after the epoch's last update (not when the time budget cut it)

    def step(item) -> Tuple[torch.Tensor, int]:
        batch, samples, old, ref, advantages, stats = item
        log_probs = sequence_log_probs(policy, batch.enc_tokens, batch.enc_item, samples)
        loss, _, kl = grpo_loss(log_probs, old, ref, advantages, p.clip_eps, p.kl_beta)
        if stats is None:
            return loss, 0
        # the epoch's statistics count each sampled batch once, with its last update
        for k, v in {**stats, "kl": float(kl.detach()), "loss": float(loss.detach()), "steps": 1, "queries": len(batch.enc_tokens)}.items():
            sums[k] += v
        sums["end"] = time.monotonic()
        return loss, len(batch.enc_tokens)

    def end_epoch(epoch: int, record: Dict[str, Any]) -> None:
        n = max(sums["steps"], 1)
        record.update({k: sums[k] / n for k in ("reward", "exact_rate", "kl", "loss")})
        train_seconds = sums["end"] - sums["start"]
        record.update(train_seconds=train_seconds, queries=sums["queries"], queries_per_s=sums["queries"] / max(train_seconds, 1e-9))

    if progress is not None:
        progress(f"grpo: {len(queries):,} queries, group {p.group_size}, reward {p.reward} on {device}")
    budget = p.max_train_minutes if p.max_train_minutes is not None else p.max_minutes
    result = fit(
        policy,
        epoch_batches,
        step,
        p.model_copy(update={"max_train_minutes": budget}),
        validate=validate,
        select_on=SELECT_ON,
        progress=progress,
        name="grpo",
        on_epoch_end=end_epoch,
        train_mode=False,  # dropout off: policy and reference are the same deterministic network
        validate_first=True,  # epoch 0 = the supervised model
    )
    return GRPOResult(model=result.model, history=result.history, best_epoch=result.best_epoch)
