"""Model artifacts: safetensors for tensors + JSON for config. Never pickle.

A model class opts in by subclassing :class:`Artifact` (or implementing the same methods) and
registering itself with :func:`register_artifact`. :func:`save_artifact` writes a directory
atomically::

    <dir>/model.safetensors   every tensor, float32/int64 as trained
    <dir>/config.json         {"kind": ..., "config": {...}, "format_version": 1, "extra": {...}}

and :func:`load_artifact` rebuilds the object from the ``kind`` registry, so a saved tokenizer or
recommender can be reloaded without knowing its class up front.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Any, ClassVar, Dict, Type, TypeVar

import torch
from safetensors.torch import load_file, save_file

FORMAT_VERSION = 1
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
        (tmp / "config.json").write_text(json.dumps(meta, indent=2, sort_keys=True, default=_json_default))
        _atomic_replace_dir(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def read_artifact_meta(directory: str | os.PathLike) -> Dict[str, Any]:
    path = Path(directory) / "config.json"
    if not path.exists():
        raise FileNotFoundError(f"{path}: no saved model here (materialize the upstream model asset first)")
    return json.loads(path.read_text())


def load_artifact(directory: str | os.PathLike, map_location: str = "cpu") -> Artifact:
    meta = read_artifact_meta(directory)
    kind = meta.get("kind")
    if kind not in _REGISTRY:
        _import_known_kinds()
    if kind not in _REGISTRY:
        raise ValueError(f"{directory}/config.json: unknown model kind {kind!r}; known: {sorted(_REGISTRY)}")
    tensors = load_file(str(Path(directory) / "model.safetensors"), device=map_location)
    return _REGISTRY[kind].from_artifact(meta["config"], tensors)


def _import_known_kinds() -> None:
    """Importing the model modules registers their kinds (every ``@register_artifact`` module; tested)."""
    import importlib

    for mod in (
        "semid_pipeline.core.tokenizers.rqvae",
        "semid_pipeline.core.tokenizers.rqkmeans",
        "semid_pipeline.core.tokenizers.base",
        "semid_pipeline.core.recommender.model",
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
