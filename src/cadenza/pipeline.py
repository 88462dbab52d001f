"""Run the DVC pipeline from Python (the main job) and summarise its metrics: the stages and
their summaries come from stages/registry.py."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from cadenza.paths import Paths
from cadenza.stages import registry


class PipelineError(RuntimeError):
    """A DVC command failed; the message says which and how to look closer."""


def dvc_env() -> dict[str, str]:
    """Environment for DVC subprocesses: this interpreter's bin first, so stage commands
    (`cadenza ...`) resolve to this installation even when the venv is not activated."""
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return env


def dvc(root: Path, *args: str) -> None:
    command = [sys.executable, "-m", "dvc", *args]
    completed = subprocess.run(command, cwd=root, env=dvc_env())
    if completed.returncode != 0:
        raise PipelineError(
            f"`dvc {' '.join(args)}` failed (exit {completed.returncode}) in {root}; "
            "the stage's own error is printed above"
        )


def run(paths: Paths, push: bool = True) -> None:
    if not (paths.root / ".dvc").is_dir():
        raise PipelineError(
            f"{paths.root} is not a DVC project (no .dvc/); run from the project root"
        )
    dvc(paths.root, "repro")
    if push:
        dvc(paths.root, "push")


def print_summary(paths: Paths) -> None:
    """Each stage's summary (stages/registry.py) as a table, where its outputs are, and what
    to try next."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"Cadenza pipeline: corpus '{paths.corpus}'")
    table.add_column("stage")
    table.add_column("result")
    ran = set()
    for stage in registry.STAGES:
        for label, text in stage.summarize(paths):
            table.add_row(label, text)
            ran.add(stage.name)
    console = Console()
    console.print(table)
    for stage in registry.STAGES:
        if stage.name in ran:
            for label, path in stage.outputs(paths).items():
                console.print(f"{label + ':':<14}{path}")
    if "pretrain" in ran:
        console.print("try:          cadenza generate -o sample.mid")
        console.print("MLflow UI:    mlflow ui --backend-store-uri sqlite:///mlflow.db")
    registered = paths.metrics_path("register")
    decision = json.loads(registered.read_text()) if registered.is_file() else {}
    if decision.get("champion"):
        name = decision["model_name"]
        console.print(
            f"champion:     models:/{name}@champion = version {decision['champion']}  "
            f"(serve: mlflow models serve -m models:/{name}@champion --env-manager local)"
        )
