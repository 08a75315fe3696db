"""Query the materialized tables: ``python -m semid_pipeline.query "select * from evaluation"``.

Reads ``<data_dir>/tables`` (``SEMID_DATA_DIR`` or ``./data``) through the same views as
``semid.duckdb``, read-only in fact (:func:`semid_pipeline.core.storage.query`): only SELECT
statements run, no file is written, nothing outside the tables folder is read, nothing is
attached, and the DuckDB file is not opened (a writer holding its lock does not block a query).
A refused or failing query prints one line ``error: ...`` on stderr and exits with status 2.
At most ``--max-rows`` rows (default 50) are fetched and printed; when the query returns more, a
note on stderr says so (add a LIMIT, aggregate, or raise ``--max-rows``): a query returning a
billion rows prints 50 of them instead of running out of memory.
"""

import argparse
import sys

import pandas as pd

from semid_pipeline.core import storage
from semid_pipeline.paths import default_data_dir


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sql", help="SQL to run, e.g. \"select * from semantic_ids limit 5\"")
    parser.add_argument("--data-dir", default=default_data_dir())
    parser.add_argument("--max-rows", type=int, default=50, help="rows fetched and printed at most (default 50)")
    args = parser.parse_args(argv)
    try:
        result = storage.query(args.data_dir, args.sql, max_rows=args.max_rows)
    except storage.QueryError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    with pd.option_context("display.max_rows", args.max_rows, "display.max_columns", 50, "display.width", 200):
        print(result)
    if result.attrs.get("truncated"):
        print(f"note: showing the first {args.max_rows} rows; the query returns more (add a LIMIT, aggregate, or pass "
              "--max-rows N)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
