"""recommender (pure core)."""
