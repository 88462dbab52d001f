"""What over-optimization shows first: samples that repeat each other, copy the training data,
or narrow their pitch and rhythm vocabulary.

Per generated sample (its clean tokens, specials dropped), four numbers:
- `unique_4grams`: the share of its 4-grams found in no other sample of the same model (1 =
  nothing shared; the per-sample form of distinct-n / self-BLEU);
- `train_8grams`: the share of its 8-grams that occur anywhere in the train split (copying:
  a sample pasted from a chorale scores 1);
- `pitch_entropy`, `rhythm_entropy`: entropy in bits of its Pitch tokens and of its Position
  and Duration tokens.
A model's value is the mean over samples with a bootstrap CI; two models are compared sample
by sample (the samples share their seeds: common random numbers) with a paired bootstrap CI
and p-value. n-grams are hashed to 64 bits (a collision among a few million n-grams is
about 1e-7 likely).
"""

from __future__ import annotations

import numpy as np

from cadenza.evaluation.probes import bootstrap_p_value
from cadenza.generate import clean_ids

MEASURES = ("unique_4grams", "train_8grams", "pitch_entropy", "rhythm_entropy")
DRAWS = 1000


def ngram_hashes(ids: np.ndarray, n: int) -> np.ndarray:
    """(len - n + 1,) 64-bit hashes of the n-grams of one token row (wrapping arithmetic)."""
    ids = np.asarray(ids, dtype=np.uint64)
    if len(ids) < n:
        return np.zeros(0, dtype=np.uint64)
    windows = np.lib.stride_tricks.sliding_window_view(ids, n)
    powers = np.uint64(1_000_003) ** np.arange(n, dtype=np.uint64)
    with np.errstate(over="ignore"):
        return (windows * powers).sum(axis=1, dtype=np.uint64) ^ np.uint64(0x9E3779B97F4A7C15)


def _entropy(values: np.ndarray) -> float:
    if not len(values):
        return 0.0
    _, counts = np.unique(values, return_counts=True)
    p = counts / counts.sum()
    return float(-(p * np.log2(p)).sum())


def _token_groups(tokenizer) -> tuple[np.ndarray, np.ndarray]:
    """Ids of Pitch tokens and of Position / Duration tokens."""
    vocab = tokenizer.vocab
    pitch = [i for name, i in vocab.items() if name.startswith("Pitch_")]
    rhythm = [i for name, i in vocab.items() if name.startswith(("Position_", "Duration_"))]
    return np.array(pitch), np.array(rhythm)


def in_sorted(values: np.ndarray, sorted_unique: np.ndarray) -> np.ndarray:
    """np.isin(values, sorted_unique) for a sorted array of unique values, by binary search:
    O(n log m) where np.isin sorts both arrays again on every call (the train split's 8-grams
    are ~10^6: 145 s of the default evaluation went there)."""
    if not len(sorted_unique):
        return np.zeros(len(values), dtype=bool)
    where = np.searchsorted(sorted_unique, values)
    return sorted_unique[np.minimum(where, len(sorted_unique) - 1)] == values


def per_sample(tokenizer, samples: np.ndarray, train_hashes: np.ndarray) -> dict[str, np.ndarray]:
    """MEASURES of each row of samples (N, T); train_hashes: sorted unique 8-gram hashes."""
    rows = [np.array(clean_ids(tokenizer, row.tolist()), dtype=np.int64) for row in samples]
    fours = [np.unique(ngram_hashes(row, 4)) for row in rows]
    everyone, counts = np.unique(np.concatenate(fours), return_counts=True)
    shared = set(everyone[counts > 1].tolist())
    pitch, rhythm = _token_groups(tokenizer)
    out = {name: np.zeros(len(rows)) for name in MEASURES}
    for i, row in enumerate(rows):
        if len(fours[i]):
            out["unique_4grams"][i] = np.mean([h not in shared for h in fours[i].tolist()])
        eights = ngram_hashes(row, 8)
        if len(eights):
            out["train_8grams"][i] = float(in_sorted(eights, train_hashes).mean())
        out["pitch_entropy"][i] = _entropy(row[np.isin(row, pitch)])
        out["rhythm_entropy"][i] = _entropy(row[np.isin(row, rhythm)])
    return out


def train_hashes(tokens: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """Sorted unique 8-gram hashes of every train document (none across a boundary)."""
    parts = [ngram_hashes(tokens[a:b], 8) for a, b in zip(offsets[:-1], offsets[1:], strict=True)]
    return np.unique(np.concatenate(parts)) if parts else np.zeros(0, dtype=np.uint64)


def _interval(values: np.ndarray, seed: int) -> tuple[float, float]:
    rng = np.random.default_rng([seed, 21])
    picks = rng.integers(0, len(values), (DRAWS, len(values)))
    means = values[picks].mean(axis=1)
    return float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


def paired(a: np.ndarray, b: np.ndarray, seed: int) -> dict:
    """mean(a - b) over paired samples, its 95% bootstrap CI and two-sided p-value."""
    diffs = a - b
    rng = np.random.default_rng([seed, 22])
    means = diffs[rng.integers(0, len(diffs), (DRAWS, len(diffs)))].mean(axis=1)
    point = float(diffs.mean())
    centered = means - means.mean() + point  # the replicates around the observed difference
    return {
        "difference": point,
        "ci_low": float(np.percentile(centered, 2.5)),
        "ci_high": float(np.percentile(centered, 97.5)),
        "p_value": bootstrap_p_value(centered),
    }


def report(tokenizer, samples: dict[str, np.ndarray], train: tuple, pairs, seed: int) -> dict:
    """{"models": {name: {measure: {mean, ci_low, ci_high}}}, "comparisons": {a_vs_b:
    {measure: paired}}} over the given models' samples."""
    hashes = train_hashes(*train)
    values = {name: per_sample(tokenizer, rows, hashes) for name, rows in samples.items()}
    models = {}
    for name, measures in values.items():
        models[name] = {}
        for measure, column in measures.items():
            low, high = _interval(column, seed)
            models[name][measure] = {"mean": float(column.mean()), "ci_low": low, "ci_high": high}
    comparisons = {
        f"{a}_vs_{b}": {m: paired(values[a][m], values[b][m], seed) for m in MEASURES}
        for a, b in pairs
        if a in values and b in values
    }
    return {"measures": list(MEASURES), "models": models, "comparisons": comparisons}
