"""Runs the README's shell command blocks on a demo, so a README that drifts from the code fails CI:

    .venv/bin/python -m semid_pipeline.devtools.readme_check [README.md] [--data-dir DIR]

Checked: every fenced block opened with ```` ```bash ````. Not checked: ```` ```sh ```` blocks (commands
that install, serve or deploy: the set-up commands, the UI, Docker) and output blocks (```` ```text ````).
Each checked block runs, in README order, as one ``bash -euo pipefail`` script from the repository root,
all in one throw-away Dagster instance and data dir on a tiny demo (``SEMID_DATASET_OPTIONS``) that the
check first materializes with README command one's job (``demo_pipeline``, ``configs/demo.yaml``), or
on the data dir given with ``--data-dir`` (used as is). A block fails the check when it exits non-zero
or when a query in it prints no row (``Empty DataFrame``): an example that finds nothing is broken too.
Exit status 1 names each failing block by its README line, with the end of its output.

``--demo-table --data-dir DIR`` instead compares what ``scripts/demo_table.sh`` prints for the demo in DIR
(after ``bash scripts/demo.sh``: ``--data-dir data``) with the README's ```` ```text ```` block under the
``<!-- demo-table`` marker, and runs nothing else.
"""

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CHECKED = "bash"
TINY_DEMO = {"demo": {"n_items": 240, "n_users": 300, "seed": 7}}
FENCE = re.compile(r"^```(\S*)\s*$")
EMPTY_RESULT = "Empty DataFrame"
DEMO_TABLE_MARKER = "<!-- demo-table"


@dataclass
class Block:
    lang: str
    line: int  # README line of the opening fence (1-based)
    code: str


def extract_blocks(text: str) -> list[Block]:
    """Every fenced block of a Markdown text, with its language tag and opening line."""
    blocks, lang, start, body = [], None, 0, []
    for n, line in enumerate(text.splitlines(), 1):
        m = FENCE.match(line.strip())
        if lang is None and m:
            lang, start, body = m.group(1), n, []
        elif lang is not None and line.strip() == "```":
            blocks.append(Block(lang, start, "\n".join(body)))
            lang = None
        elif lang is not None:
            body.append(line)
    if lang is not None:
        raise ValueError(f"line {start}: the code block opened here is never closed")
    return blocks


def checked_blocks(text: str) -> list[Block]:
    return [b for b in extract_blocks(text) if b.lang == CHECKED]


def run_block(block: Block, env: dict, cwd: Path, timeout_s: float = 900) -> tuple[bool, str]:
    """Runs one block with ``bash -euo pipefail``; (passed, combined output)."""
    try:
        out = subprocess.run(["bash", "-euo", "pipefail", "-c", block.code], cwd=cwd, env=env, capture_output=True,
                             text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        return False, f"timed out after {timeout_s:.0f}s"
    output = out.stdout + out.stderr
    if out.returncode != 0:
        return False, f"exit status {out.returncode}\n{output}"
    if EMPTY_RESULT in output:
        return False, f"a query printed no row ({EMPTY_RESULT})\n{output}"
    return True, output


def check(readme: Path, env: dict, cwd: Path, log=print) -> list[tuple[Block, str]]:
    """Runs every checked block of ``readme``; the failures, each with its output."""
    failures = []
    blocks = checked_blocks(readme.read_text())
    for i, block in enumerate(blocks, 1):
        t = time.monotonic()
        ok, output = run_block(block, env, cwd)
        first = block.code.strip().splitlines()[0] if block.code.strip() else "(empty)"
        log(f"[{i}/{len(blocks)}] {readme.name}:{block.line} {'ok' if ok else 'FAILED'} in {time.monotonic() - t:.0f}s: {first[:100]}")
        if not ok:
            failures.append((block, output))
    return failures


def readme_demo_table(text: str) -> str:
    """The first ```text block after the demo-table marker."""
    at = text.find(DEMO_TABLE_MARKER)
    if at < 0:
        raise ValueError(f"no {DEMO_TABLE_MARKER} marker in the README")
    line = text[:at].count("\n") + 1
    block = next((b for b in extract_blocks(text) if b.lang == "text" and b.line > line), None)
    if block is None:
        raise ValueError(f"no ```text block after the {DEMO_TABLE_MARKER} marker (line {line})")
    return block.code


def demo_table_differences(readme: Path, env: dict) -> str:
    """'' when ``scripts/demo_table.sh`` prints the README's demo table, else both tables."""
    out = subprocess.run(["bash", "scripts/demo_table.sh"], cwd=ROOT, env=env, capture_output=True, text=True)
    printed = (out.stdout + out.stderr).strip("\n")
    shown = readme_demo_table(readme.read_text()).strip("\n")
    if out.returncode == 0 and printed == shown:
        return ""
    return f"scripts/demo_table.sh printed (exit {out.returncode}):\n{printed}\n\nthe README shows:\n{shown}"


def demo_env(work: Path, data_dir: Path) -> dict:
    """The environment of the checked blocks: a throw-away instance (the repository's dagster.yaml), the data dir, a tiny demo."""
    home = work / "dagster_home"
    home.mkdir(parents=True, exist_ok=True)
    shutil.copy(ROOT / "dagster.yaml", home / "dagster.yaml")
    return {
        **os.environ,
        "DAGSTER_HOME": str(home),
        "SEMID_DATA_DIR": str(data_dir),
        "SEMID_DATASET_OPTIONS": json.dumps(TINY_DEMO),
        "SEMID_NUM_THREADS": "1",
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
    }


def materialize_demo(env: dict, log=print) -> None:
    """README command one's materialization (the ``demo_pipeline`` job with configs/demo.yaml) on the tiny demo."""
    t = time.monotonic()
    cmd = [sys.executable, "-m", "dagster", "job", "execute", "-m", "semid_pipeline.definitions", "-j", "demo_pipeline",
           "-c", "configs/demo.yaml", "--tags", json.dumps({"dagster/partition": "demo"})]
    out = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"materializing the demo failed (exit {out.returncode}):\n{(out.stdout + out.stderr)[-6000:]}")
    log(f"tiny demo materialized in {time.monotonic() - t:.0f}s ({env['SEMID_DATA_DIR']})")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("readme", nargs="?", default=str(ROOT / "README.md"))
    parser.add_argument("--data-dir", help="a materialized demo data dir to run on (default: materialize a tiny demo in a temp dir)")
    parser.add_argument("--demo-table", action="store_true", help="only compare the demo table of --data-dir with the README's")
    args = parser.parse_args(argv)
    readme = Path(args.readme).resolve()
    if args.demo_table:
        if not args.data_dir:
            parser.error("--demo-table needs --data-dir (the data dir of a full demo, e.g. data after bash scripts/demo.sh)")
        diff = demo_table_differences(readme, {**os.environ, "SEMID_DATA_DIR": str(Path(args.data_dir).resolve())})
        print(diff or "README check: the demo table in the README is what scripts/demo_table.sh prints", file=sys.stderr if diff else sys.stdout)
        return 1 if diff else 0
    with tempfile.TemporaryDirectory(prefix="readme_check_") as tmp:
        work = Path(tmp)
        env = demo_env(work, Path(args.data_dir).resolve() if args.data_dir else work / "data")
        if not args.data_dir:
            materialize_demo(env)
        failures = check(readme, env, ROOT)
    for block, output in failures:
        print(f"\n{readme.name}:{block.line}: this block failed:\n{block.code}\n--- output (end) ---\n{output[-3000:]}", file=sys.stderr)
    n = len(checked_blocks(readme.read_text()))
    print(f"README check: {n - len(failures)} of {n} command blocks passed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
