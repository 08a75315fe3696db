"""Experiments that combine several stages (they sit above the stage packages they combine)."""
