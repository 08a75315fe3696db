"""List the declared datasets, or check one before running anything: ``python -m semid_pipeline.datasets [NAME]``.

Without a name: every dataset the datasets files declare (the built-in file plus
``SEMID_DATASETS_FILE``), one line each: name, format, where it is declared, description. With a
name: loads that dataset as the ``raw_dataset`` step would (same checks, same
``SEMID_DATASET_OPTIONS``) and prints its size, its cold items (no interactions), its time range
and what was dropped; nothing is written. A refused file prints one line ``error: ...`` naming
file, row and column on stderr and exits with status 2.
"""

import argparse
import logging
import os
import sys

import pandas as pd

from semid_pipeline.core.data.registry import DATASETS, load_raw, parse_options, unknown_dataset_problem
from semid_pipeline.core.errors import InputError
from semid_pipeline.paths import default_shared_dir
from semid_pipeline.reporting import CORE_LOGGER


class _Collect(logging.Handler):
    def __init__(self):
        super().__init__(level=logging.INFO)
        self.lines = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(f"{record.levelname.lower()}: {record.getMessage()}")


def describe(name: str, options_json: str = "{}") -> str:
    """The check report of one dataset (module docstring); ``InputError`` when its files are refused."""
    options = parse_options(options_json).get(name, {})
    collect = _Collect()
    logger = logging.getLogger(CORE_LOGGER)
    logger.addHandler(collect)
    level = logger.level
    logger.setLevel(logging.INFO)
    try:
        raw = load_raw(name, default_shared_dir(), options)
    finally:
        logger.removeHandler(collect)
        logger.setLevel(level)
    items, inter = raw.items, raw.interactions
    cold = int((~items["item_id"].isin(inter["item_id"])).sum())
    times = pd.to_datetime(inter["timestamp"], unit="s", utc=True)
    per_user = inter.groupby("user_id").size()
    lines = [
        f"{name} ({DATASETS[name].format.name}, declared in {DATASETS[name].declared_in})",
        f"  items: {len(items):,} ({cold:,} without interactions: cold items, they get SIDs"
        f"{'' if DATASETS[name].keep_all_items else ' only with keep_all_items'})",
        f"  interactions: {len(inter):,} by {len(per_user):,} users "
        f"({int((per_user >= 5).sum()):,} users with 5 or more: the default k-core)",
        f"  time range: {times.min():%Y-%m-%d %H:%M:%S} .. {times.max():%Y-%m-%d %H:%M:%S} UTC",
        f"  with categories: {int(items['categories'].map(len).gt(0).sum()):,} items; with brand: "
        f"{int(items['brand'].notna().sum()):,}; with description: {int(items['description'].notna().sum()):,}",
    ]
    return "\n".join(lines + [f"  {line}" for line in collect.lines])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("name", nargs="?", help="a declared dataset to load and check")
    args = parser.parse_args(argv)
    if args.name is None:
        for spec in DATASETS.values():
            print(f"{spec.name:<20} {spec.format.name:<9} {spec.declared_in}  {spec.description}")
        return 0
    if args.name not in DATASETS:
        print(f"error: {unknown_dataset_problem(args.name)}", file=sys.stderr)
        return 2
    try:
        print(describe(args.name, os.environ.get("SEMID_DATASET_OPTIONS", "{}")))
    except InputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
