#!/usr/bin/env bash
# Builds the offline bundle for benchmarks/gpu_check.sh, here (a machine with the registries), into the repo root:
#   .whl/  the wheels a bare CUDA machine (python3.12, torch, pandas, pyarrow, numpy, ...) lacks: Dagster and its
#          dependencies, pydantic, DuckDB, plus pinned grpcio / protobuf / typing-extensions (Dagster's and pydantic's
#          lower bounds; the image's versions are not guaranteed to meet them). faiss and openai are not carried: only
#          the tokenizer / retrieval / LLM modules use them, and gpu_check.py stands in for them when missing.
#   .gpu/<dataset>/  a data directory (default amazon-beauty) holding only the materialized tables the training assets read.
# Both folders are git-ignored (.git/info/exclude); name them in the device call's carry list.
#   benchmarks/gpu_bundle.sh <materialized amazon-beauty data dir, e.g. a run_seeds.py seed0 folder>
set -euo pipefail
src=${1:?usage: [DATASET=amazon-beauty] benchmarks/gpu_bundle.sh <data dir>}
ds=${DATASET:-amazon-beauty}
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
tables="items user_sequences semantic_ids item_tags item_quality_scores popularity_recommendations"
optional="sid_versions"  # read by generative_recommendations when present
for t in $tables; do
  f="$src/tables/$t/dataset=$ds/part.parquet"
  [ -f "$f" ] || { echo "missing $f: materialize the graph up to semantic_ids first" >&2; exit 1; }
done
rm -rf .gpu/$ds && mkdir -p .gpu/$ds/tables
for t in $tables; do
  mkdir -p ".gpu/$ds/tables/$t/dataset=$ds"
  cp "$src/tables/$t/dataset=$ds/part.parquet" ".gpu/$ds/tables/$t/dataset=$ds/"
done
for t in $optional; do
  f="$src/tables/$t/dataset=$ds/part.parquet"
  if [ -f "$f" ]; then mkdir -p ".gpu/$ds/tables/$t/dataset=$ds" && cp "$f" ".gpu/$ds/tables/$t/dataset=$ds/"; fi
done
echo "$src" > .gpu/$ds/SOURCE
py=${PYTHON:-/work/main/.venv/bin/python}
pins=$("$py" - <<'PY'
import importlib.metadata as md
names = """dagster dagster-shared dagster-pipes pydantic pydantic-core typing-inspection annotated-types duckdb watchdog
universal-pathlib pathlib-abc tzdata toposort tomli structlog sqlalchemy pytz python-dotenv grpcio-health-checking
docstring-parser tomlkit platformdirs coloredlogs humanfriendly antlr4-python3-runtime alembic mako grpcio protobuf
typing-extensions""".split()
print(" ".join(f"{n}=={md.version(n)}" for n in names))
PY
)
rm -rf .whl && mkdir -p .whl
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .whl $pins 2>&1 | grep -v "^WARNING: Location" || true
n=$(ls .whl/*.whl | wc -l)
echo "wheels: $n ($(du -sh .whl | cut -f1)); data: $(du -sh .gpu | cut -f1)"
[ "$n" -eq 30 ] || { echo "expected 30 wheels, got $n" >&2; exit 1; }
