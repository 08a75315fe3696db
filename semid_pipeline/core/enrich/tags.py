"""Hierarchical tag generation, HiD-VAE section 3.4 / appendix B: retrieve, then classify.

For each level ``l`` (1-based, root first) the item text and every tag of the level's pool are
embedded with the same sentence encoder; a FAISS inner-product index over L2-normalised vectors
(= cosine similarity) returns the top-K candidate tags (eq. 3), and a classifier picks one of them
given the item text and the tags already chosen at the higher levels (eq. 4). The chosen tag is
therefore always a member of the pool.

Choices made where the paper is vague:

- Tag identity is its path prefix ("Skin Care > Face"): names repeat under different parents. A tag
  keeps its name and its parent path; the generated path is the list of chosen names, directly
  comparable with a dataset's category path.
- ``constrain_to_parent`` (default on): when every tag of level ``l`` has a known parent, the
  candidates at level ``l`` are the children of the tag chosen at level ``l-1`` (one FAISS index
  per parent group), so the generated path is always a path of the taxonomy. A level whose parents
  the pool does not know (a user table without them) is searched whole. When the chosen tag has no
  children, the item's path ends there (like the dataset paths that end at that tag) instead of
  jumping to an unrelated branch; ``stats["ended_early"]`` counts such items.
- The item text given to the generator never contains the item's true category path
  (``hide_true_tags``): it is built from title, brand and description only, so retrieval cannot
  simply copy the answer (this matters when accuracy is measured against the true paths).
- What gets embedded for a tag is its full path by default (``retrieval_text="path"``); the path
  gives the encoder context that a bare leaf name ("Face") lacks.
- Figure 5 asks the LLM for the tag "in plain text"; here it is asked for JSON ``{"tag": ...}`` with
  the candidates as an enum (appendix B: "formatted in JSON for structured output parsing"). A
  plain-text reply is still accepted (see ``llm.parse_answer``). An answer that is not a candidate
  is re-asked once, then the top retrieved candidate is used, counted in ``stats["fallbacks"]``
  and labelled ``tag_source='retrieval_fallback'``; above ``max_fallback_share`` of the decisions
  the stage fails (``FallbackError``).
"""


import json
import math
import time
from abc import ABC, abstractmethod
from collections import Counter
from dataclasses import dataclass
from typing import Any, Literal, Optional, Sequence

import faiss
import numpy as np
import pandas as pd
from pydantic import Field

from semid_pipeline.core.enrich.llm import LLMClient
from semid_pipeline.core.enrich.text_encoder import TextEncoder, unit_rows
from semid_pipeline.core.errors import InputError
from semid_pipeline.core.params import StrictParams
from semid_pipeline.core.progress import ProgressFn, Throttle

SEP = " > "

FIGURE5_TEMPLATE = (
    'Given the item description: {item_text}, and the previous hierarchical tags: {prev_tags}, please select '
    "the single best matching tag for the next level from the following candidate list: {candidates}. "
    "If the item is ambiguous, choose the candidate that fits its main use. "
    'Answer with a JSON object whose only field "tag" is the selected candidate, copied exactly.'
)


class TagParams(StrictParams):
    """Retrieve-then-classify tag generation (HiD-VAE section 3.4)."""

    depth: int = Field(3, ge=1, description="Number of tag levels L to generate (root first).")
    top_k: int = Field(10, ge=1, description="Candidates retrieved per level (appendix B: K=10).")
    classifier: Literal["retrieval", "llm"] = Field(
        "retrieval",
        description="'retrieval': take the best retrieved candidate (offline); 'llm': an LLM picks among them.",
    )
    constrain_to_parent: bool = Field(
        True,
        description="Candidates at level l are the children of the tag chosen at level l-1 when the pool knows "
        "parents (else the whole level pool); a chosen tag without children ends the path.",
    )
    retrieval_text: Literal["path", "name"] = Field(
        "path", description="Which string of a tag is embedded: its full path ('A > B') or its bare name."
    )
    hide_true_tags: bool = Field(
        True, description="Build the item text from title, brand and description only (never the category path)."
    )
    max_text_chars: int = Field(1000, ge=1, description="Item texts are cut to this many characters.")
    tag_path_source: Literal["true_when_available", "generated"] = Field(
        "true_when_available",
        description="item_tags.tag_path: the item's true category path when it has one, else the generated "
        "path; or always the generated path.",
    )
    max_fallback_share: float = Field(
        0.5, ge=0, le=1,
        description="The stage fails when more than this share of the classifier's decisions fell back to the top "
        "retrieved candidate (an LLM answering prose or outside the candidates); 1 never fails.",
    )


# -- tag pool --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Tag:
    """One tag. ``level`` is 1-based; ``parent`` is the parent's path, ``()`` on level 1, ``None`` when
    the pool does not know it."""

    level: int
    name: str
    parent: Optional[tuple[str, ...]]
    n_items: int = 0

    @property
    def path(self) -> tuple[str, ...]:
        return (self.parent or ()) + (self.name,)

    @property
    def key(self) -> str:
        """The tag's identity within its level: ``"Skin Care > Face"``."""
        return SEP.join(self.path)


def _as_path(value: Any) -> list[str]:
    """A category path as a list of stripped names, cut at the first empty one; None/NaN -> []."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return []
    if isinstance(value, str) or not hasattr(value, "__iter__"):
        raise TypeError(f"a path must be a list of names, got {type(value).__name__}: {value!r}")
    out: list[str] = []
    for part in value:
        name = "" if part is None else str(part).strip()
        if not name:
            break
        out.append(name)
    return out


def _is_missing(value: Any) -> bool:
    if value is None:
        return True
    if isinstance(value, float) and math.isnan(value):
        return True
    return isinstance(value, str) and not value.strip()


class TagPool:
    """Candidate tags per level, sorted by key within each level."""

    def __init__(self, levels: Sequence[Sequence[Tag]]):
        self.levels: list[list[Tag]] = [sorted(level, key=lambda t: t.key) for level in levels]
        self._index: list[dict[str, int]] = []
        for depth, level in enumerate(self.levels, 1):
            keys = {}
            for i, tag in enumerate(level):
                if tag.level != depth:
                    raise ValueError(f"tag {tag.key!r} has level {tag.level} but sits in level {depth}")
                if tag.key in keys:
                    raise ValueError(f"duplicate tag {tag.key!r} at level {depth}")
                keys[tag.key] = i
            self._index.append(keys)
        self._children: list[Optional[list[np.ndarray]]] = [None]
        for depth in range(1, len(self.levels)):
            level = self.levels[depth]
            if not level or any(t.parent is None for t in level):
                self._children.append(None)
                continue
            groups: list[list[int]] = [[] for _ in self.levels[depth - 1]]
            for i, tag in enumerate(level):
                parent = self._index[depth - 1].get(SEP.join(tag.parent))
                if parent is None:
                    raise ValueError(f"tag {tag.key!r}: its parent is not a level-{depth} tag")
                groups[parent].append(i)
            self._children.append([np.asarray(g, dtype=np.int64) for g in groups])

    @property
    def n_levels(self) -> int:
        return len(self.levels)

    def __len__(self) -> int:
        return sum(len(level) for level in self.levels)

    def __repr__(self) -> str:
        return f"TagPool(levels={[len(level) for level in self.levels]})"

    def knows_parents(self, level: int) -> bool:
        """Whether every tag of 0-based ``level`` (> 0) has a known parent."""
        return self._children[level] is not None

    def children(self, level: int, parent: int) -> np.ndarray:
        """Indices (in 0-based ``level``) of the children of tag ``parent`` of ``level - 1``."""
        groups = self._children[level]
        if groups is None:
            raise ValueError(f"level {level + 1} of the pool has no parent information")
        return groups[parent]

    @classmethod
    def from_paths(cls, paths: Sequence[Any], depth: int = 3) -> "TagPool":
        """The pool of every path prefix of length 1..``depth`` in ``paths`` (root first), with the
        number of items under each tag. Empty or missing paths contribute nothing."""
        counts: Counter[tuple[str, ...]] = Counter()
        for value in paths:
            path = _as_path(value)[:depth]
            for end in range(1, len(path) + 1):
                counts[tuple(path[:end])] += 1
        levels: list[list[Tag]] = [[] for _ in range(max((len(p) for p in counts), default=0))]
        for path, n in counts.items():
            levels[len(path) - 1].append(Tag(len(path), path[-1], path[:-1], n))
        return cls(levels)

    @classmethod
    def from_table(cls, df: pd.DataFrame, source: str = "tag_pool") -> "TagPool":
        """A user-supplied pool: columns ``level`` (1-based), ``name``, optional ``parent`` (the parent's
        path as ``"A > B"`` or a list; empty for level 1, may be empty for a whole level whose parents
        are unknown) and optional ``n_items``. ``to_frame()`` output reads back unchanged.

        Problems raise ``InputError(source, row, problem)`` with the 1-based row number.
        """
        for col in ("level", "name"):
            if col not in df.columns:
                raise InputError(source, None, f"missing column {col!r} (have {list(df.columns)})")
        has_parent = "parent" in df.columns
        has_count = "n_items" in df.columns
        tags: list[Tag] = []
        for row, rec in enumerate(df.to_dict("records"), 1):
            level = rec["level"]
            if isinstance(level, bool) or not isinstance(level, (int, np.integer)) or level < 1:
                raise InputError(source, row, f"level must be an integer >= 1, got {level!r}")
            level = int(level)
            name = rec["name"]
            if _is_missing(name) or not isinstance(name, str):
                raise InputError(source, row, f"name must be a non-empty string, got {name!r}")
            name = name.strip()
            if SEP.strip() in name:
                raise InputError(source, row, f"name {name!r} contains the path separator {SEP.strip()!r}")
            raw_parent = rec["parent"] if has_parent else None
            parent: Optional[tuple[str, ...]]
            if _is_missing(raw_parent):
                parent = None
            elif isinstance(raw_parent, str):
                parent = tuple(p.strip() for p in raw_parent.split(SEP.strip()))
            elif isinstance(raw_parent, (list, tuple, np.ndarray)):
                parent = tuple(str(p).strip() for p in raw_parent) or None
            else:
                raise InputError(source, row, f"parent must be a path string or a list, got {raw_parent!r}")
            if parent is not None and any(not p for p in parent):
                raise InputError(source, row, f"parent path {raw_parent!r} has an empty name")
            if level == 1:
                if parent:
                    raise InputError(source, row, f"a level-1 tag has no parent, got {raw_parent!r}")
                parent = ()
            elif parent is not None and len(parent) != level - 1:
                raise InputError(
                    source, row, f"a level-{level} tag needs a parent path of {level - 1} names, got {raw_parent!r}"
                )
            n_items = rec["n_items"] if has_count and not _is_missing(rec["n_items"]) else 0
            tags.append(Tag(level, name, parent, int(n_items)))
        n_levels = max((t.level for t in tags), default=0)
        levels: list[list[Tag]] = [[] for _ in range(n_levels)]
        for tag in tags:
            levels[tag.level - 1].append(tag)
        for depth, level in enumerate(levels, 1):
            if not level:
                raise InputError(source, None, f"level {depth} has no tags (levels must be 1..{n_levels}, no gaps)")
        seen: list[set[str]] = [set() for _ in range(n_levels)]
        for row, tag in enumerate(tags, 1):
            if tag.key in seen[tag.level - 1]:
                raise InputError(source, row, f"duplicate tag {tag.key!r} at level {tag.level}")
            seen[tag.level - 1].add(tag.key)
        for row, tag in enumerate(tags, 1):
            if tag.level > 1 and tag.parent is not None and SEP.join(tag.parent) not in seen[tag.level - 2]:
                problem = f"parent {SEP.join(tag.parent)!r} is not a level-{tag.level - 1} tag"
                raise InputError(source, row, problem)
        return cls(levels)

    def to_frame(self) -> pd.DataFrame:
        """The ``tag_pool`` table: ``level`` (1-based), ``tag`` (the key), ``name``, ``parent`` (the
        parent's key; None on level 1 or when unknown), ``n_items``."""
        rows = [
            {
                "level": tag.level,
                "tag": tag.key,
                "name": tag.name,
                "parent": SEP.join(tag.parent) if tag.parent else None,
                "n_items": tag.n_items,
            }
            for level in self.levels
            for tag in level
        ]
        frame = pd.DataFrame(rows, columns=["level", "tag", "name", "parent", "n_items"])
        return frame.astype({"level": "int64", "n_items": "int64"})


# -- classifiers -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class TagRequest:
    """One item at one level: the retrieved candidates, best first, with their cosine scores."""

    item_text: str
    level: int
    previous_tags: list[str]
    candidates: list[Tag]
    scores: list[float]


FALLBACK_SOURCE = "retrieval_fallback"
"""``item_tags.tag_source`` of a generated path where the classifier could not decide at some level."""


class FallbackError(RuntimeError):
    """Too many of the tag classifier's decisions fell back to retrieval (see ``TagParams.max_fallback_share``)."""


class TagClassifier(ABC):
    """Picks one candidate per request."""

    name: str

    @abstractmethod
    def classify(
        self, requests: Sequence[TagRequest], progress: Optional[ProgressFn] = None
    ) -> list[Optional[int]]:
        """Index of the chosen candidate per request, or None when it could not decide (the caller then
        uses the top retrieved candidate and counts a fallback)."""

    def counters(self) -> dict[str, int]:
        """Cumulative ``llm_calls`` and ``cache_hits`` (zero for classifiers without a model)."""
        return {"llm_calls": 0, "cache_hits": 0}


class TopRetrievedClassifier(TagClassifier):
    """The offline default: the most similar candidate wins."""

    name = "retrieval"

    def classify(
        self, requests: Sequence[TagRequest], progress: Optional[ProgressFn] = None
    ) -> list[Optional[int]]:
        return [0] * len(requests)


def _labels(candidates: Sequence[Tag]) -> list[str]:
    """What the LLM sees: bare names, or full paths when two candidates share a name."""
    names = [t.name for t in candidates]
    return names if len(set(names)) == len(names) else [t.key for t in candidates]


class LLMTagClassifier(TagClassifier):
    """Zero-shot choice among the retrieved candidates with the HiD-VAE Figure 5 prompt.

    Requests of one level run concurrently through ``client.map``; answers outside the candidate enum
    are retried by the client, then reported as undecided (None).
    """

    name = "llm"

    def __init__(self, client: LLMClient, template: str = FIGURE5_TEMPLATE, max_text_chars: int = 2000):
        self.client = client
        self.template = template
        self.max_text_chars = max_text_chars

    def prompt(self, request: TagRequest) -> str:
        prev = json.dumps(request.previous_tags, ensure_ascii=False) if request.previous_tags else "none"
        return self.template.format(
            item_text=json.dumps(request.item_text[: self.max_text_chars], ensure_ascii=False),
            prev_tags=prev,
            candidates=json.dumps(_labels(request.candidates), ensure_ascii=False),
        )

    def _classify_one(self, request: TagRequest) -> Optional[int]:
        labels = _labels(request.candidates)
        answer = self.client.choose(self.prompt(request), labels)
        return None if answer is None else labels.index(answer)

    def classify(
        self, requests: Sequence[TagRequest], progress: Optional[ProgressFn] = None
    ) -> list[Optional[int]]:
        return self.client.map(list(requests), self._classify_one, progress)

    def counters(self) -> dict[str, int]:
        stats = self.client.stats
        return {"llm_calls": int(stats["calls"]), "cache_hits": int(stats["cache_hits"])}


def make_classifier(params: TagParams, client: Optional[LLMClient] = None) -> TagClassifier:
    """The classifier ``params.classifier`` names; ``'llm'`` needs a client."""
    if params.classifier == "retrieval":
        return TopRetrievedClassifier()
    if client is None:
        raise ValueError("classifier='llm' needs an LLMClient")
    return LLMTagClassifier(client, max_text_chars=params.max_text_chars)


# -- generation ------------------------------------------------------------------------------------


def tagging_texts(items: pd.DataFrame, hide_true_tags: bool = True, max_chars: int = 1000) -> list[str]:
    """The text the tag generator sees per item: ``Title: ... Brand: ... Description: ...``.

    With ``hide_true_tags=False`` the category path is added (useful only to measure an upper bound).
    Missing fields are left out; each text is cut to ``max_chars``.
    """
    fields = [("Title", "title"), ("Brand", "brand")]
    if not hide_true_tags:
        fields.append(("Categories", "category_path"))
    fields.append(("Description", "description"))
    columns = {col: items[col].tolist() if col in items.columns else [None] * len(items) for _, col in fields}
    texts = []
    for i in range(len(items)):
        parts = []
        for label, col in fields:
            value = columns[col][i]
            if col == "category_path":
                value = SEP.join(_as_path(value))
            if not _is_missing(value) and str(value).strip():
                parts.append(f"{label}: {str(value).strip()}")
        texts.append(". ".join(parts)[:max_chars])
    return texts


def _groups(
    level: int, alive: np.ndarray, chosen: np.ndarray, pool: TagPool, constrain: bool
) -> list[tuple[np.ndarray, np.ndarray]]:
    """(tag indices, item indices) pairs to search: the whole level, or one group per chosen parent."""
    if level == 0 or not constrain or not pool.knows_parents(level):
        return [(np.arange(len(pool.levels[level])), alive)]
    parents = chosen[alive, level - 1]
    order = np.argsort(parents, kind="stable")
    uniq, starts = np.unique(parents[order], return_index=True)
    out = []
    for parent, items in zip(uniq, np.split(alive[order], starts[1:])):
        kids = pool.children(level, int(parent))
        if len(kids):
            out.append((kids, items))
    return out


def generate_tags(
    item_texts: Sequence[str],
    pool: TagPool,
    encoder: TextEncoder,
    params: Optional[TagParams] = None,
    classifier: Optional[TagClassifier] = None,
    progress: Optional[ProgressFn] = None,
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Generates a tag path per item text, level by level.

    Returns a frame aligned with ``item_texts`` with ``generated_path`` (chosen names, root first;
    shorter than ``depth`` when the pool is shallower or a chosen tag has no children),
    ``candidates`` (per level the retrieved tag keys, best first) and ``scores`` (per level the cosine
    score of the chosen tag), and stats ``n_items, levels, fallbacks, ended_early, llm_calls,
    cache_hits, seconds``. ``classifier`` defaults to the one ``params.classifier`` names (``'llm'``
    must be passed in, it needs a client).
    """
    params = params or TagParams()
    classifier = classifier or make_classifier(params)
    start = time.monotonic()
    report = Throttle(progress)
    texts = list(item_texts)
    n, n_levels = len(texts), min(params.depth, pool.n_levels)
    before = classifier.counters()

    item_vecs = unit_rows(encoder.encode(texts, progress))
    level_tags = pool.levels[:n_levels]
    tag_strings = [t.key if params.retrieval_text == "path" else t.name for level in level_tags for t in level]
    tag_vecs_all = unit_rows(encoder.encode(tag_strings, progress))
    bounds = np.cumsum([0] + [len(level) for level in level_tags])
    tag_vecs = [tag_vecs_all[bounds[i] : bounds[i + 1]] for i in range(n_levels)]

    chosen = np.full((n, n_levels), -1, dtype=np.int64)
    candidates: list[list[list[str]]] = [[] for _ in range(n)]
    scores: list[list[float]] = [[] for _ in range(n)]
    fell_back = np.zeros(n, dtype=bool)
    fallbacks = decisions = 0
    for level in range(n_levels):
        alive = np.arange(n) if level == 0 else np.flatnonzero(chosen[:, level - 1] >= 0)
        if len(alive) == 0:
            break
        tags = level_tags[level]
        batch: list[tuple[int, np.ndarray, np.ndarray]] = []
        for group_tags, group_items in _groups(level, alive, chosen, pool, params.constrain_to_parent):
            index = faiss.IndexFlatIP(tag_vecs[level].shape[1])
            index.add(tag_vecs[level][group_tags])
            sims, ids = index.search(item_vecs[group_items], min(params.top_k, len(group_tags)))
            batch.extend(zip(group_items.tolist(), group_tags[ids], sims))
        requests = [
            TagRequest(
                item_text=texts[item],
                level=level + 1,
                previous_tags=[level_tags[j][chosen[item, j]].name for j in range(level)],
                candidates=[tags[c] for c in cand],
                scores=sim.tolist(),
            )
            for item, cand, sim in batch
        ]
        picks = classifier.classify(requests, progress)
        for (item, cand, sim), pick in zip(batch, picks):
            decisions += 1
            if pick is None:
                fallbacks += 1
                fell_back[item] = True
                pick = 0
            chosen[item, level] = cand[pick]
            candidates[item].append([tags[c].key for c in cand])
            scores[item].append(float(sim[pick]))
        report(f"tags: level {level + 1}/{n_levels} done for {len(batch)} items ({fallbacks} fallbacks so far)")

    paths = [[level_tags[j][c].name for j, c in enumerate(row) if c >= 0] for row in chosen]
    after = classifier.counters()
    stats = {
        "n_items": n,
        "levels": n_levels,
        "fallbacks": fallbacks,
        "decisions": decisions,
        "fallback_share": round(fallbacks / decisions, 6) if decisions else 0.0,
        "items_with_fallback": int(fell_back.sum()),
        "ended_early": int(sum(len(p) < n_levels for p in paths)),
        "llm_calls": after["llm_calls"] - before["llm_calls"],
        "cache_hits": after["cache_hits"] - before["cache_hits"],
        "seconds": round(time.monotonic() - start, 3),
    }
    frame = pd.DataFrame({"generated_path": paths, "candidates": candidates, "scores": scores, "fell_back": fell_back})
    report(f"tags: {n} items tagged in {stats['seconds']:.1f}s ({fallbacks} fallbacks)", force=True)
    return frame, stats


def tag_accuracy(pred_paths: Sequence[Any], true_paths: Sequence[Any], depth: Optional[int] = None) -> list[float]:
    """Per-level accuracy (level 1 first) of predicted against true paths.

    Level ``l`` of an item is correct when the first ``l`` names of both paths are equal. Items whose
    true path is shorter than ``l`` (or missing) are left out of level ``l``'s denominator; a level
    with no such item gives NaN. ``depth`` defaults to the longest true path.
    """
    if len(pred_paths) != len(true_paths):
        raise ValueError(f"{len(pred_paths)} predicted paths but {len(true_paths)} true paths")
    preds = [_as_path(p) for p in pred_paths]
    trues = [_as_path(t) for t in true_paths]
    n_levels = depth if depth is not None else max((len(t) for t in trues), default=0)
    out = []
    for level in range(1, n_levels + 1):
        pairs = [(p, t) for p, t in zip(preds, trues) if len(t) >= level]
        hits = sum(p[:level] == t[:level] for p, t in pairs)
        out.append(hits / len(pairs) if pairs else float("nan"))
    return out


def tag_items(
    items: pd.DataFrame,
    pool: TagPool,
    encoder: TextEncoder,
    params: Optional[TagParams] = None,
    classifier: Optional[TagClassifier] = None,
    progress: Optional[ProgressFn] = None,
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """The ``item_tags`` table for a preprocessed ``items`` table (DESIGN.md data contract).

    ``true_path`` is the item's ``category_path`` cut to ``depth`` (None when empty or absent);
    ``tag_path`` follows ``params.tag_path_source`` and ``tag_source`` says where it came from
    (``'true'``, the classifier's name, or ``'retrieval_fallback'`` when the classifier could not
    decide at some level and the top retrieved candidate was used). Stats add ``accuracy`` (per
    level, against the true paths, see ``tag_accuracy``) when any item has a true path.

    Raises :class:`FallbackError` when more than ``params.max_fallback_share`` of the classifier's
    decisions fell back (an LLM that answers prose): the stage fails instead of a green run whose
    tags are retrieval's; answers already cached stay cached.
    """
    params = params or TagParams()
    classifier = classifier or make_classifier(params)
    texts = tagging_texts(items, params.hide_true_tags, params.max_text_chars)
    generated, stats = generate_tags(texts, pool, encoder, params, classifier, progress)
    if stats["decisions"] and stats["fallback_share"] > params.max_fallback_share:
        raise FallbackError(
            f"tag classifier {classifier.name!r}: {stats['fallbacks']:,} of {stats['decisions']:,} decisions "
            f"({stats['fallback_share']:.0%}, {stats['items_with_fallback']:,} items) fell back to the top retrieved "
            f"candidate, above max_fallback_share = {params.max_fallback_share:g}: the model answers outside the "
            "candidate list (prose?); check the model / endpoint or raise max_fallback_share"
        )
    raw_true = items["category_path"].tolist() if "category_path" in items.columns else [None] * len(items)
    true_paths = [(_as_path(p)[: params.depth] or None) for p in raw_true]
    use_true = params.tag_path_source == "true_when_available"
    tag_paths, sources = [], []
    for true, gen, fell in zip(true_paths, generated["generated_path"], generated["fell_back"]):
        if use_true and true is not None:
            tag_paths.append(true)
            sources.append("true")
        else:
            tag_paths.append(gen)
            sources.append(FALLBACK_SOURCE if fell else classifier.name)
    table = pd.DataFrame(
        {
            "item_idx": items["item_idx"].to_numpy(dtype=np.int64),
            "item_id": items["item_id"].astype(str).to_numpy(),
            "tag_path": tag_paths,
            "generated_path": generated["generated_path"].tolist(),
            "true_path": true_paths,
            "candidates": generated["candidates"].tolist(),
            "scores": generated["scores"].tolist(),
            "tag_source": sources,
        }
    )
    if any(t is not None for t in true_paths):
        stats["accuracy"] = tag_accuracy(table["generated_path"].tolist(), true_paths, params.depth)
    return table, stats
