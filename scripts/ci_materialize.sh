#!/usr/bin/env bash
# CI-style materialization through the Dagster CLI (docs/deployment.md): on a tiny demo in a throw-away
# instance and data dir, build what a stage reads (`--select "*<stage>"`), then the stage and everything
# one level downstream of it (`--select "<stage>+"`), the command a CI job runs after a change to that
# stage. Usage: bash scripts/ci_materialize.sh [stage]   (default: sid_tokenizer)
set -euo pipefail
cd "$(dirname "$0")/.."
STAGE="${1:-sid_tokenizer}"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
export DAGSTER_HOME="$WORK/home" SEMID_DATA_DIR="$WORK/data" SEMID_NUM_THREADS="${SEMID_NUM_THREADS:-1}"
export SEMID_DATASET_OPTIONS='{"demo": {"n_items": 240, "n_users": 300, "seed": 7}}' HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
mkdir -p "$DAGSTER_HOME" && cp dagster.yaml "$DAGSTER_HOME/dagster.yaml"
.venv/bin/dagster asset materialize -m semid_pipeline.definitions --select "*${STAGE}" --partition demo --config configs/ci.yaml
.venv/bin/dagster asset materialize -m semid_pipeline.definitions --select "${STAGE}+" --partition demo --config configs/ci.yaml
echo "materialized tables: $(ls "$SEMID_DATA_DIR/tables" | tr '\n' ' ')"
