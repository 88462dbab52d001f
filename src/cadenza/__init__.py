"""Cadenza: symbolic-music generation as a reproducible ML pipeline."""

__version__ = "0.1.0"
