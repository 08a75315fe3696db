#!/usr/bin/env bash
# README command two: install everything, then run the test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh dev,llm,vision
echo "==> running the tests (pytest; SEMID_TEST_WORKERS=${SEMID_TEST_WORKERS:-2} workers)"
. .venv/bin/activate
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
# Two workers (one per core), a test file per worker, one torch thread each: the suite's CPU time
# is ~6 min, so this halves the wall time on the 2-core CI machine. SEMID_TEST_WORKERS=0 runs serially.
export SEMID_NUM_THREADS="${SEMID_NUM_THREADS:-1}"
WORKERS="${SEMID_TEST_WORKERS:-2}"
if [ "$WORKERS" -gt 0 ]; then
  python -m pytest -n "$WORKERS" --dist loadfile "$@"
else
  python -m pytest "$@"
fi
