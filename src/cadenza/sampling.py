"""How a generator samples: the one value object that generate, serving, the evaluation,
sampling tuning and the listening clips pass whole, and its file beside a model's weights.

Plain sampling (the default) is temperature 1 with no top-k, top-p, grammar or pitch nucleus.
params.yaml's `sampling` section (config.SamplingSettings) validates the values and hands out
a `Sampling`; a logged model carries its own in sampling.json, which serving reads."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path

SAMPLING_FILE = "sampling.json"
"""Beside a logged model's weights: the sampling it was evaluated with (its defaults)."""


@dataclass(frozen=True)
class Sampling:
    temperature: float = 1.0
    top_k: int = 0
    """Keep the k likeliest tokens (0 = off)."""
    top_p: float = 1.0
    """Nucleus: keep the likeliest tokens holding this much probability (1 = off)."""
    grammar: bool = False
    """Mask the tokens the tokenizer's grammar does not allow next (cadenza.tokens.grammar)."""
    pitch_top_p: float = 1.0
    """Nucleus within the pitch tokens only (models.sampling.filter_logits; 1 = off)."""

    @property
    def is_plain(self) -> bool:
        return self == PLAIN

    @property
    def name(self) -> str:
        """'T=0.9 k=0 p=0.95 pitch-p=0.9 +grammar': a row label of the tuning sweep."""
        grammar = " +grammar" if self.grammar else ""
        pitch = f" pitch-p={self.pitch_top_p:g}" if self.pitch_top_p < 1.0 else ""
        return f"T={self.temperature:g} k={self.top_k} p={self.top_p:g}{pitch}{grammar}"

    def as_dict(self) -> dict:
        """{temperature, top_k, top_p, grammar, pitch_top_p}, in that order (sampling.json)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> Sampling:
        """The known keys of data; a key it lacks (an older file) is plain sampling's."""
        return cls(**{f.name: data.get(f.name, getattr(PLAIN, f.name)) for f in fields(cls)})


PLAIN = Sampling()


def read_sampling(folder: Path) -> Sampling:
    """The sampling a logged model carries (its sampling.json), else plain sampling."""
    path = Path(folder) / SAMPLING_FILE
    if not path.is_file():
        return PLAIN
    return Sampling.from_dict(json.loads(path.read_text()))


def write_sampling(folder: Path, sampling: Sampling) -> None:
    (Path(folder) / SAMPLING_FILE).write_text(json.dumps(sampling.as_dict()) + "\n")
