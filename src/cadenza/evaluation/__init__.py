"""Evaluation library: matched windows, probes, the instrument, music statistics, reports."""
