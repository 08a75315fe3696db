"""Pure core of semid_pipeline: no Dagster imports anywhere below this package."""
