#!/usr/bin/env bash
# The Dagster UI on http://127.0.0.1:3000 (webserver + daemon), with the instance of scripts/instance.sh.
# For the demo, launch the `demo_pipeline` job on the `demo` partition: it carries configs/demo.yaml.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT="$PWD"
. scripts/instance.sh
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
# Started from the instance folder: `dagster dev` reads $DAGSTER_HOME/dagster.yaml (a link to the
# repository's), and, run from the repository root, would warn that the dagster.yaml there is not used.
cd "$DAGSTER_HOME"
# Dagster 1.13 marks `dagster dev` as superseded by `dg dev`, which lives in another package (dagster-dg-cli)
# that this project does not install; `dagster dev` still runs the same webserver and daemon, so that one
# notice is not shown.
export PYTHONWARNINGS="${PYTHONWARNINGS:+$PYTHONWARNINGS,}ignore:Function \`dev_command\` is superseded"
exec "$ROOT/.venv/bin/dagster" dev -w "$ROOT/workspace.yaml" "$@"
