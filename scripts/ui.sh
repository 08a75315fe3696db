#!/usr/bin/env bash
# The Dagster UI on http://127.0.0.1:3000 (webserver + daemon), with the instance of scripts/instance.sh.
# For the demo, launch the `demo_pipeline` job on the `demo` partition: it carries configs/demo.yaml.
set -euo pipefail
cd "$(dirname "$0")/.."
. .venv/bin/activate
. scripts/instance.sh
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
exec dagster dev "$@"
