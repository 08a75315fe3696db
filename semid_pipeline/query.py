"""Query the materialized tables: ``python -m semid_pipeline.query "select * from evaluation"``.

Opens ``<data_dir>/semid.duckdb`` read-only (``SEMID_DATA_DIR`` or ``./data``), refreshing the views
first, and prints the result. Any DuckDB client works the same way on that file.
"""

import argparse

import pandas as pd

from semid_pipeline.core import storage
from semid_pipeline.paths import default_data_dir


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sql", help="SQL to run, e.g. \"select * from semantic_ids limit 5\"")
    parser.add_argument("--data-dir", default=default_data_dir())
    parser.add_argument("--max-rows", type=int, default=50)
    args = parser.parse_args(argv)
    storage.refresh_views(args.data_dir)
    with pd.option_context("display.max_rows", args.max_rows, "display.max_columns", 50, "display.width", 200):
        print(storage.query(args.data_dir, args.sql))


if __name__ == "__main__":
    main()
