"""The team set-up, as far as it runs on one box: a real PostgreSQL server (the Debian
package) and an MLflow tracking server on it (Postgres backend store, proxied artifacts),
both on loopback; registry, promotion and lineage run against them; both are stopped."""

from __future__ import annotations

import contextlib
import glob
import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from .conftest import free_port, run_in, wait_for_http

pytestmark = pytest.mark.services
NAME = "cadenza-generator"


def _postgres_bin() -> Path | None:
    found = shutil.which("pg_ctl")
    if found:
        return Path(os.path.realpath(found)).parent
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"))
    return Path(candidates[-1]).parent if candidates else None


def _as_postgres_user(command: list[str]) -> list[str]:
    """PostgreSQL refuses to run as root: run its tools as `nobody` then."""
    return ["runuser", "-u", "nobody", "--", *command] if os.geteuid() == 0 else command


@contextlib.contextmanager
def postgres_server():
    bin_dir = _postgres_bin()
    if bin_dir is None:
        pytest.skip("PostgreSQL is not installed (Debian: apt install postgresql)")
    pytest.importorskip("psycopg2", reason="psycopg2-binary is in the dev extras")
    # Not under pytest's tmp_path: as root, its parents are closed to `nobody`.
    folder = Path(tempfile.mkdtemp(prefix="cadenza-postgres-"))
    data, socket_dir = folder / "data", folder / "socket"
    socket_dir.mkdir()
    if os.geteuid() == 0:
        shutil.chown(folder, "nobody")
        shutil.chown(socket_dir, "nobody")
    port = free_port()
    initdb = subprocess.run(
        _as_postgres_user(
            [
                str(bin_dir / "initdb"),
                "-D",
                str(data),
                "-U",
                "cadenza",
                "--auth=trust",
                "-E",
                "UTF8",
            ]
        ),
        capture_output=True,
        text=True,
    )
    assert initdb.returncode == 0, initdb.stderr
    options = f"-p {port} -k {socket_dir} -c listen_addresses=127.0.0.1"
    pg_ctl = [str(bin_dir / "pg_ctl"), "-D", str(data), "-l", str(folder / "postgres.log")]
    subprocess.run(
        _as_postgres_user([*pg_ctl, "-o", options, "-w", "start"]), check=True, capture_output=True
    )
    try:
        import psycopg2

        connection = psycopg2.connect(
            host="127.0.0.1", port=port, user="cadenza", dbname="postgres"
        )
        connection.autocommit = True
        connection.cursor().execute("CREATE DATABASE mlflow")
        connection.close()
        # SQLAlchemy 2.1 reads plain postgresql:// as psycopg 3: name the driver we ship.
        yield f"postgresql+psycopg2://cadenza@127.0.0.1:{port}/mlflow"
    finally:
        subprocess.run(_as_postgres_user([*pg_ctl, "-m", "fast", "-w", "stop"]), check=False)
        shutil.rmtree(folder, ignore_errors=True)


@contextlib.contextmanager
def mlflow_server(backend: str, artifacts: Path, log: Path):
    from cadenza.pipeline import dvc_env

    port = free_port()
    with log.open("w") as out:
        server = subprocess.Popen(
            ["mlflow", "server", "--backend-store-uri", backend,
             "--artifacts-destination", artifacts.as_uri(), "--serve-artifacts",
             "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
            env=dvc_env(), stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
        try:
            wait_for_http(f"http://127.0.0.1:{port}/health", server, log.read_text, 180)
            yield f"http://127.0.0.1:{port}"
        finally:
            server.terminate()
            try:
                server.wait(timeout=5)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait(timeout=10)


def test_registry_and_promotion_against_mlflow_server_on_postgres(registered_project, tmp_path):
    repo = tmp_path / "repo"
    shutil.copytree(
        registered_project["repo"],
        repo,
        ignore=shutil.ignore_patterns("mlflow.db", "mlartifacts", ".cadenza-registry.lock"),
    )
    with (
        postgres_server() as backend,
        mlflow_server(backend, tmp_path / "artifacts", tmp_path / "mlflow.log") as uri,
    ):
        env = {"MLFLOW_TRACKING_URI": uri}
        run_in(repo, "cadenza", "evaluate", env=env)
        first = run_in(repo, "cadenza", "register", env=env)
        assert "version 1: promoted to champion" in first.stdout
        again = run_in(repo, "cadenza", "register", env=env)
        assert "nothing changed" in again.stdout

        import mlflow

        client = mlflow.MlflowClient(uri, registry_uri=uri)
        versions = client.search_model_versions(f"name='{NAME}'")
        assert [str(v.version) for v in versions] == ["1"]
        one = client.get_model_version(NAME, "1")
        assert one.tags["decision"] == "promoted"
        assert one.tags["dvc.corpus_md5"] != "unknown"
        assert one.tags["git.commit"] != "unknown"
        promoted = run_in(repo, "cadenza", "registry", "promote", "1", env=env)
        assert "already the champion" in promoted.stdout
        assert str(client.get_model_version_by_alias(NAME, "challenger").version) == "1"
        chain = json.loads(run_in(repo, "cadenza", "lineage", "1", "--json", env=env).stdout)
        assert sorted(chain["version"]["aliases"]) == ["challenger", "champion"]
        assert chain["num_files"] == 10
        # Artifacts went through the server to its destination, not to the client's disk.
        assert any((tmp_path / "artifacts").rglob("model.safetensors"))
        assert not (repo / "mlartifacts").exists()
        # The store is Postgres: the runs are rows there.
        import psycopg2

        with psycopg2.connect(backend.replace("postgresql+psycopg2://", "postgresql://")) as db:
            cursor = db.cursor()
            cursor.execute("SELECT count(*) FROM model_versions")
            assert cursor.fetchone()[0] == 1
