"""Train-only data augmentation, as in Music Transformer and Transformer-GAN: pitch
transposition and time stretch. Works on symusic Scores (tick time)."""

from __future__ import annotations


def transpose(score, semitones: int, pitch_range: tuple[int, int]):
    """The score moved by `semitones`, or None when a note would leave pitch_range
    (the whole transposition is skipped rather than dropping or folding notes)."""
    low, high = pitch_range  # high is exclusive, as in miditok
    pitches = [n.pitch for t in score.tracks if not t.is_drum for n in t.notes]
    if not pitches:
        return None
    if min(pitches) + semitones < low or max(pitches) + semitones >= high:
        return None
    shifted = score.copy()
    for track in shifted.tracks:
        if track.is_drum:
            continue
        track.shift_pitch(semitones, inplace=True)
    return shifted


def time_stretch(score, factor: float):
    """The score played `factor` times as long: onsets and durations scaled in ticks, then
    re-quantized by the tokenizer (tempo marks scaled the other way keep seconds consistent)."""
    stretched = score.copy()
    for track in stretched.tracks:
        for note in track.notes:
            end = round((note.time + note.duration) * factor)
            note.time = round(note.time * factor)
            note.duration = max(1, end - note.time)
    for tempo in stretched.tempos:
        tempo.time = round(tempo.time * factor)
    for signature in stretched.time_signatures:
        signature.time = round(signature.time * factor)
    return stretched


def augmented_versions(
    score,
    transpositions: list[int],
    time_stretches: list[float],
    pitch_range: tuple[int, int],
) -> tuple[list, int]:
    """The original, each transposition, each time stretch (not their product).

    Returns (scores, number of transpositions skipped because notes left the range).
    """
    versions, skipped = [score], 0
    for semitones in transpositions:
        if semitones == 0:
            continue
        moved = transpose(score, semitones, pitch_range)
        if moved is None:
            skipped += 1
        else:
            versions.append(moved)
    versions.extend(time_stretch(score, f) for f in time_stretches if f != 1.0)
    return versions, skipped
