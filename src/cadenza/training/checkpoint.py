"""Checkpoints: weights as safetensors plus config.json; a resumable training state.

Layout of a model folder:
    model.safetensors, config.json     the best weights so far (what later stages use)
    last/model.safetensors             the latest weights
    last/state.pt                      optimizer, scheduler, RNG states, step, memory
Each folder is written to a temporary sibling and renamed into place, so a kill at any
moment leaves either the old or the new checkpoint, never half of one. state.pt holds only
tensors and plain containers and is loaded with weights_only=True.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from cadenza.io import replace_dir

log = logging.getLogger(__name__)

WEIGHTS = "model.safetensors"
CONFIG = "config.json"
STATE = "state.pt"


def _state_dict_for_saving(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    # Tied weights share storage; safetensors refuses shared tensors, so store copies.
    return {k: v.detach().cpu().clone().contiguous() for k, v in model.state_dict().items()}


def save_weights(
    model: torch.nn.Module, config: dict, folder: Path, extra: dict | None = None
) -> None:
    """model.safetensors + config.json into folder (files replaced atomically)."""
    folder.mkdir(parents=True, exist_ok=True)
    tmp_weights = folder / f".{WEIGHTS}.tmp"
    save_file(_state_dict_for_saving(model), str(tmp_weights), metadata={"format": "pt"})
    tmp_config = folder / f".{CONFIG}.tmp"
    tmp_config.write_text(json.dumps({**config, **(extra or {})}, indent=2) + "\n")
    os.replace(tmp_weights, folder / WEIGHTS)
    os.replace(tmp_config, folder / CONFIG)


def load_weights(model: torch.nn.Module, folder: Path) -> None:
    path = folder / WEIGHTS
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no weights here")
    model.load_state_dict(load_file(str(path)))


def read_config(folder: Path) -> dict:
    path = folder / CONFIG
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no model config; is {folder} a Cadenza checkpoint?")
    return json.loads(path.read_text())


def save_training_state(
    model: torch.nn.Module,
    state: dict,
    folder: Path,
    others: dict[str, torch.nn.Module] | None = None,
) -> None:
    """Latest weights (plus `<name>.safetensors` for other models) + resumable state into
    folder/last, atomically."""
    final = folder / "last"
    tmp = folder / ".last.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file(_state_dict_for_saving(model), str(tmp / WEIGHTS), metadata={"format": "pt"})
    for name, other in (others or {}).items():
        save_file(_state_dict_for_saving(other), str(tmp / f"{name}.safetensors"))
    torch.save(state, tmp / STATE)
    replace_dir(tmp, final)


def load_training_state(
    model: torch.nn.Module,
    folder: Path,
    others: dict[str, torch.nn.Module] | None = None,
    matches=None,
) -> dict | None:
    """Restore the latest weights; return the state dict, or None when there is none.

    The state is read first, so weights are only touched when a complete state exists and
    `matches(state)` (when given) accepts it: a last/ left by other settings (another
    architecture, other data) is ignored, never half-loaded."""
    last = folder / "last"
    if not (last / STATE).is_file():
        return None
    state = torch.load(last / STATE, map_location="cpu", weights_only=True)
    if matches is not None and not matches(state):
        log.warning("%s was saved with other settings or data: starting afresh", last)
        return None
    model.load_state_dict(load_file(str(last / WEIGHTS)))
    for name, other in (others or {}).items():
        other.load_state_dict(load_file(str(last / f"{name}.safetensors")))
    return state
