"""baselines (pure core)."""
