#!/usr/bin/env bash
# The GPU check, run from the repo root on the CUDA machine (no network): installs the carried wheels into /tmp/site,
# then benchmarks/gpu_check.py trains the graph's training assets for every variant and seed and writes into $OUT.
#   bash benchmarks/gpu_check.sh [gpu_check.py options]
# CPU dry run here (same script, the project's venv instead of the wheels, faiss/openai shimmed as on the GPU):
#   GPU_CHECK_PYTHON=/work/main/.venv/bin/python GPU_CHECK_NO_WHEELS=1 SEMID_GPU_CHECK_FORCE_SHIMS=1 \
#     OUT=/tmp/gpu_dry bash benchmarks/gpu_check.sh --device cpu --cap-minutes 0.05 --epochs 1 --parallel 2 --speed-minutes 0.02
set -o pipefail
py=${GPU_CHECK_PYTHON:-python3}
if [ -z "${GPU_CHECK_NO_WHEELS:-}" ]; then
  "$py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site:$PWD
else
  export PYTHONPATH=$PWD
fi
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 DAGSTER_HOME=${DAGSTER_HOME:-/tmp/gpu_check_home}
mkdir -p "$DAGSTER_HOME" "${OUT:=/tmp/gpu_check_out}"
nvidia-smi --query-gpu=name,memory.used,memory.total,utilization.gpu --format=csv 2>/dev/null | tee "$OUT/nvidia-smi.txt"
"$py" benchmarks/gpu_check.py --bundle .gpu/amazon-beauty --out "$OUT" "$@"
