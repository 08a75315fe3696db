"""Recommendation-oriented image captions (DeepInterestGR section III-D, CMSA path 1).

A vision-language model behind an OpenAI-compatible chat API describes each item's image: style,
colour, materials, usage scene, audience. Captions are precomputed offline, like every LLM output
in the paper.

Choices made here:

- Every item gets a row and a status; nothing about one item stops the others. ``no_image`` (no
  image reference), ``skipped_backend_none`` (captioning is off), ``image_error`` (unreachable,
  too large, not JPEG/PNG/GIF/WEBP, or does not decode), ``model_error`` (the server failed after
  the client's retries, refused the request, or answered with an empty caption), ``ok``.
- Images come from http(s) URLs, ``file://`` URLs or local paths. Downloads go through a disk cache
  of files named by the sha256 of the URL, written atomically and only after the bytes decode, so a
  rerun downloads nothing twice and never trusts a broken file. Local files are read in place.
- Decoding is checked with Pillow when it is installed (a full ``load()``, which catches truncated
  files), otherwise by the format's magic bytes only.
- The title is given to the model as context by default (``include_title``): it tells the model
  what the product is, so the caption spends its words on what only the image shows.
- The image is sent inline as a base64 data URL, so the model server needs no network access.
"""


import base64
import hashlib
import http.client
import io
import math
import os
import tempfile
import time
import urllib.error
import uuid
import urllib.request
from pathlib import Path
from typing import Any, Literal, Optional
from urllib.parse import urlparse
from urllib.request import url2pathname

import numpy as np
import pandas as pd
from pydantic import Field

from semid_pipeline.core.enrich.llm import LLMClient, LLMError
from semid_pipeline.core.params import StrictParams
from semid_pipeline.core.progress import ProgressFn

DEFAULT_PROMPT = (
    "Describe this product image for a recommender system in 2-4 sentences: its visual style, colours and "
    "materials, the usage scene it suggests, and the audience it targets. Describe only what the image shows; "
    "do not invent brand names, prices or specifications."
)
STATUSES = ("ok", "no_image", "skipped_backend_none", "image_error", "model_error")
_MAGIC = (
    (b"\xff\xd8\xff", "image/jpeg"),
    (b"\x89PNG\r\n\x1a\n", "image/png"),
    (b"GIF87a", "image/gif"),
    (b"GIF89a", "image/gif"),
)


class CaptionParams(StrictParams):
    """Image captioning with a vision-language model (off by default)."""

    backend: Literal["none", "openai"] = Field(
        "none", description="'none' skips captioning; 'openai' calls an OpenAI-compatible vision chat model."
    )
    prompt: str = Field(DEFAULT_PROMPT, description="Instruction sent with each image.")
    include_title: bool = Field(True, description="Add the item title to the prompt as context.")
    image_cache_dir: Optional[str] = Field(
        None, description="Directory for downloaded images (hash-named); None = <tmp>/semid_pipeline_images."
    )
    max_image_bytes: int = Field(5_000_000, ge=1, description="Larger images are skipped as image_error.")
    timeout_s: float = Field(30.0, gt=0, description="Timeout of one image download in seconds.")


class ImageError(Exception):
    """The image could not be fetched or is not a usable picture."""


def sniff_mime(data: bytes) -> Optional[str]:
    """The MIME type from the magic bytes, for the formats vision chat APIs accept; None otherwise."""
    for magic, mime in _MAGIC:
        if data.startswith(magic):
            return mime
    if len(data) >= 12 and data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    return None


def check_image(data: bytes) -> str:
    """Returns the MIME type of ``data`` or raises ``ImageError`` when it is not a decodable image."""
    mime = sniff_mime(data)
    if mime is None:
        raise ImageError("not a JPEG, PNG, GIF or WEBP image")
    try:
        from PIL import Image
    except ImportError:
        return mime
    try:
        with Image.open(io.BytesIO(data)) as img:
            img.load()
    except Exception as err:  # Pillow raises many types for broken files
        raise ImageError(f"does not decode: {err}") from err
    return mime


def _read_capped(stream: Any, max_bytes: int, where: str) -> bytes:
    data = stream.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise ImageError(f"{where}: larger than max_image_bytes={max_bytes}")
    return data


def fetch_image(ref: str, cache_dir: Path, max_bytes: int, timeout_s: float) -> tuple[bytes, str, str]:
    """``(bytes, mime, source)`` for an image reference; ``source`` is 'download', 'cache' or 'local'."""
    parsed = urlparse(ref)
    if parsed.scheme in ("http", "https"):
        cached = cache_dir / hashlib.sha256(ref.encode("utf-8")).hexdigest()
        if cached.exists():
            data = cached.read_bytes()
            return data, check_image(data), "cache"
        request = urllib.request.Request(ref, headers={"User-Agent": "semid_pipeline"})
        try:
            with urllib.request.urlopen(request, timeout=timeout_s) as resp:
                data = _read_capped(resp, max_bytes, ref)
        except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError) as err:
            raise ImageError(f"{ref}: download failed: {err}") from err
        mime = check_image(data)
        cache_dir.mkdir(parents=True, exist_ok=True)
        tmp = cached.with_name(f"{cached.name}.{uuid.uuid4().hex}.tmp")
        tmp.write_bytes(data)
        os.replace(tmp, cached)
        return data, mime, "download"
    if parsed.scheme == "file":
        path = Path(url2pathname(parsed.path))
    elif parsed.scheme and len(parsed.scheme) > 1:  # one letter is a Windows drive
        raise ImageError(f"{ref}: unsupported URL scheme {parsed.scheme!r}")
    else:
        path = Path(ref)
    try:
        with open(path, "rb") as fh:
            data = _read_capped(fh, max_bytes, str(path))
    except OSError as err:
        raise ImageError(f"{path}: cannot read: {err}") from err
    return data, check_image(data), "local"


def _present(value: Any) -> bool:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return False
    return bool(str(value).strip())


def caption_items(
    items: pd.DataFrame,
    params: Optional[CaptionParams] = None,
    client: Optional[LLMClient] = None,
    progress: Optional[ProgressFn] = None,
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Captions every item's image.

    ``items`` needs ``item_idx``, ``item_id``, ``title`` and ``image``. Returns a frame with
    ``item_idx, item_id, caption, status, detail`` (one row per item, in input order) and stats:
    ``n_items``, one count per status, ``images_downloaded``, ``image_cache_hits``, ``llm_calls``,
    ``cache_hits``, ``seconds``. The ``openai`` backend needs ``client``.
    """
    params = params or CaptionParams()
    if params.backend == "openai" and client is None:
        raise ValueError("caption backend 'openai' needs an LLMClient")
    start = time.monotonic()
    cache_dir = Path(params.image_cache_dir or Path(tempfile.gettempdir()) / "semid_pipeline_images")
    n = len(items)
    images = items["image"].tolist()
    titles = items["title"].tolist()
    caption: list[Optional[str]] = [None] * n
    status = ["no_image" if not _present(img) else "skipped_backend_none" for img in images]
    detail: list[Optional[str]] = [None] * n
    sources: list[Optional[str]] = [None] * n
    todo = [i for i in range(n) if status[i] != "no_image"] if params.backend == "openai" else []
    before = client.stats if client is not None else None

    def run(i: int) -> tuple[Optional[str], str, Optional[str], Optional[str]]:
        try:
            data, mime, source = fetch_image(
                str(images[i]).strip(), cache_dir, params.max_image_bytes, params.timeout_s
            )
        except ImageError as err:
            return None, "image_error", str(err), None
        text = params.prompt
        if params.include_title and _present(titles[i]):
            text = f"Product title: {str(titles[i]).strip()}\n\n{text}"
        url = f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"
        content = [{"type": "text", "text": text}, {"type": "image_url", "image_url": {"url": url}}]
        messages = [{"role": "user", "content": content}]
        try:
            answer = client.chat_text(messages).strip()
        except LLMError as err:
            return None, "model_error", str(err), source
        if not answer:
            return None, "model_error", "empty caption", source
        return answer, "ok", None, source

    if todo:
        for i, (cap, st, det, src) in zip(todo, client.map(todo, run, progress)):
            caption[i], status[i], detail[i], sources[i] = cap, st, det, src

    frame = pd.DataFrame(
        {
            "item_idx": items["item_idx"].to_numpy(dtype=np.int64),
            "item_id": items["item_id"].astype(str).to_numpy(),
            "caption": pd.Series(caption, dtype=object),  # keeps None (pandas 3 would infer str with NaN)
            "status": status,
            "detail": pd.Series(detail, dtype=object),
        }
    )
    stats: dict[str, Any] = {"n_items": n, **{s: status.count(s) for s in STATUSES}}
    stats["images_downloaded"] = sources.count("download")
    stats["image_cache_hits"] = sources.count("cache")
    after = client.stats if client is not None else None
    for key, counter in (("llm_calls", "calls"), ("cache_hits", "cache_hits")):
        stats[key] = int(after[counter] - before[counter]) if after is not None and before is not None else 0
    stats["seconds"] = round(time.monotonic() - start, 3)
    return frame, stats
