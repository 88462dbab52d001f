"""Integration: `benchmarks/ablations.py` queues real DVC experiments with its overrides, and
its table reads each experiment's own paired comparison from real `dvc exp show --json`.

The project is a toy (one stage that writes metrics/evaluate.json from params.yaml), so each
experiment takes a second instead of the real adversarial + evaluate stages' ten minutes; the
queue, the experiment runs and the table are DVC's and the script's real paths."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from .conftest import run_in

PROJECT = Path(__file__).resolve().parents[1]
SCRIPT = PROJECT / "benchmarks" / "ablations.py"
pytestmark = pytest.mark.integration

# The stage: a GAN-vs-control difference that depends on the adversarial params, so each row
# of the table can be checked against the overrides its experiment ran with.
STAGE = """\
import json, pathlib, yaml
p = yaml.safe_load(open("params.yaml"))["adversarial"]
d = -0.5 * p["adv_weight"] + (0.2 if p.get("lr_adversarial") == 0.001 else 0.0)
d += 0.01 * p.get("seed", 0)  # another training seed lands a little elsewhere
learned = {"difference": 2 * d, "ci_low": 2 * d - 0.1, "ci_high": 2 * d + 0.1, "p_value": 0.3}
pair = {"probe": "music", "difference": d, "ci_low": d - 0.05, "ci_high": d + 0.05,
        "p_value": 0.5, "by_probe": {"learned": learned}}
pathlib.Path("metrics").mkdir(exist_ok=True)
json.dump({"comparisons": {"gan_vs_control": pair}, "gan": {"test_nll": 0.6 + p["adv_weight"]},
           "control": {"test_nll": 0.6}, "candidate": "mle"}, open("metrics/evaluate.json", "w"))
"""

DVC_YAML = {
    "stages": {
        "evaluate": {
            "cmd": "python stage.py",
            "deps": ["stage.py"],
            "params": ["adversarial"],
            "metrics": [{"metrics/evaluate.json": {"cache": False}}],
        }
    }
}


def sh(repo: Path, *command: str) -> str:
    completed = run_in(repo, *command)
    return completed.stdout + completed.stderr


def test_queued_ablations_run_as_dvc_experiments_and_the_table_reads_each_ones_result(tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    # lr_adversarial is not written: its experiment adds it (`-S +adversarial.lr_adversarial`)
    params = {"adversarial": {"adv_weight": 0.1}}
    (repo / "params.yaml").write_text(yaml.safe_dump(params))
    (repo / "stage.py").write_text(STAGE)
    (repo / "dvc.yaml").write_text(yaml.safe_dump(DVC_YAML))
    sh(repo, "git", "init", "-q")
    sh(repo, "git", "config", "user.email", "ci@example.com")
    sh(repo, "git", "config", "user.name", "ci")
    sh(repo, "dvc", "init", "-q")
    sh(repo, "dvc", "repro", "-q")
    sh(repo, "git", "add", "-A")
    sh(repo, "git", "commit", "-qm", "baseline")

    queued = sh(repo, sys.executable, str(SCRIPT), "queue", "abl-default", "abl-lr-adv-1e-3")
    queued += sh(repo, sys.executable, str(SCRIPT), "queue", "--seeds", "2", "abl-weight1")
    assert "-S adversarial.adv_weight=1.0" in queued
    assert "-S +adversarial.lr_adversarial=0.001" in queued
    paper = "-S +adversarial.estimator=gumbel -S +adversarial.adv_every=4 -S "
    paper += "+adversarial.sample_batch=8 -S +adversarial.lr_adversarial=0.0002"
    assert f"-n abl-weight1-seed1 {paper} -S adversarial.adv_weight=1.0 -S +adversarial.seed=1" in (
        queued
    )
    sh(repo, "dvc", "exp", "run", "--run-all", "-q")
    table = sh(repo, sys.executable, str(SCRIPT), "table")

    rows = {line.split("|")[1].strip(): line for line in table.splitlines()[2:]}
    expected = {"abl-default", "abl-weight1-seed0", "abl-weight1-seed1", "abl-lr-adv-1e-3"}
    assert expected <= set(rows), table
    # each row carries its own experiment's result, not the baseline's
    assert "| defaults | -0.050 [-0.100, +0.000], p = 0.50 (music) |" in rows["abl-default"]
    weight1 = rows["abl-weight1-seed0"]
    assert "| paper, adv_weight=1.0, seed=0 | -0.500 [-0.550, -0.450]" in weight1
    assert "| -1.000 [-1.100, -0.900], p = 0.30 | 1.6000 / 0.6000 | mle |" in weight1
    assert "| paper, adv_weight=1.0, seed=1 | -0.490" in rows["abl-weight1-seed1"]
    assert "| paper, lr_adversarial=0.001 | +0.150 [+0.100, +0.200]" in rows["abl-lr-adv-1e-3"]
    # the recipe across its seeds: mean -0.495, sd 0.00707, t(0.975, 1 df) = 12.706
    across = rows["abl-weight1, across 2 seeds"]
    assert "| -0.495 [-0.559, -0.431], p = 0.01, seed sd 0.007 (music) |" in across, across
    assert "| -0.990 [-1.117, -0.863], p = 0.01, seed sd 0.014 |" in across, across
    # the workspace (and so the committed params) is left as it was
    assert yaml.safe_load((repo / "params.yaml").read_text()) == params


def test_an_unknown_ablation_name_is_refused_with_the_choices():
    one = subprocess.run(
        [sys.executable, str(SCRIPT), "queue", "--seeds", "1"], capture_output=True, text=True
    )
    assert one.returncode != 0 and "--seeds 1: give 0 (one run each) or at least 2" in one.stderr
    completed = subprocess.run(
        [sys.executable, str(SCRIPT), "queue", "abl-nonsense"], capture_output=True, text=True
    )
    assert completed.returncode != 0
    assert "unknown ablation(s) abl-nonsense" in completed.stderr
    assert "abl-lr-adv-1e-3" in completed.stderr
