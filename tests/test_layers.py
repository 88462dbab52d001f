"""The layers contract in pyproject.toml, checked by the real import-linter on the package:
every import points down (cli, flows, pipeline, stages, tracking, evaluation, ... io), and
the check fails on a copy of the package that imports upward."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"  # import-linter, a dev extra


def _lint(project: Path) -> subprocess.CompletedProcess:
    """lint-imports on project/pyproject.toml with project/src first on the path."""
    env = {**os.environ, "PYTHONPATH": str(project / "src")}
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-cache", str(project / "pyproject.toml")],
        cwd=project, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip


def test_the_contract_is_a_layers_contract_without_exceptions():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    assert config["root_package"] == "cadenza"
    (contract,) = config["contracts"]
    assert contract["type"] == "layers"
    assert "ignore_imports" not in contract and "unmatched_ignore_imports_alerting" not in contract
    layers = contract["layers"]
    assert layers[0].startswith("cadenza.cli") and layers[-1].startswith("cadenza.paths")


def test_imports_point_down():
    result = _lint(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Layers point down KEPT" in result.stdout


def test_an_upward_import_breaks_the_contract(tmp_path):
    """The same check on a copy whose io.py (the bottom layer) imports the evaluate stage."""
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    shutil.copytree(
        ROOT / "src" / "cadenza", tmp_path / "src" / "cadenza",
        ignore=shutil.ignore_patterns("__pycache__"),
    )  # fmt: skip
    io = tmp_path / "src" / "cadenza" / "io.py"
    io.write_text(io.read_text() + "\nfrom cadenza.stages import evaluate  # noqa: E402\n")
    result = _lint(tmp_path)
    assert result.returncode != 0
    assert "Layers point down BROKEN" in result.stdout
    assert "cadenza.io -> cadenza.stages.evaluate" in result.stdout
