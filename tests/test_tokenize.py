"""tokenize: miditok from params, every part kept, x/2 meters, augmentation on train only,
flat arrays with offsets, round trip, parallel == serial."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from symusic import Note, Score, TimeSignature, Track

from cadenza.config import TokenizeSettings
from cadenza.paths import Paths
from cadenza.stages import tokenize as tokenize_stage
from cadenza.tokens import store
from cadenza.tokens.augment import time_stretch, transpose
from cadenza.tokens.encode import score_ids
from cadenza.tokens.tokenizer import build_tokenizer, load_tokenizer

from .conftest import make_midi


def _notes(score: Score) -> list[tuple]:
    """Notes as (onset, duration, pitch, velocity) in quarters, sorted, any track."""
    tpq = score.tpq
    return sorted(
        (n.time / tpq, n.duration / tpq, n.pitch, n.velocity) for t in score.tracks for n in t.notes
    )


def test_stage_outputs(token_project):
    paths = Paths(root=token_project, corpus="mine")
    tokenizer = load_tokenizer(paths.tokens_dir / "tokenizer.json")
    bos, eos = tokenizer["BOS_None"], tokenizer["EOS_None"]
    splits = pd.read_csv(paths.splits_path)
    metrics = json.loads(paths.metrics_path("tokenize").read_text())
    for split in ("train", "valid", "test"):
        tokens, offsets = store.load_split(paths.tokens_dir, split)
        assert tokens.dtype == np.uint16 and offsets[0] == 0 and offsets[-1] == len(tokens)
        assert all(tokens[start] == bos for start in offsets[:-1])
        assert all(tokens[end - 1] == eos for end in offsets[1:])
        assert metrics["num_tokens"][split] == len(tokens)
        num_files = int((splits["split"] == split).sum())
        # train: original plus two transpositions (none skipped for these pitches)
        expected_docs = num_files * (3 if split == "train" else 1)
        assert metrics["num_documents"][split] == len(offsets) - 1 == expected_docs
    assert metrics["vocab_size"] == len(tokenizer)
    assert 3 < metrics["tokens_per_note"] < 6
    # Which train documents are the files as written: the first of each file's three.
    flags = np.load(paths.tokens_dir / "train_original.npy")
    num_train = int((splits["split"] == "train").sum())
    assert flags.tolist() == [True, False, False] * num_train
    tokens, offsets = store.load_split(paths.tokens_dir, "train")
    originals, original_offsets = store.load_originals(paths.tokens_dir, "train")
    assert len(original_offsets) - 1 == num_train
    for k, i in enumerate(np.flatnonzero(flags)):
        doc = originals[original_offsets[k] : original_offsets[k + 1]]
        np.testing.assert_array_equal(doc, tokens[offsets[i] : offsets[i + 1]])
    valid = store.load_originals(paths.tokens_dir, "valid")  # never augmented
    np.testing.assert_array_equal(valid[0], store.load_split(paths.tokens_dir, "valid")[0])


def test_missing_original_flags_are_named(token_project, tmp_path):
    """Tokens written before the flags existed: a clear error naming the file and the fix."""
    import shutil

    tokens_dir = tmp_path / "tokens"
    shutil.copytree(Paths(root=token_project, corpus="mine").tokens_dir, tokens_dir)
    (tokens_dir / "train_original.npy").unlink()
    with pytest.raises(FileNotFoundError, match="train_original.npy.*cadenza tokenize"):
        store.load_originals(tokens_dir, "train")


@pytest.mark.parametrize("name", ["REMI", "TSD", "Structured"])
def test_round_trip_gives_the_preprocessed_score(name, chorale_dir):
    tokenizer = build_tokenizer(name, 8, (21, 109), 8)
    for path in sorted(chorale_dir.glob("*.mid"))[:2]:
        score = Score(str(path))
        decoded = tokenizer.decode(score_ids(tokenizer, score))
        assert _notes(decoded) == _notes(tokenizer.preprocess_score(score.copy()))
        assert len(_notes(decoded)) == score.note_num()  # no note of any part is lost


def test_every_part_and_half_note_meters_survive():
    score = Score(480)
    score.time_signatures.append(TimeSignature(0, 3, 2))
    for program, pitch in [(0, 60), (40, 72), (73, 84)]:
        track = Track(f"p{program}", program, False)
        track.notes.extend(Note(i * 480, 480, pitch + i % 3, 80) for i in range(12))
        score.tracks.append(track)
    tokenizer = build_tokenizer("REMI", 8, (21, 109), 8)
    ids = score_ids(tokenizer, score)
    decoded = tokenizer.decode(ids)
    assert sorted(t.program for t in decoded.tracks) == [0, 40, 73]
    assert [(ts.numerator, ts.denominator) for ts in decoded.time_signatures] == [(3, 2)]
    assert decoded.note_num() == 36


def test_transposition_out_of_range_is_skipped_and_stretch_scales_time(tmp_path):
    score = Score(str(make_midi(tmp_path / "a.mid", num_notes=12, pitch=100)))  # up to 111
    assert transpose(score, 3, (21, 109)) is None
    moved = transpose(score, -3, (21, 128))
    assert [n.pitch for n in moved.tracks[0].notes] == [n.pitch - 3 for n in score.tracks[0].notes]
    stretched = time_stretch(score, 1.05)
    assert stretched.tracks[0].notes[4].time == round(score.tracks[0].notes[4].time * 1.05)


def _tokenize(root, workers: int, **overrides) -> dict[str, np.ndarray]:
    paths = Paths(root=root, corpus="mine")
    tokenize_stage.run(TokenizeSettings(num_workers=workers, **overrides), paths)
    return {s: np.array(store.load_split(paths.tokens_dir, s)[0]) for s in ("train", "test")}


def test_parallel_encoding_matches_serial(token_project, tmp_path):
    import shutil

    for name in ("serial", "parallel"):
        shutil.copytree(token_project, tmp_path / name, ignore=shutil.ignore_patterns("tokens"))
    serial = _tokenize(tmp_path / "serial", 1)
    parallel = _tokenize(tmp_path / "parallel", 2)
    for split in serial:
        np.testing.assert_array_equal(serial[split], parallel[split])


@pytest.mark.parametrize("voices", [False, True])
def test_bpe_trains_on_train_split_and_round_trips(token_project, tmp_path, voices):
    """With voice_programs, BPE learns from the numbered parts (what encoding sees)."""
    import shutil

    shutil.copytree(token_project, tmp_path / "p", ignore=shutil.ignore_patterns("tokens"))
    arrays = _tokenize(tmp_path / "p", 1, bpe_vocab_size=700, transpositions=[],
                       time_stretches=[], voice_programs=voices)  # fmt: skip
    tokenizer = load_tokenizer(tmp_path / "p" / "data" / "tokens" / "tokenizer.json")
    assert tokenizer.is_trained and len(tokenizer) == 700
    assert arrays["train"].max() < 700
    plain = build_tokenizer("REMI", 0, (21, 109), 8, voice_programs=voices)  # the default
    score = Score(str(next((tmp_path / "p" / "data" / "raw" / "mine").glob("bwv*.mid"))))
    bpe_ids, base_ids = score_ids(tokenizer, score), score_ids(plain, score)
    assert len(bpe_ids) < len(base_ids)
    decoded = tokenizer.decode(bpe_ids)
    assert _notes(decoded) == _notes(plain.decode(base_ids))
    assert len({t.program for t in decoded.tracks}) == (4 if voices else 1)
    if voices:  # merges were learned across voices: no scratch copy is left behind
        assert not list((tmp_path / "p" / "data").rglob("000000.mid"))


def test_voice_programs_number_chorale_parts_by_register_and_keep_every_note(chorale_dir, tmp_path):
    """tokenize.voice_programs: the parts of a real chorale (all program 0 from music21)
    become programs 0.. from the top voice down; the setting survives tokenizer.json; every
    note survives; each onset lists its voices in order (the grammar's rule holds and is
    enforced); a score with distinct programs is left alone."""
    import torch

    from cadenza.generate import decode_ids
    from cadenza.tokens.encode import number_voices
    from cadenza.tokens.grammar import build_grammar

    built = build_tokenizer("REMI", 8, (21, 109), 8, voice_programs=True)
    built.save(tmp_path / "tokenizer.json")
    tokenizer = load_tokenizer(tmp_path / "tokenizer.json")
    grammar = build_grammar(tokenizer)
    assert grammar.programs is not None
    assert build_grammar(build_tokenizer("REMI", 8, (21, 109), 8)).programs is None
    for path in sorted(chorale_dir.glob("*.mid"))[:2]:
        score = Score(str(path))
        parts = sum(t.note_num() > 0 for t in score.tracks)
        assert parts >= 4 and {t.program for t in score.tracks} == {0}
        numbered = number_voices(score)
        voiced = numbered.tracks[:parts]
        means = [sum(n.pitch for n in t.notes) / t.note_num() for t in voiced]
        assert [t.program for t in voiced] == list(range(parts))
        assert means == sorted(means, reverse=True)
        assert _notes(numbered) == _notes(score)  # the source score is untouched too
        assert {t.program for t in score.tracks} == {0}
        ids = score_ids(tokenizer, score)
        decoded = tokenizer.decode(ids)
        assert len(_notes(decoded)) == score.note_num()
        assert {t.program for t in decoded.tracks} == set(range(parts))
        played = decode_ids(tokenizer, ids)  # what generate, the gallery and clips write
        assert [t.name for t in played.tracks] == [f"Voice {k + 1}" for k in range(parts)]
        assert {t.program for t in played.tracks} == {0} and _notes(played) == _notes(decoded)
        row = torch.tensor([ids])
        assert int(grammar.violations(row)[0]) == 0
        # the same onset with its voices swapped is what the grammar refuses
        programs = [i for i, t in enumerate(ids) if tokenizer[t].startswith("Program_")]
        first, second = programs[0], programs[1]
        swapped = list(ids)
        swapped[first], swapped[second] = ids[second], ids[first]
        assert int(grammar.violations(torch.tensor([swapped]))[0]) == 1
    # a voice whose note overruns its own next onset is cut there when decoded (legato)
    overrun = Score(480)
    for pitch, notes in [(72, [(0, 960), (480, 480)]), (60, [(0, 480), (480, 480)])]:
        track = Track(f"v{pitch}", 0, False)
        track.notes.extend(Note(time, duration, pitch + i, 80) for i, (time, duration)
                           in enumerate(notes))  # fmt: skip
        overrun.tracks.append(track)
    sung = decode_ids(tokenizer, score_ids(tokenizer, overrun))
    top = [(n.time * 480 // sung.tpq, n.duration * 480 // sung.tpq) for n in sung.tracks[0].notes]
    assert top == [(0, 480), (480, 480)]
    arranged = Score(480)
    for program, pitch in [(40, 72), (0, 60)]:
        track = Track(f"p{program}", program, False)
        track.notes.extend(Note(i * 480, 480, pitch, 80) for i in range(4))
        arranged.tracks.append(track)
    assert [t.program for t in number_voices(arranged).tracks] == [40, 0]


def test_no_velocity_tokens_save_one_token_per_note_and_keep_the_music(chorale_dir, tmp_path):
    """tokenize.num_velocities 0: no Velocity tokens in the vocabulary or the stream (music21's
    chorales have one velocity, so the token carries nothing); every note's onset,
    duration, pitch and voice survive, at miditok's default velocity; the grammar still holds
    on real chorales; the stream is exactly one token per note shorter."""
    import torch

    from cadenza.generate import decode_ids
    from cadenza.tokens.grammar import build_grammar

    assert TokenizeSettings(num_velocities=0).num_velocities == 0
    with pytest.raises(ValueError, match="num_velocities"):
        TokenizeSettings(num_velocities=-1)
    with_velocity = build_tokenizer("REMI", 8, (21, 109), 8, voice_programs=True)
    built = build_tokenizer("REMI", 0, (21, 109), 8, voice_programs=True)
    built.save(tmp_path / "tokenizer.json")
    tokenizer = load_tokenizer(tmp_path / "tokenizer.json")
    assert not any(token.startswith("Velocity_") for token in tokenizer.vocab)
    assert len(with_velocity) - len(tokenizer) == 8
    grammar = build_grammar(tokenizer)
    for path in sorted(chorale_dir.glob("*.mid"))[:2]:
        score = Score(str(path))
        assert len({n.velocity for t in score.tracks for n in t.notes}) == 1
        ids = score_ids(tokenizer, score)
        reference = score_ids(with_velocity, score)
        assert len(reference) - len(ids) == score.note_num()
        played = decode_ids(tokenizer, ids)
        expected = decode_ids(with_velocity, reference)
        assert [n[:3] for n in _notes(played)] == [n[:3] for n in _notes(expected)]
        assert [t.name for t in played.tracks] == [t.name for t in expected.tracks]
        assert {n[3] for n in _notes(played)} == {100}  # miditok's default velocity
        assert int(grammar.violations(torch.tensor([ids]))[0]) == 0
