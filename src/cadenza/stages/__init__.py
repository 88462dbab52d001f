"""Stage functions that wrap torch-only training code with tracking (MLflow) and metrics."""
