"""A voice-leading grader of four-part writing: the rule book of a harmony class, per window.

With numbered voices (`tokenize.voice_programs`) every note's Program names its voice:
program 0 the top voice (soprano), 1 alto, 2 tenor, 3 bass. At every onset of the window
(the union of all voices' onsets) each voice sounds one pitch or none; the grader counts, as
rates over what could break each rule:

- parallel fifths and octaves (or unisons) between any two voices: both voices move and the
  interval class is a perfect fifth (or octave) before and after, in similar or contrary
  motion (music21's `VoiceLeadingQuartet.parallelFifth` / `parallelUnisonOrOctave`, on which
  tests/test_voice_leading.py checks this);
- voice crossing (a lower voice above a higher one at an onset) and overlap (a voice moving
  past where its neighbour just was);
- spacing over an octave between adjacent upper voices (soprano-alto, alto-tenor);
- notes outside each voice's range (soprano C4-G5, alto G3-D5, tenor C3-G4, bass E2-C4);
- simultaneous seconds (sounding pitches one or two semitones apart);
- notes outside the window's key (the best-fitting major or minor scale of the window);
- sonorities of three or more pitch classes outside the tonal vocabulary (every triad and
  seventh chord, complete or not).

numpy, not music21's objects: the grader reads every window of every model (thousands per
evaluation), where building a VoiceLeadingQuartet per pair of voices per onset would take
minutes. A window without four-part content (no notes, or one voice) scores 0 on the rules it
cannot break; `graded_onsets` says how much there was to grade.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from cadenza.evaluation import window_stats, windows
from cadenza.evaluation.instrument import Instrument, WindowSet
from cadenza.evaluation.music_stats import SCALES

NUM_VOICES = 4
RANGES = np.array([[60, 79], [55, 74], [48, 67], [40, 60]])  # (low, high) MIDI per voice
RULES = (
    "parallel_fifths", "parallel_octaves", "voice_crossing", "voice_overlap", "spacing",
    "out_of_range", "simultaneous_seconds", "out_of_key", "non_tonal_chords",
)  # fmt: skip
FEATURE_NAMES = (*RULES, "graded_onsets")


def _chord_templates() -> np.ndarray:
    """(T, 12) pitch-class masks of every triad and seventh chord on every root."""
    shapes = [
        (0, 4, 7), (0, 3, 7), (0, 3, 6), (0, 4, 8),  # major, minor, diminished, augmented
        (0, 4, 7, 10), (0, 4, 7, 11), (0, 3, 7, 10), (0, 3, 6, 10), (0, 3, 6, 9),
    ]  # fmt: skip
    masks = []
    for shape in shapes:
        for root in range(12):
            mask = np.zeros(12, dtype=bool)
            mask[[(root + s) % 12 for s in shape]] = True
            masks.append(mask)
    return np.array(masks)


CHORDS = _chord_templates()


def _voice(track) -> int:
    """0 = top: the number of a decoded generator track ("Voice k", generate.decode_ids,
    which plays every voice as program 0 again), else the track's program."""
    name = track.name or ""
    if name.startswith("Voice ") and name[6:].isdigit():
        return int(name[6:]) - 1
    return track.program


def voice_grid(score) -> tuple[np.ndarray, np.ndarray]:
    """(onset beats (T,), pitches (T, 4) with -1 where the voice is silent): at each onset of
    any voice, the pitch each voice sounds (its highest, if a voice holds several). Voices
    0-3 (`_voice`) are graded; other tracks and drums are ignored."""
    tpq = float(score.ticks_per_quarter)
    voices: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    for voice in range(NUM_VOICES):
        arrays = [t.notes.numpy() for t in score.tracks if not t.is_drum and _voice(t) == voice]
        arrays = [a for a in arrays if len(a["time"])]
        if arrays:
            start = np.concatenate([a["time"] for a in arrays]) / tpq
            end = start + np.concatenate([a["duration"] for a in arrays]) / tpq
            pitch = np.concatenate([a["pitch"] for a in arrays]).astype(np.int64)
        else:
            start = end = np.zeros(0)
            pitch = np.zeros(0, dtype=np.int64)
        voices.append((start, end, pitch))
    onsets = np.unique(np.concatenate([v[0] for v in voices]))
    grid = np.full((len(onsets), NUM_VOICES), -1, dtype=np.int64)
    for index, (start, end, pitch) in enumerate(voices):
        if not len(pitch):
            continue
        at = onsets[:, None] + 1e-9
        sounding = (start[None, :] <= at) & (end[None, :] > at)
        grid[:, index] = np.where(sounding, pitch[None, :], -1).max(axis=1)
    return onsets, grid


def _classes(before, after, upper: int, lower: int) -> tuple[np.ndarray, np.ndarray]:
    """Interval classes between two voices at consecutive onsets, as music21's parallel
    tests read them: octaves folded, but in similar motion a unison (0) stays apart from an
    octave or its compounds (12), so unison to octave is not parallel, while in contrary
    motion (antiparallel) a double octave to a unison is."""
    semis_before = before[:, upper] - before[:, lower]
    semis_after = after[:, upper] - after[:, lower]
    similar = np.sign(after[:, upper] - before[:, upper]) == np.sign(
        after[:, lower] - before[:, lower]
    )
    out = []
    for semis in (semis_before, semis_after):
        folded = semis % 12
        out.append(np.where(similar & (folded == 0) & (semis != 0), 12, folded))
    return out[0], out[1]


def _rate(count: float, total: float) -> float:
    return float(count) / total if total else 0.0


def grade_grid(grid: np.ndarray) -> np.ndarray:
    """The FEATURE_NAMES vector of one (T, 4) pitch grid (-1 = silent)."""
    out = np.zeros(len(FEATURE_NAMES))
    if not len(grid):
        return out
    on = grid >= 0
    before, after = grid[:-1], grid[1:]
    both = on[:-1] & on[1:]  # (T-1, 4): the voice sounds at both onsets
    moved = both & (before != after)
    parallels = {7: 0, 12: 0, 0: 0}  # fifths (or twelfths...), octaves (or 15ths), unisons
    pairs_moving = crossing = overlap = crossing_total = overlap_total = 0
    for upper in range(NUM_VOICES):
        for lower in range(upper + 1, NUM_VOICES):
            present = on[:, upper] & on[:, lower]
            crossing += int((present & (grid[:, lower] > grid[:, upper])).sum())
            crossing_total += int(present.sum())
            move = moved[:, upper] & moved[:, lower]
            pairs_moving += int(move.sum())
            gap_before, gap_after = _classes(before, after, upper, lower)
            for interval in parallels:
                parallels[interval] += int((move & (gap_before == interval)
                                            & (gap_after == interval)).sum())  # fmt: skip
            if lower == upper + 1:  # overlap: past the neighbour's previous pitch
                steps = both[:, upper] & both[:, lower]
                past = (after[:, lower] > before[:, upper]) | (after[:, upper] < before[:, lower])
                overlap += int((steps & past).sum())
                overlap_total += int(steps.sum())
    spacing = spacing_total = 0
    for upper in range(NUM_VOICES - 2):  # soprano-alto, alto-tenor
        present = on[:, upper] & on[:, upper + 1]
        spacing += int((present & (grid[:, upper] - grid[:, upper + 1] > 12)).sum())
        spacing_total += int(present.sum())
    low, high = RANGES[:, 0][None, :], RANGES[:, 1][None, :]
    out_of_range = int((on & ((grid < low) | (grid > high))).sum())
    seconds = seconds_total = non_tonal = chords = 0
    for row, sounding in zip(grid, on, strict=True):
        pitches = np.unique(row[sounding])
        if len(pitches) < 2:
            continue
        gaps = np.abs(pitches[:, None] - pitches[None, :])[np.triu_indices(len(pitches), k=1)]
        seconds += int(((gaps == 1) | (gaps == 2)).sum())
        seconds_total += len(gaps)
        classes = np.zeros(12, dtype=bool)
        classes[pitches % 12] = True
        if classes.sum() >= 3:
            chords += 1
            non_tonal += int(not (CHORDS[:, classes].all(axis=1)).any())
    notes = grid[on]
    fit = SCALES[:, notes % 12].mean(axis=1)
    out[:] = [
        _rate(parallels[7], pairs_moving),
        _rate(parallels[12] + parallels[0], pairs_moving),
        _rate(crossing, crossing_total), _rate(overlap, overlap_total),
        _rate(spacing, spacing_total), _rate(out_of_range, len(notes)),
        _rate(seconds, seconds_total), 1.0 - float(fit.max()), _rate(non_tonal, chords),
        np.log1p(len(grid)),
    ]  # fmt: skip
    return out


def grade_score(score) -> np.ndarray:
    return grade_grid(voice_grid(score)[1])


def features_of_windows(tokenizer, windows: np.ndarray) -> np.ndarray:
    """(N, W) token windows -> (N, len(FEATURE_NAMES)) rule rates; a window miditok cannot
    decode is graded as an empty one."""
    return window_stats.features_of_windows(tokenizer, windows, grade_score, len(FEATURE_NAMES))


def rates(features: np.ndarray) -> dict[str, float]:
    """Mean of each rule's rate over windows (what a reader compares with real windows)."""
    return {name: float(features[:, i].mean()) for i, name in enumerate(RULES)}


JUDGE = "voice_leading"


def judge(context, samples: dict[str, np.ndarray], sets: dict[str, WindowSet]) -> dict:
    """The grader on an evaluation context's windows (evaluation/context.py): the real
    windows' rule rates, and per model its rates and the grader's rates as a probe (accuracy
    with its CI and per position bin, by the instrument's own bootstrap draws). Returns
    {"rules", "real", "models": {name: ...}, "scores": {name: {JUDGE: ProbeScore}}}, the
    scores for `instrument.compare`."""
    s = context.settings
    real_grades = features_of_windows(
        context.tokenizer, context.real.tokens.reshape(-1, context.plan.window_len)
    )
    real = replace(context.real_set, features={JUDGE: real_grades})
    instrument = Instrument(context.plan, real, s.folds, s.cv_repeats, s.bootstrap, s.seed)
    graded, model_rates = {}, {}
    for name, tokens in samples.items():
        flat = windows.cut(tokens, context.plan).reshape(-1, context.plan.window_len)
        grades = features_of_windows(context.tokenizer, flat)
        graded[name] = replace(sets[name], features={JUDGE: grades})
        model_rates[name] = rates(grades)
    results, scores = instrument.evaluate(graded)
    models = {}
    for name, result in results.items():
        probe = result["probes"][JUDGE]
        models[name] = {
            "accuracy": probe["accuracy"], "ci_low": probe["ci_low"],
            "ci_high": probe["ci_high"], "auc": probe["auc"], "rates": model_rates[name],
            "position_bins": [
                {k: b[k] for k in ("start", "end", "accuracy", "ci_low", "ci_high")}
                for b in result["position_bins"]
            ],
            "position_slope": result["position_slope"],
        }  # fmt: skip
    return {"rules": list(RULES), "real": rates(real_grades), "models": models, "scores": scores}
