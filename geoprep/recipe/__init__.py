"""Recipes: the validated model of every section, loading with `--set` overrides, digests."""
