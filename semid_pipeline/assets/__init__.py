"""Dagster assets, one module per pipeline stage; each module's assets share a group name."""
