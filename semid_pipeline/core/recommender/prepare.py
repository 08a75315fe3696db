"""What the generative recommender's trainer (``train.py``) builds on: the training settings, the
initial model, the training rows / batch sampler / validation users, and the validation itself."""

from dataclasses import dataclass
from typing import Any, Dict, List, Literal, Optional, Sequence, Tuple

import numpy as np
import torch
from pydantic import Field

from semid_pipeline.core.metrics import ndcg_at_k, recall_at_k, sample_users
from semid_pipeline.core.progress import ProgressFn
from semid_pipeline.core.recommender.beam import recommend
from semid_pipeline.core.recommender.data import LengthBucketSampler, PackedRows, build_training_rows
from semid_pipeline.core.recommender.hierarchy import HierarchyInputs, tag_embedding_table
from semid_pipeline.core.recommender.model import GenerativeRecommender, RecommenderParams
from semid_pipeline.core.recommender.trie import SIDTrie
from semid_pipeline.core.recommender.vocab import SIDVocab
from semid_pipeline.core.training import OptimParams

EVAL_K = 10
SELECT_ON = ("recall@10", "ndcg@10")  # checkpoint selection: validation Recall@10, ties NDCG@10


class TrainParams(OptimParams):
    """Optimisation and model-selection settings of the generative recommender (``OptimParams`` plus
    the training formulation and the validation beam search)."""

    mode: Literal["per_user", "per_prefix"] = Field(
        "per_user",
        description="per_user: one pass per user trains all its next-item targets (needs encoder_mask=causal_items); "
        "per_prefix: one example per target (classic TIGER; required for the bidirectional encoder).",
    )
    batch_size: int = Field(256, ge=1, description="Rows per batch: users (per_user) or (user, target) examples (per_prefix).")
    label_smoothing: float = Field(0.0, ge=0, lt=1, description="Label smoothing of the token cross-entropy.")
    patience: int = Field(10, ge=1, description="Stop after this many validations without a better Recall@10.")
    eval_beam_size: int = Field(20, ge=10, description="Beam size of the validation beam search (>= 10, the evaluated list length).")
    eval_batch_size: int = Field(512, ge=1, description="Users per validation beam-search batch.")
    eval_max_users: Optional[int] = Field(
        None, ge=1, description="Validate on a fixed seeded sample of this many users (None: all users); speeds up CPU runs."
    )


@dataclass
class TrainResult:
    """``model``: best checkpoint by validation Recall@10 (eval mode, on the training device).
    ``history``: one dict per epoch: ``epoch, loss, samples_per_s, seconds, lr``, plus
    ``valid_recall@10`` / ``valid_ndcg@10`` on epochs that ran a validation (absent otherwise).
    ``best_epoch``: the epoch of the returned checkpoint."""

    model: GenerativeRecommender
    history: List[Dict[str, Any]]
    best_epoch: int


def build_model(mp: RecommenderParams, vocab: SIDVocab, hierarchy: Optional[HierarchyInputs] = None) -> GenerativeRecommender:
    """A freshly initialised recommender; the hierarchy embedding's tag table is encoded here."""
    if hierarchy is None:
        return GenerativeRecommender(mp, vocab)
    if hierarchy.level_tags.n_levels != vocab.n_levels or any(
        len(t) != k for t, k in zip(hierarchy.level_tags.texts, vocab.level_sizes)
    ):
        raise ValueError("hierarchy.level_tags does not match the SID vocabulary's level sizes")
    if mp.embedding != "hierarchy":
        return GenerativeRecommender(mp, vocab, level_tags=hierarchy.level_tags)
    table, has_tag = tag_embedding_table(hierarchy.level_tags, vocab.level_offsets, vocab.vocab_size, hierarchy.encode)
    return GenerativeRecommender(mp, vocab, torch.from_numpy(table), torch.from_numpy(has_tag), hierarchy.level_tags)


@dataclass
class TrainingData:
    """What the training loop derives from its inputs: every data-parallel rank derives the same rows,
    batches and validation users."""

    vocab: SIDVocab
    trie: SIDTrie  # on the training device
    user_ids: np.ndarray
    rows: PackedRows
    sampler: LengthBucketSampler
    eval_users: np.ndarray
    eval_histories: List[np.ndarray]
    eval_targets: np.ndarray


def prepare_training_data(
    sids: np.ndarray,
    train_histories: Sequence[np.ndarray],
    valid_targets: np.ndarray,
    valid_histories: Sequence[np.ndarray],
    user_ids: np.ndarray,
    mp: RecommenderParams,
    tp: TrainParams,
    device: torch.device,
) -> TrainingData:
    """Vocabulary, trie, packed training rows, the seeded batch sampler and the validation users."""
    n_users = len(train_histories)
    vocab = SIDVocab.from_sids(sids, mp.n_user_buckets)
    item_tokens = vocab.item_tokens(sids)
    trie = SIDTrie.from_sids(sids, vocab.level_sizes).to(device)
    user_ids = np.asarray(user_ids, dtype=np.int64)
    rows = build_training_rows(
        train_histories,
        vocab.user_tokens(user_ids),
        item_tokens,
        mp.max_history_items,
        targets_per_row=mp.max_history_items if tp.mode == "per_user" else 1,
    )
    if rows.n_rows == 0:
        raise ValueError("no training targets: every user has fewer than two training items")
    sampler = LengthBucketSampler(rows.lengths, tp.batch_size, seed=tp.seed)

    eval_users = sample_users(n_users, tp.eval_max_users, tp.seed)
    eval_histories = [valid_histories[u] for u in eval_users]
    eval_targets = np.asarray(valid_targets, dtype=np.int64)[eval_users]
    return TrainingData(vocab, trie, user_ids, rows, sampler, eval_users, eval_histories, eval_targets)


def validate(model: GenerativeRecommender, data: TrainingData, tp: TrainParams, progress: Optional[ProgressFn]) -> Tuple[float, float]:
    """Validation ``(Recall@10, NDCG@10)`` of ``model`` on ``data``'s validation users (constrained beam search)."""
    ranked, _ = recommend(
        model, data.trie, data.eval_histories, data.user_ids[data.eval_users], tp.eval_beam_size, EVAL_K, tp.eval_batch_size, progress
    )
    return float(recall_at_k(ranked, data.eval_targets, EVAL_K).mean()), float(ndcg_at_k(ranked, data.eval_targets, EVAL_K).mean())
