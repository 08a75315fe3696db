#!/usr/bin/env bash
# The demo's test metrics, one row per model (what scripts/demo.sh prints at the end and the README shows):
#   bash scripts/demo_table.sh [dataset]      (default: demo; SEMID_DATA_DIR picks the data folder)
set -euo pipefail
cd "$(dirname "$0")/.."
DATASET="${1:-demo}"
.venv/bin/python -m semid_pipeline.query "
select model,
       round(max(value) filter (where metric = 'recall' and k = 5), 4) as \"R@5\",
       round(max(value) filter (where metric = 'ndcg' and k = 5), 4) as \"N@5\",
       round(max(value) filter (where metric = 'recall' and k = 10), 4) as \"R@10\",
       round(max(value) filter (where metric = 'ndcg' and k = 10), 4) as \"N@10\"
from evaluation where dataset = '$DATASET' and split = 'test' group by model order by \"R@10\" desc"
