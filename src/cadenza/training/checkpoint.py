"""Checkpoints: weights as safetensors plus config.json; a resumable training state.

Layout of a model folder:
    model.safetensors, config.json     the best weights so far (what later stages use)
    last/model.safetensors             the latest weights (`<name>.safetensors` for other models)
    last/state.pt                      optimizer, scheduler, RNG states, step, memory
Each folder is written to a temporary sibling and renamed into place, so a kill at any
moment leaves either the old or the new checkpoint, never half of one. state.pt holds only
tensors and plain containers and is loaded with weights_only=True.

`Checkpointer` saves and restores last/ for a training loop from a dict of its stateful parts.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from cadenza.io import replace_dir

log = logging.getLogger(__name__)

WEIGHTS = "model.safetensors"
CONFIG = "config.json"
STATE = "state.pt"
FORMAT = 1  # of the Checkpointer's state.pt; bump when its shape changes: older states start afresh


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


def _weights_file(name: str) -> str:
    return WEIGHTS if name == "model" else f"{name}.safetensors"


def _write_last(folder: Path, modules: Mapping[str, torch.nn.Module], state: dict) -> None:
    """modules' weights (`model` -> model.safetensors) and state.pt into folder/last,
    atomically."""
    final = folder / "last"
    tmp = folder / ".last.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for name, module in modules.items():
        metadata = {"format": "pt"} if name == "model" else None
        save_file(_state_dict_for_saving(module), str(tmp / _weights_file(name)), metadata)
    torch.save(state, tmp / STATE)
    replace_dir(tmp, final)


def _read_state(folder: Path) -> dict | None:
    path = folder / "last" / STATE
    return torch.load(path, map_location="cpu", weights_only=True) if path.is_file() else None


def _load_modules(folder: Path, modules: Mapping[str, torch.nn.Module]) -> None:
    for name, module in modules.items():
        module.load_state_dict(load_file(str(folder / "last" / _weights_file(name))))


def rng_state() -> dict:
    """The global torch RNG states: CPU, and every CUDA device's where CUDA is available."""
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if torch.cuda.is_available() and "cuda" in state:
        for index, device_state in enumerate(state["cuda"][: torch.cuda.device_count()]):
            torch.cuda.set_rng_state(device_state, index)


def _state_of(part: Any) -> Any:
    if isinstance(part, np.random.Generator):
        return part.bit_generator.state
    if isinstance(part, torch.Generator):
        return part.get_state()
    return part.state_dict()


def _load_state(part: Any, state: Any) -> None:
    if isinstance(part, np.random.Generator):
        part.bit_generator.state = state
    elif isinstance(part, torch.Generator):
        part.set_state(state)
    else:
        part.load_state_dict(state)


@dataclass
class Resumed:
    """What a restored state says beyond its parts: where the loop stopped, and the loop's
    own values as `save(step, **values)` got them (tensors come back on the CPU)."""

    step: int
    values: dict = field(default_factory=dict)


class Checkpointer:
    """Saves and restores a training loop's resumable state in folder/last.

    parts: name -> a stateful part of the run. nn.Modules go to `<name>.safetensors`
    ("model" -> model.safetensors); everything with state_dict/load_state_dict (optimizers,
    schedulers, a GradScaler, ...), numpy Generators and torch Generators go into state.pt,
    beside the global CPU and CUDA RNG states, the step, the training seconds of every
    session so far, and the loop's own values. A state is restored only when it was saved
    with the same fingerprint (the caller's identity of settings and data); then the parts
    are loaded in place, so restore after the modules are on their device.
    """

    def __init__(self, folder: Path, parts: Mapping[str, Any], fingerprint: str = "") -> None:
        self.folder, self.fingerprint = folder, fingerprint
        self.modules = {n: p for n, p in parts.items() if isinstance(p, torch.nn.Module)}
        self.others = {n: p for n, p in parts.items() if n not in self.modules}
        self.previous_seconds = 0.0  # training time of earlier (interrupted) sessions
        self._started = time.perf_counter()

    def start_clock(self) -> None:
        """Training time counts from here (on top of the restored sessions')."""
        self._started = time.perf_counter()

    def seconds(self) -> float:
        """Training seconds of all sessions, this one up to now."""
        return self.previous_seconds + time.perf_counter() - self._started

    def save(self, step: int, **values: Any) -> None:
        """The parts, RNG states, step, seconds and `values` (tensors and plain containers)."""
        state = {
            "format": FORMAT,
            "fingerprint": self.fingerprint,
            "step": step,
            "train_seconds": self.seconds(),
            "rng": rng_state(),
            "parts": {name: _state_of(part) for name, part in self.others.items()},
            "values": values,
        }
        _write_last(self.folder, self.modules, state)

    def restore(self, finished_at: int | None = None) -> Resumed | None:
        """Load the saved state into the parts and the global RNGs; None (nothing touched)
        when there is none, it is of another fingerprint or format, or, with finished_at,
        it was saved at that step or later (a finished run, trained again)."""
        state = _read_state(self.folder)
        if state is None:
            return None
        if (state.get("format"), state.get("fingerprint")) != (FORMAT, self.fingerprint):
            log.warning("%s was saved with other settings or data: starting afresh", self.folder)
            return None
        if finished_at is not None and state["step"] >= finished_at:
            log.info("%s holds a finished run: training afresh", self.folder / "last")
            return None
        _load_modules(self.folder, self.modules)
        for name, part in self.others.items():
            _load_state(part, state["parts"][name])
        set_rng_state(state["rng"])
        self.previous_seconds = float(state["train_seconds"])
        return Resumed(state["step"], state["values"])
