"""Interpretable music statistics of one window, as a fixed-length vector for a probe.

What a musician hears in a chorale fragment: which pitch classes (and how well one major or
minor scale holds them), the melodic intervals of the top voice and of the bass, the harmonic
intervals between notes sounding together (clusters of unisons and seconds show here), how
many voices sound at once, note density, durations and inter-onset intervals, register.
Times are in beats (quarter notes); a window that decodes to no notes is all zeros but its
`num_notes`.
"""

from __future__ import annotations

import numpy as np

from cadenza.evaluation.music_stats import SCALES
from cadenza.generate import clean_ids, decode_ids

DURATION_EDGES = np.array([0.0, 0.24, 0.49, 0.99, 1.99, 3.99, np.inf])  # beats: 16th ... whole+
MELODIC_BINS = 13  # |interval| 0..11 semitones, 12+ in the last
VOICE_BINS = 6  # 1..5 notes sounding, 6+ in the last


def _names() -> list[str]:
    names = [f"pc_{i}" for i in range(12)]
    names += [f"pc_in_key_{i}" for i in range(12)]
    names += ["scale_consistency", "used_pitch_classes", "minor_key"]
    names += [f"top_interval_{i}" for i in range(MELODIC_BINS)]
    names += [f"bass_interval_{i}" for i in range(MELODIC_BINS)]
    names += [f"harmonic_class_{i}" for i in range(12)]
    names += ["unison_doublings", "seconds_clusters"]
    names += [f"voices_{i + 1}" for i in range(VOICE_BINS)] + ["voices_mean"]
    names += [f"duration_{i}" for i in range(len(DURATION_EDGES) - 1)]
    names += [f"ioi_{i}" for i in range(len(DURATION_EDGES) - 1)]
    names += ["notes_per_beat", "onsets_per_beat", "mean_log_duration"]
    names += ["pitch_mean", "pitch_std", "pitch_range", "num_notes"]
    return names


FEATURE_NAMES = _names()


def _histogram(values: np.ndarray, bins: int) -> np.ndarray:
    counts = np.bincount(np.clip(values, 0, bins - 1), minlength=bins).astype(np.float64)
    return counts / max(counts.sum(), 1.0)


def _durations(values: np.ndarray) -> np.ndarray:
    counts, _ = np.histogram(values, DURATION_EDGES)
    return counts / max(counts.sum(), 1.0)


def _notes(score) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(onset beats, duration beats, pitch) of every pitched note, sorted by onset, pitch."""
    arrays = [t.notes.numpy() for t in score.tracks if not t.is_drum]
    arrays = [a for a in arrays if len(a["time"])]
    if not arrays:
        return np.zeros(0), np.zeros(0), np.zeros(0, dtype=np.int64)
    tpq = float(score.ticks_per_quarter)
    time = np.concatenate([a["time"] for a in arrays]) / tpq
    duration = np.concatenate([a["duration"] for a in arrays]) / tpq
    pitch = np.concatenate([a["pitch"] for a in arrays]).astype(np.int64)
    order = np.lexsort((pitch, time))
    return time[order] - time.min(), np.maximum(duration[order], 1e-3), pitch[order]


def window_features(score) -> np.ndarray:
    """The FEATURE_NAMES vector of one decoded window (a symusic Score)."""
    onset, duration, pitch = _notes(score)
    out = np.zeros(len(FEATURE_NAMES))
    if not len(pitch):
        return out
    classes = pitch % 12
    pc = _histogram(classes, 12)
    fit = SCALES[:, classes].mean(axis=1)  # (24,) share of notes in each major/minor scale
    best = int(fit.argmax())
    root, minor = best % 12, best >= 12
    in_key = np.roll(pc, -root)

    starts, first = np.unique(onset, return_index=True)
    last = np.r_[first[1:], len(onset)] - 1
    top, bass = pitch[last], pitch[first]  # sorted by pitch within an onset
    ends = onset + duration
    # (onsets, notes): which notes sound at each onset.
    sounding = (onset[None, :] <= starts[:, None] + 1e-9) & (ends[None, :] > starts[:, None] + 1e-9)
    voices = sounding.sum(axis=1)
    harmonic = np.zeros(12)
    unisons = seconds = 0
    for row in sounding:
        chord = np.sort(pitch[row])
        if len(chord) < 2:
            continue
        diffs = chord[None, :] - chord[:, None]
        pairs = diffs[np.triu_indices(len(chord), k=1)]
        harmonic += np.bincount(pairs % 12, minlength=12)
        unisons += int((pairs == 0).sum())
        seconds += int(((pairs == 1) | (pairs == 2)).sum())
    num_pairs = max(harmonic.sum(), 1.0)
    span = max(float(ends.max()), 1.0)
    values = [
        pc, in_key, [fit.max(), np.count_nonzero(pc), float(minor)],
        _histogram(np.abs(np.diff(top)), MELODIC_BINS),
        _histogram(np.abs(np.diff(bass)), MELODIC_BINS),
        harmonic / num_pairs, [unisons / num_pairs, seconds / num_pairs],
        _histogram(voices - 1, VOICE_BINS), [voices.mean()],
        _durations(duration), _durations(np.diff(starts)),
        [len(pitch) / span, len(starts) / span, np.log(duration).mean()],
        [pitch.mean(), pitch.std(), pitch.max() - pitch.min(), np.log1p(len(pitch))],
    ]  # fmt: skip
    return np.concatenate([np.atleast_1d(np.asarray(v, dtype=np.float64)) for v in values])


def decode_window(tokenizer, ids: np.ndarray):
    """A window of token ids decoded to a Score (special tokens dropped)."""
    return decode_ids(tokenizer, clean_ids(tokenizer, [int(i) for i in ids]))


def features_of_windows(
    tokenizer, windows: np.ndarray, features=window_features, width: int = len(FEATURE_NAMES)
) -> np.ndarray:
    """(N, W) token windows -> (N, width): `features` of each decoded window (by default the
    music statistics); a window miditok cannot decode gets a row of zeros, as a window
    without notes would."""
    rows = []
    for ids in windows:
        try:
            score = decode_window(tokenizer, ids)
        except Exception:  # noqa: BLE001 - miditok raises many kinds on malformed streams
            rows.append(np.zeros(width))
            continue
        rows.append(features(score))
    return np.stack(rows) if rows else np.zeros((0, width))
