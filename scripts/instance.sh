# Sourced by the scripts that start Dagster locally: a persistent instance in .dagster_home (unless
# DAGSTER_HOME is set) configured by the repository's dagster.yaml (the `gpu` pool limit, no telemetry).
# The instance's dagster.yaml is a link to the repository's, so an edit of that file takes effect
# at the next start; a DAGSTER_HOME with a dagster.yaml of its own keeps it (and says so).
export DAGSTER_HOME="${DAGSTER_HOME:-$PWD/.dagster_home}"
mkdir -p "$DAGSTER_HOME"
if [ ! -e "$DAGSTER_HOME/dagster.yaml" ]; then
  ln -s "$PWD/dagster.yaml" "$DAGSTER_HOME/dagster.yaml"
elif ! cmp -s "$DAGSTER_HOME/dagster.yaml" dagster.yaml; then
  echo "note: $DAGSTER_HOME/dagster.yaml differs from the repository's dagster.yaml; Dagster uses $DAGSTER_HOME/dagster.yaml"
fi
