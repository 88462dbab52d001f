"""MLflow runs for stages. Default store: a SQLite file in the project (mlflow.db) with
artifacts in mlartifacts/; MLFLOW_TRACKING_URI points the same code at a team server."""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from pathlib import Path

EXPERIMENT = "cadenza"
log = logging.getLogger(__name__)


def tracking_uri(root: Path) -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{(root / 'mlflow.db').resolve()}"


@contextlib.contextmanager
def stage_run(root: Path, stage: str, tags: dict[str, str], params: dict) -> Iterator[object]:
    """An MLflow run for one stage (nested under CADENZA_PARENT_RUN_ID when a flow set it)."""
    import mlflow

    logging.getLogger("alembic").setLevel(logging.WARNING)
    mlflow.set_tracking_uri(tracking_uri(root))
    if mlflow.get_experiment_by_name(EXPERIMENT) is None:
        artifacts = (root / "mlartifacts").resolve().as_uri()
        is_local = mlflow.get_tracking_uri().startswith("sqlite")
        mlflow.create_experiment(EXPERIMENT, artifact_location=artifacts if is_local else None)
    mlflow.set_experiment(EXPERIMENT)
    parent = os.environ.get("CADENZA_PARENT_RUN_ID")
    all_tags = {"cadenza.stage": stage, **tags}
    if parent:
        all_tags["mlflow.parentRunId"] = parent
    with mlflow.start_run(run_name=stage, tags=all_tags) as run:
        mlflow.log_params(_flatten(params))
        yield run


def _flatten(params: dict, prefix: str = "") -> dict[str, str]:
    flat = {}
    for key, value in params.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{name}."))
        else:
            flat[name] = str(value)[:500]
    return flat


def metrics_logger():
    """A log_metrics(metrics, step) callable for the training loops (torch-free)."""
    import mlflow

    def log_metrics(metrics: dict[str, float], step: int) -> None:
        mlflow.log_metrics({k: float(v) for k, v in metrics.items()}, step=step)

    return log_metrics
