"""Reading user-supplied tables (Parquet, CSV, TSV, JSON lines) with errors that name the file."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from semid_pipeline.core.errors import InputError


def read_any_table(path: str | Path) -> pd.DataFrame:
    p = Path(path)
    if not p.exists():
        raise InputError(p, None, "file not found")
    suffix = "".join(p.suffixes[-2:]) if p.suffix == ".gz" else p.suffix
    try:
        if suffix == ".parquet":
            return pd.read_parquet(p)
        if suffix in (".csv", ".csv.gz"):
            return pd.read_csv(p)
        if suffix in (".tsv", ".tsv.gz"):
            return pd.read_csv(p, sep="\t")
        if suffix in (".jsonl", ".jsonl.gz", ".json"):
            return pd.read_json(p, lines=suffix != ".json")
    except (ValueError, OSError) as exc:
        raise InputError(p, None, f"cannot be read as {suffix}: {exc}") from exc
    raise InputError(p, None, f"unsupported table format {suffix!r} (use .parquet, .csv, .tsv or .jsonl)")
