#!/usr/bin/env bash
# CI-style materialization through the Dagster CLI (README "Deployment"): on a tiny demo in a
# throw-away instance and data dir, build what a stage needs, then materialize the stage and
# everything one level downstream of it (`--select "<stage>+"`), the command a CI job runs after
# a change to that stage. Usage: scripts/ci_materialize.sh [stage]   (default: sid_tokenizer)
set -euo pipefail
cd "$(dirname "$0")/.."
. .venv/bin/activate
STAGE="${1:-sid_tokenizer}"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
export DAGSTER_HOME="$WORK/home" SEMID_DATA_DIR="$WORK/data" SEMID_NUM_THREADS="${SEMID_NUM_THREADS:-1}"
export SEMID_DATASET_OPTIONS='{"demo": {"n_items": 240, "n_users": 300, "seed": 7}}' HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
mkdir -p "$DAGSTER_HOME" && printf 'telemetry:\n  enabled: false\n' > "$DAGSTER_HOME/dagster.yaml"
# 1. the stage's inputs: sid_versions and every ancestor (ingestion -> ... -> catalog embeddings),
#    widened to whole multi-assets (Dagster cannot run part of one)
UPSTREAM="$(python - <<'PY'
from dagster import AssetSelection
from semid_pipeline.definitions import defs
keys = AssetSelection.assets("sid_versions").upstream().required_multi_asset_neighbors().resolve(defs.resolve_asset_graph())
print(",".join(sorted(k.to_user_string() for k in keys)))
PY
)"
dagster asset materialize -m semid_pipeline.definitions --select "$UPSTREAM" --partition demo --config configs/ci.yaml
# 2. the stage and its direct downstream assets, as CI does after a change to that stage
dagster asset materialize -m semid_pipeline.definitions --select "${STAGE}+" --partition demo --config configs/ci.yaml
python -m semid_pipeline.versions --data-dir "$SEMID_DATA_DIR" --dataset demo
