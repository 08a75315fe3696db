"""data (pure core)."""
