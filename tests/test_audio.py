"""Audio without root: TinySoundFont + the GM soundfont shipped in pretty_midi, MP3 via
soundfile. The renders are decoded again and checked for pitch, length and loudness."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from symusic import Note, Score, Tempo, Track

from cadenza import audio


def one_note(path, pitch: int, seconds: float = 1.0, program: int = 0):
    """A single note at 120 bpm (one quarter = 0.5 s)."""
    score = Score(480)
    score.tempos.append(Tempo(0, 120.0))
    track = Track("t", program, False)
    track.notes.append(Note(0, int(seconds * 960), pitch, 100))
    score.tracks.append(track)
    score.dump_midi(str(path))
    return path


def dominant_hz(samples: np.ndarray, sample_rate: int) -> float:
    mono = samples.mean(axis=1)[: sample_rate // 2]  # the first half second: the attack
    spectrum = np.abs(np.fft.rfft(mono * np.hanning(len(mono))))
    return float(np.fft.rfftfreq(len(mono), 1 / sample_rate)[spectrum.argmax()])


def test_bundled_soundfont_is_the_pretty_midi_general_midi_one():
    path = audio.bundled_soundfont()
    assert path.name == "TimGM6mb.sf2" and path.read_bytes()[8:12] == b"sfbk"
    assert audio.unavailable_reason(audio.AudioSpec()) == ""


@pytest.mark.parametrize("pitch", [57, 69])
def test_a_rendered_note_sounds_at_its_pitch_and_lasts_its_length(tmp_path, pitch):
    spec = audio.AudioSpec()
    samples = audio.synthesize(one_note(tmp_path / "a.mid", pitch), spec)
    assert samples.shape == (int((1.0 + audio.TAIL_SECONDS) * spec.sample_rate), 2)
    expected = 440.0 * 2 ** ((pitch - 69) / 12)
    assert dominant_hz(samples, spec.sample_rate) == pytest.approx(expected, rel=0.03)
    tail = samples[int(1.9 * spec.sample_rate) :]
    assert np.sqrt((samples[: spec.sample_rate // 2] ** 2).mean()) > 20 * np.abs(tail).mean()


@pytest.mark.parametrize("audio_format", ["mp3", "ogg", "wav"])
def test_every_format_decodes_to_the_rendered_length(tmp_path, chorale_dir, audio_format):
    midi = sorted(chorale_dir.glob("*.mid"))[0]
    spec = audio.AudioSpec(format=audio_format)
    out = audio.render(midi, tmp_path / f"c{spec.suffix}", spec)
    seconds = Score(str(midi)).to("second").end() + audio.TAIL_SECONDS
    assert audio.duration_seconds(out) == pytest.approx(seconds, abs=0.15)
    import soundfile

    decoded, rate = soundfile.read(str(out), dtype="float32")
    assert rate == spec.sample_rate and 0.01 < np.sqrt((decoded**2).mean()) < 0.99


def test_a_piece_without_notes_renders_as_silence(tmp_path):
    Score(480).dump_midi(str(tmp_path / "empty.mid"))  # what an untrained generator may write
    out = audio.render(tmp_path / "empty.mid", tmp_path / "empty.mp3", audio.AudioSpec())
    assert audio.duration_seconds(out) == pytest.approx(audio.TAIL_SECONDS, abs=0.1)


def test_a_piece_of_endless_rests_is_cut_to_max_seconds(tmp_path):
    score = Score(480)
    score.tempos.append(Tempo(0, 120.0))
    track = Track("t", 0, False)
    track.notes.extend([Note(0, 480, 60, 90), Note(480 * 2 * 3600 * 24, 480, 62, 90)])  # a day
    score.tracks.append(track)
    score.dump_midi(str(tmp_path / "long.mid"))
    spec = audio.AudioSpec()
    samples = audio.synthesize(tmp_path / "long.mid", spec, max_seconds=4.0)
    assert len(samples) == int((0.5 + audio.TAIL_SECONDS) * spec.sample_rate)  # note 2 is cut
    assert np.abs(samples[: spec.sample_rate]).max() > 0.01  # the first note sounds


def test_fit_length_cuts_with_a_fade_or_pads_with_silence():
    rate = 1000
    loud = np.ones((3000, 2), dtype=np.float32)
    cut = audio.fit_length(loud, 2.0, rate)
    assert cut.shape == (2000, 2) and cut[0, 0] == 1.0 and cut[-1, 0] == 0.0
    padded = audio.fit_length(loud[:500], 2.0, rate)
    assert padded.shape == (2000, 2) and padded[499, 0] == 1.0 and not padded[500:].any()


def test_fluidsynth_is_used_only_when_installed(tmp_path):
    spec = audio.AudioSpec(synthesizer="fluidsynth")
    if shutil.which("fluidsynth") is None:
        assert "fluidsynth is not installed" in audio.unavailable_reason(spec)
        return
    samples = audio.synthesize(one_note(tmp_path / "a.mid", 69), spec)
    assert dominant_hz(samples, spec.sample_rate) == pytest.approx(440.0, rel=0.03)


def test_a_missing_soundfont_is_named(tmp_path):
    spec = audio.AudioSpec(soundfont=str(tmp_path / "nope.sf2"))
    assert "nope.sf2: no such file" in audio.unavailable_reason(spec)


def test_generate_writes_audio_beside_the_midi_and_rejects_unknown_formats(tmp_path):
    from cadenza.generate import write_audio

    midi = one_note(tmp_path / "s.mid", 60)
    out = write_audio(midi, "ogg")
    assert out == tmp_path / "s.ogg" and audio.duration_seconds(out) > 1.5
    with pytest.raises(ValueError, match="--audio 'flac': choose one of mp3, ogg, wav"):
        write_audio(midi, "flac")
