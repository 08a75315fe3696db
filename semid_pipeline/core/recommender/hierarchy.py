"""Hierarchy-aware semantic embeddings (HiD-VAE, Sec. 3.7) and the ``(level, code) -> tag`` map.

HiD-VAE maps every token of an item's semantic ID to "its corresponding tag text", encodes that
text with a pre-trained sentence encoder and concatenates the vector with a learnable ID embedding
and a level-type embedding. The paper leaves open how a code gets its tag when the code is not
supervised one-to-one by a tag, and how the concatenation reaches the model width. Our choices:

* **Tag of a code (majority rule).** The tag of code ``c`` at SID level ``l`` is the most frequent
  level-``l`` tag (``tag_path[l]``) among the items whose SID has ``c`` at level ``l`` (ties: the
  lexicographically smallest tag, so the map is deterministic). With a tag-supervised tokenizer
  (HiD-VAE's hierarchical supervision) a level-``l`` code is trained to predict the level-``l``
  tag, so the majority tag is the supervised one; with a plain RQ-VAE it is the best single
  description of the items sharing that code. The ``share`` of items carrying the majority tag
  is kept, so purity can be reported. The rule is per ``(level, code)``, not per SID prefix,
  because a token's embedding is one vector per token id.
* **Levels without tags.** SID levels beyond the tag depth (the appended de-duplication token)
  and codes that no item uses have no tag; they get one learned vector (initialised at zero) in
  place of the sentence embedding.
* **Width.** ``Linear(concat(ID emb [d_id], level-type emb [d_type], frozen tag emb [d_text])) ->
  d_model``. The sentence embeddings are frozen (a buffer saved with the model, so a reloaded
  model is exact and no encoder is needed at inference). With tied embeddings the output head
  scores the same projected vectors (see ``model.HierarchicalTokenEmbedding``).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence

import numpy as np


@dataclass
class LevelTags:
    """Tag text of every ``(level, code)`` of a SID vocabulary.

    Attributes:
        texts: per SID level ``l``, a list of ``level_sizes[l]`` entries: the tag text of code
            ``c`` or ``None`` (no tag: untagged level or unused code).
        share: per level, the fraction of the code's items that carry that tag (0 where ``None``).
    """

    texts: List[List[Optional[str]]]
    share: List[List[float]]

    @property
    def n_levels(self) -> int:
        return len(self.texts)

    def tag(self, level: int, code: int) -> Optional[str]:
        if level >= len(self.texts) or code < 0 or code >= len(self.texts[level]):
            return None
        return self.texts[level][code]

    def decode(self, sid: Sequence[int]) -> List[str]:
        """Tag path a SID decodes to (untagged levels are skipped), e.g. ``['Skincare', 'Face', 'Serums']``."""
        return [t for level, code in enumerate(sid) if (t := self.tag(level, int(code))) is not None]

    def to_dict(self) -> Dict[str, Any]:
        return {"texts": self.texts, "share": self.share}

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> "LevelTags":
        return cls([list(t) for t in d["texts"]], [[float(s) for s in level] for level in d["share"]])


def build_level_tags(sids: np.ndarray, tag_paths: Sequence[Sequence[str]], level_sizes: Sequence[int]) -> LevelTags:
    """Majority-tag map (see module docstring).

    Args:
        sids: int ``[N, D]`` SID of every item (row = item index).
        tag_paths: per item (same rows), its tag path root -> leaf (length ``L_tags``; may be
            shorter or empty for an item with no tags).
        level_sizes: codes per SID level (the recommender vocabulary's).
    """
    arr = np.asarray(sids, dtype=np.int64)
    if arr.ndim != 2 or arr.shape[1] != len(level_sizes):
        raise ValueError(f"sids must have shape (N, {len(level_sizes)}), got {arr.shape}")
    if len(tag_paths) != arr.shape[0]:
        raise ValueError(f"tag_paths has {len(tag_paths)} rows but sids has {arr.shape[0]}")
    texts: List[List[Optional[str]]] = []
    share: List[List[float]] = []
    for level, size in enumerate(level_sizes):
        counts: List[Counter] = [Counter() for _ in range(int(size))]
        for code, path in zip(arr[:, level], tag_paths):
            if path is not None and level < len(path) and path[level] is not None and str(path[level]).strip():
                counts[int(code)][str(path[level])] += 1
        level_texts: List[Optional[str]] = []
        level_share: List[float] = []
        for counter in counts:
            if not counter:
                level_texts.append(None)
                level_share.append(0.0)
                continue
            best = max(counter.values())
            tag = min(t for t, n in counter.items() if n == best)
            level_texts.append(tag)
            level_share.append(best / sum(counter.values()))
        texts.append(level_texts)
        share.append(level_share)
    return LevelTags(texts, share)


def tag_embedding_table(
    level_tags: LevelTags,
    level_offsets: Sequence[int],
    vocab_size: int,
    encode: Callable[[List[str]], np.ndarray],
) -> tuple[np.ndarray, np.ndarray]:
    """Sentence embedding of every token's tag: ``(table float32 [vocab_size, d_text], has_tag bool [vocab_size])``.

    ``encode`` maps a list of texts to ``[n, d_text]`` (e.g. ``TextEncoder(...).encode``); each
    distinct tag text is encoded once. Rows of tokens without a tag are zero.
    """
    distinct = sorted({t for level in level_tags.texts for t in level if t is not None})
    if distinct:
        vectors = np.asarray(encode(distinct), dtype=np.float32)
    else:
        probe = np.asarray(encode(["tag"]), dtype=np.float32)
        vectors = np.zeros((0, probe.shape[1]), dtype=np.float32)
    if vectors.ndim != 2 or vectors.shape[0] != len(distinct):
        raise ValueError(f"encode returned shape {vectors.shape} for {len(distinct)} texts")
    row = {t: i for i, t in enumerate(distinct)}
    table = np.zeros((vocab_size, vectors.shape[1]), dtype=np.float32)
    has_tag = np.zeros(vocab_size, dtype=bool)
    for level, texts in enumerate(level_tags.texts):
        for code, text in enumerate(texts):
            if text is not None:
                table[level_offsets[level] + code] = vectors[row[text]]
                has_tag[level_offsets[level] + code] = True
    return table, has_tag


@dataclass
class HierarchyInputs:
    """What a hierarchy-aware recommender needs beyond the SIDs: the tag map and its encoder."""

    level_tags: LevelTags
    encode: Callable[[List[str]], np.ndarray]
