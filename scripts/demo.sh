#!/usr/bin/env bash
# README command one: install everything, then materialize every asset of the `demo` dataset.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
export DAGSTER_HOME=${DAGSTER_HOME:-$PWD/.dagster_home}
mkdir -p "$DAGSTER_HOME"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
start=$(date +%s)
# every asset of the full_pipeline job (all but the on-demand tokenizer ablation)
SELECTION="$(python -c 'from semid_pipeline.definitions import defs; print(",".join(sorted(k.to_user_string() for k in defs.resolve_job_def("full_pipeline").asset_layer.executable_asset_keys)))')"
dagster asset materialize -m semid_pipeline.definitions --select "$SELECTION" --partition demo --config configs/demo.yaml
echo "demo materialized in $(( $(date +%s) - start ))s; query it: python -m semid_pipeline.query \"select * from evaluation\""
