"""The team stack, run for real (infra/stack.py): PostgreSQL, an S3-compatible object store,
the MLflow server (Postgres + artifacts in the store), the Prefect server (Postgres) with the
`cadenza-process` pool and a worker, the DVC remote in the store. A project is deployed from
prefect.yaml and runs through the worker; a second clone pulls the data and reads lineage and
the registry from the servers; new corpus files start a run by an event; then faults: the
worker killed during pretraining, the tracking server down at `register`, the store down
during `dvc push`, two runs at once. After each, registry, data, checkpoints and dvc.lock are
checked.

The tests build on each other in file order (one stack, one project); `make test-stack` runs
them (marker `stack`), outside `make test`'s time budget.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import shutil
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

from .conftest import (
    PROJECT_ROOT,
    free_port,
    make_midi,
    make_project,
    run_in,
    small_corpus,
    wait_for_http,
)
from .postgres import STACK

pytestmark = [pytest.mark.stack, pytest.mark.xdist_group("stack")]
NAME = "cadenza-generator"
DEPLOYMENT = "retrain/nightly-retrain"
RUN_TIMEOUT = 420  # seconds for one tiny retrain through the worker


@pytest.fixture(scope="module")
def team(tmp_path_factory, chorale_dir, _mlflow_template):
    if STACK.postgres_bin() is None:
        pytest.skip("PostgreSQL is not installed (Debian: apt install postgresql)")
    base = tmp_path_factory.mktemp("team")
    corpus = small_corpus(base / "corpus", chorale_dir)
    repo = make_project(base / "repo", corpus, _mlflow_template)
    shutil.copy(PROJECT_ROOT / "prefect.yaml", repo)
    shutil.copytree(PROJECT_ROOT / "flows", repo / "flows",
                    ignore=shutil.ignore_patterns("__pycache__"))  # fmt: skip
    params = yaml.safe_load((repo / "params.yaml").read_text())
    # long enough that the worker can be killed between two checkpoints (every 6 steps)
    params["pretrain"]["presets"]["tiny"]["max_steps"] = 96
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    stack = STACK.Stack(base / "stack", workspace=repo)
    stack.up()
    try:
        stack.configure_dvc(repo)
        run_in(repo, "git", "add", "-A")
        run_in(repo, "git", "commit", "-qm", "team project: deployments, remote in the store")
        yield {"repo": repo, "stack": stack, "base": base, "env": stack.env()}
    finally:
        stack.down(remove_data=True)


# -- Prefect and MLflow, read the way a teammate would -------------------------------------
@contextlib.contextmanager
def prefect_client(stack):
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with (
        temporary_settings(updates={PREFECT_API_URL: stack.prefect_api}),
        get_client(sync_client=True) as client,
    ):
        yield client


def deployment_runs(stack) -> list:
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId

    with prefect_client(stack) as client:
        deployment = client.read_deployment_by_name(DEPLOYMENT)
        runs = client.read_flow_runs(
            deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment.id]))
        )
    return sorted(runs, key=lambda run: run.created)


def run_started_by_event(stack, known_runs: int, timeout: float = 120):
    """The newest deployment run, once there are more than known_runs (the trigger fired)."""
    deadline = time.monotonic() + timeout
    while len(runs := deployment_runs(stack)) == known_runs:
        assert time.monotonic() < deadline, "the corpus event started no run"
        time.sleep(1)
    return runs[-1]


def start_run(stack):
    with prefect_client(stack) as client:
        deployment = client.read_deployment_by_name(DEPLOYMENT)
        return client.create_flow_run_from_deployment(deployment.id).id


def wait_final(stack, run_id, timeout: float = RUN_TIMEOUT):
    deadline = time.monotonic() + timeout
    with prefect_client(stack) as client:
        while True:
            run = client.read_flow_run(run_id)
            if run.state is not None and run.state.is_final():
                return run
            assert time.monotonic() < deadline, f"run {run_id} still {run.state.name}"
            time.sleep(1)


def mark_crashed(stack, run_id) -> None:
    from prefect.states import Crashed

    with prefect_client(stack) as client:
        client.set_flow_run_state(run_id, Crashed(message="its worker was killed"), force=True)


def _flow_log(stack, run_id) -> str:
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
    from prefect.client.schemas.sorting import LogSort

    with prefect_client(stack) as client:  # the newest 200 lines
        logs = client.read_logs(
            LogFilter(flow_run_id=LogFilterFlowRunId(any_=[run_id])),
            sort=LogSort.TIMESTAMP_DESC,
            limit=200,
        )
    return "\n".join(log.message for log in logs)


def summary_of(stack, run_id) -> str:
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    with prefect_client(stack) as client:
        found = client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[run_id]))
        )
    return {artifact.key: artifact.data for artifact in found}.get("retrain-summary", "")


def registry(stack):
    import mlflow

    return mlflow.MlflowClient(stack.mlflow_uri, registry_uri=stack.mlflow_uri)


def versions(stack) -> list[str]:
    return sorted(str(v.version) for v in registry(stack).search_model_versions(f"name='{NAME}'"))


def champion(stack) -> str:
    return str(registry(stack).get_model_version_by_alias(NAME, "champion").version)


def store_keys(stack, bucket: str) -> list[str]:
    import boto3

    s3 = boto3.client("s3", endpoint_url=stack.s3_endpoint, **_credentials())
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket=bucket)
    return [item["Key"] for page in pages for item in page.get("Contents", [])]


def _credentials() -> dict:
    return {"aws_access_key_id": STACK.ACCESS_KEY, "aws_secret_access_key": STACK.SECRET_KEY,
            "region_name": STACK.REGION}  # fmt: skip


def lock_md5(repo: Path, stage: str) -> str:
    return yaml.safe_load((repo / "dvc.lock").read_text())["stages"][stage]["outs"][0]["md5"]


def dvc_changed(repo: Path, env: dict) -> set[str]:
    out = run_in(repo, "dvc", "status", "--json", env=env).stdout
    return {key.split(":")[-1] for key in json.loads(out or "{}")}


def sha256_tree(folder: Path) -> dict[str, str]:
    return {
        p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


# -- the path a team takes ---------------------------------------------------------------
def test_a_deployment_runs_through_the_worker_and_registers_on_the_servers(team):
    repo, stack, env = team["repo"], team["stack"], team["env"]
    deployed = run_in(
        repo, "prefect", "--no-prompt", "deploy", "--name", "nightly-retrain",
        env={**env, "CADENZA_WORKSPACE": str(repo)},
    )  # fmt: skip
    assert "nightly-retrain" in deployed.stdout
    with prefect_client(stack) as client:
        deployment = client.read_deployment_by_name(DEPLOYMENT)
        assert deployment.work_pool_name == "cadenza-process"
        assert [s.schedule.cron for s in deployment.schedules] == ["0 3 * * *"]
        automations = client.read_automations_by_name(f"{deployment.name}__automation_1")
        assert automations, "the new-data trigger is an automation on the server"

    run = wait_final(stack, start_run(stack))
    assert run.state.is_completed(), run.state.message
    # Registered on the server, with its artifacts in the object store, nothing on local disk.
    assert versions(stack) == ["1"] and champion(stack) == "1"
    tags = registry(stack).get_model_version(NAME, "1").tags
    assert tags["dvc.corpus_md5"] == lock_md5(repo, "import")
    assert any(key.endswith("model.safetensors") for key in store_keys(stack, "mlflow"))
    assert not (repo / "mlartifacts").exists()
    # Both servers keep their state in PostgreSQL: the version and the flow run are rows there.
    import psycopg2

    for database, query in (("mlflow", "SELECT count(*) FROM model_versions"),
                            ("prefect", "SELECT count(*) FROM flow_run")):  # fmt: skip
        with psycopg2.connect(f"postgresql://{stack.postgres_url}/{database}") as db:
            cursor = db.cursor()
            cursor.execute(query)
            assert cursor.fetchone()[0] >= 1, database
    # `dvc push` went to the store: the remote holds every output.
    assert store_keys(stack, "dvc")
    assert "in sync" in run_in(repo, "dvc", "status", "--cloud", env=env).stdout
    # The flow's artifact links the MLflow run, the version and the report.
    summary = summary_of(stack, run.id)
    assert f"{stack.mlflow_uri}/#/runs/" in summary
    assert f"models:/{NAME}/1" in summary and "reports/evaluate/index.html" in summary


def test_a_second_clone_pulls_the_data_and_reads_lineage_from_the_servers(team):
    repo, env = team["repo"], team["env"]
    run_in(repo, "git", "add", "-A")
    run_in(repo, "git", "commit", "-qm", "retrain: version 1")
    clone = team["base"] / "clone"
    run_in(team["base"], "git", "clone", "-q", str(repo), str(clone))
    run_in(clone, "dvc", "pull", "-q", env=env)
    for folder in ("data/raw/mine", "data/external/mine", "models/generator-mle"):
        theirs, ours = sha256_tree(clone / folder), sha256_tree(repo / folder)
        shared = {k: v for k, v in ours.items() if not k.startswith("last/")}
        assert shared and {k: theirs.get(k) for k in shared} == shared, folder

    chain = json.loads(run_in(clone, "cadenza", "lineage", "1", "--json", env=env).stdout)
    assert chain["dvc"]["corpus_md5"] == lock_md5(clone, "import")
    assert chain["git_commit"] in run_in(clone, "git", "log", "--format=%H").stdout
    pulled = sha256_tree(clone / "data/raw/mine")
    for entry in chain["files"]:  # paths inside the imported corpus folder
        assert pulled[entry["path"]] == entry["sha256"], entry["path"]
    some_file = clone / "data/raw/mine" / chain["files"][0]["path"]
    back = json.loads(
        run_in(clone, "cadenza", "lineage", "--file", str(some_file), "--json", env=env).stdout
    )
    assert [hit["version"] for hit in back["versions"]] == ["1"]
    status = run_in(clone, "cadenza", "registry", "status", env={**env, "COLUMNS": "200"})
    assert "champion" in status.stdout and "promoted" in status.stdout


def _wait_for_new_checkpoint(state: Path, after: float, timeout: float = RUN_TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while not (state.is_file() and state.stat().st_mtime > after):
        assert time.monotonic() < deadline, f"no new checkpoint at {state}"
        time.sleep(0.02)


def _wait_for_lock_change(repo: Path, stage: str, before: str, timeout: float = RUN_TIMEOUT):
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(FileNotFoundError, KeyError, TypeError, yaml.YAMLError):
            if lock_md5(repo, stage) != before:
                return
        assert time.monotonic() < deadline, f"dvc.lock: {stage} did not change"
        time.sleep(0.1)


def test_new_data_starts_a_run_which_survives_a_killed_worker_and_a_tracking_outage(team):
    repo, stack, env = team["repo"], team["stack"], team["env"]
    known_runs = len(deployment_runs(stack))
    first_corpus = (repo / "data/external/mine.dvc").read_text()
    for i in range(2):
        make_midi(repo / "data/external/mine/new" / f"added{i}.mid", num_notes=48, pitch=55 + i)
    watched = run_in(repo, "cadenza", "watch", env=env)
    assert "changed" in watched.stdout and "cadenza.corpus.changed" in watched.stdout

    # The event starts a run through the deployment trigger.
    triggered = run_started_by_event(stack, known_runs)

    # Fault 1: the worker's machine dies during pretraining, after a checkpoint.
    state = repo / "models/generator-mle/last/state.pt"
    _wait_for_new_checkpoint(state, after=triggered.created.timestamp())
    killed = stack.kill_worker()
    assert len(killed) >= 3  # worker, flow run, dvc, the stage
    # Consistent: the run versioned the new data itself, and dvc.lock still holds only
    # finished stages (pretrain is the old one; the checkpoint is newer).
    assert (repo / "data/external/mine.dvc").read_text() != first_corpus
    assert dvc_changed(repo, env) >= {"pretrain", "evaluate", "register"}
    assert versions(stack) == ["1"]

    # The dead run stays "Running" on the server; a person marks it Crashed (the UI's
    # "change state"), which frees its deployment slot at once. Left alone, the slot's lease
    # runs out within 300 s (infra/README.md); the workspace slot's within LEASE_SECONDS.
    mark_crashed(stack, triggered.id)
    stack.start("worker")
    before_evaluate = lock_md5(repo, "evaluate")
    resumed = start_run(stack)
    # Fault 2: the tracking server goes down once evaluate is recorded, before register runs.
    _wait_for_lock_change(repo, "evaluate", before_evaluate)
    stack.stop("mlflow")
    failed = wait_final(stack, resumed)
    assert failed.state.is_failed()
    assert "register" in failed.state.message, failed.state.message
    assert stack.mlflow_uri in _flow_log(stack, resumed)  # the stage's error names the server
    pretrain = json.loads((repo / "metrics/pretrain.json").read_text())
    assert 0 < pretrain["resumed_from_step"] < 96, pretrain  # resumed, not started afresh
    assert dvc_changed(repo, env) == {"register"}  # all else finished and recorded
    stack.start("mlflow")
    assert versions(stack) == ["1"]  # nothing half-registered

    # Fault 3: the object store goes down once register is recorded, before `dvc push`.
    before_register = lock_md5(repo, "register")
    pushing = start_run(stack)
    _wait_for_lock_change(repo, "register", before_register)
    stack.stop("store")
    pushed_late = wait_final(stack, pushing)
    assert pushed_late.state.is_failed()
    assert stack.s3_endpoint in pushed_late.state.message, pushed_late.state.message
    assert versions(stack) == ["1", "2"]  # the next run registered version 2
    stack.start("store")
    assert "in sync" not in run_in(repo, "dvc", "status", "--cloud", env=env).stdout

    # The next run has nothing to retrain and pushes what is missing.
    again = wait_final(stack, start_run(stack))
    assert again.state.is_completed(), again.state.message
    assert "in sync" in run_in(repo, "dvc", "status", "--cloud", env=env).stdout
    assert dvc_changed(repo, env) == set() and versions(stack) == ["1", "2"]
    lineage = json.loads(run_in(repo, "cadenza", "lineage", "2", "--json", env=env).stdout)
    assert lineage["dvc"]["corpus_md5"] == lock_md5(repo, "import")
    assert lineage["num_files"] == 10


def test_the_same_content_again_is_a_no_op(team):
    repo, stack, env = team["repo"], team["stack"], team["env"]
    known_runs = len(deployment_runs(stack))
    unchanged = run_in(repo, "cadenza", "watch", env=env)
    assert "unchanged; no event" in unchanged.stdout
    time.sleep(5)
    assert len(deployment_runs(stack)) == known_runs
    # An event for content already trained on (the watcher's memory lost) starts a run that
    # registers nothing.
    variable = "cadenza-corpus-" + _load_workspace_key(repo)
    run_in(repo, "prefect", "variable", "unset", variable, env=env)
    assert "emitted" in run_in(repo, "cadenza", "watch", env=env).stdout
    duplicate = wait_final(stack, run_started_by_event(stack, known_runs).id)
    assert duplicate.state.is_completed()
    assert "nothing changed" in summary_of(stack, duplicate.id)
    assert versions(stack) == ["1", "2"]


def _load_workspace_key(repo: Path) -> str:
    from cadenza.flows import slot_name

    return slot_name(repo).rsplit("-", 1)[-1]


def test_two_runs_at_once_queue_one_behind_the_other(team):
    stack = team["stack"]
    first, second = start_run(stack), start_run(stack)
    done = [wait_final(stack, first), wait_final(stack, second)]
    assert all(run.state.is_completed() for run in done)
    one, two = sorted(done, key=lambda run: run.start_time)
    assert two.start_time >= one.end_time  # one waited for the other
    assert versions(stack) == ["1", "2"]


def test_promote_and_rollback_by_hand_record_who_and_why(team):
    repo, stack, env = team["repo"], team["stack"], team["env"]
    client = registry(stack)
    run_in(repo, "cadenza", "registry", "promote", "2", "--force", "--reason",
           "new chorales reviewed", "--by", "ana", env=env)  # fmt: skip
    assert champion(stack) == "2"
    rolled = run_in(repo, "cadenza", "registry", "rollback", "--reason", "parallel fifths",
                    "--by", "ben", env=env)  # fmt: skip
    assert "version 2 -> version 1" in rolled.stdout and champion(stack) == "1"
    tags = client.get_model_version(NAME, "2").tags
    assert (tags["hand.by"], tags["hand.reason"]) == ("ben", "parallel fifths")
    status = run_in(repo, "cadenza", "registry", "status", env={**env, "COLUMNS": "200"}).stdout
    assert "version 2: rolled back by ben: parallel fifths" in status
    assert "version 1: restored by rollback of v2 by ben: parallel fifths" in status


def test_the_champion_is_served_from_the_server(team, tmp_path):
    from symusic import Score

    stack = team["stack"]
    port = free_port()
    log = tmp_path / "serve.log"
    with log.open("w") as out:
        server = subprocess.Popen(
            ["mlflow", "models", "serve", "-m", f"models:/{NAME}@champion", "--env-manager",
             "local", "--host", "127.0.0.1", "--port", str(port)],
            cwd=tmp_path, env=_client_env(stack), stdout=out, stderr=out,
        )  # fmt: skip
    try:
        wait_for_http(f"http://127.0.0.1:{port}/ping", server, log.read_text, 180)
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/invocations",
            data=json.dumps({"dataframe_records": [{"num_tokens": 48, "seed": 1}]}).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=120) as response:
            prediction = json.loads(response.read())["predictions"][0]
        score = Score.from_midi(base64.b64decode(prediction["midi"]))
        assert score.note_num() == prediction["num_notes"]
    finally:
        server.terminate()
        server.wait(timeout=30)


def _client_env(stack) -> dict:
    from cadenza.pipeline import dvc_env

    return {**dvc_env(), **stack.env()}
