"""Diversity measures on real tokens: repeats, copies and narrowed vocabularies are caught,
and the paired comparison finds a known difference and none where there is none."""

from __future__ import annotations

import numpy as np
import pytest

from cadenza.evaluation import diversity
from cadenza.paths import Paths
from cadenza.tokens.store import load_split
from cadenza.tokens.tokenizer import load_tokenizer


@pytest.fixture(scope="module")
def corpus(token_project):
    tokenizer = load_tokenizer(token_project / "data" / "tokens" / "tokenizer.json")
    paths = Paths(root=token_project, corpus="mine")
    unseen = [load_split(paths.tokens_dir, split) for split in ("valid", "test")]
    return tokenizer, load_split(paths.tokens_dir, "train"), unseen


def _rows(tokens, offsets, length: int) -> np.ndarray:
    """Consecutive windows of length tokens inside each document."""
    rows = [
        tokens[b : b + length]
        for a, end in zip(offsets[:-1], offsets[1:], strict=True)
        for b in range(a + 1, end - length, length)
    ]
    return np.stack(rows)


def test_hashes_tell_ngrams_apart():
    row = np.array([5, 6, 7, 8, 5, 6, 7, 8, 9])
    hashes = diversity.ngram_hashes(row, 4)
    assert len(hashes) == 6 and hashes[0] == hashes[4] and len(set(hashes.tolist())) == 5
    assert len(diversity.ngram_hashes(row[:3], 4)) == 0


def test_copies_repeats_and_narrow_samples_are_caught(corpus):
    tokenizer, train, unseen_splits = corpus
    hashes = diversity.train_hashes(*train)
    copied = _rows(*train, 64)[:4]  # pasted from the train split
    fresh = np.vstack([_rows(*split, 64) for split in unseen_splits])[:4]  # never trained on
    assert len(copied) == len(fresh) == 4
    seen = diversity.per_sample(tokenizer, copied, hashes)
    unseen = diversity.per_sample(tokenizer, fresh, hashes)
    assert np.all(seen["train_8grams"] == 1.0)
    assert unseen["train_8grams"].mean() < 0.9
    repeated = diversity.per_sample(tokenizer, np.repeat(fresh[:1], 4, axis=0), hashes)
    assert np.all(repeated["unique_4grams"] == 0.0) and unseen["unique_4grams"].mean() > 0.2
    pitch = next(i for name, i in tokenizer.vocab.items() if name.startswith("Pitch_"))
    narrow = fresh.copy()
    pitch_ids, _ = diversity._token_groups(tokenizer)
    narrow[np.isin(narrow, pitch_ids)] = pitch  # every note on one pitch
    assert np.all(diversity.per_sample(tokenizer, narrow, hashes)["pitch_entropy"] == 0.0)
    assert np.all(unseen["pitch_entropy"] > 1.0) and np.all(unseen["rhythm_entropy"] > 0.5)


def test_paired_comparison_finds_a_known_shift_and_nothing_in_noise():
    rng = np.random.default_rng(0)
    base = rng.normal(size=128)
    shifted = diversity.paired(base + 0.3 + 0.1 * rng.normal(size=128), base, seed=0)
    assert shifted["p_value"] < 0.01 and shifted["ci_low"] > 0.2
    noise = diversity.paired(base + 0.1 * rng.normal(size=128), base, seed=0)
    assert noise["ci_low"] < 0 < noise["ci_high"] and noise["p_value"] > 0.05


def test_binary_search_membership_matches_isin():
    rng = np.random.default_rng(3)
    train = np.unique(rng.integers(0, 2**63, 50_000, dtype=np.uint64))
    edges = np.array([0, 2**64 - 1], dtype=np.uint64)
    strangers = rng.integers(0, 2**63, 300, dtype=np.uint64)
    sample = np.concatenate([rng.choice(train, 300), strangers, train[[0, -1]], edges])
    found = diversity.in_sorted(sample, train)
    assert np.array_equal(found, np.isin(sample, train)) and found[:300].all()
    assert not diversity.in_sorted(sample, train[:0]).any()  # an empty train split
