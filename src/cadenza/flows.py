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
import resource
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
from cadenza.tracking.runs import client, experiment_id, tracking_uri

STAGES = registry.names()  # dvc.yaml's stages in DAG order
SERVICE_STAGES = set(registry.service_names())  # talk to the MLflow registry: retried
SKIPPED = "didn't change, skipping"
# The workspace slot is a lease the running flow renews; a run whose process died (its
# worker killed) frees the slot this long after its last renewal.
LEASE_SECONDS = 60


class RetrainError(RuntimeError):
    """A stage failed, or the workspace is busy; the message says which and what to do."""


def slot_name(root: Path) -> str:
    """The Prefect global concurrency limit guarding one workspace."""
    return "cadenza-workspace-" + hashlib.sha256(str(root.resolve()).encode()).hexdigest()[:12]


def children_cpu_seconds() -> float:
    """User + system CPU seconds of every finished child process (and theirs, recursively)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def stage_env(parent_run_id: str | None) -> dict[str, str]:
    env = dvc_env()
    if parent_run_id:
        env["CADENZA_PARENT_RUN_ID"] = parent_run_id
    return env


@task(name="dvc-push", retries=2, retry_delay_seconds=5)
def push(root: str) -> dict:
    """Upload the new outputs to the DVC remote (a service: retried)."""
    logger = get_run_logger()
    started, cpu_started = time.perf_counter(), children_cpu_seconds()
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
            f"`dvc push` to the DVC remote {default_remote(Path(root))} failed (exit "
            f"{completed.returncode}); nothing is lost: the outputs stay in the workspace and "
            "the next run pushes them (check the remote in .dvc/config)"
        )
    return {"stage": "push", "status": "ran", "seconds": time.perf_counter() - started,
            "cpu_seconds": children_cpu_seconds() - cpu_started}  # fmt: skip


def default_remote(root: Path) -> str:
    """'name (url, endpoint)' of the default DVC remote, for error messages."""
    completed = subprocess.run(
        [sys.executable, "-m", "dvc", "config", "--list", "--show-origin"],
        cwd=root, env=stage_env(None), capture_output=True, text=True,
    )  # fmt: skip
    values = dict(
        line.split("\t", 1)[1].split("=", 1)
        for line in completed.stdout.splitlines()
        if "\t" in line and "=" in line
    )
    name = values.get("core.remote", "")
    where = [values.get(f"remote.{name}.{key}", "") for key in ("url", "endpointurl")]
    return f"'{name}' ({', '.join(w for w in where if w)})" if name else "(none set)"


def corpus_folder(root: Path) -> Path | None:
    """The corpus folder the import stage reads (import.path), None for music21 corpora."""
    settings = load_settings(root / "params.yaml")
    if settings.import_.source in ("music21", "mix"):
        return None
    folder = Path(settings.import_.path)
    return folder if folder.is_absolute() else root / folder


def tracked_corpus(root: Path) -> Path | None:
    """The corpus folder when a .dvc file tracks it, else None."""
    folder = corpus_folder(root)
    if folder is None or not folder.with_name(folder.name + ".dvc").is_file():
        return None
    return folder


@task(name="version-corpus")
def version_corpus(root: str) -> str | None:
    """`dvc add` the tracked corpus folder, so files added to it since the last run are
    versioned by the run that trains on them (no hand `dvc add`). A no-op when unchanged."""
    folder = tracked_corpus(Path(root))
    if folder is None:
        return None
    completed = subprocess.run(
        [sys.executable, "-m", "dvc", "add", "-q", str(folder)],
        cwd=root, env=stage_env(None), capture_output=True, text=True,
    )  # fmt: skip
    if completed.returncode != 0:
        raise RetrainError(f"`dvc add {folder}` failed:\n{completed.stderr.strip()}")
    return str(folder)


@task(name="dvc-stage", task_run_name="{stage}")
def run_stage(root: str, stage: str, force: bool, parent_run_id: str | None) -> dict:
    """`dvc repro --single-item <stage>`; its output goes to the Prefect log line by line."""
    logger = get_run_logger()
    command = [sys.executable, "-m", "dvc", "repro", "--single-item", stage]
    if force:
        command.append("--force")
    started, cpu_started = time.perf_counter(), children_cpu_seconds()
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
    cpu_seconds = children_cpu_seconds() - cpu_started  # dvc, the stage and what it started
    if code != 0:
        tail = "\n".join(lines[-15:])
        raise RetrainError(f"stage '{stage}' failed (dvc exit {code}); its last output:\n{tail}")
    skipped = any(SKIPPED in line for line in lines)
    if skipped:
        logger.info("%s: unchanged since the last run (dvc.lock), skipped", stage)
    status = "skipped" if skipped else "ran"
    return {"stage": stage, "status": status, "seconds": seconds, "cpu_seconds": cpu_seconds}


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


def _links(root: Path, run_id: str | None, ran: set[str]) -> list[str]:
    """Where to look next: the flow's MLflow run, and the model version and report when this
    run registered one."""
    uri = tracking_uri(root)
    lines = []
    if run_id:
        where = f"{uri.rstrip('/')}/#/runs/{run_id}" if uri.startswith("http") else uri
        lines.append(f"- MLflow run: `{run_id}` ({where})")
    registered = Paths(root).metrics_path("register")
    if "register" in ran and registered.is_file():
        decision = json.loads(registered.read_text())
        name, version = decision.get("model_name"), decision.get("version")
        lines.append(f"- Model version: `models:/{name}/{version}` ({decision.get('reason', '')})")
    report = root / "reports" / "evaluate" / "index.html"
    if "register" in ran and report.is_file():
        lines.append(f"- Report: {report}")
    return lines


def _summary_markdown(root: Path, results: list[dict], note: str, run_id=None) -> str:
    """Each stage's summary (stages/registry.py) as a markdown table, and links."""

    ran = {r["stage"] for r in results if r["status"] == "ran"}
    lines = [f"# Cadenza retrain: {root}", "", note, "", *_links(root, run_id, ran), ""]
    lines += ["| stage | result |", "|---|---|"]
    for label, text in registry.rows(Paths(root)):
        escaped = text.replace("|", "\\|")  # a literal bar inside a markdown cell
        lines.append(f"| {label} | {escaped} |")
    in_order = [r["stage"] for r in results if r["status"] == "ran"]
    lines += ["", f"Stages run: {', '.join(in_order) or 'none'}."]
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
        with concurrency(name, occupy=1, strict=True, lease_duration=LEASE_SECONDS, **waiting):
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
        [
            {**r, "seconds": round(r["seconds"], 1), "cpu_seconds": round(r["cpu_seconds"], 1)}
            for r in result["stages"]
        ],  # fmt: skip
        key="stage-durations",
        description="Per-stage wall and CPU seconds of this retrain (skipped = unchanged)",
    )
    create_markdown_artifact(
        _summary_markdown(workspace, result["stages"], result["note"], result.get("run_id")),
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
    version_corpus(str(workspace))
    if not force:
        changed = [s for s in changed_stages(workspace) if s in STAGES]
        if not changed:
            logger.info("nothing changed: every stage is up to date; no new model version")
            # an earlier run may have failed to push: `dvc push` sends only what is missing
            results = [push(str(workspace))] if push_outputs else []
            return {"changed": False, "stages": results, "note": "nothing changed"}
        logger.info("changed stages: %s", ", ".join(changed))
    results, run_id = _run_stages(workspace, STAGES, SERVICE_STAGES, force, push_outputs, "retrain")
    ran = [r["stage"] for r in results if r["status"] == "ran"]
    note = f"retrained: {', '.join(ran) or 'none'}"
    return {"changed": True, "stages": results, "note": note, "run_id": run_id}


def _run_stages(
    workspace: Path, stages, retried, force: bool, push_outputs: bool, run_name: str
) -> tuple[list[dict], str | None]:
    """Each stage as a task (retried ones: twice, 5 s apart), then `dvc push`, all under one
    parent MLflow run that is closed however the tasks end. Returns the results and the
    parent run's id."""
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
        try:
            _end_parent_run(workspace, parent, results, status)
        except Exception as exc:  # noqa: BLE001 - the tracking server is down: keep the stage's error
            get_run_logger().warning("could not close MLflow run %s: %s", parent, exc)
    return results, parent


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
    with concurrency(name, occupy=1, strict=True, lease_duration=LEASE_SECONDS, **waiting):
        retried = tuple(f"base/dvc.yaml:{name}" for name in registry.service_names("base"))
        results, _ = _run_stages(
            workspace, BASE_STAGES, retried, force, push_outputs, "retrain-base"
        )
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
        mlflow_client.log_metric(run_id, f"cpu_seconds.{result['stage']}", result["cpu_seconds"])
        mlflow_client.set_tag(run_id, f"status.{result['stage']}", result["status"])
    mlflow_client.set_terminated(run_id, status=status)


CORPUS_EVENT = "cadenza.corpus.changed"


def corpus_digest(folder: Path) -> tuple[str, int]:
    """(sha256 over every file's relative path and content, number of files)."""
    digest = hashlib.sha256()
    files = sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith("."))
    for path in files:
        digest.update(path.relative_to(folder).as_posix().encode() + b"\0")
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest(), len(files)


@flow(name="watch-corpus")
def watch_corpus(root: str = ".") -> dict:
    """Emit the event `cadenza.corpus.changed` when the corpus folder's content differs from
    what the last check of this workspace saw (kept in a Prefect variable on the server). The
    retrain deployment's trigger (prefect.yaml) starts a run on that event. The same content
    seen again emits nothing; a duplicate event finds nothing changed and registers nothing."""
    from prefect.events import emit_event
    from prefect.variables import Variable

    workspace = Path(root).resolve()
    folder = corpus_folder(workspace)
    if folder is None or not folder.is_dir():
        get_run_logger().info("no corpus folder to watch (import.source is a music21 corpus)")
        return {"changed": False, "folder": None}
    digest, num_files = corpus_digest(folder)
    key = slot_name(workspace).replace("workspace", "corpus")
    seen = Variable.get(key, default=None)
    if seen == digest:
        get_run_logger().info("%s: unchanged (%d files), no event", folder, num_files)
        return {"changed": False, "folder": str(folder), "digest": digest}
    emit_event(
        event=CORPUS_EVENT,
        resource={
            "prefect.resource.id": f"cadenza.corpus.{key.rsplit('-', 1)[-1]}",
            "prefect.resource.name": str(folder),
            "cadenza.workspace": str(workspace),
        },
        payload={"digest": digest, "previous": seen, "num_files": num_files},
    )
    Variable.set(key, digest, overwrite=True)
    get_run_logger().info("%s changed (%d files): emitted %s", folder, num_files, CORPUS_EVENT)
    return {"changed": True, "folder": str(folder), "digest": digest, "num_files": num_files}


def serve(root: Path, cron: str, name: str = "nightly-retrain") -> None:
    """Serve the retrain flow on this box with a cron schedule (blocks; Ctrl-C stops)."""
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    retrain.serve(name=name, cron=cron, parameters={"root": str(root.resolve())})
