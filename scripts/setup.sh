#!/usr/bin/env bash
# Creates .venv (if needed) and installs semid_pipeline with its pinned CPU torch. Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
. .venv/bin/activate
python -m pip install -q --upgrade pip
# torch first, pinned: an unpinned resolver would pull the multi-GB CUDA build.
python -m pip install -q "torch==2.13.0"
# [llm] builds llama-cpp-python from source (several minutes on 2 cores; no multimodal library, portable CPU code)
CMAKE_ARGS="${CMAKE_ARGS:--DGGML_NATIVE=OFF -DLLAVA_BUILD=OFF}" python -m pip install -q -e ".[dev,llm,vision]"
