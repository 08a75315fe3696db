"""tokenizers (pure core)."""
