"""A throwaway PostgreSQL server (the Debian package) on loopback, for tests that need a real
one (the listening app's votes). The whole team stack is infra/stack.py (tests/test_stack.py)."""

from __future__ import annotations

import contextlib
import importlib.util
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from .conftest import PROJECT_ROOT, free_port


def load_stack_module():
    """infra/stack.py (a script, not part of the package), loaded as a module."""
    spec = importlib.util.spec_from_file_location(
        "cadenza_stack", PROJECT_ROOT / "infra" / "stack.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


STACK = load_stack_module()
_postgres_bin, _as_postgres_user = STACK.postgres_bin, STACK._as_postgres_user


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
