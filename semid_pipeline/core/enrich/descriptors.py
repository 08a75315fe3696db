"""Item-side intent descriptors (DeepInterestGR III-C, DCIM) and their quality labels (III-E, QARM).

DCIM (eq. 1) prompts an LLM with the item's metadata text plus its CMSA caption (eq. 4) through a
structured chain-of-thought template: (1) surface analysis of explicit attributes, (2) inference of
latent usage or purchase motivations, (3) synthesis of descriptor tags with confidence scores. The
descriptors are then concatenated with the metadata and the caption into the enriched text that is
embedded (eq. 2, see ``item_text.compose_item_texts``).

QARM (eq. 9-10) labels every descriptor 1 (specific, actionable, grounded in the item) or 0 (vague,
generic, hallucinated) with a zero-shot LLM classifier and aggregates the labels per item into the
confidence-weighted score ``q_i = sum_k c_k y_k / sum_k c_k`` (all ``c_k = 1`` when the confidences
are unavailable). The recommender reads ``item_quality_scores`` for its GRPO quality bonus.

Choices made where the paper is vague (its prompts are not printed):

- The CoT is asked for as JSON fields in order (``surface_attributes``, ``latent_motivations``,
  ``descriptors``), so a structured-output server decodes the reasoning before the descriptors;
  only the descriptors and confidences are kept.
- Confidences must lie in [0, 1] (validated; an answer outside is re-asked by the client, then the
  item is recorded as ``invalid_answer`` with no descriptors). Descriptors are stripped, deduplicated
  case-insensitively, cut to ``max_descriptor_chars`` and capped at ``max_descriptors``.
- An item whose answer is invalid or whose request failed gets no descriptors and a status saying
  why; nothing about one item stops the others. Items with no descriptors, or none labelled, get
  ``quality_score = 0.0`` (no evidence of quality) and ``n_labels = 0``.
- A descriptor whose quality answer is invalid twice is left out of the labels table and counted.
"""

import time
from typing import Any, Literal, Optional, Sequence

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field

from semid_pipeline.core.enrich.llm import InvalidAnswerError, LLMClient, LLMError
from semid_pipeline.core.params import StrictParams
from semid_pipeline.core.progress import ProgressFn

DCIM_PROMPT = (
    "You annotate products for a recommender system. Work in three steps and answer with a JSON object.\n"
    "1. surface_attributes: the explicit attributes of the item (what it is, material, size, style).\n"
    "2. latent_motivations: why a shopper would buy or use it (usage scene, need, occasion, audience).\n"
    "3. descriptors: up to {max_descriptors} short intent descriptors (2-6 words each) that name those "
    "usage motivations, each with a confidence between 0 and 1.\n\n"
    "Item:\n{item_text}"
)
QARM_PROMPT = (
    "Judge one intent descriptor of a product. Label 1 if it is specific, actionable and grounded in the "
    "item information below; label 0 if it is vague, generic or not supported by the item (hallucinated). "
    'Answer with a JSON object {{"label": 0}} or {{"label": 1}}.\n\n'
    "Item:\n{item_text}\n\nDescriptor: {descriptor}"
)
DESCRIPTOR_STATUSES = ("ok", "skipped_backend_none", "invalid_answer", "model_error", "empty")


class DescriptorParams(StrictParams):
    """DCIM intent-descriptor mining (off by default)."""

    backend: Literal["none", "openai"] = Field(
        "none", description="'none' skips the stage explicitly; 'openai' asks an OpenAI-compatible chat model."
    )
    max_descriptors: int = Field(5, ge=1, le=20, description="Most descriptors kept per item.")
    max_descriptor_chars: int = Field(80, ge=8, description="Each descriptor is cut to this many characters.")
    include_caption: bool = Field(True, description="Give the model the CMSA caption with the metadata (eq. 4).")
    max_text_chars: int = Field(1500, ge=50, description="The item text in the prompt is cut to this length.")
    prompt: str = Field(DCIM_PROMPT, description="Template with {item_text} and {max_descriptors}.")


class QualityParams(StrictParams):
    """QARM binary quality labelling of descriptors (off by default)."""

    backend: Literal["none", "openai"] = Field(
        "none", description="'none' skips the stage explicitly; 'openai' asks an OpenAI-compatible chat model."
    )
    max_text_chars: int = Field(1000, ge=50, description="The item text in the prompt is cut to this length.")
    use_confidence: bool = Field(
        True, description="Weight labels by the DCIM confidences (eq. 10); off = all weights 1."
    )
    prompt: str = Field(QARM_PROMPT, description="Template with {item_text} and {descriptor}.")


class Descriptor(BaseModel):
    model_config = ConfigDict(extra="forbid")
    descriptor: str = Field(description="A short item-side intent descriptor (2-6 words).")
    confidence: float = Field(ge=0.0, le=1.0, description="Confidence between 0 and 1.")


class IntentAnswer(BaseModel):
    """The DCIM answer: the CoT steps, then the descriptors."""

    model_config = ConfigDict(extra="forbid")
    surface_attributes: str = Field(description="Explicit attributes of the item.")
    latent_motivations: str = Field(description="Latent usage or purchase motivations it implies.")
    descriptors: list[Descriptor] = Field(description="Intent descriptors with confidences.")


class QualityAnswer(BaseModel):
    model_config = ConfigDict(extra="forbid")
    label: Literal[0, 1] = Field(description="1 = specific, actionable, grounded; 0 = vague, generic or hallucinated.")


def _clean(descriptors: Sequence[Descriptor], max_n: int, max_chars: int) -> tuple[list[str], list[float]]:
    names: list[str] = []
    confs: list[float] = []
    seen: set[str] = set()
    for d in descriptors:
        name = " ".join(d.descriptor.split())[:max_chars].strip()
        if not name or name.lower() in seen:
            continue
        seen.add(name.lower())
        names.append(name)
        confs.append(float(d.confidence))
        if len(names) == max_n:
            break
    return names, confs


def empty_descriptors(items: pd.DataFrame, status: str = "skipped_backend_none") -> pd.DataFrame:
    """The descriptor table with no descriptors for every item (the stage is off)."""
    n = len(items)
    return pd.DataFrame(
        {
            "item_idx": items["item_idx"].to_numpy(dtype=np.int64),
            "item_id": items["item_id"].astype(str).to_numpy(),
            "descriptors": [[] for _ in range(n)],
            "confidences": [[] for _ in range(n)],
            "status": [status] * n,
            "detail": pd.Series([None] * n, dtype=object),
        }
    )


def mine_descriptors(
    items: pd.DataFrame,
    texts: Sequence[str],
    params: Optional[DescriptorParams] = None,
    client: Optional[LLMClient] = None,
    progress: Optional[ProgressFn] = None,
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """DCIM for every item. ``texts[i]`` is item i's metadata text (+ caption, eq. 4).

    Returns ``item_idx, item_id, descriptors: list[str], confidences: list[float], status, detail``
    (one row per item, input order) and stats: ``n_items``, a count per status, ``n_descriptors``,
    ``mean_descriptors``, ``seconds``. The ``openai`` backend needs ``client``.
    """
    params = params or DescriptorParams()
    if len(texts) != len(items):
        raise ValueError(f"{len(texts)} texts for {len(items)} items")
    start = time.monotonic()
    frame = empty_descriptors(items)
    if params.backend == "openai":
        if client is None:
            raise ValueError("descriptor backend 'openai' needs an LLMClient")

        def run(i: int) -> tuple[list[str], list[float], str, Optional[str]]:
            prompt = params.prompt.format(
                item_text=str(texts[i])[: params.max_text_chars], max_descriptors=params.max_descriptors
            )
            try:
                answer = client.chat_json([{"role": "user", "content": prompt}], IntentAnswer, "intent_descriptors")
            except InvalidAnswerError as err:
                return [], [], "invalid_answer", str(err)
            except LLMError as err:
                return [], [], "model_error", str(err)
            names, confs = _clean(answer.descriptors, params.max_descriptors, params.max_descriptor_chars)
            return names, confs, ("ok" if names else "empty"), None

        results = client.map(list(range(len(items))), run, progress)
        frame["descriptors"] = [r[0] for r in results]
        frame["confidences"] = [r[1] for r in results]
        frame["status"] = [r[2] for r in results]
        frame["detail"] = pd.Series([r[3] for r in results], dtype=object)
    counts = frame["status"].value_counts()
    n_desc = int(sum(len(d) for d in frame["descriptors"]))
    stats: dict[str, Any] = {"n_items": len(frame), **{s: int(counts.get(s, 0)) for s in DESCRIPTOR_STATUSES}}
    stats["n_descriptors"] = n_desc
    stats["mean_descriptors"] = round(n_desc / max(len(frame), 1), 4)
    stats["seconds"] = round(time.monotonic() - start, 3)
    return frame, stats


LABEL_COLUMNS = ["item_idx", "item_id", "descriptor", "confidence", "label"]
SCORE_COLUMNS = ["item_idx", "item_id", "quality_score", "n_labels"]


def empty_labels() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "item_idx": pd.Series([], dtype=np.int64),
            "item_id": pd.Series([], dtype=object),
            "descriptor": pd.Series([], dtype=object),
            "confidence": pd.Series([], dtype=np.float64),
            "label": pd.Series([], dtype=np.int64),
        }
    )


def empty_scores() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "item_idx": pd.Series([], dtype=np.int64),
            "item_id": pd.Series([], dtype=object),
            "quality_score": pd.Series([], dtype=np.float64),
            "n_labels": pd.Series([], dtype=np.int64),
        }
    )


def quality_scores(labels: pd.DataFrame, items: pd.DataFrame, use_confidence: bool = True) -> pd.DataFrame:
    """Eq. 10 per item: ``sum(c * y) / sum(c)`` over its labelled descriptors (``c = 1`` when
    ``use_confidence`` is off, or for every descriptor of an item whose confidences sum to 0).
    Items without labels score 0.0 with ``n_labels = 0``."""
    out = pd.DataFrame(
        {"item_idx": items["item_idx"].to_numpy(dtype=np.int64), "item_id": items["item_id"].astype(str).to_numpy()}
    )
    if labels.empty:
        out["quality_score"] = 0.0
        out["n_labels"] = np.zeros(len(out), dtype=np.int64)
        return out
    lab = labels[["item_idx", "confidence", "label"]].copy()
    lab["w"] = lab["confidence"].astype(float) if use_confidence else 1.0
    totals = lab.groupby("item_idx")["w"].transform("sum")
    lab.loc[totals <= 0, "w"] = 1.0  # all-zero confidences: unweighted mean
    lab["wy"] = lab["w"] * lab["label"].astype(float)
    agg = lab.groupby("item_idx").agg(wy=("wy", "sum"), w=("w", "sum"), n=("label", "size"))
    score = (agg["wy"] / agg["w"]).reindex(out["item_idx"]).fillna(0.0).to_numpy()
    out["quality_score"] = score.astype(np.float64)
    out["n_labels"] = agg["n"].reindex(out["item_idx"]).fillna(0).to_numpy(dtype=np.int64)
    return out


def label_descriptors(
    descriptors: pd.DataFrame,
    texts: Sequence[str],
    params: Optional[QualityParams] = None,
    client: Optional[LLMClient] = None,
    progress: Optional[ProgressFn] = None,
) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, Any]]:
    """QARM labels (eq. 9) and item scores (eq. 10).

    ``descriptors`` is ``mine_descriptors`` output, ``texts`` the item texts aligned with its rows.
    Returns ``(labels, scores, stats)``: ``labels`` has ``item_idx, item_id, descriptor, confidence,
    label`` (0/1 int), ``scores`` has ``item_idx, item_id, quality_score, n_labels`` for every item.
    Backend ``none`` returns empty tables (the stage is skipped; ``stats["skipped"]`` says why).
    """
    params = params or QualityParams()
    if len(texts) != len(descriptors):
        raise ValueError(f"{len(texts)} texts for {len(descriptors)} descriptor rows")
    start = time.monotonic()
    if params.backend == "none":
        return empty_labels(), empty_scores(), {"skipped": "backend is 'none'", "n_labels": 0, "seconds": 0.0}
    if client is None:
        raise ValueError("quality backend 'openai' needs an LLMClient")
    jobs: list[tuple[int, str, float]] = []
    for row, (names, confs) in enumerate(zip(descriptors["descriptors"], descriptors["confidences"])):
        confs = list(confs) if confs is not None and len(confs) == len(names) else [1.0] * len(names)
        jobs.extend((row, str(name), float(c)) for name, c in zip(names, confs))

    def run(job: tuple[int, str, float]) -> Optional[int]:
        row, name, _ = job
        prompt = params.prompt.format(item_text=str(texts[row])[: params.max_text_chars], descriptor=name)
        try:
            return int(client.chat_json([{"role": "user", "content": prompt}], QualityAnswer, "descriptor_quality").label)
        except InvalidAnswerError:
            return None

    answers = client.map(jobs, run, progress)
    idx = descriptors["item_idx"].to_numpy(dtype=np.int64)
    ids = descriptors["item_id"].astype(str).to_numpy()
    kept = [(job, y) for job, y in zip(jobs, answers) if y is not None]
    labels = empty_labels() if not kept else pd.DataFrame(
        {
            "item_idx": np.array([idx[j[0]] for j, _ in kept], dtype=np.int64),
            "item_id": [ids[j[0]] for j, _ in kept],
            "descriptor": [j[1] for j, _ in kept],
            "confidence": np.array([j[2] for j, _ in kept], dtype=np.float64),
            "label": np.array([y for _, y in kept], dtype=np.int64),
        }
    )
    scores = quality_scores(labels, descriptors, params.use_confidence)
    stats: dict[str, Any] = {
        "n_descriptors": len(jobs),
        "n_labels": len(labels),
        "unlabelled": len(jobs) - len(labels),
        "positive_rate": round(float(labels["label"].mean()), 4) if len(labels) else 0.0,
        "mean_quality_score": round(float(scores["quality_score"].mean()), 4) if len(scores) else 0.0,
        "seconds": round(time.monotonic() - start, 3),
    }
    return labels, scores, stats
