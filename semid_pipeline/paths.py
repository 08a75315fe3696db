"""Default locations, overridable by environment variables (no Dagster imports)."""

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]


def default_data_dir() -> str:
    """``SEMID_DATA_DIR`` or ``<repo>/data``: where tables, models and the DuckDB file live."""
    return os.environ.get("SEMID_DATA_DIR", str(REPO_ROOT / "data"))


def default_shared_dir() -> str:
    """``SEMID_SHARED_DIR`` or ``<repo>/../shared``: read-only datasets beside the checkout."""
    return os.environ.get("SEMID_SHARED_DIR", str(REPO_ROOT.parent / "shared"))
