"""List the SID assignments of a dataset, or diff two of them (``core/tokenizers/versioning.py``):

    python -m semid_pipeline.versions --dataset demo                    # list assignments
    python -m semid_pipeline.versions --dataset demo previous latest    # added / removed / moved, collision rate, codebook use

Reads ``<data_dir>/tables/sid_versions`` (``SEMID_DATA_DIR`` or ``./data``).
"""

import argparse
import json
from typing import List, Optional

from semid_pipeline.core.storage import read_table
from semid_pipeline.core.tokenizers.versioning import diff_versions, list_versions
from semid_pipeline.paths import default_data_dir


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description="List SID assignments of a dataset, or diff two of them.")
    parser.add_argument("--data-dir", default=default_data_dir())
    parser.add_argument("--dataset", default="demo")
    parser.add_argument("a", nargs="?", help="assignment id, tokenizer version, 'previous' or 'latest'")
    parser.add_argument("b", nargs="?", default="latest")
    args = parser.parse_args(argv)
    table = read_table(args.data_dir, "sid_versions", args.dataset)
    if args.a is None:
        print(list_versions(table).to_string(index=False))
        return 0
    diff = diff_versions(table, args.a, args.b)
    print(json.dumps({**diff.summary(), "added": diff.added, "removed": diff.removed, "moved": diff.moved,
                      "codebook_use_a": diff.codebook_use_a, "codebook_use_b": diff.codebook_use_b}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
