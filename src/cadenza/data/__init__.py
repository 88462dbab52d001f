"""Corpus import and layout adapters, the per-file manifest, and splits."""
