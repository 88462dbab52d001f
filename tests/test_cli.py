"""The `cadenza` command: instant help, clear exits on bad params, stage commands end to end."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import yaml
from typer.testing import CliRunner

from cadenza.cli import app

from .conftest import make_midi

PROJECT = Path(__file__).resolve().parents[1]
CADENZA = [sys.executable, "-m", "cadenza.cli"]


def test_help_lists_the_stage_commands_without_heavy_imports():
    code = (
        "import sys; from typer.testing import CliRunner; from cadenza.cli import app; "
        "r = CliRunner().invoke(app, ['--help']); print(r.output); "
        "heavy = [m for m in ('pandas', 'music21', 'great_expectations', 'torch', 'mlflow', "
        "'prefect', 'dvc') "
        "if m in sys.modules]; print('HEAVY', heavy)"
    )
    output = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    for command in ("import", "validate", "split", "pipeline"):
        assert command in output
    assert "HEAVY []" in output


def test_bad_params_exit_2_naming_the_key(tmp_path):
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"validate": {"max_bad_fraction": 7}}))
    result = CliRunner().invoke(app, ["validate", "--params", str(params), "--root", str(tmp_path)])
    assert result.exit_code == 2
    assert "validate.max_bad_fraction = 7 is not allowed" in result.output
    assert not (tmp_path / "data").exists()  # nothing ran


def test_stage_commands_run_in_order(tmp_path):
    source = tmp_path / "midi"
    for i in range(6):
        make_midi(source / f"piece{i}.mid", pitch=40 + i)
    params = tmp_path / "params.yaml"
    params.write_text(
        yaml.safe_dump({"import": {"corpus": "mine", "source": "folder", "path": str(source)}})
    )
    common = ["--params", str(params), "--root", str(tmp_path)]
    runner = CliRunner()
    imported = runner.invoke(app, ["import", *common])
    assert imported.exit_code == 0, imported.output
    assert "imported 6 files" in imported.output
    validated = runner.invoke(app, ["validate", *common])
    assert validated.exit_code == 0, validated.output
    assert "6 usable, 0 quarantined" in validated.output
    split = runner.invoke(app, ["split", *common])
    assert split.exit_code == 0, split.output
    assert (tmp_path / "data" / "interim" / "splits.csv").is_file()


def test_validate_before_import_says_what_to_do(tmp_path):
    result = CliRunner().invoke(
        app, ["validate", "--params", str(PROJECT / "params.yaml"), "--root", str(tmp_path)]
    )
    assert result.exit_code == 1
    assert "run `cadenza import` first" in result.output


def test_pretrain_before_tokenize_says_what_to_do(tmp_path):
    result = CliRunner().invoke(
        app, ["pretrain", "--params", str(PROJECT / "params.yaml"), "--root", str(tmp_path)]
    )
    assert result.exit_code == 1
    assert "run `cadenza tokenize` first" in result.output


def test_register_before_evaluate_says_what_to_do(tmp_path):
    result = CliRunner().invoke(
        app, ["register", "--params", str(PROJECT / "params.yaml"), "--root", str(tmp_path)]
    )
    assert result.exit_code == 1
    assert "run `cadenza evaluate` first" in result.output


def test_unreachable_mlflow_server_fails_fast_naming_it(tmp_path, monkeypatch):
    from .conftest import free_port

    uri = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    common = ["--params", str(PROJECT / "params.yaml"), "--root", str(tmp_path)]
    for command in (["registry", "status"], ["lineage", "1"]):
        result = CliRunner().invoke(app, [*command, *common])
        assert result.exit_code == 1, result.output
        assert f"MLflow server {uri}" in result.output and "does not answer" in result.output


def test_openmp_threads_spin_on_a_free_box_and_sleep_on_a_busy_one():
    from cadenza.cli import openmp_wait_policy

    assert openmp_wait_policy(0.3, 2) is None  # idle: libgomp's spinning is faster
    assert openmp_wait_policy(2.5, 2) is None  # our own previous stage's two threads
    assert openmp_wait_policy(6.0, 2) == "PASSIVE"  # other work: spinning stalls 6-20x
