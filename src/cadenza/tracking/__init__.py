"""MLflow: runs tagged with lineage (git commit, dvc.lock hashes), metrics, registry."""
