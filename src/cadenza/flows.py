"""The `retrain` Prefect flow: every DVC stage as a Prefect task, in DAG order.

The stages are stages/registry.py's, in dvc.yaml's order. Each task runs
`dvc repro --single-item <stage>`, so dvc.lock records the lineage and an unchanged stage is
skipped (the task says so). One MLflow parent run per flow run; the stage runs nest under it
(CADENZA_PARENT_RUN_ID). A workspace-wide Prefect concurrency limit (and DVC's own lock)
keeps two retrains off one workspace.
Ends with a markdown artifact (each stage's summary, the promotion decision among them) and
a table of stage durations.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import yaml
from prefect import flow, get_run_logger, task

from cadenza.config import ParamsError, load_settings, parse_settings
from cadenza.io import atomic_path
from cadenza.paths import Paths
from cadenza.pipeline import dvc_env
from cadenza.stages import registry
from cadenza.tracking.registry import RegistryError
from cadenza.tracking.registry import fetch_base_champion as fetch
from cadenza.tracking.runs import client, experiment_id

STAGES = registry.names()  # dvc.yaml's stages in DAG order
SERVICE_STAGES = set(registry.service_names())  # talk to the MLflow registry: retried
SKIPPED = "didn't change, skipping"


class RetrainError(RuntimeError):
    """A stage failed, or the workspace is busy; the message says which and what to do."""


def slot_name(root: Path) -> str:
    """The Prefect global concurrency limit guarding one workspace."""
    return "cadenza-workspace-" + hashlib.sha256(str(root.resolve()).encode()).hexdigest()[:12]


def stage_env(parent_run_id: str | None) -> dict[str, str]:
    env = dvc_env()
    if parent_run_id:
        env["CADENZA_PARENT_RUN_ID"] = parent_run_id
    return env


@task(name="dvc-push", retries=2, retry_delay_seconds=5)
def push(root: str) -> dict:
    """Upload the new outputs to the DVC remote (a service: retried)."""
    logger = get_run_logger()
    started = time.perf_counter()
    completed = subprocess.run(
        [sys.executable, "-m", "dvc", "push"],
        cwd=root,
        env=stage_env(None),
        capture_output=True,
        text=True,
    )
    for line in (completed.stdout + completed.stderr).splitlines():
        if line.strip():
            logger.info("push | %s", line.rstrip())
    if completed.returncode != 0:
        raise RetrainError(
            f"`dvc push` failed (exit {completed.returncode}); check the remote in .dvc/config"
        )
    return {"stage": "push", "status": "ran", "seconds": time.perf_counter() - started}


@task(name="dvc-stage", task_run_name="{stage}")
def run_stage(root: str, stage: str, force: bool, parent_run_id: str | None) -> dict:
    """`dvc repro --single-item <stage>`; its output goes to the Prefect log line by line."""
    logger = get_run_logger()
    command = [sys.executable, "-m", "dvc", "repro", "--single-item", stage]
    if force:
        command.append("--force")
    started = time.perf_counter()
    process = subprocess.Popen(
        command,
        cwd=root,
        env=stage_env(parent_run_id),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines = []
    assert process.stdout is not None
    for line in process.stdout:
        line = line.rstrip()
        if line:
            lines.append(line)
            logger.info("%s | %s", stage, line)
    code = process.wait()
    seconds = time.perf_counter() - started
    if code != 0:
        tail = "\n".join(lines[-15:])
        raise RetrainError(f"stage '{stage}' failed (dvc exit {code}); its last output:\n{tail}")
    skipped = any(SKIPPED in line for line in lines)
    if skipped:
        logger.info("%s: unchanged since the last run (dvc.lock), skipped", stage)
    return {"stage": stage, "status": "skipped" if skipped else "ran", "seconds": seconds}


def changed_stages(root: Path) -> list[str]:
    """Stages DVC would re-run (`dvc status`); empty when nothing changed."""
    completed = subprocess.run(
        [sys.executable, "-m", "dvc", "status", "--json"],
        cwd=root,
        env=stage_env(None),
        capture_output=True,
        text=True,
    )
    if completed.returncode != 0:
        raise RetrainError(f"`dvc status` failed in {root}:\n{completed.stderr.strip()}")
    status = json.loads(completed.stdout or "{}")
    # Data tracked by .dvc files (a user corpus folder) counts through the import stage,
    # which depends on the folder itself.
    return sorted(key.split(":")[-1] for key in status if not key.endswith(".dvc"))


def set_param(text: str, section: str, key: str, value: str) -> str:
    """Set `key` inside top-level `section` of params.yaml text, keeping comments."""
    pattern = re.compile(
        rf"(^{re.escape(section)}:[^\n]*\n(?:(?:[ \t]+[^\n]*|[ \t]*)\n)*?[ \t]+{re.escape(key)}:"
        rf"[ \t]*)([^\s#]+)",
        re.MULTILINE,
    )
    new, count = pattern.subn(lambda m: m.group(1) + value, text, count=1)
    if not count:
        raise RetrainError(f"params.yaml: no key '{section}.{key}' to set")
    return new


def apply_overrides(root: Path, corpus: str | None, preset: str | None) -> list[str]:
    """Write the flow's corpus/preset parameters into params.yaml (validated first)."""

    path = root / "params.yaml"
    text = original = path.read_text()
    if corpus:
        text = set_param(text, "import", "corpus", corpus)
    if preset:
        text = set_param(text, "pretrain", "preset", preset)
    if text == original:
        return []
    try:
        parse_settings(yaml.safe_load(text), source=str(path))
    except ParamsError as exc:
        raise RetrainError(str(exc)) from None
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return [f"{name}={value}" for name, value in (("corpus", corpus), ("preset", preset)) if value]


def ensure_slot(name: str) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
    from prefect.exceptions import ObjectNotFound

    with get_client(sync_client=True) as client:
        try:
            client.read_global_concurrency_limit_by_name(name)
        except ObjectNotFound:
            client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=name, limit=1))


def _summary_markdown(root: Path, results: list[dict], note: str) -> str:
    """Each stage's summary (stages/registry.py) as a markdown table."""

    lines = [f"# Cadenza retrain: {root}", "", note, "", "| stage | result |", "|---|---|"]
    for label, text in registry.rows(Paths(root)):
        escaped = text.replace("|", "\\|")  # a literal bar inside a markdown cell
        lines.append(f"| {label} | {escaped} |")
    ran = [r["stage"] for r in results if r["status"] == "ran"]
    lines += ["", f"Stages run: {', '.join(ran) or 'none'}."]
    return "\n".join(lines) + "\n"


@flow(name="retrain", log_prints=True)
def retrain(
    root: str = ".",
    corpus: str | None = None,
    preset: str | None = None,
    force: bool = False,
    wait_seconds: float = 0.0,
    push_outputs: bool = True,
) -> dict:
    """Retrain on the workspace at `root`: re-run what changed, evaluate, register, promote.

    corpus / preset override params.yaml (import.corpus, pretrain.preset) and are written
    there, so the run stays reproducible with plain `dvc repro`. force re-runs every stage.
    wait_seconds: how long to wait for another retrain of the same workspace to finish.
    push_outputs: `dvc push` the new outputs to the default remote at the end.
    """
    from prefect.artifacts import create_markdown_artifact, create_table_artifact
    from prefect.concurrency.asyncio import ConcurrencySlotAcquisitionError
    from prefect.concurrency.sync import concurrency

    logger = get_run_logger()
    workspace = Path(root).resolve()
    if not (workspace / "dvc.yaml").is_file():
        raise RetrainError(f"{workspace}: no dvc.yaml; point `root` at a Cadenza project")
    name = slot_name(workspace)
    ensure_slot(name)
    started = time.perf_counter()
    # wait_seconds 0: one attempt (a 423 "locked" answer fails at once); else wait that long.
    waiting = {"timeout_seconds": wait_seconds} if wait_seconds > 0 else {"max_retries": 0}
    try:
        with concurrency(name, occupy=1, strict=True, **waiting):
            result = _retrain_locked(workspace, corpus, preset, force, push_outputs, logger)
    except (TimeoutError, ConcurrencySlotAcquisitionError) as exc:
        if isinstance(exc, ConcurrencySlotAcquisitionError) and "423" not in str(exc):
            raise
        raise RetrainError(
            f"another retrain is running on {workspace} (Prefect concurrency limit '{name}'); "
            "wait for it, or pass wait_seconds to queue behind it"
        ) from None
    result["seconds"] = time.perf_counter() - started
    create_table_artifact(
        [{**r, "seconds": round(r["seconds"], 1)} for r in result["stages"]],
        key="stage-durations",
        description="Per-stage wall time of this retrain (skipped = unchanged)",
    )
    create_markdown_artifact(
        _summary_markdown(workspace, result["stages"], result["note"]),
        key="retrain-summary",
        description="Metrics and the promotion decision",
    )
    logger.info("%s (%.1f s)", result["note"], result["seconds"])
    return result


@task(name="fetch-base-champion", retries=2, retry_delay_seconds=5)
def fetch_base_champion(root: str) -> str:
    """pretrain.init = base: put the current champion of the base model (cadenza-base) into
    models/generator-base/, so the target's pretraining starts from it (a service: retried)."""

    workspace = Path(root)
    base_params = workspace / "base" / "params.yaml"
    name = load_settings(base_params).register_.model_name if base_params.is_file() else ""
    try:
        note = fetch(Paths(workspace), name or "cadenza-base")
    except RegistryError as exc:
        raise RetrainError(str(exc)) from None
    get_run_logger().info(note)
    return note


def uses_base(workspace: Path) -> bool:
    return load_settings(workspace / "params.yaml").pretrain.init == "base"


def _retrain_locked(workspace: Path, corpus, preset, force: bool, push_outputs, logger) -> dict:
    overrides = apply_overrides(workspace, corpus, preset)
    if overrides:
        logger.info("params.yaml updated: %s", ", ".join(overrides))
    if uses_base(workspace):
        fetch_base_champion(str(workspace))
    if not force:
        changed = [s for s in changed_stages(workspace) if s in STAGES]
        if not changed:
            logger.info("nothing changed: every stage is up to date; no new model version")
            return {"changed": False, "stages": [], "note": "nothing changed"}
        logger.info("changed stages: %s", ", ".join(changed))
    results = _run_stages(workspace, STAGES, SERVICE_STAGES, force, push_outputs, "retrain")
    ran = [r["stage"] for r in results if r["status"] == "ran"]
    return {"changed": True, "stages": results, "note": f"retrained: {', '.join(ran) or 'none'}"}


def _run_stages(
    workspace: Path, stages, retried, force: bool, push_outputs: bool, run_name: str
) -> list[dict]:
    """Each stage as a task (retried ones: twice, 5 s apart), then `dvc push`, all under one
    parent MLflow run that is closed however the tasks end."""
    parent = _start_parent_run(workspace, run_name)
    results, status = [], "FAILED"
    try:
        for stage in stages:
            task_fn = run_stage
            if stage in retried:
                task_fn = run_stage.with_options(retries=2, retry_delay_seconds=5)
            results.append(task_fn(str(workspace), stage, force, parent))
        if push_outputs:
            results.append(push(str(workspace)))
        status = "FINISHED"
    finally:
        _end_parent_run(workspace, parent, results, status)
    return results


BASE_STAGES = tuple(f"base/dvc.yaml:{name}" for name in registry.names("base"))


@flow(name="retrain-base", log_prints=True)
def retrain_base(
    root: str = ".", force: bool = False, wait_seconds: float = 0.0, push_outputs: bool = True
) -> dict:
    """Rebuild the base model (base/dvc.yaml: mixed corpus -> models/generator-base/) where
    anything changed, and register it as cadenza-base (champion when its gate holds). The
    nightly `retrain` of a target with pretrain.init = base then starts from that champion.
    Shares the workspace's concurrency limit with `retrain`."""
    from prefect.concurrency.sync import concurrency

    logger = get_run_logger()
    workspace = Path(root).resolve()
    if not (workspace / "base" / "dvc.yaml").is_file():
        raise RetrainError(f"{workspace}: no base/dvc.yaml; point `root` at a Cadenza project")
    name = slot_name(workspace)
    ensure_slot(name)
    started = time.perf_counter()
    waiting = {"timeout_seconds": wait_seconds} if wait_seconds > 0 else {"max_retries": 0}
    with concurrency(name, occupy=1, strict=True, **waiting):
        retried = tuple(f"base/dvc.yaml:{name}" for name in registry.service_names("base"))
        results = _run_stages(workspace, BASE_STAGES, retried, force, push_outputs, "retrain-base")
    ran = [r["stage"].split(":")[-1] for r in results if r["status"] == "ran"]
    note = f"base retrained: {', '.join(ran) or 'nothing changed'}"
    logger.info(note)
    return {"stages": results, "note": note, "seconds": time.perf_counter() - started}


def _start_parent_run(workspace: Path, stage: str = "retrain") -> str | None:
    from prefect.runtime import flow_run

    mlflow_client = client(workspace)
    run = mlflow_client.create_run(
        experiment_id(mlflow_client, workspace),
        run_name=stage,
        tags={"cadenza.stage": stage, "prefect.flow_run_id": str(flow_run.id or "")},
    )
    return run.info.run_id


def _end_parent_run(workspace: Path, run_id: str | None, results: list[dict], status: str):
    if run_id is None:
        return

    mlflow_client = client(workspace)
    for result in results:
        mlflow_client.log_metric(run_id, f"seconds.{result['stage']}", result["seconds"])
        mlflow_client.set_tag(run_id, f"status.{result['stage']}", result["status"])
    mlflow_client.set_terminated(run_id, status=status)


def serve(root: Path, cron: str, name: str = "nightly-retrain") -> None:
    """Serve the retrain flow on this box with a cron schedule (blocks; Ctrl-C stops)."""
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    retrain.serve(name=name, cron=cron, parameters={"root": str(root.resolve())})
