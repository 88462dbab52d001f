"""pretrain_discriminator: SpanBERT pretraining resumes after SIGKILL to the same weights;
other settings and finished runs start afresh."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from cadenza.config import parse_settings
from cadenza.paths import Paths
from cadenza.stages import pretrain_discriminator as discriminator_stage

from .conftest import CADENZA, TINY_STAGES, kill_at_first_checkpoint


def _project(token_project: Path, dest: Path, **settings) -> Path:
    """A copy of the tokenized project with a tiny discriminator (and adversarial chunks that
    fit its windows)."""
    shutil.copytree(token_project, dest, ignore=shutil.ignore_patterns("models", "mlflow.db"))
    params = yaml.safe_load((dest / "params.yaml").read_text())
    params["pretrain_discriminator"] = {**TINY_STAGES["pretrain_discriminator"], **settings}
    params["adversarial"] = TINY_STAGES["adversarial"]
    (dest / "params.yaml").write_text(yaml.safe_dump(params))
    return dest


def _run(root: Path) -> dict:
    settings = parse_settings(yaml.safe_load((root / "params.yaml").read_text()))
    discriminator_stage.run(
        settings.pretrain_discriminator, Paths(root=root, corpus="mine"), track=False
    )
    return json.loads((root / "metrics" / "pretrain_discriminator.json").read_text())


def _assert_same_weights(a_dir: Path, b_dir: Path, *names: str) -> None:
    for name in names:
        a, b = load_file(a_dir / name), load_file(b_dir / name)
        assert a.keys() == b.keys()
        assert all(torch.equal(a[k], b[k]) for k in a), name


@pytest.mark.parametrize("optimizer", ["adamw", "muon"])
def test_sigkill_then_rerun_resumes_to_the_same_weights(
    token_project, tmp_path, tracking_uri, optimizer
):
    # dropout draws from the torch RNG, windows and masks from the numpy one: both must resume
    tiny = {"max_steps": 60, "eval_interval": 20, "checkpoint_interval": 5, "dropout": 0.1,
            "optimizer": optimizer}  # fmt: skip
    straight = _project(token_project, tmp_path / "straight", **tiny)
    killed = _project(token_project, tmp_path / "killed", **tiny)
    assert _run(straight)["resumed_from_step"] == 0

    command = [*CADENZA, "pretrain-discriminator", "--params", "params.yaml"]
    kill_at_first_checkpoint(
        command, killed, killed / "models" / "discriminator" / "last" / "state.pt"
    )

    subprocess.run(command, cwd=killed, check=True, capture_output=True)
    metrics = json.loads((killed / "metrics" / "pretrain_discriminator.json").read_text())
    assert 0 < metrics["resumed_from_step"] < 60
    state = torch.load(killed / "models/discriminator/last/state.pt", weights_only=True)
    assert ("optimizers" in state["parts"]["optimizer"]) == (optimizer == "muon")
    _assert_same_weights(
        straight / "models" / "discriminator",
        killed / "models" / "discriminator",
        "last/model.safetensors",
        "model.safetensors",
    )


def test_other_settings_and_finished_runs_start_afresh(token_project, tmp_path):
    root = _project(token_project, tmp_path / "p", max_steps=10, checkpoint_interval=5)
    first = _run(root)
    weights = (root / "models" / "discriminator" / "model.safetensors").read_bytes()
    again = _run(root)  # a finished run trains again, to the same weights
    assert again["resumed_from_step"] == 0
    assert again["valid_mlm_loss"] == first["valid_mlm_loss"]
    assert (root / "models" / "discriminator" / "model.safetensors").read_bytes() == weights

    # An unfinished run of other settings is not resumed: the result is a clean run's.
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["pretrain_discriminator"]["max_steps"] = 20
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    state = torch.load(root / "models/discriminator/last/state.pt", weights_only=True)
    state["step"] = 5  # as if killed at step 5
    torch.save(state, root / "models/discriminator/last/state.pt")
    assert _run(root)["resumed_from_step"] == 0
    clean = _project(token_project, tmp_path / "clean", max_steps=20, checkpoint_interval=5)
    _run(clean)
    _assert_same_weights(
        clean / "models" / "discriminator", root / "models" / "discriminator", "model.safetensors"
    )
