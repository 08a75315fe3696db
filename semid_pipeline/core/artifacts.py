"""Model artifacts: safetensors for tensors + JSON for config. Never pickle.

A model class opts in by subclassing :class:`Artifact` (or implementing the same methods) and
registering itself with :func:`register_artifact`. :func:`save_artifact` writes a directory
atomically::

    <dir>/model.safetensors   every tensor, float32/int64 as trained
    <dir>/config.json         {"kind": ..., "config": {...}, "format_version": 2, "extra": {...},
                               "content_sha256": {"tensors": <hex>, "config": <hex>}}

and :func:`load_artifact` rebuilds the object from the ``kind`` registry, so a saved tokenizer or
recommender can be reloaded without knowing its class up front.

Integrity: ``content_sha256`` records, at save, SHA-256 of every tensor (name, dtype, shape, raw
bytes; :func:`content_hash`) and of the rest of ``config.json`` (canonical JSON). :func:`load_artifact`
recomputes both and refuses a mismatch with an ``InputError`` naming the file that changed (bytes
overwritten inside ``model.safetensors`` without changing its size, an edited ``config.json``); an
unreadable or truncated file fails naming its path. An artifact saved before format 2 has no hash:
it loads with a ``UserWarning`` naming its directory (re-materialize it to protect it).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
import warnings
from pathlib import Path
from typing import Any, ClassVar, Dict, Mapping, Type, TypeVar

import torch
from safetensors.torch import load as load_safetensors_bytes
from safetensors.torch import save_file

from semid_pipeline.core.errors import InputError

FORMAT_VERSION = 2
HASH_KEY = "content_sha256"
_REGISTRY: Dict[str, Type["Artifact"]] = {}

T = TypeVar("T", bound="Artifact")


class Artifact:
    """Mixin for objects saved as safetensors + JSON.

    Subclasses set ``KIND`` and implement :meth:`artifact_config`, :meth:`artifact_tensors` and the
    classmethod :meth:`from_artifact`.
    """

    KIND: ClassVar[str] = ""

    def artifact_config(self) -> Dict[str, Any]:  # pragma: no cover - interface
        raise NotImplementedError

    def artifact_tensors(self) -> Dict[str, torch.Tensor]:  # pragma: no cover - interface
        raise NotImplementedError

    @classmethod
    def from_artifact(cls: Type[T], config: Dict[str, Any], tensors: Dict[str, torch.Tensor]) -> T:  # pragma: no cover
        raise NotImplementedError


def register_artifact(cls: Type[T]) -> Type[T]:
    if not cls.KIND:
        raise ValueError(f"{cls.__name__} must set KIND before registering")
    _REGISTRY[cls.KIND] = cls
    return cls


def _atomic_replace_dir(tmp: Path, final: Path) -> None:
    """Moves ``tmp`` to ``final``; an existing ``final`` is swapped out and removed afterwards."""
    final.parent.mkdir(parents=True, exist_ok=True)
    old = None
    if final.exists():
        old = final.with_name(f".{final.name}.old-{uuid.uuid4().hex[:8]}")
        os.replace(final, old)
    os.replace(tmp, final)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def save_artifact(obj: Artifact, directory: str | os.PathLike, extra: Dict[str, Any] | None = None) -> Path:
    """Writes ``obj`` to ``directory`` atomically (a reader never sees a half-written model)."""
    final = Path(directory)
    tmp = final.with_name(f".{final.name}.tmp-{uuid.uuid4().hex[:8]}")
    tmp.mkdir(parents=True)
    try:
        tensors = {k: v.detach().to("cpu").contiguous() for k, v in obj.artifact_tensors().items()}
        save_file(tensors, str(tmp / "model.safetensors"))
        meta = {"kind": obj.KIND, "format_version": FORMAT_VERSION, "config": obj.artifact_config(), "extra": extra or {}}
        meta = json.loads(json.dumps(meta, default=_json_default))  # exactly what a reader will see
        meta[HASH_KEY] = {"tensors": content_hash({}, tensors), "config": _meta_hash(meta)}
        (tmp / "config.json").write_text(json.dumps(meta, indent=2, sort_keys=True))
        _atomic_replace_dir(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def content_hash(config: Mapping[str, Any], tensors: Mapping[str, torch.Tensor]) -> str:
    """SHA-256 (hex) over ``config`` (canonical JSON) and every tensor (name, dtype, shape, raw bytes, in name order).

    Tensors are hashed on the CPU in their stored dtype, so a model hashes the same before saving
    and after reloading, on any machine. The tokenizer version (``core/tokenizers/versioning.py``) is its prefix.
    """
    h = hashlib.sha256()
    h.update(json.dumps(dict(config), sort_keys=True, separators=(",", ":"), default=_json_default).encode())
    for name in sorted(tensors):
        t = tensors[name].detach().to("cpu").contiguous()
        h.update(f"\n{name}|{t.dtype}|{tuple(t.shape)}\n".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def _meta_hash(meta: Mapping[str, Any]) -> str:
    body = {k: v for k, v in meta.items() if k != HASH_KEY}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def read_artifact_meta(directory: str | os.PathLike) -> Dict[str, Any]:
    path = Path(directory) / "config.json"
    if not path.exists():
        raise FileNotFoundError(f"{path}: no saved model here (materialize the upstream model asset first)")
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        line = getattr(e, "lineno", None)
        raise InputError(path, line, f"unreadable model config ({getattr(e, 'msg', None) or e}); re-materialize the model") from None
    if not isinstance(meta, dict) or "kind" not in meta or "config" not in meta:
        raise InputError(path, None, "not a model config (needs 'kind' and 'config'); re-materialize the model")
    return meta


def load_artifact(directory: str | os.PathLike, map_location: str = "cpu") -> Artifact:
    """Rebuilds a saved model after checking its content hash (a changed file is refused, naming it)."""
    meta = read_artifact_meta(directory)
    kind = meta.get("kind")
    if kind not in _REGISTRY:
        _import_known_kinds()
    if kind not in _REGISTRY:
        raise ValueError(f"{directory}/config.json: unknown model kind {kind!r}; known: {sorted(_REGISTRY)}")
    tensors = _read_tensors(Path(directory) / "model.safetensors")
    _verify(Path(directory), meta, tensors)
    tensors = {k: v.to(map_location) for k, v in tensors.items()}
    return _REGISTRY[kind].from_artifact(meta["config"], tensors)


def _read_tensors(path: Path) -> Dict[str, torch.Tensor]:
    if not path.exists():
        raise InputError(path, None, "model weights missing (config.json is there); re-materialize the model")
    try:
        return load_safetensors_bytes(path.read_bytes())
    except Exception as e:  # safetensors raises its own error types for truncated / garbled files
        raise InputError(path, None, f"unreadable safetensors file ({type(e).__name__}: {e}); truncated or corrupted, "
                                     "re-materialize the model") from None


def _verify(directory: Path, meta: Dict[str, Any], tensors: Mapping[str, torch.Tensor]) -> None:
    recorded = meta.get(HASH_KEY)
    if recorded is None:
        warnings.warn(f"{directory}: model saved without a content hash (format {meta.get('format_version')}); "
                      "it cannot be verified, re-materialize it", UserWarning, stacklevel=3)
        return
    if _meta_hash(meta) != recorded.get("config"):
        raise InputError(directory / "config.json", None, "content hash mismatch: the model config changed after it was "
                                                          "saved; re-materialize the model")
    actual = content_hash({}, tensors)
    if actual != recorded.get("tensors"):
        raise InputError(directory / "model.safetensors", None,
                         f"content hash mismatch: the weights changed after they were saved (recorded sha256 "
                         f"{str(recorded.get('tensors'))[:16]}..., found {actual[:16]}...); re-materialize the model")


def _import_known_kinds() -> None:
    """Importing the model modules registers their kinds (every ``@register_artifact`` module; tested)."""
    import importlib

    for mod in (
        "semid_pipeline.core.tokenizers.rqvae",
        "semid_pipeline.core.tokenizers.rqkmeans",
        "semid_pipeline.core.tokenizers.base",
        "semid_pipeline.core.recommender.model",
        "semid_pipeline.core.recommender.parallel",
        "semid_pipeline.core.baselines.sasrec",
        "semid_pipeline.core.retrieval.query_model",
        "semid_pipeline.core.enrich.fusion",
    ):
        try:
            importlib.import_module(mod)
        except ModuleNotFoundError:
            pass


def _json_default(o: Any) -> Any:
    if hasattr(o, "model_dump"):
        return o.model_dump()
    if hasattr(o, "tolist"):
        return o.tolist()
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")
