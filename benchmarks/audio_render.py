"""Audio render time per minute of music, against the music's own length (real time).

    python benchmarks/audio_render.py [--limit N] [--format mp3]

Imports N Bach chorales (music21 -> MIDI), then renders each with TinySoundFont and the bundled
GM soundfont, timing synthesis and encoding apart; with FluidSynth installed, the same files
through FluidSynth as a second row. Prints seconds of work per minute of music with a 95%
interval over files (t distribution) and the real-time ratio (music seconds / render seconds).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np


def per_minute(work_s: list[float], music_s: list[float]) -> tuple[float, float]:
    """Mean seconds of work per minute of music and its 95% half-width over files."""
    from scipy import stats

    rates = 60.0 * np.asarray(work_s) / np.asarray(music_s)
    half = stats.t.ppf(0.975, len(rates) - 1) * rates.std(ddof=1) / np.sqrt(len(rates))
    return float(rates.mean()), float(half)


def bench(files: list[Path], spec, out: Path) -> dict[str, list[float]]:
    from cadenza import audio

    times: dict[str, list[float]] = {"synth": [], "encode": [], "music": []}
    for midi in files:
        started = time.perf_counter()
        samples = audio.synthesize(midi, spec)
        synthesized = time.perf_counter()
        audio.write(samples, out / f"{midi.stem}{spec.suffix}", spec)
        times["synth"].append(synthesized - started)
        times["encode"].append(time.perf_counter() - synthesized)
        times["music"].append(len(samples) / spec.sample_rate)
    return times


def main() -> None:
    from cadenza import audio
    from cadenza.config import ImportSettings
    from cadenza.paths import Paths
    from cadenza.stages import import_corpus as corpus_import

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, default=40, help="chorales to render")
    parser.add_argument("--format", default="mp3", choices=sorted(audio.FORMATS))
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        paths = Paths(root=Path(tmp), corpus="bach")
        corpus_import.run(ImportSettings(limit=args.limit, num_workers=0), paths)
        files = sorted((Path(tmp) / "data" / "raw" / "bach").rglob("*.mid"))
        rows = [("tinysoundfont", audio.AudioSpec(format=args.format))]
        fluid = audio.AudioSpec(synthesizer="fluidsynth", format=args.format)
        if not audio.unavailable_reason(fluid):
            rows.append(("fluidsynth", fluid))
        print(f"{len(files)} files, {args.format}, {rows[0][1].sample_rate} Hz, 1 process")
        print(f"{'synthesizer':<14} {'music min':>9} {'synth s/min':>15} {'encode s/min':>15}"
              f" {'x real time':>11}")  # fmt: skip
        for name, spec in rows:
            times = bench(files, spec, Path(tmp))
            synth, synth_ci = per_minute(times["synth"], times["music"])
            encode, encode_ci = per_minute(times["encode"], times["music"])
            total = sum(times["music"]) / (sum(times["synth"]) + sum(times["encode"]))
            print(f"{name:<14} {sum(times['music']) / 60:9.1f} {synth:8.2f} ± {synth_ci:4.2f}"
                  f" {encode:8.2f} ± {encode_ci:4.2f} {total:10.0f}x")  # fmt: skip


if __name__ == "__main__":
    main()
