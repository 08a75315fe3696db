#!/usr/bin/env bash
# README command one: install what the default pipeline runs (scripts/setup.sh), materialize every asset
# of the `demo` dataset through the `demo_pipeline` job (configs/demo.yaml: the parallel recommender with
# the SASRec-CE teacher; the run shows under that job in the UI), then print the test evaluation table.
# One torch/BLAS thread (SEMID_NUM_THREADS=1): the table depends on the thread count, and with it fixed
# every machine prints the table in the README.
set -euo pipefail
cd "$(dirname "$0")/.."
start=$(date +%s)
bash scripts/setup.sh
installed=$(date +%s)
. scripts/instance.sh
export SEMID_NUM_THREADS=1 OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
echo "==> materializing the demo (job demo_pipeline, configs/demo.yaml, 1 thread; instance $DAGSTER_HOME, data $(.venv/bin/python -c 'from semid_pipeline.paths import default_data_dir; print(default_data_dir())'))"
# `job execute` does not apply a partitioned job's own config (only launches from the UI, schedules and
# backfills ask the partition for it), so the same file is passed explicitly: CLI and UI runs get one config.
# Dagster's full log goes to demo_run.log; one line per finished step is shown here.
if ! .venv/bin/dagster job execute -m semid_pipeline.definitions -j demo_pipeline -c configs/demo.yaml \
    --tags '{"dagster/partition": "demo"}' 2>&1 | tee demo_run.log \
    | { grep --line-buffered -oE 'Finished execution of step "[a-z_]+" in [0-9][0-9a-z.]*s' | sed -u -E 's/Finished execution of step "([a-z_]+)" in /  done: \1, /' || true; }; then
  tail -n 40 demo_run.log
  echo "demo_pipeline failed: the whole log is in demo_run.log"
  exit 1
fi
end=$(date +%s)
bash scripts/demo_table.sh
echo "installed in $(( installed - start ))s, demo materialized in $(( end - installed ))s (Dagster's log: demo_run.log)."
echo "Next: bash scripts/ui.sh (the UI on http://127.0.0.1:3000), or query any table:"
echo "  .venv/bin/python -m semid_pipeline.query \"select * from semantic_ids where dataset = 'demo' limit 5\""
