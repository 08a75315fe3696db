"""The datasets the pipeline knows, one Dagster partition each: declared in datasets files, not coded.

A datasets file (YAML) lists named datasets; each entry names a *format* (how to load it), a
description and the options the format's loader takes::

    datasets:
      my-shop:
        format: generic
        description: My shop's catalog and purchase logs
        options:
          items: {path: items.parquet, columns: {item_id: sku}}
          interactions: {path: events.csv, columns: {user_id: customer, item_id: sku, timestamp: event_time}}

The built-in datasets are entries of the same kind in ``semid_pipeline/configs/datasets.yaml``
(``datasets.yaml`` at the repository root links to it). ``SEMID_DATASETS_FILE`` names more files
(several separated by ``os.pathsep``) whose entries are added; a name declared twice is refused.
Relative paths inside a file are relative to that file. Formats are the loaders in :data:`FORMATS`
(``demo``, ``amazon``, ``esci``, ``kuairand``, ``generic``: see ``core/data/generic.py`` and
docs/own-data.md). A generator of synthetic data writes generic-format files
(:func:`semid_pipeline.core.data.generic.write_generic`) and an entry points at them.

Every problem in a datasets file (YAML syntax, an unknown key or format with its close match, a
bad name, a declaration the format's options refuse, a name declared twice) is an ``InputError``
naming the file and line, raised when the definitions load; the files a generic entry names are
read only when its partition is materialized.

Real files are never copied into the repository: the Amazon, ESCI and KuaiRand entries read
``<shared_dir>/datasets/<shared_folder>`` (``SEMID_SHARED_DIR``, default ``../shared`` beside the
checkout) unless a ``root`` option is given, and fail with an error naming the missing path when
it is absent.
"""

from __future__ import annotations

import difflib
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Optional

import pandas as pd
import yaml
from pydantic import ValidationError

from semid_pipeline.core.data.schema import RawDataset
from semid_pipeline.core.errors import InputError
from semid_pipeline.core.params import unknown_keys_problem

OPTIONS_SOURCE = "SEMID_DATASET_OPTIONS"
DATASETS_FILE_ENV = "SEMID_DATASETS_FILE"
BUILTIN_DATASETS_FILE = Path(__file__).resolve().parents[2] / "configs" / "datasets.yaml"

ENTRY_KEYS = ("format", "description", "options", "keep_all_items")
# A partition key and a folder name (tables are stored under dataset=<name>/).
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")

Loader = Callable[[str, Dict[str, Any]], RawDataset]
"""``loader(shared_dir, options) -> RawDataset``."""


@dataclass(frozen=True)
class DatasetFormat:
    """How one kind of source is loaded: the loader and what the pipeline needs to know about it."""

    name: str
    loader: Loader
    option_keys: Callable[[], set]
    """``option_keys()`` -> every option the loaders accept; any other key is refused, naming the close match."""
    has_categories: bool = True
    queries: Optional[Callable[[str, Dict[str, Any]], pd.DataFrame]] = None
    """``queries(shared_dir, options)`` -> the judged query table (``esci.QUERY_COLUMNS``) of the
    retrieval task, for datasets that have one (esci, demo)."""
    keep_all_items: bool = False
    """Default of preprocessing's ``keep_all_items``: keep catalog items without interactions (a retrieval
    corpus, or a shop's cold items: every product needs a SID)."""
    tag_pool: Optional[Callable[[pd.DataFrame], pd.DataFrame]] = None
    """``tag_pool(items)`` -> a default tag pool table (``level, name, parent``) for datasets without
    category paths (KuaiRand); used by the tag stage when no ``tag_pool_path`` is configured."""
    check: Optional[Callable[[Dict[str, Any]], None]] = None
    """``check(options)`` raises ``ValueError`` / ``ValidationError`` for a declaration the loader would
    refuse, so a datasets file fails when the definitions load rather than at the first run."""
    resolve_paths: Optional[Callable[[Dict[str, Any], Path], Dict[str, Any]]] = None
    """``resolve_paths(options, folder)`` -> the options with relative file paths made relative to ``folder``
    (the datasets file's)."""


@dataclass(frozen=True)
class DatasetSpec:
    """One declared dataset: its name (the partition key), format and the options of its loader."""

    name: str
    description: str
    format: DatasetFormat
    options: Dict[str, Any] = field(default_factory=dict)
    keep_all_items: bool = False
    """Preprocessing keeps catalog items without interactions (a retrieval corpus, a shop's cold items)."""
    declared_in: str = ""
    """``<file>:<line>`` of the entry."""

    @property
    def loader(self) -> Loader:
        return self.format.loader

    @property
    def has_categories(self) -> bool:
        return self.format.has_categories

    @property
    def queries(self):
        return self.format.queries

    @property
    def tag_pool(self):
        return self.format.tag_pool

    @property
    def option_keys(self) -> Callable[[], set]:
        return self.format.option_keys


def _load_demo(shared_dir: str, options: Dict[str, Any]) -> RawDataset:
    from semid_pipeline.core.data.demo import DemoParams, generate_demo

    return generate_demo(DemoParams(**{k: v for k, v in options.items() if k in DemoParams.model_fields}))


def _shared_root(shared_dir: str, options: Dict[str, Any], missing: str) -> Path:
    """``options['root']``, else ``<shared_dir>/datasets/<shared_folder>``; ``InputError`` with ``missing`` when absent."""
    folder = options.get("shared_folder")
    if not options.get("root") and not folder:
        raise InputError(OPTIONS_SOURCE, None, "set the 'root' option (or 'shared_folder', a folder under SEMID_SHARED_DIR/datasets)")
    root = Path(options.get("root") or Path(shared_dir) / "datasets" / folder)
    if not root.exists():
        raise InputError(root, None, missing)
    return root


def _load_amazon(shared_dir: str, options: Dict[str, Any]) -> RawDataset:
    from semid_pipeline.core.data.amazon import AmazonParams, load_amazon

    category = options.get("category", "Beauty")
    root = _shared_root(shared_dir, options, f"dataset folder not found (set SEMID_SHARED_DIR or the 'root' option); needed for {category}")
    params = {"format": "p5", "category": category, "root": str(root)}
    params.update({k: v for k, v in options.items() if k not in ("root", "shared_folder")})
    return load_amazon(AmazonParams(**params))


def _demo_option_keys() -> set:
    from semid_pipeline.core.data.demo import DemoParams, DemoQueryParams

    return set(DemoParams.model_fields) | set(DemoQueryParams.model_fields)


def _amazon_option_keys() -> set:
    from semid_pipeline.core.data.amazon import AmazonParams

    return set(AmazonParams.model_fields) | {"shared_folder"}


def _esci_option_keys() -> set:
    from semid_pipeline.core.data.esci import EsciParams

    return set(EsciParams.model_fields) | {"shared_folder"}


def _kuairand_option_keys() -> set:
    from semid_pipeline.core.data.kuairand import KuaiRandParams

    return set(KuaiRandParams.model_fields) | {"shared_folder"}


def _load_demo_queries(shared_dir: str, options: Dict[str, Any]) -> pd.DataFrame:
    from semid_pipeline.core.data.demo import DemoParams, DemoQueryParams, generate_demo, generate_demo_queries

    demo = DemoParams(**{k: v for k, v in options.items() if k in DemoParams.model_fields})
    queries = DemoQueryParams(**{k: v for k, v in options.items() if k in DemoQueryParams.model_fields})
    return generate_demo_queries(generate_demo(demo).items, queries, seed=demo.seed)


def _esci_params(shared_dir: str, options: Dict[str, Any]):
    from semid_pipeline.core.data.esci import EsciParams

    root = _shared_root(shared_dir, options, "ESCI folder not found (set SEMID_SHARED_DIR or the 'root' option to the folder "
                                             "holding shopping_queries_dataset_examples.parquet and ..._products.parquet)")
    return EsciParams(**{**{k: v for k, v in options.items() if k != "shared_folder"}, "root": str(root)})


def _load_esci(shared_dir: str, options: Dict[str, Any]) -> RawDataset:
    from semid_pipeline.core.data.esci import load_esci

    return load_esci(_esci_params(shared_dir, options))


def _load_esci_queries(shared_dir: str, options: Dict[str, Any]) -> pd.DataFrame:
    from semid_pipeline.core.data.esci import load_esci_queries

    return load_esci_queries(_esci_params(shared_dir, options))


def _load_kuairand(shared_dir: str, options: Dict[str, Any]) -> RawDataset:
    from semid_pipeline.core.data.kuairand import KuaiRandParams, load_kuairand

    root = _shared_root(shared_dir, options, "KuaiRand folder not found (set SEMID_SHARED_DIR or the 'root' option to the "
                                             "folder holding log_standard_*.csv, video_features_basic_*.csv, ...)")
    return load_kuairand(KuaiRandParams(**{**{k: v for k, v in options.items() if k != "shared_folder"}, "root": str(root)}))


def _kuairand_tag_pool(items: pd.DataFrame) -> pd.DataFrame:
    from semid_pipeline.core.data.kuairand import kuairand_tag_pool

    return kuairand_tag_pool(items)


def _load_generic(shared_dir: str, options: Dict[str, Any]) -> RawDataset:
    from semid_pipeline.core.data.generic import GenericParams, load_generic

    return load_generic(GenericParams(**options))


def _generic_option_keys() -> set:
    from semid_pipeline.core.data.generic import GenericParams

    return set(GenericParams.model_fields)


def _check_generic(options: Dict[str, Any]) -> None:
    from semid_pipeline.core.data.generic import GenericParams

    GenericParams(**options)


def _generic_paths(options: Dict[str, Any], folder: Path) -> Dict[str, Any]:
    out = dict(options)
    for table in ("items", "interactions"):
        value = out.get(table)
        if isinstance(value, str):
            out[table] = str(folder / Path(value).expanduser())
        elif isinstance(value, dict) and isinstance(value.get("path"), str):
            out[table] = {**value, "path": str(folder / Path(value["path"]).expanduser())}
    return out


FORMATS: Dict[str, DatasetFormat] = {
    "demo": DatasetFormat("demo", _load_demo, _demo_option_keys, queries=_load_demo_queries),
    "amazon": DatasetFormat("amazon", _load_amazon, _amazon_option_keys),
    "esci": DatasetFormat("esci", _load_esci, _esci_option_keys, has_categories=False, queries=_load_esci_queries, keep_all_items=True),
    "kuairand": DatasetFormat("kuairand", _load_kuairand, _kuairand_option_keys, has_categories=False, tag_pool=_kuairand_tag_pool),
    "generic": DatasetFormat("generic", _load_generic, _generic_option_keys, keep_all_items=True, check=_check_generic,
                             resolve_paths=_generic_paths),
}


# ---------------------------------------------------------------------------------------------
# datasets files


class _Mapping(dict):
    """A YAML mapping that remembers the line (1-based) of each key."""

    lines: Dict[Any, int]


class _LineLoader(yaml.SafeLoader):
    """Safe YAML whose mappings know their keys' lines and refuse a key given twice."""

    path = ""


def _construct_mapping(loader: _LineLoader, node: yaml.MappingNode, deep: bool = False) -> _Mapping:
    loader.flatten_mapping(node)
    out, lines = _Mapping(), {}
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        line = key_node.start_mark.line + 1
        if key in lines:
            raise InputError(loader.path, line, f"key {key!r} given twice (first on line {lines[key]})")
        lines[key] = line
        out[key] = loader.construct_object(value_node, deep=True)
    out.lines = lines
    return out


_LineLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def _read_yaml(path: Path) -> Any:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(path, None, f"cannot read the datasets file: {e}") from None
    loader = _LineLoader(text)
    loader.path = str(path)
    try:
        return loader.get_single_data()
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        raise InputError(path, line, f"invalid YAML: {getattr(e, 'problem', None) or e}") from None
    finally:
        loader.dispose()


def _line(mapping: Any, key: Any) -> Optional[int]:
    return getattr(mapping, "lines", {}).get(key)


def _validation_problem(err: ValidationError) -> str:
    """One line per pydantic error, joined: ``items.columns: unknown key 'itme_id' (did you mean 'item_id'?)``."""
    parts = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"])
        msg = str(e["msg"]).removeprefix("Value error, ")
        parts.append(f"{loc}: {msg}" if loc else msg)
    return "; ".join(parts)


def _entry(name: Any, entry: Any, path: Path, line: Optional[int]) -> DatasetSpec:
    where = f"dataset {name!r}"
    if not isinstance(name, str) or not _NAME.match(name):
        raise InputError(path, line, f"dataset name {name!r} must be 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit")
    if not isinstance(entry, dict):
        raise InputError(path, line, f"{where}: expected a mapping with keys {list(ENTRY_KEYS)}, got {type(entry).__name__}")
    problem = unknown_keys_problem(list(entry), ENTRY_KEYS)
    if problem:
        bad = next(k for k in entry if k not in ENTRY_KEYS)
        raise InputError(path, _line(entry, bad) or line, f"{where}: {problem}")
    kind = entry.get("format")
    if kind not in FORMATS:
        close = difflib.get_close_matches(str(kind), sorted(FORMATS), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        shown = "missing key 'format'" if kind is None else f"unknown format {kind!r}{hint}"
        raise InputError(path, _line(entry, "format") or line, f"{where}: {shown}; formats: {', '.join(sorted(FORMATS))}")
    fmt = FORMATS[kind]
    options = entry.get("options") or {}
    options_line = _line(entry, "options") or line
    if not isinstance(options, dict):
        raise InputError(path, options_line, f"{where}: options must be a mapping, got {type(options).__name__}")
    problem = unknown_keys_problem(list(options), fmt.option_keys())
    if problem:
        bad = next(k for k in options if k not in fmt.option_keys())
        raise InputError(path, _line(options, bad) or options_line, f"{where}: options: {problem}")
    options = dict(options)
    if fmt.resolve_paths is not None:
        options = fmt.resolve_paths(options, path.parent)
    if fmt.check is not None:
        try:
            fmt.check(options)
        except ValidationError as e:
            raise InputError(path, options_line, f"{where}: options: {_validation_problem(e)}") from None
        except ValueError as e:
            raise InputError(path, options_line, f"{where}: options: {e}") from None
    keep = entry.get("keep_all_items", fmt.keep_all_items)
    if not isinstance(keep, bool):
        raise InputError(path, _line(entry, "keep_all_items") or line, f"{where}: keep_all_items must be true or false, got {keep!r}")
    description = entry.get("description") or f"{kind} dataset declared in {path.name}"
    return DatasetSpec(name, str(description), fmt, options, keep, f"{path}:{line}" if line else str(path))


def read_datasets_file(path: str | os.PathLike) -> Dict[str, DatasetSpec]:
    """The entries of one datasets file, checked (module docstring); ``InputError`` naming file and line."""
    path = Path(path).expanduser().resolve()
    if not path.is_file():
        raise InputError(path, None, "datasets file not found")
    data = _read_yaml(path)
    if not isinstance(data, dict):
        raise InputError(path, None, "a datasets file is a mapping with one key, 'datasets'")
    problem = unknown_keys_problem(list(data), ["datasets"])
    if problem:
        raise InputError(path, _line(data, next(k for k in data if k != "datasets")), problem)
    entries = data.get("datasets") or {}
    if not isinstance(entries, dict):
        raise InputError(path, _line(data, "datasets"), f"'datasets' must map names to entries, got {type(entries).__name__}")
    return {name: _entry(name, entry, path, _line(entries, name)) for name, entry in entries.items()}


def datasets_files(env: Optional[str] = None) -> List[Path]:
    """The built-in datasets file, then the ones ``SEMID_DATASETS_FILE`` names (``env`` overrides it)."""
    value = os.environ.get(DATASETS_FILE_ENV, "") if env is None else env
    extra = [Path(p).expanduser() for p in value.split(os.pathsep) if p.strip()]
    for p in extra:
        if not p.is_file():
            raise InputError(p, None, f"datasets file not found (named by {DATASETS_FILE_ENV})")
    return [BUILTIN_DATASETS_FILE] + extra


def load_datasets(files: Iterable[str | os.PathLike]) -> Dict[str, DatasetSpec]:
    """Every dataset the files declare, in file order; a name declared twice is refused naming both places."""
    out: Dict[str, DatasetSpec] = {}
    seen_files = set()
    for path in files:
        resolved = Path(path).expanduser().resolve()
        if resolved in seen_files:  # the root datasets.yaml named again: it links to the built-in file
            continue
        seen_files.add(resolved)
        for name, spec in read_datasets_file(resolved).items():
            if name in out:
                file, _, line = spec.declared_in.rpartition(":")
                raise InputError(file, int(line) if line.isdigit() else None,
                                 f"dataset {name!r} is already declared at {out[name].declared_in}; "
                                 "rename it (to re-point a built-in dataset give it a 'root' option in SEMID_DATASET_OPTIONS)")
            out[name] = spec
    return out


DATASETS: Dict[str, DatasetSpec] = load_datasets(datasets_files())
"""Every declared dataset: the built-in file plus ``SEMID_DATASETS_FILE``, read once when the package loads."""


def unknown_dataset_problem(name: str) -> str:
    """``unknown dataset 'x' (did you mean 'y'?); known: [...]``."""
    close = difflib.get_close_matches(str(name), sorted(DATASETS), n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return f"unknown dataset {name!r}{hint}; known: {sorted(DATASETS)}"


def check_options(name: str, options: Dict[str, Any], source: str = OPTIONS_SOURCE) -> Dict[str, Any]:
    """Refuses an options mapping that is not an object or has a key the dataset's loaders do not know.

    ``InputError`` naming ``source[dataset]``, the unknown key and its close match:
    ``{"demo": {"n_item": 80}}`` -> ``SEMID_DATASET_OPTIONS['demo']: unknown key 'n_item' (did you mean 'n_items'?)``.
    """
    if name not in DATASETS:
        raise KeyError(unknown_dataset_problem(name))
    where = f"{source}[{name!r}]"
    if not isinstance(options, dict):
        raise InputError(where, None, f"must be a JSON object of loader options, got {type(options).__name__} {options!r}")
    problem = unknown_keys_problem(list(options), DATASETS[name].option_keys())
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
            raise InputError(source, None, unknown_dataset_problem(name))
        check_options(name, options, source)
    return data


def merged_options(name: str, options: Dict[str, Any] | None = None, source: str = OPTIONS_SOURCE) -> Dict[str, Any]:
    """The dataset's declared options updated by ``options`` (``SEMID_DATASET_OPTIONS``), checked first."""
    options = check_options(name, dict(options or {}), source)
    return {**DATASETS[name].options, **options}


def load_raw(name: str, shared_dir: str, options: Dict[str, Any] | None = None, source: str = OPTIONS_SOURCE) -> RawDataset:
    """The raw tables of a declared dataset: its loader on its declared options updated by ``options``."""
    return DATASETS[name].loader(shared_dir, merged_options(name, options, source))


def load_queries(name: str, shared_dir: str, options: Dict[str, Any] | None = None, source: str = OPTIONS_SOURCE) -> pd.DataFrame:
    """The judged query table of a dataset's retrieval task; ``InputError`` for a dataset without one."""
    merged = merged_options(name, options, source)
    spec = DATASETS[name]
    if spec.queries is None:
        with_queries = sorted(k for k, v in DATASETS.items() if v.queries is not None)
        raise InputError(name, None, f"dataset {name!r} has no search queries; the retrieval stage runs on {with_queries}")
    return spec.queries(shared_dir, merged)
