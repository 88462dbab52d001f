"""tokenize.key_normalize: the key estimate on real chorales, normalization and its exact
undoing (real windows back in their own keys), placement of samples in the train split's
keys, and the settings that contradict it."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from symusic import Note, Score, Track

from cadenza.config import TokenizeSettings
from cadenza.paths import Paths
from cadenza.stages import tokenize as tokenize_stage
from cadenza.tokens import keys, store
from cadenza.tokens.augment import transpose
from cadenza.tokens.tokenizer import build_tokenizer, load_tokenizer


def _line(pitches: list[int]) -> Score:
    score = Score(480)
    track = Track("line", 0, False)
    track.notes.extend(Note(i * 480, 480, p, 80) for i, p in enumerate(pitches))
    score.tracks.append(track)
    return score


def _shift(score) -> int:
    return keys.shift_of(*keys.estimate_key(keys.pitch_class_weights(score)))


def test_key_estimate_is_transposition_equivariant_on_real_chorales(chorale_dir):
    c_major = _line([60, 62, 64, 65, 67, 69, 71, 72, 67, 64, 60, 67, 60])
    a_minor = _line([57, 59, 60, 62, 64, 65, 68, 69, 64, 60, 57, 64, 57])
    assert keys.estimate_key(keys.pitch_class_weights(c_major)) == (0, False)
    assert keys.estimate_key(keys.pitch_class_weights(a_minor)) == (9, True)
    assert _shift(c_major) == _shift(a_minor) == 0  # one scale: the white keys
    for path in sorted(chorale_dir.glob("*.mid"))[:3]:
        score = Score(str(path))
        base = _shift(score)
        for k in range(-5, 7):
            moved = transpose(score, k, (0, 128))
            assert _shift(moved) == (base - k + 6) % 12 - 6, (path.name, k)
        normalized, shift = keys.normalize(score, (21, 109))
        assert shift == base and _shift(normalized) == 0


def _tokenize(root, **overrides) -> Paths:
    paths = Paths(root=root, corpus="mine")
    settings = TokenizeSettings(num_workers=1, transpositions=[], time_stretches=[], **overrides)
    tokenize_stage.run(settings, paths)
    return paths


@pytest.fixture(scope="module")
def normalized_and_plain(token_project, tmp_path_factory) -> tuple[Paths, Paths]:
    root = tmp_path_factory.mktemp("keys")
    for name in ("plain", "normalized"):
        shutil.copytree(token_project, root / name, ignore=shutil.ignore_patterns("tokens"))
    return _tokenize(root / "normalized", key_normalize=True), _tokenize(root / "plain")


def test_normalized_tokens_move_back_exactly_to_the_original_keys(normalized_and_plain):
    """Every document of every split, moved back by its saved shift, is token for token the
    plain tokenization of the same file; the train histogram reaches tokenizer.json."""
    normalized, plain = normalized_and_plain
    tokenizer = load_tokenizer(normalized.tokens_dir / "tokenizer.json")
    assert keys.uses_key_normalize(tokenizer)
    assert not keys.uses_key_normalize(load_tokenizer(plain.tokens_dir / "tokenizer.json"))
    moved_any = False
    for split in ("train", "valid", "test"):
        tokens, offsets = store.load_split(normalized.tokens_dir, split)
        plain_tokens, plain_offsets = store.load_split(plain.tokens_dir, split)
        shifts = store.load_key_shifts(normalized.tokens_dir, split)
        assert store.load_key_shifts(plain.tokens_dir, split) is None
        assert len(shifts) == len(offsets) - 1 and list(offsets) == list(plain_offsets)
        for doc, (start, end) in enumerate(zip(offsets[:-1], offsets[1:], strict=True)):
            row = np.asarray(tokens[start:end], dtype=np.int64)[None]
            back = keys.place(tokenizer, row, -shifts[doc : doc + 1])[0]
            np.testing.assert_array_equal(back, plain_tokens[start:end])
            moved_any |= bool(shifts[doc]) and not np.array_equal(row[0], back)
        if split == "train":
            counts = keys.train_histogram(tokenizer)
            assert counts.sum() == len(shifts) and counts[shifts[0] + 6] >= 1
    assert moved_any  # the corpus has pieces outside C major / A minor
    metrics = json.loads(normalized.metrics_path("tokenize").read_text())
    assert sum(metrics["key_shifts_train"].values()) == len(
        store.load_key_shifts(normalized.tokens_dir, "train")
    )


def test_evaluation_reads_real_windows_in_their_own_keys(normalized_and_plain):
    from cadenza.evaluation import windows
    from cadenza.evaluation.context import real_in_own_keys

    normalized, plain = normalized_and_plain
    tokenizer = load_tokenizer(normalized.tokens_dir / "tokenizer.json")
    plan = windows.make_plan(8, 64, 32, 2, 0)
    bos, eos = tokenizer["BOS_None"], tokenizer["EOS_None"]
    real = {}
    for name, paths in (("normalized", normalized), ("plain", plain)):
        docs = windows.documents(*store.load_split(paths.tokens_dir, "test"), bos)
        real[name] = windows.real_windows(docs, plan, eos, 0)
        real[name].tokens = real_in_own_keys(paths, ["test"], tokenizer, real[name])
    np.testing.assert_array_equal(real["normalized"].tokens, real["plain"].tokens)


def test_samples_are_placed_in_keys_drawn_from_the_train_split(tmp_path):
    """A key-normalized model's sample is the same draw moved by -shift: by the primer's
    shift when given, else by a shift from the train histogram (seeded)."""
    from cadenza.generate import sample_score
    from cadenza.models.generator import GeneratorConfig, TransformerXL

    plain = build_tokenizer("REMI", 8, (21, 109), 8)
    normalized = build_tokenizer("REMI", 8, (21, 109), 8, key_normalize=True)
    normalized.config.additional_params[keys.KEY_SHIFTS] = keys.histogram([3, 3, 3])
    normalized.save(tmp_path / "tokenizer.json")
    normalized = load_tokenizer(tmp_path / "tokenizer.json")  # the histogram survives saving
    assert (keys.draw_shifts(normalized, 50, seed=1) == 3).all()
    torch.manual_seed(0)
    net = TransformerXL(
        GeneratorConfig(
            vocab_size=len(plain),
            d_model=32,
            n_layers=1,
            n_heads=2,
            d_ff=64,
            seg_len=16,
            mem_len=16,
            dropout=0.0,
        )  # fmt: skip
    ).eval()
    _, reference = sample_score(net, plain, 64, seed=5)
    for key_shift, expected in ((None, -3), (2, -2)):
        _, placed = sample_score(net, normalized, 64, seed=5, key_shift=key_shift)
        assert len(placed) == len(reference)
        table = keys.pitch_table(plain, expected)
        assert placed == [int(table[i]) for i in reference]
        pitches = [i for i in reference if plain[i].startswith("Pitch_")]
        assert pitches and all(table[i] != i for i in pitches)  # every pitch moved


@pytest.mark.parametrize(
    "overrides, key",
    [({"transpositions": [1]}, "transpositions"), ({"bpe_vocab_size": 700}, "bpe_vocab_size")],
)
def test_key_normalize_refuses_settings_that_undo_it(overrides, key):
    base = {"transpositions": [], "key_normalize": True}
    with pytest.raises(ValueError, match=key):
        TokenizeSettings(**{**base, **overrides})
