"""Query-to-SID generative retrieval (CAT-ID2 section 3.4 "Sequence Modeling", following TIGER/DSI).

The encoder reads the query's tokens, the decoder generates the product's SID, trained with the
token cross-entropy of eq. 9 (L_Seq = -sum_t log P(y_t | y_<t, q)) on every training (query, E/S
product) pair; at inference a trie-constrained beam search (beam 100) returns the top 100 products.

Reuse, not a second model: this is :class:`GenerativeRecommender` with
``encoder_mask='bidirectional'``. Its vocabulary (``SIDVocab``) has one token range per SID level
plus a "user" range; here that range holds the query tokens (``n_user_buckets`` = query vocabulary
size, token ``user_offset + compact id``, see ``data.QueryVocab``). Each query token is a history
"item" of its own (``enc_item`` = its position 0..n-1), so the relative item-distance bias acts as a
relative position bias over query tokens, and the target "item" index ``n`` lets cross-attention see
every token (``max_history_items`` = ``max_query_tokens``). Beam search is
``recommender.beam.constrained_beam_search`` unchanged.

Model selection (the paper does not say): ``valid_fraction`` of the training queries (seeded) are
held out, their pairs left out of training; after every ``eval_every_epochs`` epochs Recall@10 on
them (relevant = their products that still have training pairs) picks the checkpoint, with early
stopping after ``patience`` validations without improvement. ``valid_fraction = 0`` trains all
pairs for ``epochs``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Dict, List, Literal, Optional, Sequence, Tuple

import numpy as np
import torch
from pydantic import Field

from semid_pipeline.core.artifacts import Artifact, register_artifact
from semid_pipeline.core.progress import ProgressFn, Throttle
from semid_pipeline.core.recommender.beam import constrained_beam_search
from semid_pipeline.core.recommender.data import PAD_ITEM, SIDBatch
from semid_pipeline.core.recommender.model import GenerativeRecommender, RecommenderParams
from semid_pipeline.core.recommender.trie import SIDTrie
from semid_pipeline.core.recommender.vocab import BOS, PAD, SIDVocab
from semid_pipeline.core.retrieval.data import QueryVocab, RetrievalTask
from semid_pipeline.core.retrieval.metrics import recall_per_query
from semid_pipeline.core.training import OptimParams, fit, start_run


class GenerativeRetrieverParams(OptimParams):
    """Architecture, optimisation and decoding of the query-to-SID model."""

    d_model: int = Field(128, ge=1, description="Model width.")
    n_encoder_layers: int = Field(4, ge=1, description="Encoder blocks (CAT-ID2 uses T5-base; TIGER-size default for CPU).")
    n_decoder_layers: int = Field(4, ge=1, description="Decoder blocks.")
    n_heads: int = Field(6, ge=1, description="Attention heads.")
    d_head: int = Field(64, ge=1, description="Width of one head.")
    d_ff: int = Field(1024, ge=1, description="MLP hidden width.")
    dropout: float = Field(0.1, ge=0, lt=1, description="Dropout.")
    max_query_tokens: int = Field(32, ge=1, description="Query wordpieces kept (the rest is cut).")
    min_token_count: int = Field(1, ge=1, description="Wordpieces seen fewer times in training queries map to unknown.")
    epochs: int = Field(50, ge=1, description="Maximum passes over the training pairs.")
    batch_size: int = Field(256, ge=1, description="(query, product) pairs per batch.")
    warmup_steps: int = Field(200, ge=0, description="Linear warmup steps, then inverse-sqrt decay.")
    label_smoothing: float = Field(0.0, ge=0, lt=1, description="Label smoothing of the token cross-entropy.")
    valid_fraction: float = Field(0.1, ge=0, lt=1, description="Training queries held out for checkpoint selection (0: none).")
    patience: int = Field(5, ge=1, description="Validations without a better Recall@10 before stopping.")
    mixed_precision: Literal["auto", "bf16", "off"] = Field("off", description="As OptimParams.mixed_precision (float32 by default).")
    eval_beam_size: int = Field(20, ge=10, description="Beam size during validation.")
    beam_size: int = Field(100, ge=1, description="Beam size at retrieval (CAT-ID2: top 100).")
    top_k: int = Field(100, ge=1, description="Products returned per query.")
    inference_batch_size: int = Field(256, ge=1, description="Queries per beam-search batch.")
    seed: int = Field(0, description="Seeds initialisation, dropout, batch order and the validation split.")


@register_artifact
class GenerativeRetriever(Artifact):
    """The trained model with its query vocabulary and the catalog SIDs it decodes into."""

    KIND = "query_sid_retriever"

    def __init__(self, model: GenerativeRecommender, vocab: QueryVocab, sids: np.ndarray, params: GenerativeRetrieverParams):
        self.model, self.query_vocab, self.params = model, vocab, params
        self.sids = np.asarray(sids, dtype=np.int64)

    def artifact_config(self) -> Dict[str, Any]:
        return {"params": self.params.model_dump(), "model_params": self.model.params.model_dump(), "vocab": self.model.vocab.to_dict()}

    def artifact_tensors(self) -> Dict[str, torch.Tensor]:
        tensors = {f"model.{k}": v for k, v in self.model.artifact_tensors().items()}
        tensors["query_wordpiece"] = torch.from_numpy(self.query_vocab.wordpiece.copy())
        tensors["sids"] = torch.from_numpy(self.sids.copy())
        return tensors

    @classmethod
    def from_artifact(cls, config: Dict[str, Any], tensors: Dict[str, torch.Tensor]) -> "GenerativeRetriever":
        model_tensors = {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}
        model = GenerativeRecommender.from_artifact({"params": config["model_params"], "vocab": config["vocab"]}, model_tensors)
        return cls(model, QueryVocab(tensors["query_wordpiece"].numpy()), tensors["sids"].numpy(), GenerativeRetrieverParams(**config["params"]))

    def retrieve(self, texts: Sequence[str], beam_size: Optional[int] = None, top_k: Optional[int] = None,
                 batch_size: Optional[int] = None, progress: Optional[ProgressFn] = None) -> Tuple[np.ndarray, np.ndarray]:
        """Top-k catalog items (rows of ``sids``) per query text, by trie-constrained beam search."""
        p = self.params
        tokens = self.query_vocab.encode(texts, p.max_query_tokens)
        return retrieve_tokens(self.model, SIDTrie.from_sids(self.sids, self.model.vocab.level_sizes), tokens,
                               beam_size or p.beam_size, top_k or p.top_k, batch_size or p.inference_batch_size, progress)


def _encoder_batch(tokens: Sequence[np.ndarray], vocab: SIDVocab) -> Tuple[torch.Tensor, torch.Tensor]:
    """Padded encoder tokens and positions ``[B, L]`` (``PAD`` / ``PAD_ITEM`` after each query)."""
    width = max(len(t) for t in tokens)
    enc = np.full((len(tokens), width), PAD, dtype=np.int64)
    pos = np.full((len(tokens), width), PAD_ITEM, dtype=np.int64)
    for i, t in enumerate(tokens):
        enc[i, : len(t)] = t + vocab.user_offset
        pos[i, : len(t)] = np.arange(len(t))
    return torch.from_numpy(enc), torch.from_numpy(pos)


def training_batch(tokens: Sequence[np.ndarray], sid_tokens: np.ndarray, vocab: SIDVocab) -> SIDBatch:
    """One batch of (query tokens, target SID tokens ``[B, D]``): decoder ``[BOS, sid[:-1]]`` -> ``sid``."""
    enc, pos = _encoder_batch(tokens, vocab)
    b, d = sid_tokens.shape
    dec = np.concatenate([np.full((b, 1), BOS, dtype=np.int64), sid_tokens[:, :-1]], axis=1)
    target = np.repeat(np.array([len(t) for t in tokens], dtype=np.int64)[:, None], d, axis=1)
    return SIDBatch(enc, pos, torch.from_numpy(dec), torch.from_numpy(sid_tokens.astype(np.int64)), torch.from_numpy(target))


@torch.no_grad()
def retrieve_tokens(model: GenerativeRecommender, trie: SIDTrie, tokens: Sequence[np.ndarray], beam_size: int, top_k: int,
                    batch_size: int = 256, progress: Optional[ProgressFn] = None) -> Tuple[np.ndarray, np.ndarray]:
    """Beam search for tokenised queries; ``(items int64 [Q, top_k], scores [Q, top_k])``, ``-1`` / ``-inf`` padded."""
    model.eval()
    device = model.device
    trie = trie.to(device)
    items = np.full((len(tokens), top_k), -1, dtype=np.int64)
    scores = np.full((len(tokens), top_k), -np.inf, dtype=np.float32)
    order = np.argsort([len(t) for t in tokens], kind="stable")
    report = Throttle(progress)
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        enc, pos = _encoder_batch([tokens[i] for i in idx], model.vocab)
        top, val = constrained_beam_search(model, SIDBatch(enc.to(device), pos.to(device)), trie, max(beam_size, top_k), top_k)
        items[idx], scores[idx] = top.cpu().numpy(), val.cpu().numpy()
        report(f"generative retrieval: {start + len(idx):,}/{len(tokens):,} queries")
    return items, scores


@dataclass
class RetrieverTrainResult:
    retriever: GenerativeRetriever
    history: List[Dict[str, Any]]
    best_epoch: int


def _split_validation(task: RetrievalTask, fraction: float, seed: int):
    n_q = len(task.train_texts)
    n_valid = int(round(fraction * n_q))
    if n_valid == 0 or n_valid >= n_q:
        return np.ones(len(task.train_query), dtype=bool), [], []
    valid_q = np.random.default_rng([seed, 0x7A]).choice(n_q, n_valid, replace=False)
    in_valid = np.isin(task.train_query, valid_q)
    trained = set(task.train_item[~in_valid].tolist())
    texts, relevant = [], []
    for q in np.sort(valid_q):
        rel = np.array(sorted(set(task.train_item[task.train_query == q].tolist()) & trained), dtype=np.int64)
        if len(rel):
            texts.append(task.train_texts[q])
            relevant.append(rel)
    return ~in_valid, texts, relevant


def train_generative_retriever(task: RetrievalTask, sids: np.ndarray, params: GenerativeRetrieverParams,
                               progress: Optional[ProgressFn] = None) -> RetrieverTrainResult:
    """Trains the query-to-SID model on ``task``'s training pairs; ``sids`` int ``[N, D]`` unique per catalog item."""
    p = params
    device = start_run(p)

    keep, valid_texts, valid_relevant = _split_validation(task, p.valid_fraction, p.seed)
    qvocab = QueryVocab.fit([task.train_texts[q] for q in np.unique(task.train_query[keep])], p.max_query_tokens, p.min_token_count)
    query_tokens = qvocab.encode(task.train_texts, p.max_query_tokens)
    valid_tokens = qvocab.encode(valid_texts, p.max_query_tokens) if valid_texts else []
    vocab = SIDVocab.from_sids(sids, qvocab.size)
    mp = RecommenderParams(
        d_model=p.d_model, n_encoder_layers=p.n_encoder_layers, n_decoder_layers=p.n_decoder_layers, n_heads=p.n_heads,
        d_head=p.d_head, d_ff=p.d_ff, dropout=p.dropout, max_history_items=p.max_query_tokens,
        n_user_buckets=qvocab.size, encoder_mask="bidirectional",
    )
    model = GenerativeRecommender(mp, vocab).to(device)
    trie = SIDTrie.from_sids(sids, vocab.level_sizes).to(device)
    item_tokens = vocab.item_tokens(sids)
    pair_query, pair_item = task.train_query[keep], task.train_item[keep]
    rng = np.random.default_rng([p.seed, 0x7B])
    if progress is not None:
        progress(f"generative retriever: {sum(x.numel() for x in model.parameters()):,} parameters, {len(pair_query):,} pairs, "
                 f"{qvocab.size:,} query tokens, {len(valid_texts)} validation queries on {device}")
    epoch_loss = {"sum": 0.0, "batches": 0}  # float64 sum: the checkpoint tie-break compares epoch losses

    def epoch_batches(epoch: int):
        epoch_loss.update(sum=0.0, batches=0)
        perm = rng.permutation(len(pair_query))
        return (perm[start : start + p.batch_size] for start in range(0, len(perm), p.batch_size))

    def step(idx: np.ndarray) -> Tuple[torch.Tensor, int]:
        batch = training_batch([query_tokens[q] for q in pair_query[idx]], item_tokens[pair_item[idx]], vocab).to(device)
        loss = model.loss(batch, p.label_smoothing)
        epoch_loss["sum"] += float(loss.detach())
        epoch_loss["batches"] += 1
        return loss, len(idx)

    def validate(m: GenerativeRecommender) -> Dict[str, float]:
        ranked, _ = retrieve_tokens(m, trie, valid_tokens, p.eval_beam_size, 10, p.inference_batch_size)
        # ties on Recall@10 go to the lower training loss of the epoch
        return {"recall@10": float(recall_per_query(ranked, valid_relevant, 10).mean()),
                "neg_train_loss": -epoch_loss["sum"] / max(epoch_loss["batches"], 1)}

    def end_epoch(epoch: int, record: Dict[str, Any]) -> None:
        record["loss"] = epoch_loss["sum"] / max(epoch_loss["batches"], 1)
        record["pairs_per_s"] = record["samples_per_s"]

    result = fit(
        model, epoch_batches, step, p, validate=validate if valid_texts else None, select_on=("recall@10", "neg_train_loss"),
        steps_per_epoch=math.ceil(len(pair_query) / p.batch_size), progress=progress, name="generative retriever",
        on_epoch_end=end_epoch,
    )
    best = result.best_epoch or len(result.history)
    return RetrieverTrainResult(GenerativeRetriever(result.model.eval(), qvocab, sids, p.model_copy()), result.history, best)
