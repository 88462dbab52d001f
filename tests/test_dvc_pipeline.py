"""Integration: a real git + DVC repo runs import -> validate -> split (`dvc repro split`),
then skips it all."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pandas as pd
import pytest
import yaml

from cadenza.pipeline import dvc_env

from .conftest import NUM_CHORALES, make_midi

PROJECT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.integration


def sh(repo: Path, *command: str) -> str:
    completed = subprocess.run(command, cwd=repo, env=dvc_env(), capture_output=True, text=True)
    assert completed.returncode == 0, f"{command} failed:\n{completed.stdout}\n{completed.stderr}"
    return completed.stdout + completed.stderr


@pytest.fixture
def repo(tmp_path, mixed_folder) -> Path:
    """A fresh project: our dvc.yaml, params.yaml and code, a user corpus tracked by DVC."""
    folder, _ = mixed_folder
    repo = tmp_path / "repo"
    repo.mkdir()
    shutil.copy(PROJECT / "dvc.yaml", repo)
    shutil.copytree(
        PROJECT / "src" / "cadenza",
        repo / "src" / "cadenza",
        ignore=shutil.ignore_patterns("__pycache__"),
    )
    params = yaml.safe_load((PROJECT / "params.yaml").read_text())
    params["import"].update(corpus="mine", source="folder", path="data/external/mine")
    params["validate"].update(max_file_bytes=25_000, max_bad_fraction=0.9)
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    shutil.copytree(folder, repo / "data" / "external" / "mine")
    sh(repo, "git", "init", "-q")
    sh(repo, "git", "config", "user.email", "ci@example.com")
    sh(repo, "git", "config", "user.name", "ci")
    sh(repo, "dvc", "init", "-q")
    sh(repo, "dvc", "remote", "add", "-d", "local", str(tmp_path / "remote"))
    sh(repo, "dvc", "add", "-q", "data/external/mine")
    sh(repo, "git", "add", "-A")
    sh(repo, "git", "commit", "-qm", "project")
    return repo


def test_repro_runs_the_stages_then_skips_them(repo, mixed_folder):
    _, expected_bad = mixed_folder
    first = sh(repo, "dvc", "repro", "split")
    for stage in ("import", "validate", "split"):
        assert f"Running stage '{stage}'" in first

    raw = repo / "data" / "raw" / "mine"
    assert len(list((raw / "chorales").glob("*.mid"))) == NUM_CHORALES
    quarantine = pd.read_csv(repo / "data" / "interim" / "quarantine.csv")
    assert dict(zip(quarantine["path"], quarantine["reason_code"], strict=True)) == expected_bad
    splits = pd.read_csv(repo / "data" / "interim" / "splits.csv")
    assert sorted(splits["path"]) == sorted(
        f"chorales/{p.name}" for p in (raw / "chorales").glob("*.mid")
    )
    assert set(splits["split"]) <= {"train", "valid", "test"}
    assert (repo / "reports" / "validation" / "index.html").is_file()

    lock = yaml.safe_load((repo / "dvc.lock").read_text())
    assert set(lock["stages"]) == {"import", "validate", "split"}
    raw_out = lock["stages"]["import"]["outs"][0]
    assert raw_out["path"] == "data/raw/mine" and raw_out["md5"].endswith(".dir")
    assert lock["stages"]["validate"]["deps"][0]["md5"] == raw_out["md5"]
    assert lock["stages"]["split"]["params"]["params.yaml"]["split"]["train"] == 0.8
    # keys left out of params.yaml take the code's defaults: the code is a dependency
    assert "src/cadenza/config.py" in {d["path"] for d in lock["stages"]["split"]["deps"]}

    second = sh(repo, "dvc", "repro", "split")
    assert "Running stage" not in second
    for stage in ("import", "validate", "split"):
        assert f"Stage '{stage}' didn't change, skipping" in second

    sh(repo, "dvc", "push")
    assert "in sync" in sh(repo, "dvc", "status", "--cloud")
    assert any((repo.parent / "remote").rglob("*"))

    # New files in the user corpus: the stages re-run, old files keep their split.
    before = splits.set_index("path")["split"]
    for i in range(3):
        make_midi(repo / "data" / "external" / "mine" / "new" / f"tune{i}.mid", pitch=50 + i)
    sh(repo, "dvc", "add", "-q", "data/external/mine")
    rerun = sh(repo, "dvc", "repro", "split")
    assert "Running stage 'import'" in rerun

    after = pd.read_csv(repo / "data" / "interim" / "splits.csv").set_index("path")["split"]
    assert len(after) == len(before) + 3
    assert after.loc[before.index].equals(before)
