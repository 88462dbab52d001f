"""Key normalization (`tokenize.key_normalize`): learn key-relative music, draw the key.

Transposition augmentation (Music Transformer) teaches a model every key by showing it each
piece in seven; a small model then spends its capacity inferring the key from context and
drifts out of it. Normalization is the other answer (folk-rnn, many chorale models): every
piece is moved so that its key is C major or A minor (both: the white-key scale), the model
learns music in that one scale, and the key is a separate draw. Because the music is assumed
transposition-equivariant either way, nothing is lost: a generated sample is moved into a key
drawn from the train split's keys (the histogram of shifts saved in tokenizer.json), and the
evaluation moves every real window back to its document's own key (the per-document shifts
saved beside the token arrays), so probes compare music in the keys the corpus really has.

Shifts are in [-6, 5] semitones (the register moves at most a tritone), `normalized =
original + shift`. The key is Krumhansl-Kessler's: the major or minor profile that correlates
best with the piece's duration-weighted pitch-class histogram. Placement works on token ids
(every `Pitch_p` token mapped to `Pitch_{p+s}`), so the learned probe, the music statistics,
the gallery and the saved samples all see the same placed tokens.
"""

from __future__ import annotations

import numpy as np

from cadenza.tokens.augment import transpose

KEY_NORMALIZE = "cadenza_key_normalize"  # tokenizer config additional param: bool
KEY_SHIFTS = "cadenza_key_shifts"  # ... : the train split's shift histogram, -6..5
SHIFTS = np.arange(-6, 6)

# Krumhansl-Kessler key profiles, tonic first.
MAJOR = np.array([6.35, 2.23, 3.48, 2.33, 4.38, 4.09, 2.52, 5.19, 2.39, 3.66, 2.29, 2.88])
MINOR = np.array([6.33, 2.68, 3.52, 5.38, 2.60, 3.53, 2.54, 4.75, 3.98, 2.69, 3.34, 3.17])


def pitch_class_weights(score) -> np.ndarray:
    """(12,) total duration (ticks) of each pitch class over the pitched notes."""
    weights = np.zeros(12)
    for track in score.tracks:
        if track.is_drum or not track.note_num():
            continue
        notes = track.notes.numpy()
        np.add.at(weights, notes["pitch"].astype(np.int64) % 12, notes["duration"] + 1.0)
    return weights


def estimate_key(weights: np.ndarray) -> tuple[int, bool]:
    """(tonic pitch class, minor) of a (12,) pitch-class weight vector."""
    if not weights.sum():
        return 0, False
    best, answer = -np.inf, (0, False)
    for minor, profile in ((False, MAJOR), (True, MINOR)):
        for tonic in range(12):
            r = np.corrcoef(weights, np.roll(profile, tonic))[0, 1]
            if r > best:
                best, answer = r, (tonic, minor)
    return answer


def shift_of(tonic: int, minor: bool) -> int:
    """Semitones in [-6, 5] that take the key to C major (or its relative, A minor)."""
    relative_major = (tonic + 3) % 12 if minor else tonic
    return int((-relative_major + 6) % 12 - 6)


def normalize(score, pitch_range: tuple[int, int]):
    """(score moved into C major / A minor, shift). When the nearest shift would push a note
    out of pitch_range the octave on the other side is tried; failing both, (score, 0)."""

    shift = shift_of(*estimate_key(pitch_class_weights(score)))
    if shift == 0:
        return score, 0
    for candidate in (shift, shift - 12 if shift > 0 else shift + 12):
        moved = transpose(score, candidate, pitch_range)
        if moved is not None:
            return moved, candidate
    return score, 0


def uses_key_normalize(tokenizer) -> bool:
    return bool(getattr(tokenizer.config, "additional_params", {}).get(KEY_NORMALIZE, False))


def train_histogram(tokenizer) -> np.ndarray:
    """(12,) counts of the train split's shifts -6..5 (uniform when none were saved)."""
    counts = getattr(tokenizer.config, "additional_params", {}).get(KEY_SHIFTS)
    return np.asarray(counts, dtype=np.float64) if counts else np.ones(len(SHIFTS))


def histogram(shifts) -> list[int]:
    """Counts of each shift in -6..5, for tokenizer.json."""
    values = np.clip(np.asarray(list(shifts), dtype=np.int64), -6, 5) + 6
    return np.bincount(values, minlength=len(SHIFTS)).tolist()


def draw_shifts(tokenizer, count: int, seed: int) -> np.ndarray:
    """(count,) shifts drawn from the train split's histogram: key placement of samples."""
    counts = train_histogram(tokenizer)
    rng = np.random.default_rng([seed, 7])
    return rng.choice(SHIFTS, size=count, p=counts / counts.sum())


def pitch_table(tokenizer, semitones: int) -> np.ndarray:
    """(V,) id -> id with every Pitch_p moved to Pitch_{p+semitones}; a pitch that would
    leave the vocabulary moves by an octave less (other tokens map to themselves)."""
    vocab = tokenizer.vocab
    size = max(vocab.values()) + 1
    table = np.arange(size, dtype=np.int64)
    pitches = {int(t.split("_", 1)[1]): i for t, i in vocab.items() if t.startswith("Pitch_")}
    if not pitches:
        return table
    low, high = min(pitches), max(pitches)
    for pitch, index in pitches.items():
        moved = pitch + semitones
        while moved > high:
            moved -= 12
        while moved < low:
            moved += 12
        table[index] = pitches.get(moved, index)
    return table


def place(tokenizer, tokens: np.ndarray, shifts: np.ndarray) -> np.ndarray:
    """tokens (N, ...) with row i moved by shifts[i] semitones (a new array)."""
    tokens = np.asarray(tokens, dtype=np.int64)
    out = tokens.copy()
    for semitones in np.unique(shifts):
        if semitones == 0:
            continue
        rows = np.asarray(shifts) == semitones
        out[rows] = pitch_table(tokenizer, int(semitones))[tokens[rows]]
    return out


def place_samples(tokenizer, samples: np.ndarray, seed: int) -> np.ndarray:
    """Generated samples (N, T) of a key-normalized model moved into keys drawn (by seed) from
    its train split's; samples of any other model unchanged."""
    if not uses_key_normalize(tokenizer):
        return samples
    return place(tokenizer, samples, -draw_shifts(tokenizer, len(samples), seed))
