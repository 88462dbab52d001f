"""The voice-leading grader: each rule on a grid built to break it, parallels agreeing with
music21's VoiceLeadingQuartet, real chorales graded clean against broken ones, and the grader
as a probe that tells a known difference and finds none between real and real."""

from __future__ import annotations

import numpy as np
import pytest
from symusic import Score

from cadenza.config import ImportSettings
from cadenza.evaluation import probes
from cadenza.evaluation import voice_leading as vl
from cadenza.paths import Paths
from cadenza.stages import import_corpus as corpus_import
from cadenza.tokens.encode import number_voices

RULE = {name: index for index, name in enumerate(vl.FEATURE_NAMES)}
C_MAJOR_CHORD = [72, 67, 64, 48]  # C5 G4 E4 C3: in range, spaced, no seconds


def grade(rows) -> dict[str, float]:
    return dict(zip(vl.FEATURE_NAMES, vl.grade_grid(np.array(rows)), strict=True))


def test_a_clean_progression_breaks_no_rule():
    # I - IV - V - I in C, close to a textbook: no parallels, crossings, clashes.
    rows = [[72, 67, 64, 48], [72, 69, 65, 53], [71, 67, 62, 55], [72, 67, 64, 48]]
    result = grade(rows)
    assert all(result[r] == 0.0 for r in vl.RULES), result
    assert result["graded_onsets"] == pytest.approx(np.log1p(4))


@pytest.mark.parametrize(
    ("rows", "rule", "expected"),
    [
        # soprano and alto both move up a step, a fifth apart before and after (of 6 moving pairs)
        ([[72, 65, 60, 48], [74, 67, 60, 48]], "parallel_fifths", 1 / 1),
        # all four voices up a step: S-T, S-B and T-B in octaves (of 6 moving pairs)
        ([[72, 67, 60, 48], [74, 69, 62, 50]], "parallel_octaves", 3 / 6),
        # alto above the soprano at one onset of one: 1 of the 6 pairs crossed
        ([[67, 72, 64, 48]], "voice_crossing", 1 / 6),
        # the alto moves above where the soprano just was (of 3 adjacent pairs' steps)
        ([[69, 64, 60, 48], [74, 71, 60, 48]], "voice_overlap", 1 / 3),
        # soprano an octave and a third above the alto
        ([[79, 64, 60, 48]], "spacing", 1 / 2),
        # the bass at F#1, below its range
        ([[72, 67, 64, 30]], "out_of_range", 1 / 4),
        # C5 D5 together: one second among the 6 pairs of sounding pitches
        ([[74, 72, 64, 48]], "simultaneous_seconds", 1 / 6),
        # a C-D-E cluster with a bass C: not a triad or seventh chord
        ([[74, 72, 64, 48], C_MAJOR_CHORD], "non_tonal_chords", 1 / 2),
    ],
)
def test_each_rule_is_caught_where_it_is_broken(rows, rule, expected):
    result = grade(rows)
    assert result[rule] == pytest.approx(expected), result


def test_parallel_motion_of_all_voices_counts_fifths_and_octaves_apart():
    result = grade([[72, 67, 60, 48], [74, 69, 62, 50]])
    # pairs: S-A fourth, S-T octave, S-B 2 octaves, A-T fifth, A-B fifth+octave, T-B octave
    assert result["parallel_octaves"] == pytest.approx(3 / 6)
    assert result["parallel_fifths"] == pytest.approx(2 / 6)


def test_out_of_key_reads_the_best_scale_of_the_window():
    in_key = grade([C_MAJOR_CHORD, [71, 67, 62, 55]])
    assert in_key["out_of_key"] == 0.0
    chromatic = grade([[73, 66, 63, 49], C_MAJOR_CHORD])  # C#, F#, Eb, C# against C major
    assert chromatic["out_of_key"] > 0.2


def test_silence_and_a_single_voice_break_nothing():
    assert not vl.grade_grid(np.zeros((0, 4), dtype=np.int64)).any()
    result = grade([[72, -1, -1, -1], [74, -1, -1, -1]])
    assert all(result[r] == 0.0 for r in vl.RULES if r != "out_of_key"), result


def test_parallels_agree_with_music21_on_random_quartets():
    from music21 import note, voiceLeading

    rng = np.random.default_rng(0)
    scale = np.array([n for n in range(40, 80) if n % 12 in (0, 2, 4, 5, 7, 9, 11)])
    checked = found = 0
    for _ in range(300):
        # two voices, two onsets, upper above lower at both (music21 reads v1 as the upper)
        lower = rng.choice(scale[:20], 2)
        upper = lower + rng.choice([0, 7, 12, 19, 24, 3, 4, 5, 9], 2)
        upper = np.where(np.isin(upper % 12, scale % 12), upper, upper + 1)
        if (upper < lower).any():
            continue
        grid = np.full((2, 4), -1)
        grid[:, 0], grid[:, 3] = upper, lower
        ours = grade(grid)
        quartet = voiceLeading.VoiceLeadingQuartet(
            note.Note(midi=int(upper[0])), note.Note(midi=int(upper[1])),
            note.Note(midi=int(lower[0])), note.Note(midi=int(lower[1])),
        )  # fmt: skip
        moves = upper[0] != upper[1] and lower[0] != lower[1]
        theirs_fifth = moves and quartet.parallelFifth()
        theirs_octave = moves and quartet.parallelUnisonOrOctave()
        assert (ours["parallel_fifths"] > 0) == bool(theirs_fifth), (upper, lower)
        assert (ours["parallel_octaves"] > 0) == bool(theirs_octave), (upper, lower)
        checked += 1
        found += bool(theirs_fifth) + bool(theirs_octave)
    assert checked > 200 and found > 20  # the check saw many parallels, not only clean pairs


@pytest.fixture(scope="module")
def four_part_grids(tmp_path_factory) -> list[np.ndarray]:
    """Voice grids of the chorales in music21's corpus (the first 16 the import stage takes)
    written in exactly four parts (a doubling instrument's fifth part would be graded as a
    voice out of place)."""
    root = tmp_path_factory.mktemp("four-part")
    settings = ImportSettings(corpus="bach", limit=16, num_workers=2)
    corpus_import.run(settings, Paths(root=root, corpus="bach"))
    grids = []
    for path in sorted((root / "data" / "raw" / "bach").glob("*.mid")):
        score = number_voices(Score(str(path)))
        if sum(t.note_num() > 0 for t in score.tracks) == 4:
            grids.append(vl.voice_grid(score)[1])
    return grids


def test_real_chorales_grade_clean_and_broken_ones_do_not(four_part_grids):
    grids = four_part_grids
    assert len(grids) >= 8 and all(len(g) > 16 for g in grids)
    real = np.stack([vl.grade_grid(g) for g in grids])
    rates = vl.rates(real)
    for rule in ("parallel_fifths", "parallel_octaves", "voice_crossing", "out_of_range"):
        assert rates[rule] < 0.05, rates  # Bach breaks these rarely
    assert rates["simultaneous_seconds"] < 0.1 and rates["non_tonal_chords"] < 0.35, rates
    # Broken: the alto a semitone up (clashes, chromatic notes, odd chords), the tenor
    # above the soprano (crossing), the bass two octaves down (out of range).
    broken = []
    for grid in grids:
        g = grid.copy()
        on = g >= 0
        g[:, 1] = np.where(on[:, 1], g[:, 1] + 1, -1)
        g[:, 2] = np.where(on[:, 2], g[:, 2] + 24, -1)
        g[:, 3] = np.where(on[:, 3], g[:, 3] - 24, -1)
        broken.append(vl.grade_grid(g))
    worse = vl.rates(np.stack(broken))
    for rule in ("voice_crossing", "out_of_range", "out_of_key", "non_tonal_chords"):
        assert worse[rule] > rates[rule] + 0.1, (rule, worse, rates)


def _windows(grid: np.ndarray, length: int) -> list[np.ndarray]:
    return [grid[i : i + length] for i in range(0, len(grid) - length + 1, length)]


def _probe(real_rows, real_groups, fake_rows, fake_groups):
    data = probes.ProbeInput(real_rows, fake_rows, real_groups, fake_groups)
    draws = probes.make_draws(real_groups, fake_groups, 30, 0)
    return probes.score(data, draws, folds=4, repeats=2, seed=0, jobs=1)


def test_as_a_probe_it_tells_swapped_voices_and_not_real_from_real(four_part_grids):
    windows, groups = [], []
    for doc, grid in enumerate(four_part_grids):
        for window in _windows(grid, 8):
            windows.append(window)
            groups.append(doc)
    groups = np.array(groups)
    half = np.arange(len(windows)) % 2 == 0  # alternate windows: two real sets, same pieces
    real = np.stack([vl.grade_grid(w) for w in windows])
    # A known difference: alto and tenor exchanged (crossings and overlaps everywhere).
    swapped = np.stack([vl.grade_grid(w[:, [0, 2, 1, 3]]) for w in windows])
    count = int((~half).sum())
    told = _probe(
        real[half][:count], groups[half][:count], swapped[~half][:count], groups[~half][:count]
    )
    assert told.accuracy > 0.9 and told.interval()[0] > 0.75, told.to_dict()
    a, b = real[half], real[~half]
    count = min(len(a), len(b))
    same = _probe(a[:count], groups[half][:count], b[:count], groups[~half][:count])
    low, high = same.interval()
    assert low <= 0.5 <= high and same.accuracy < 0.65, same.to_dict()


def test_token_windows_are_graded_in_four_voices(token_project):
    """Windows of the token store decode (generate.decode_ids: "Voice k" tracks on program 0)
    to four graded voices, and grade as the chorales they came from do."""
    from cadenza.evaluation.window_stats import decode_window
    from cadenza.tokens.store import load_split
    from cadenza.tokens.tokenizer import load_tokenizer

    tokenizer = load_tokenizer(token_project / "data" / "tokens" / "tokenizer.json")
    tokens, offsets = load_split(token_project / "data" / "tokens", "train")
    start = int(offsets[0]) + 1
    window = np.asarray(tokens[start : start + 256])
    _, grid = vl.voice_grid(decode_window(tokenizer, window))
    assert ((grid >= 0).sum(axis=1) >= 3).mean() > 0.5, grid[:8]
    assert all((grid[:, voice] >= 0).any() for voice in range(4))
    rows = vl.features_of_windows(tokenizer, np.stack([window, window]))
    assert rows.shape == (2, len(vl.FEATURE_NAMES)) and rows[0, -1] > 0


def test_as_a_reward_real_windows_score_above_scrambled_pitches(token_project):
    from cadenza.evaluation.critics import VoiceLeadingReward
    from cadenza.tokens.store import load_split
    from cadenza.tokens.tokenizer import load_tokenizer

    tokenizer = load_tokenizer(token_project / "data" / "tokens" / "tokenizer.json")
    tokens, offsets = load_split(token_project / "data" / "tokens", "train")
    starts = [int(a) + 1 for a, b in zip(offsets[:-1], offsets[1:], strict=True) if b - a > 200]
    real = np.stack([np.asarray(tokens[s : s + 128], dtype=np.int64) for s in starts[:4]])
    pitches = np.array([i for name, i in tokenizer.vocab.items() if name.startswith("Pitch_")])
    scrambled = real.copy()
    where = np.isin(scrambled, pitches)
    scrambled[where] = np.random.default_rng(0).choice(pitches, int(where.sum()))
    reward = VoiceLeadingReward(tokenizer)
    real_reward, diagnostics = reward(real)
    scrambled_reward, _ = reward(scrambled)
    assert real_reward.shape == (len(real),) and diagnostics["voice_leading_broken"] >= 0
    assert real_reward.mean() > scrambled_reward.mean() + 0.3, (real_reward, scrambled_reward)
