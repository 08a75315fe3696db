"""enrich (pure core)."""
