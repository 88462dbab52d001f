"""MIDI -> audio a browser plays, on any machine: no root, no system packages.

The default synthesizer is TinySoundFont (the `tinysoundfont` wheel) with the General MIDI
soundfont `TimGM6mb.sf2` that the `pretty_midi` wheel ships; FluidSynth is used only when asked
for (`synthesizer="fluidsynth"`) and installed. Files are written by `soundfile`, whose wheels
bundle libsndfile with MP3 and Ogg/Vorbis encoders: MP3 plays in every current browser.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from symusic import Score

Synthesizer = Literal["tinysoundfont", "fluidsynth"]
AudioFormat = Literal["mp3", "ogg", "wav"]

# format -> (libsndfile container, subtype, MIME type for <audio> and HTTP)
FORMATS: dict[str, tuple[str, str, str]] = {
    "mp3": ("MP3", "MPEG_LAYER_III", "audio/mpeg"),
    "ogg": ("OGG", "VORBIS", "audio/ogg"),
    "wav": ("WAV", "PCM_16", "audio/wav"),
}
SYSTEM_SOUNDFONTS = (
    "/usr/share/sounds/sf2/FluidR3_GM.sf2",
    "/usr/share/sounds/sf2/default-GM.sf2",
    "/usr/share/soundfonts/default.sf2",
)
DRUM_CHANNEL = 9
TAIL_SECONDS = 1.0  # rendered after the last note-off so releases ring out
MAX_SECONDS = 600.0  # longer pieces are cut: an untrained model can write hours of rests


@dataclass(frozen=True)
class AudioSpec:
    """How to render: synthesizer, output format, sample rate and (optionally) a soundfont."""

    synthesizer: Synthesizer = "tinysoundfont"
    format: AudioFormat = "mp3"
    sample_rate: int = 22050
    soundfont: str = ""
    """Empty: $CADENZA_SOUNDFONT, else the GM soundfont shipped in pretty_midi (TinySoundFont)
    or a system GM soundfont (FluidSynth)."""

    @property
    def suffix(self) -> str:
        return "." + self.format

    @property
    def mime(self) -> str:
        return FORMATS[self.format][2]


def bundled_soundfont() -> Path:
    """TimGM6mb.sf2, the General MIDI soundfont inside the pretty_midi wheel."""
    spec = importlib.util.find_spec("pretty_midi")
    if spec is None or not spec.submodule_search_locations:
        raise ValueError("no General MIDI soundfont: pip install pretty_midi (it ships one)")
    path = Path(next(iter(spec.submodule_search_locations))) / "TimGM6mb.sf2"
    if not path.is_file():
        raise ValueError(f"{path}: the pretty_midi package has no TimGM6mb.sf2; reinstall it")
    return path


def find_soundfont(spec: AudioSpec) -> Path:
    """The soundfont to use: spec.soundfont, $CADENZA_SOUNDFONT, then a default."""
    chosen = spec.soundfont or os.environ.get("CADENZA_SOUNDFONT", "")
    if chosen:
        if not Path(chosen).is_file():
            raise ValueError(f"soundfont {chosen}: no such file (set a .sf2 path or leave empty)")
        return Path(chosen)
    if spec.synthesizer == "fluidsynth":
        system = next((Path(p) for p in SYSTEM_SOUNDFONTS if Path(p).is_file()), None)
        if system:
            return system
    return bundled_soundfont()


def unavailable_reason(spec: AudioSpec) -> str:
    """Why this spec cannot render here ('' when it can)."""
    try:
        find_soundfont(spec)
    except ValueError as exc:
        return str(exc)
    if spec.synthesizer == "fluidsynth" and shutil.which("fluidsynth") is None:
        return "fluidsynth is not installed (apt install fluidsynth, or use tinysoundfont)"
    if spec.synthesizer == "tinysoundfont" and importlib.util.find_spec("tinysoundfont") is None:
        return "tinysoundfont is not installed (`make setup` installs it, with --no-deps)"
    return ""


def synthesize(midi: Path, spec: AudioSpec, max_seconds: float = MAX_SECONDS) -> np.ndarray:
    """(frames, 2) float32 stereo samples of a MIDI file's first max_seconds (+ the tail)."""
    score = Score(str(midi)).to("second")
    with tempfile.TemporaryDirectory() as tmp:
        if score.end() > max_seconds:
            midi = Path(tmp) / "cut.mid"
            score.clip(0, max_seconds, clip_end=True).dump_midi(str(midi))
        if spec.synthesizer == "fluidsynth":
            return _fluidsynth(midi, spec)
        return _tinysoundfont(midi, spec)


def _tinysoundfont(midi: Path, spec: AudioSpec) -> np.ndarray:
    import tinysoundfont  # lazy: optional synthesizer (installed with --no-deps)

    score = Score(str(midi))
    frames = max(1, int((score.to("second").end() + TAIL_SECONDS) * spec.sample_rate))
    if score.note_num() == 0:  # TinySoundFont cannot load a file without events: silence
        return np.zeros((frames, 2), dtype=np.float32)
    synth = tinysoundfont.Synth(samplerate=spec.sample_rate)
    soundfont_id = synth.sfload(str(find_soundfont(spec)))
    # Every channel gets a preset up front: a file without program changes still sounds (piano).
    for channel in range(16):
        synth.program_select(channel, soundfont_id, 0, 0, channel == DRUM_CHANNEL)
    sequencer = tinysoundfont.Sequencer(synth)
    sequencer.midi_load(str(midi))
    buffer = synth.generate(frames)
    return np.frombuffer(buffer, dtype=np.float32).reshape(-1, 2)[:frames].copy()


def _fluidsynth(midi: Path, spec: AudioSpec) -> np.ndarray:
    import soundfile  # lazy: loads libsndfile; only audio output needs it

    binary = shutil.which("fluidsynth")
    if binary is None:
        raise ValueError("synthesizer fluidsynth is not installed (apt install fluidsynth)")
    with tempfile.TemporaryDirectory() as tmp:
        wav = Path(tmp) / "out.wav"
        command = [binary, "-ni", "-F", str(wav), "-r", str(spec.sample_rate)]
        completed = subprocess.run(
            [*command, str(find_soundfont(spec)), str(midi)], capture_output=True, timeout=300
        )
        if completed.returncode != 0 or not wav.is_file():
            raise RuntimeError(f"fluidsynth failed on {midi}: {completed.stderr[-500:]!r}")
        samples, _ = soundfile.read(str(wav), dtype="float32", always_2d=True)
    return samples if samples.shape[1] == 2 else np.repeat(samples[:, :1], 2, axis=1)


def fit_length(samples: np.ndarray, seconds: float, sample_rate: int, fade: float = 0.5):
    """Exactly `seconds` long: cut (with a fade-out) or padded with silence."""
    frames = int(round(seconds * sample_rate))
    out = np.zeros((frames, samples.shape[1]), dtype=np.float32)
    kept = samples[:frames]
    out[: len(kept)] = kept
    if len(samples) > frames:
        ramp = min(frames, int(fade * sample_rate))
        out[frames - ramp :] *= np.linspace(1.0, 0.0, ramp, dtype=np.float32)[:, None]
    return out


def write(samples: np.ndarray, path: Path, spec: AudioSpec) -> Path:
    """Encode samples (peak-limited to avoid clipping) as spec.format."""
    import soundfile  # lazy: loads libsndfile; only audio output needs it

    container, subtype, _ = FORMATS[spec.format]
    peak = float(np.abs(samples).max()) if samples.size else 0.0
    if peak > 0.99:
        samples = samples * (0.99 / peak)
    path.parent.mkdir(parents=True, exist_ok=True)
    soundfile.write(str(path), samples, spec.sample_rate, format=container, subtype=subtype)
    return path


def render(midi: Path, out: Path, spec: AudioSpec, seconds: float | None = None) -> Path:
    """Render a MIDI file to `out` (optionally cut or padded to exactly `seconds`)."""
    samples = synthesize(Path(midi), spec, MAX_SECONDS if seconds is None else seconds)
    if seconds is not None:
        samples = fit_length(samples, seconds, spec.sample_rate)
    return write(samples, Path(out), spec)


def duration_seconds(path: Path) -> float:
    """Length of an audio file as its decoder reads it."""
    import soundfile  # lazy: loads libsndfile; only audio output needs it

    info = soundfile.info(str(path))
    return info.frames / info.samplerate
