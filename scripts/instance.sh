# Sourced by the scripts that start Dagster locally: a persistent instance in .dagster_home (unless
# DAGSTER_HOME is set) configured by the repository's dagster.yaml (the `gpu` pool limit, no telemetry).
export DAGSTER_HOME="${DAGSTER_HOME:-$PWD/.dagster_home}"
mkdir -p "$DAGSTER_HOME"
[ -f "$DAGSTER_HOME/dagster.yaml" ] || cp dagster.yaml "$DAGSTER_HOME/dagster.yaml"
