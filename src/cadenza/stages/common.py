"""What every training stage shares: lineage tags and an optional MLflow run."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path

from cadenza.paths import Paths
from cadenza.tracking.lineage_tags import dvc_lock_hash, git_commit
from cadenza.tracking.runs import metrics_logger, stage_run

LogFn = Callable[[dict[str, float], int], None]


def lineage_tags(paths: Paths, **extra: str) -> dict[str, str]:
    return {
        "git.commit": git_commit(paths.root),
        "dvc.tokens_md5": dvc_lock_hash(
            paths.root,
            paths.stage_name("tokenize"),
            paths.relative(paths.tokens_dir),
            paths.dvc_lock_path,
        ),
        **extra,
    }


@contextlib.contextmanager
def tracked(
    paths: Paths, stage: str, params: dict, tags: dict[str, str], enabled: bool
) -> Iterator[LogFn | None]:
    """An MLflow run for the stage when enabled; yields its metric logger (or None)."""
    if not enabled:
        yield None
        return

    with stage_run(paths.root, stage, tags, params):
        yield metrics_logger()


def log_final(metrics: dict, artifacts: dict[str, list[Path]]) -> None:
    """Numeric metrics and artifact files (artifact folder -> files) into the active run."""
    import mlflow  # lazy: mlflow takes seconds to import; only tracking needs it

    mlflow.log_metrics(
        {
            k: float(v)
            for k, v in metrics.items()
            if isinstance(v, int | float) and not isinstance(v, bool)
        }
    )
    for folder, files in artifacts.items():
        for path in files:
            if path.is_file():
                mlflow.log_artifact(str(path), artifact_path=folder or None)
