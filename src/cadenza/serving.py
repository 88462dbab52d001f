"""The generator as an MLflow pyfunc model: what `mlflow models serve` serves.

Input: one row per request with num_tokens (required), temperature, top_k, top_p and
pitch_top_p (default: the `sampling` the model was logged with, sampling.json beside its
weights; plain sampling for a model logged without one), seed (0) and optionally primer (a
MIDI file, base64); task (continue, the default | harmonize: midi is a melody, its top line
becomes voice 1 | infill: bars "A:B" of the piece in midi rewritten, the rest kept) and
midi (base64, at most MAX_MIDI_BYTES). A bad field is an HTTP 400 whose top-level `message`
names it. Output: one row per request with midi (base64 MIDI file), num_notes and
num_tokens. The model folder carries the weights (safetensors), config.json, tokenizer.json,
sampling.json and the cadenza package itself, so it loads wherever torch, miditok and symusic
are installed.
"""

from __future__ import annotations

import base64
import shutil
import tempfile
import warnings
from dataclasses import replace
from importlib.metadata import version
from pathlib import Path

import mlflow.exceptions
import mlflow.pyfunc
import pandas as pd
from mlflow.models import ModelSignature
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE  # HTTP 400
from mlflow.types.schema import ColSpec, Schema
from symusic import Score

from cadenza.generate import controlled_score, load_generator, sample_score
from cadenza.sampling import PLAIN, Sampling, read_sampling, write_sampling
from cadenza.tokens.encode import normalized_ids

# The input schema is the explicit signature() below, not predict's type hints.
warnings.filterwarnings("ignore", message=".*Add type hints to the `predict` method.*")
MAX_TOKENS = 8192
MAX_MIDI_BYTES = 1 << 20  # a primer, melody or piece larger than this is refused
TASKS = ("continue", "harmonize", "infill")
CHECKPOINT_FILES = ("model.safetensors", "config.json", "tokenizer.json")


class RequestError(mlflow.exceptions.MlflowException):
    """A request field is missing or out of range: HTTP 400 whose top-level `message` is
    exactly this error's text. (MLflow's scoring server prefixes an MlflowException's message
    with the whole request, base64 primer included; the setter below keeps ours.)"""

    def __init__(self, message: str) -> None:
        self._field_message = message
        super().__init__(message, error_code=INVALID_PARAMETER_VALUE)

    @property
    def message(self) -> str:
        return self._field_message

    @message.setter
    def message(self, value: str) -> None:  # the scoring server's rewrite is dropped
        pass


def _field(row: dict, name: str, default, kind):
    value = row.get(name, default)
    if value is None or (isinstance(value, float) and value != value):  # missing or NaN
        value = default
    try:
        converted = kind(value)
    except (TypeError, ValueError):
        raise RequestError(f"{name}: expected {kind.__name__}, got {value!r}") from None
    if kind is int and isinstance(value, float) and converted != value:
        raise RequestError(f"{name}: expected an integer, got {value!r}")
    return converted


class GeneratorModel(mlflow.pyfunc.PythonModel):
    def load_context(self, context) -> None:
        folder = Path(context.artifacts["checkpoint"])
        self.net, self.tokenizer = load_generator(folder)
        self.sampling = read_sampling(folder)

    def predict(self, context, model_input, params=None):  # noqa: D102 - schema: signature()
        rows = (
            model_input.to_dict("records")
            if isinstance(model_input, pd.DataFrame)
            else list(model_input)
        )
        return pd.DataFrame([self._one(row) for row in rows])

    def _one(self, row: dict) -> dict:
        num_tokens = _field(row, "num_tokens", 256, int)
        defaults: Sampling = getattr(self, "sampling", PLAIN)
        temperature = _field(row, "temperature", defaults.temperature, float)
        top_k = _field(row, "top_k", defaults.top_k, int)
        top_p = _field(row, "top_p", defaults.top_p, float)
        pitch_top_p = _field(row, "pitch_top_p", defaults.pitch_top_p, float)
        seed = _field(row, "seed", 0, int)
        if not 1 <= num_tokens <= MAX_TOKENS:
            raise RequestError(f"num_tokens: {num_tokens} is outside 1..{MAX_TOKENS}")
        if temperature <= 0:
            raise RequestError(f"temperature: {temperature} must be > 0")
        if top_k < 0:
            raise RequestError(f"top_k: {top_k} must be >= 0")
        if not 0 < top_p <= 1:
            raise RequestError(f"top_p: {top_p} must be in (0, 1]")
        if not 0 < pitch_top_p <= 1:
            raise RequestError(f"pitch_top_p: {pitch_top_p} must be in (0, 1]")
        task = _field(row, "task", "continue", str)
        if task not in TASKS:
            raise RequestError(f"task: {task!r} is not one of {', '.join(TASKS)}")
        sampling = replace(
            defaults, temperature=temperature, top_k=top_k, top_p=top_p, pitch_top_p=pitch_top_p
        )  # the grammar is the model's: a request cannot turn it on or off
        if task == "continue":
            prompt: list[int] = []
            shift = None  # a key-normalized model without primer: a key drawn by seed
            if primer := _midi(row, "primer", required=False):
                prompt, shift = normalized_ids(self.tokenizer, primer)
                prompt = prompt[:MAX_TOKENS]
            score, ids = sample_score(
                self.net, self.tokenizer, num_tokens, sampling, seed, prompt, shift
            )
        else:
            score, ids = self._controlled(row, task, sampling, seed)
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "sample.mid"
            score.dump_midi(str(path))
            midi = base64.b64encode(path.read_bytes()).decode("ascii")
        return {"midi": midi, "num_notes": int(score.note_num()), "num_tokens": len(ids)}

    def _controlled(self, row: dict, task: str, sampling: Sampling, seed: int):
        midi = _midi(row, "midi", required=True, task=task)
        bars = row.get("bars") if task == "infill" else None
        if task == "infill" and not isinstance(bars, str):
            raise RequestError("bars: task infill needs bars 'A:B' (counted from 1, both included)")
        try:
            if task == "harmonize":
                return controlled_score(self.net, self.tokenizer, sampling, seed, melody=midi)
            return controlled_score(self.net, self.tokenizer, sampling, seed, piece=midi, bars=bars)
        except ValueError as exc:  # the client's input: named in the message
            field = "bars" if "--bars" in str(exc) else "midi"
            raise RequestError(
                f"{field}: {str(exc).replace('--bars ', '').replace('--', '')}"
            ) from None


def _midi(row: dict, name: str, required: bool, task: str = "") -> Score | None:
    """A base64 MIDI field as a Score; a RequestError naming the field when bad or too big."""
    value = row.get(name)
    if not isinstance(value, str) or not value:
        if required:
            raise RequestError(f"{name}: task {task} needs a MIDI file in base64")
        return None
    if len(value) > MAX_MIDI_BYTES * 4 // 3 + 4:
        raise RequestError(f"{name}: larger than {MAX_MIDI_BYTES} bytes of MIDI")
    try:
        return Score.from_midi(base64.b64decode(value, validate=True))
    except Exception as exc:  # noqa: BLE001 - any parse failure is the client's input
        raise RequestError(f"{name}: not a base64 MIDI file ({exc})") from None


def signature():
    inputs = Schema(
        [
            ColSpec("long", "num_tokens"),  # only this one is required
            # The optional integers are declared double: in a request whose records differ,
            # a record without the field is NaN there, which a long column cannot hold.
            # _field reads them back as int (and 2.5 is refused).
            ColSpec("double", "temperature", required=False),  # defaults: sampling.json
            ColSpec("double", "top_k", required=False),
            ColSpec("double", "top_p", required=False),
            ColSpec("double", "pitch_top_p", required=False),
            ColSpec("double", "seed", required=False),  # default 0
            ColSpec("string", "primer", required=False),
            ColSpec("string", "task", required=False),  # continue (default) | harmonize | infill
            ColSpec("string", "midi", required=False),  # the melody or the piece, base64
            ColSpec("string", "bars", required=False),  # infill: "A:B", from 1, both included
        ]
    )
    outputs = Schema(
        [ColSpec("string", "midi"), ColSpec("long", "num_notes"), ColSpec("long", "num_tokens")]
    )
    return ModelSignature(inputs=inputs, outputs=outputs)


def requirements() -> list[str]:
    pins = [f"{name}=={version(name)}" for name in ("miditok", "symusic", "safetensors")]
    return [f"torch=={version('torch').split('+')[0]}", *pins, "numpy", "pandas"]


def log_generator(checkpoint_dir: Path, name: str = "generator", sampling: Sampling | None = None):
    """Log a checkpoint folder as a pyfunc model in the active run; returns ModelInfo.
    `sampling`: the defaults the served model samples with when a request leaves them out,
    stored beside the weights as sampling.json."""
    package = Path(__file__).resolve().parent
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "checkpoint"
        folder.mkdir()
        for file_name in CHECKPOINT_FILES:
            shutil.copy2(checkpoint_dir / file_name, folder / file_name)
        if sampling is not None:
            write_sampling(folder, sampling)
        with warnings.catch_warnings():  # we give a signature; MLflow still asks for examples
            warnings.filterwarnings("ignore", message=".*input example.*")
            return _log(name, package, folder)


def _log(name: str, package: Path, folder: Path):
    return mlflow.pyfunc.log_model(
        name=name,
        python_model=str(package / "pyfunc_entry.py"),  # models from code: no pickle
        artifacts={"checkpoint": str(folder)},
        code_paths=[str(package)],
        signature=signature(),
        pip_requirements=requirements(),
    )
