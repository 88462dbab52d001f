"""The `retrain` Prefect flow, run for real under prefect_test_harness on a temp git + DVC
project (tiny models): stages as tasks, skips, artifacts, nested MLflow runs, new data,
nothing-changed runs, the workspace concurrency limit, and the deployment definition."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

from cadenza import flows

pytestmark = pytest.mark.integration
PROJECT = Path(__file__).resolve().parents[1]


def _artifacts(flow_run_id):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    with get_client(sync_client=True) as client:
        found = client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]))
        )
    return {artifact.key: artifact for artifact in found}


def _task_runs(flow_run_id):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id]))
        )
    return {run.name: run for run in runs}


def test_first_run_runs_every_stage_as_a_task(registered_project):
    state = registered_project["runs"]["first"]
    assert state.is_completed()
    result = state.result()
    assert result["changed"] is True
    assert [r["stage"] for r in result["stages"]] == [*flows.STAGES, "push"]
    assert all(r["status"] == "ran" for r in result["stages"])
    flow_run_id = state.state_details.flow_run_id
    tasks = _task_runs(flow_run_id)
    assert set(flows.STAGES) <= set(tasks)
    assert all(run.state.is_completed() for run in tasks.values())
    artifacts = _artifacts(flow_run_id)
    summary = artifacts["retrain-summary"].data
    assert "version 1" in summary and "promoted to champion" in summary
    durations = artifacts["stage-durations"]
    assert durations.type == "table" and "pretrain" in durations.data
    # CPU seconds per stage: the stage's whole process tree (dvc, cadenza, its workers)
    cpu = {r["stage"]: r["cpu_seconds"] for r in result["stages"]}
    assert cpu["pretrain"] > 1.0 and all(seconds > 0 for seconds in cpu.values()), cpu


def test_new_files_retrain_and_register_a_new_version(registered_project):
    result = registered_project["runs"]["second"].result()
    status = {r["stage"]: r["status"] for r in result["stages"]}
    for stage in ("import", "validate", "split", "tokenize", "pretrain", "evaluate", "register"):
        assert status[stage] == "ran", stage
    repo = registered_project["repo"]
    lock = yaml.safe_load((repo / "dvc.lock").read_text())
    first = yaml.safe_load(registered_project["first_lock"])
    assert lock["stages"]["import"]["outs"][0]["md5"] != first["stages"]["import"]["outs"][0]["md5"]

    import mlflow

    client = mlflow.MlflowClient(f"sqlite:///{repo / 'mlflow.db'}")
    version = client.get_model_version("cadenza-generator", "2")
    assert version.tags["dvc.corpus_md5"] == lock["stages"]["import"]["outs"][0]["md5"]
    # One parent run per flow run; the stage runs of this flow run nest under it.
    experiment = client.get_experiment_by_name("cadenza")
    parents = client.search_runs(
        [experiment.experiment_id], "tags.`cadenza.stage` = 'retrain'", order_by=["start_time"]
    )
    assert len(parents) == 2  # the nothing-changed run opens none
    parent = parents[1]
    assert parent.info.status == "FINISHED"
    assert parent.data.metrics["seconds.pretrain"] > 0
    assert parent.data.metrics["cpu_seconds.pretrain"] > 0
    children = client.search_runs(
        [experiment.experiment_id], f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'"
    )
    assert {run.data.tags["cadenza.stage"] for run in children} >= {
        "pretrain", "pretrain_discriminator", "adversarial", "evaluate",
    }  # fmt: skip
    assert version.run_id in {run.info.run_id for run in children}


def test_unchanged_workspace_finishes_with_nothing_changed(registered_project):
    state = registered_project["runs"]["unchanged"]
    result = state.result()
    assert result["changed"] is False
    # nothing to retrain; `dvc push` still runs, so a push that failed before is retried
    assert [r["stage"] for r in result["stages"]] == ["push"]
    assert result["note"] == "nothing changed"
    summary = _artifacts(state.state_details.flow_run_id)["retrain-summary"].data
    assert "nothing changed" in summary

    import mlflow

    repo = registered_project["repo"]
    client = mlflow.MlflowClient(f"sqlite:///{repo / 'mlflow.db'}")
    assert len(client.search_model_versions("name='cadenza-generator'")) == 2


def test_a_second_retrain_on_a_busy_workspace_fails_clearly(registered_project):
    from prefect.concurrency.sync import concurrency

    repo = registered_project["repo"]
    with (
        concurrency(flows.slot_name(repo), occupy=1, strict=True),  # a retrain holds it
        pytest.raises(flows.RetrainError, match="another retrain is running"),
    ):
        flows.retrain(str(repo), wait_seconds=1)


def test_overrides_are_validated_and_written_keeping_comments(tmp_path):
    params = tmp_path / "params.yaml"
    original = (PROJECT / "params.yaml").read_text()
    params.write_text(original)
    assert flows.apply_overrides(tmp_path, "mine", "tiny") == ["corpus=mine", "preset=tiny"]
    text = params.read_text()
    data = yaml.safe_load(text)
    assert data["import"]["corpus"] == "mine" and data["pretrain"]["preset"] == "tiny"
    assert data["import"]["music21_corpus"] == "bach"  # only the asked keys moved
    assert text.count("#") == original.count("#")
    with pytest.raises(flows.RetrainError, match="pretrain: preset .huge. is not one of"):
        flows.apply_overrides(tmp_path, None, "huge")
    assert yaml.safe_load(params.read_text())["pretrain"]["preset"] == "tiny"  # untouched


def test_deployment_definitions(prefect_harness):
    from prefect.client.orchestration import get_client
    from prefect.flows import load_flow_from_entrypoint

    config = yaml.safe_load((PROJECT / "prefect.yaml").read_text())
    named = {d["name"]: d for d in config["deployments"]}
    assert set(named) == {"nightly-retrain", "watch-corpus", "weekly-base-retrain"}
    deployment, base = named["nightly-retrain"], named["weekly-base-retrain"]
    # New data starts a retrain: the watcher's event is the trigger's.
    trigger = deployment["triggers"][0]
    assert trigger["expect"] == [flows.CORPUS_EVENT] and trigger["enabled"]
    watcher = named["watch-corpus"]
    watch_flow = load_flow_from_entrypoint(str(PROJECT / watcher["entrypoint"]))
    assert watch_flow.name == "watch-corpus" and watcher["schedules"][0]["interval"] == 300
    # The base model retrains weekly, before that night's retrain; same parameters shape.
    assert base["name"] == "weekly-base-retrain" and base["schedules"][0]["cron"] == "0 1 * * 0"
    base_flow = load_flow_from_entrypoint(str(PROJECT / base["entrypoint"]))
    assert base_flow.name == "retrain-base"
    assert set(base["parameters"]) <= set(base_flow.parameters.properties)
    assert deployment["schedules"][0]["cron"] == "0 3 * * *"
    entry_flow = load_flow_from_entrypoint(str(PROJECT / deployment["entrypoint"]))
    assert entry_flow.name == "retrain"
    assert set(deployment["parameters"]) <= set(entry_flow.parameters.properties)

    # What `cadenza schedule serve` registers: the flow with a cron schedule.
    deployment_id = flows.retrain.to_deployment(
        name="nightly-retrain", cron="0 3 * * *", parameters={"root": str(PROJECT)}
    ).apply()
    with get_client(sync_client=True) as client:
        stored = client.read_deployment(deployment_id)
    assert stored.schedules[0].schedule.cron == "0 3 * * *"
    assert stored.parameters == {"root": str(PROJECT)}


def test_cli_retrain_prints_the_champion(registered_project):
    from prefect.settings import PREFECT_API_URL

    from .conftest import run_in

    repo = registered_project["repo"]
    done = run_in(
        repo, "cadenza", "retrain", "--no-push", env={"PREFECT_API_URL": PREFECT_API_URL.value()}
    )
    assert "retrain: nothing changed" in done.stdout
    assert "champion cadenza-generator version" in done.stdout
    assert "reports/evaluate/index.html" in done.stdout.replace("\n", "")


def test_schedule_serve_registers_a_cron_deployment(registered_project):
    """`cadenza schedule serve` (flow.serve) registers the schedule, then waits for runs."""
    import subprocess
    import time

    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL

    from cadenza.pipeline import dvc_env

    env = {**dvc_env(), "PREFECT_API_URL": PREFECT_API_URL.value()}
    repo = registered_project["repo"]
    server = subprocess.Popen(
        ["cadenza", "schedule", "serve", "--cron", "*/5 * * * *", "--name", "every-5"],
        cwd=repo, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 90
        with get_client(sync_client=True) as client:
            while True:
                try:
                    deployment = client.read_deployment_by_name("retrain/every-5")
                    break
                except Exception:  # noqa: BLE001 - not registered yet
                    assert server.poll() is None, server.stderr.read()[-3000:]
                    assert time.monotonic() < deadline, "no deployment after 90 s"
                    time.sleep(1)
        assert deployment.schedules[0].schedule.cron == "*/5 * * * *"
        assert deployment.parameters == {"root": str(repo.resolve())}
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_the_corpus_watcher_emits_once_per_new_content(prefect_harness, tmp_path, chorale_dir):
    from .conftest import make_midi, project_params

    corpus = tmp_path / "corpus"
    shutil.copytree(chorale_dir, corpus, ignore=shutil.ignore_patterns("*.csv"))
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(project_params(corpus)))
    first = flows.watch_corpus(str(tmp_path))
    assert first["changed"] and first["num_files"] == len(list(corpus.glob("*.mid")))
    assert flows.watch_corpus(str(tmp_path))["changed"] is False  # same content: no event
    make_midi(corpus / "new" / "added.mid")
    added = flows.watch_corpus(str(tmp_path))
    assert added["changed"] and added["digest"] != first["digest"]
    (corpus / "new" / "added.mid").write_bytes(b"changed bytes")  # same names, new content
    assert flows.watch_corpus(str(tmp_path))["changed"]
