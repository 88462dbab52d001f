"""`make test` runs on two pytest-xdist workers: the tests that need the Prefect API must all
land on one of them, or each worker builds the ~150 s `registered_project` on its own."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytest.importorskip("xdist")

FILES = {
    "conftest.py": """
        import os
        import time
        import pytest
        from tests.conftest import pytest_collection_modifyitems  # noqa: F401 (the hook)

        @pytest.fixture(scope="session")
        def registered_project():
            with open(os.environ["BUILT_LOG"], "a") as log:
                log.write(os.environ.get("PYTEST_XDIST_WORKER", "main") + "\\n")
            time.sleep(0.5)
            return 1

        @pytest.fixture
        def project(registered_project):  # reached through another fixture
            return registered_project
        """,
    **{
        f"test_{name}.py": """
            import time

            def test_direct(registered_project):
                assert registered_project == 1

            def test_indirect(project):
                assert project == 1

            def test_free():
                time.sleep(0.3)
            """
        for name in "abcd"
    },
}


def test_tests_on_the_prefect_fixtures_share_one_worker(tmp_path):
    for name, text in FILES.items():
        (tmp_path / name).write_text(textwrap.dedent(text))
    log = tmp_path / "built.log"
    completed = subprocess.run(
        [sys.executable, "-m", "pytest", "-n", "2", "--dist", "loadgroup",
         "-p", "no:cacheprovider", "-v", str(tmp_path)],
        cwd=tmp_path,
        env={**os.environ, "BUILT_LOG": str(log),
             "PYTHONPATH": str(Path(__file__).resolve().parents[1])},
        capture_output=True,
        text=True,
    )  # fmt: skip
    assert completed.returncode == 0, completed.stdout[-3000:]
    assert "12 passed" in completed.stdout
    workers = {line.split()[0] for line in completed.stdout.splitlines() if "PASSED" in line}
    assert len(workers) == 2, completed.stdout  # the free tests did spread
    assert log.read_text().split() in (["gw0"], ["gw1"]), completed.stdout
