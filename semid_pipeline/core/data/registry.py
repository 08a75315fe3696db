"""The datasets the pipeline knows, one Dagster partition each.

A dataset is a name plus how to load its raw items and interactions. Real files are never
copied into the repository: the Amazon partitions read ``<shared_dir>/datasets/<folder>``
(``SEMID_SHARED_DIR``, default ``../shared`` beside the checkout), and fail with an error naming
the missing path when it is absent.
"""

from __future__ import annotations

import difflib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Optional

import pandas as pd

from semid_pipeline.core.data.schema import RawDataset
from semid_pipeline.core.errors import InputError
from semid_pipeline.core.params import unknown_keys_problem

OPTIONS_SOURCE = "SEMID_DATASET_OPTIONS"


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    description: str
    loader: Callable[[str, Dict[str, Any]], RawDataset]
    """``loader(shared_dir, options) -> RawDataset``."""
    has_categories: bool = True
    options: Dict[str, Any] = field(default_factory=dict)
    queries: Optional[Callable[[str, Dict[str, Any]], pd.DataFrame]] = None
    """``queries(shared_dir, options)`` -> the judged query table (``esci.QUERY_COLUMNS``) of the
    retrieval task, for datasets that have one (esci, demo)."""
    keep_all_items: bool = False
    """Preprocessing keeps catalog items without interactions (a retrieval corpus: every product needs a SID)."""
    tag_pool: Optional[Callable[[pd.DataFrame], pd.DataFrame]] = None
    """``tag_pool(items)`` -> a default tag pool table (``level, name, parent``) for datasets without
    category paths (KuaiRand); used by the tag stage when no ``tag_pool_path`` is configured."""
    option_keys: Optional[Callable[[], set]] = None
    """``option_keys()`` -> every option the loaders accept; any other key is refused, naming the close match."""


def _load_demo(shared_dir: str, options: Dict[str, Any]) -> RawDataset:
    from semid_pipeline.core.data.demo import DemoParams, generate_demo

    return generate_demo(DemoParams(**{k: v for k, v in options.items() if k in DemoParams.model_fields}))


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


def _demo_option_keys() -> set:
    from semid_pipeline.core.data.demo import DemoParams, DemoQueryParams

    return set(DemoParams.model_fields) | set(DemoQueryParams.model_fields)


def _amazon_option_keys() -> set:
    from semid_pipeline.core.data.amazon import AmazonParams

    return set(AmazonParams.model_fields)


def _esci_option_keys() -> set:
    from semid_pipeline.core.data.esci import EsciParams

    return set(EsciParams.model_fields)


def _kuairand_option_keys() -> set:
    from semid_pipeline.core.data.kuairand import KuaiRandParams

    return set(KuaiRandParams.model_fields)


def _load_demo_queries(shared_dir: str, options: Dict[str, Any]) -> pd.DataFrame:
    from semid_pipeline.core.data.demo import DemoParams, DemoQueryParams, generate_demo, generate_demo_queries

    demo = DemoParams(**{k: v for k, v in options.items() if k in DemoParams.model_fields})
    queries = DemoQueryParams(**{k: v for k, v in options.items() if k in DemoQueryParams.model_fields})
    return generate_demo_queries(generate_demo(demo).items, queries, seed=demo.seed)


def _esci_params(shared_dir: str, options: Dict[str, Any]):
    from semid_pipeline.core.data.esci import EsciParams

    root = Path(options.get("root") or Path(shared_dir) / "datasets" / "esci")
    if not root.exists():
        raise InputError(root, None, "ESCI folder not found (set SEMID_SHARED_DIR or the 'root' option to the folder "
                                     "holding shopping_queries_dataset_examples.parquet and ..._products.parquet)")
    return EsciParams(**{**options, "root": str(root)})


def _load_esci(shared_dir: str, options: Dict[str, Any]) -> RawDataset:
    from semid_pipeline.core.data.esci import load_esci

    return load_esci(_esci_params(shared_dir, options))


def _load_esci_queries(shared_dir: str, options: Dict[str, Any]) -> pd.DataFrame:
    from semid_pipeline.core.data.esci import load_esci_queries

    return load_esci_queries(_esci_params(shared_dir, options))


def _load_kuairand(shared_dir: str, options: Dict[str, Any]) -> RawDataset:
    from semid_pipeline.core.data.kuairand import KuaiRandParams, load_kuairand

    root = Path(options.get("root") or Path(shared_dir) / "datasets" / "kuairand")
    if not root.exists():
        raise InputError(root, None, "KuaiRand folder not found (set SEMID_SHARED_DIR or the 'root' option to the "
                                     "folder holding log_standard_*.csv, video_features_basic_*.csv, ...)")
    return load_kuairand(KuaiRandParams(**{**options, "root": str(root)}))


def _kuairand_tag_pool(items: pd.DataFrame) -> pd.DataFrame:
    from semid_pipeline.core.data.kuairand import kuairand_tag_pool

    return kuairand_tag_pool(items)


DATASETS: Dict[str, DatasetSpec] = {
    "demo": DatasetSpec(
        "demo", "Embedded synthetic catalog generated from a seed (offline default).", _load_demo, queries=_load_demo_queries,
        option_keys=_demo_option_keys,
    ),
    "amazon-beauty": DatasetSpec(
        "amazon-beauty",
        "Amazon Beauty 5-core (2014 release), P5/S3-Rec sequence format from ../shared.",
        _amazon_loader("amazon-beauty", "Beauty"),
        option_keys=_amazon_option_keys,
    ),
    # The other two categories of the TIGER / P5 benchmark. Any other Amazon category or release
    # loads through the same partitions by options: {"format": "2014"|"2018", "category": ..., "root": ...}.
    "amazon-sports": DatasetSpec(
        "amazon-sports",
        "Amazon Sports_and_Outdoors 5-core, P5/S3-Rec sequence format (or any release via options).",
        _amazon_loader("amazon-sports", "Sports_and_Outdoors"),
        option_keys=_amazon_option_keys,
    ),
    "amazon-toys": DatasetSpec(
        "amazon-toys",
        "Amazon Toys_and_Games 5-core, P5/S3-Rec sequence format (or any release via options).",
        _amazon_loader("amazon-toys", "Toys_and_Games"),
        option_keys=_amazon_option_keys,
    ),
    "esci": DatasetSpec(
        "esci",
        "Amazon ESCI shopping queries (official Parquet release; options locale us/es/jp, categories_path) from ../shared/datasets/esci.",
        _load_esci,
        has_categories=False,
        queries=_load_esci_queries,
        keep_all_items=True,
        option_keys=_esci_option_keys,
    ),
    "kuairand": DatasetSpec(
        "kuairand",
        "KuaiRand Pure/1K/27K (official CSV logs; options variant, positive) from ../shared/datasets/kuairand.",
        _load_kuairand,
        has_categories=False,
        tag_pool=_kuairand_tag_pool,
        option_keys=_kuairand_option_keys,
    ),
}


def _unknown_dataset(name: str) -> str:
    close = difflib.get_close_matches(str(name), sorted(DATASETS), n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return f"unknown dataset {name!r}{hint}; known: {sorted(DATASETS)}"


def check_options(name: str, options: Dict[str, Any], source: str = OPTIONS_SOURCE) -> Dict[str, Any]:
    """Refuses an options mapping that is not an object or has a key the dataset's loaders do not know.

    ``InputError`` naming ``source[dataset]``, the unknown key and its close match:
    ``{"demo": {"n_item": 80}}`` -> ``SEMID_DATASET_OPTIONS['demo']: unknown key 'n_item' (did you mean 'n_items'?)``.
    """
    if name not in DATASETS:
        raise KeyError(_unknown_dataset(name))
    where = f"{source}[{name!r}]"
    if not isinstance(options, dict):
        raise InputError(where, None, f"must be a JSON object of loader options, got {type(options).__name__} {options!r}")
    spec = DATASETS[name]
    if spec.option_keys is not None:
        problem = unknown_keys_problem(list(options), spec.option_keys())
        if problem:
            raise InputError(where, None, problem)
    return options


def parse_options(text: str | None, source: str = OPTIONS_SOURCE) -> Dict[str, Dict[str, Any]]:
    """Parses the per-dataset options JSON (``{"demo": {"n_items": 500}}``), refusing what cannot be meant.

    Invalid JSON, a non-object, a dataset name that does not exist (with its close match) or a
    dataset's unknown option key raise ``InputError`` naming ``source`` (the environment variable).
    """
    try:
        data = json.loads(text or "{}")
    except (json.JSONDecodeError, RecursionError) as e:
        detail = f"{e.msg} at line {e.lineno} column {e.colno}" if isinstance(e, json.JSONDecodeError) else "nested too deeply"
        raise InputError(source, None, f"invalid JSON ({detail}); expected e.g. '{{\"demo\": {{\"n_items\": 500}}}}'") from None
    if not isinstance(data, dict):
        raise InputError(source, None, f"must be a JSON object mapping dataset names to options, got {type(data).__name__}")
    for name, options in data.items():
        if name not in DATASETS:
            raise InputError(source, None, _unknown_dataset(name))
        check_options(name, options, source)
    return data


def load_raw(name: str, shared_dir: str, options: Dict[str, Any] | None = None, source: str = OPTIONS_SOURCE) -> RawDataset:
    options = check_options(name, dict(options or {}), source)
    return DATASETS[name].loader(shared_dir, options)


def load_queries(name: str, shared_dir: str, options: Dict[str, Any] | None = None, source: str = OPTIONS_SOURCE) -> pd.DataFrame:
    """The judged query table of a dataset's retrieval task; ``InputError`` for a dataset without one."""
    options = check_options(name, dict(options or {}), source)
    spec = DATASETS[name]
    if spec.queries is None:
        with_queries = sorted(k for k, v in DATASETS.items() if v.queries is not None)
        raise InputError(name, None, f"dataset {name!r} has no search queries; the retrieval stage runs on {with_queries}")
    return spec.queries(shared_dir, options)
