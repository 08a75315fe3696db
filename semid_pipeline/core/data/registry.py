"""The datasets the pipeline knows, one Dagster partition each.

A dataset is a name plus how to load its raw items and interactions. Real files are never
copied into the repository: the Amazon partitions read ``<shared_dir>/datasets/<folder>``
(``SEMID_SHARED_DIR``, default ``../shared`` beside the checkout), and fail with an error naming
the missing path when it is absent.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict

from semid_pipeline.core.data.schema import RawDataset
from semid_pipeline.core.errors import InputError


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    description: str
    loader: Callable[[str, Dict[str, Any]], RawDataset]
    """``loader(shared_dir, options) -> RawDataset``."""
    has_categories: bool = True
    options: Dict[str, Any] = field(default_factory=dict)


def _load_demo(shared_dir: str, options: Dict[str, Any]) -> RawDataset:
    from semid_pipeline.core.data.demo import DemoParams, generate_demo

    return generate_demo(DemoParams(**options))


def _amazon_loader(folder: str, category: str) -> Callable[[str, Dict[str, Any]], RawDataset]:
    def load(shared_dir: str, options: Dict[str, Any]) -> RawDataset:
        from semid_pipeline.core.data.amazon import AmazonParams, load_amazon

        root = Path(options.get("root") or Path(shared_dir) / "datasets" / folder)
        if not root.exists():
            raise InputError(root, None, f"dataset folder not found (set SEMID_SHARED_DIR or the 'root' option); needed for {category}")
        params = {"format": "p5", "category": category, "root": str(root)}
        params.update({k: v for k, v in options.items() if k != "root"})
        return load_amazon(AmazonParams(**params))

    return load


DATASETS: Dict[str, DatasetSpec] = {
    "demo": DatasetSpec("demo", "Embedded synthetic catalog generated from a seed (offline default).", _load_demo),
    "amazon-beauty": DatasetSpec(
        "amazon-beauty",
        "Amazon Beauty 5-core (2014 release), P5/S3-Rec sequence format from ../shared.",
        _amazon_loader("amazon-beauty", "Beauty"),
    ),
    # The other two categories of the TIGER / P5 benchmark. Any other Amazon category or release
    # loads through the same partitions by options: {"format": "2014"|"2018", "category": ..., "root": ...}.
    "amazon-sports": DatasetSpec(
        "amazon-sports",
        "Amazon Sports_and_Outdoors 5-core, P5/S3-Rec sequence format (or any release via options).",
        _amazon_loader("amazon-sports", "Sports_and_Outdoors"),
    ),
    "amazon-toys": DatasetSpec(
        "amazon-toys",
        "Amazon Toys_and_Games 5-core, P5/S3-Rec sequence format (or any release via options).",
        _amazon_loader("amazon-toys", "Toys_and_Games"),
    ),
}


def load_raw(name: str, shared_dir: str, options: Dict[str, Any] | None = None) -> RawDataset:
    if name not in DATASETS:
        raise KeyError(f"unknown dataset {name!r}; known: {sorted(DATASETS)}")
    return DATASETS[name].loader(shared_dir, options or {})
