"""The validation gate: per-file checks, quarantine, and the Great Expectations suite."""
