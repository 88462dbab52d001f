"""Encode MIDI files into token-id arrays (one document per file and augmented version).

Runs in worker processes: each worker loads the saved tokenizer once (init_worker), then
encodes files independently, so the result does not depend on the number of workers;
encode_all hands the jobs to them (or encodes in this process with one worker).
"""

from __future__ import annotations

from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cadenza.progress import progress_bar
from cadenza.tokens.augment import augmented_versions
from cadenza.tokens.keys import normalize, uses_key_normalize
from cadenza.tokens.tokenizer import load_tokenizer, uses_voice_programs

_TOKENIZER = None


@dataclass(frozen=True)
class EncodeJob:
    path: str
    transpositions: tuple[int, ...] = ()
    time_stretches: tuple[float, ...] = ()


@dataclass
class EncodedFile:
    path: str
    documents: list[np.ndarray]
    num_notes: int
    num_skipped_transpositions: int
    error: str = ""
    key_shift: int = 0  # semitones the file was moved by (tokenize.key_normalize), else 0
    originals: list[bool] = field(default_factory=list)  # per document: not augmented


def init_worker(tokenizer_path: str) -> None:
    global _TOKENIZER

    _TOKENIZER = load_tokenizer(Path(tokenizer_path))


def number_voices(score):
    """The score with its parts numbered by register: when two or more pitched parts share
    one program (music21 writes every chorale part as program 0), part k from the top (by
    mean pitch) gets program k, and the parts are reordered so. Every note's Program token
    then names its voice, and the notes of one onset come top voice first. A score whose
    parts already have distinct programs (a real arrangement) is returned unchanged."""
    pitched = [t for t in score.tracks if not t.is_drum and t.note_num() > 0]
    if len(pitched) < 2 or len({t.program for t in pitched}) > 1:
        return score
    numbered = score.copy()
    tracks = [t for t in numbered.tracks if not t.is_drum and t.note_num() > 0]
    others = [t for t in numbered.tracks if t.is_drum or t.note_num() == 0]
    tracks.sort(key=lambda t: -sum(n.pitch for n in t.notes) / t.note_num())
    for rank, track in enumerate(tracks):
        track.program = min(rank, 127)
    numbered.tracks = tracks + others
    return numbered


def normalized_ids(tokenizer, score) -> tuple[list[int], int]:
    """(token ids, key shift): the score moved into C major / A minor first when the
    tokenizer normalizes keys (`cadenza.tokens.keys`), so a primer reads like training data;
    the caller moves what it generates back by -shift, into the primer's own key."""

    shift = 0
    if uses_key_normalize(tokenizer):
        score, shift = normalize(score, tuple(tokenizer.config.pitch_range))
    return score_ids(tokenizer, score), shift


def score_ids(tokenizer, score) -> list[int]:
    """Token ids of a score as one stream (BPE applied when the tokenizer is trained)."""

    if uses_voice_programs(tokenizer):
        score = number_voices(score)
    sequence = tokenizer.encode(score)
    if isinstance(sequence, list):  # a tokenizer configured per track: should not happen
        raise AssertionError("expected one token stream for all programs")
    return list(sequence.ids)


def retokenize(ids: list[int], source, target, velocity: int | None = None) -> list[int]:
    """Clean ids of tokenizer `source` as tokenizer `target` writes the same notes (to read two
    generators' samples on one vocabulary). velocity: given to every note when `source` has no
    Velocity tokens (miditok would decode them all at 100, which `target` might encode as a
    velocity its corpus never has)."""
    score = source.decode(ids)
    # miditok lists the notes of an onset in track order; decoded tracks come in order of
    # first appearance, encoded (numbered) voices from the top: put them back in that order.
    tracks = sorted(score.tracks, key=lambda track: (track.is_drum, track.program))
    score.tracks.clear()
    score.tracks.extend(tracks)
    if velocity is not None and not source.config.use_velocities:
        for track in score.tracks:
            for note in track.notes:
                note.velocity = velocity
    return score_ids(target, score)


def modal_velocity(tokenizer, tokens) -> int | None:
    """The most common velocity written in a token array, None without Velocity tokens."""
    import numpy as np

    values = {
        i: int(t.split("_")[1]) for t, i in tokenizer.vocab.items() if t.startswith("Velocity_")
    }
    if not values:
        return None
    flat = np.asarray(tokens).ravel()
    flat = flat[np.isin(flat, list(values))]
    if not len(flat):
        return None
    return values[int(np.bincount(flat).argmax())]


def encode_file(job: EncodeJob) -> EncodedFile:
    from symusic import Score

    tokenizer = _TOKENIZER
    assert tokenizer is not None, "init_worker() was not called"
    bos, eos = tokenizer["BOS_None"], tokenizer["EOS_None"]
    try:
        score = Score(job.path)
    except Exception as exc:  # validated upstream; a file changed since is reported, not fatal
        return EncodedFile(job.path, [], 0, 0, error=f"{type(exc).__name__}: {exc}")
    pitch_range = tuple(tokenizer.config.pitch_range)
    shift = 0
    if uses_key_normalize(tokenizer):
        score, shift = normalize(score, pitch_range)
    versions, skipped = augmented_versions(
        score, list(job.transpositions), list(job.time_stretches), pitch_range
    )
    documents, originals = [], []
    for index, version in enumerate(versions):  # versions[0] is the score as written
        ids = score_ids(tokenizer, version)
        if ids:
            documents.append(np.asarray([bos, *ids, eos], dtype=np.int64))
            originals.append(index == 0)
    return EncodedFile(
        job.path, documents, int(score.note_num()), skipped, key_shift=shift, originals=originals
    )


def encode_all(jobs: list[EncodeJob], tokenizer_path: Path, workers: int):
    """EncodedFile per job, in job order, as they come (a generator: nothing piles up)."""
    with progress_bar("tokenize", total=len(jobs)) as advance:
        if workers <= 1:
            init_worker(str(tokenizer_path))
            for job in jobs:
                yield encode_file(job)
                advance()
            return
        with ProcessPoolExecutor(
            workers, initializer=init_worker, initargs=(str(tokenizer_path),)
        ) as pool:
            for encoded in pool.map(encode_file, jobs, chunksize=8):
                yield encoded
                advance()
