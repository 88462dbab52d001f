"""MLflow runs for stages. Default store: a SQLite file in the project (mlflow.db) with
artifacts in mlartifacts/; MLFLOW_TRACKING_URI points the same code at a team server."""

from __future__ import annotations

import contextlib
import logging
import os
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

EXPERIMENT = "cadenza"
log = logging.getLogger(__name__)


def tracking_uri(root: Path) -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{(root / 'mlflow.db').resolve()}"


class TrackingUnreachable(ConnectionError):
    """The MLflow server in MLFLOW_TRACKING_URI does not answer."""


def check_reachable(uri: str, timeout: float = 10.0) -> None:
    """Fail in seconds, naming the server, instead of MLflow's minutes of retries."""
    if not uri.startswith(("http://", "https://")):
        return

    try:
        urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=timeout)
    except urllib.error.HTTPError:
        return  # it answers (a proxy may guard /health): let MLflow speak for itself
    except OSError as exc:
        raise TrackingUnreachable(
            f"MLflow server {uri} (MLFLOW_TRACKING_URI) does not answer: {exc}; start it, or "
            "unset MLFLOW_TRACKING_URI to track in the project's mlflow.db"
        ) from None


def client(root: Path):
    """An MlflowClient on the project's store (tracking and registry), checked reachable."""
    import mlflow  # lazy: mlflow takes seconds to import; only tracking needs it

    logging.getLogger("alembic").setLevel(logging.WARNING)
    uri = tracking_uri(root)
    check_reachable(uri)
    return mlflow.MlflowClient(uri, registry_uri=uri)


def experiment_id(mlflow_client, root: Path) -> str:
    """The `cadenza` experiment, created on first use (artifacts in mlartifacts/ when the
    store is the local SQLite file; the server's own artifact store otherwise)."""
    experiment = mlflow_client.get_experiment_by_name(EXPERIMENT)
    if experiment is not None:
        return experiment.experiment_id
    is_local = tracking_uri(root).startswith("sqlite")
    artifacts = (root / "mlartifacts").resolve().as_uri() if is_local else None
    return mlflow_client.create_experiment(EXPERIMENT, artifact_location=artifacts)


@contextlib.contextmanager
def stage_run(root: Path, stage: str, tags: dict[str, str], params: dict) -> Iterator[object]:
    """An MLflow run for one stage (nested under CADENZA_PARENT_RUN_ID when a flow set it)."""
    import mlflow  # lazy: mlflow takes seconds to import; only tracking needs it

    experiment_id(client(root), root)
    mlflow.set_tracking_uri(tracking_uri(root))
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
    import mlflow  # lazy: mlflow takes seconds to import; only tracking needs it

    def log_metrics(metrics: dict[str, float], step: int) -> None:
        mlflow.log_metrics({k: float(v) for k, v in metrics.items()}, step=step)

    return log_metrics
