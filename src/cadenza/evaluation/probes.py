"""Probes: can a fresh classifier tell real windows from generated ones?

A probe is a feature set (learned encoder features, interpretable music statistics, both)
read by a standardised linear classifier. Its accuracy is measured out of fold with grouped,
stratified k-fold cross-validation, repeated with reshuffled folds: every window is scored by
a classifier that never saw its document (real) or its sample (generated). 50% means the probe
cannot tell the sets apart.

Uncertainty comes from a cluster bootstrap that refits: each replicate resamples real
documents and generated samples with replacement (a cluster keeps all its windows and stays in
one fold) and re-runs the cross-validation. Every model is scored on the same replicates, the
same real windows and the same generated-sample indices (common random numbers), so two
models' replicate accuracies pair up: the difference's percentile interval and its two-sided
bootstrap p-value come from the same draws.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass

import numpy as np
from joblib import Parallel, delayed
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import StratifiedGroupKFold
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits


@dataclass
class ProbeInput:
    """Rows of one probe for one model: real windows first, then generated."""

    real: np.ndarray  # (n, d) features of real windows
    fake: np.ndarray  # (n, d) features of generated windows
    real_groups: np.ndarray  # (n,) document of each real window
    fake_groups: np.ndarray  # (n,) sample of each generated window


@dataclass
class Draw:
    """One bootstrap replicate: chosen real documents and generated samples (with repeats)."""

    real_docs: np.ndarray
    fake_samples: np.ndarray


def make_draws(
    real_groups: np.ndarray, fake_groups: np.ndarray, count: int, seed: int
) -> list[Draw]:
    rng = np.random.default_rng([seed, 3])
    docs, samples = np.unique(real_groups), np.unique(fake_groups)
    return [
        Draw(rng.choice(docs, len(docs)), rng.choice(samples, len(samples))) for _ in range(count)
    ]


REGULARIZATION = 0.1  # inverse L2 strength: converges fast even when the sets separate


def _classifier(regularization: float):
    return make_pipeline(StandardScaler(), LogisticRegression(C=regularization, max_iter=500))


def fit_classifier(x: np.ndarray, y: np.ndarray, regularization: float = REGULARIZATION):
    """The probes' classifier (standardized logistic regression) fitted on all rows."""
    return _classifier(regularization).fit(x, y)


def cross_validated(
    x: np.ndarray,
    y: np.ndarray,
    groups: np.ndarray,
    folds: int,
    seed: int,
    regularization: float = REGULARIZATION,
) -> tuple[float, float]:
    """(accuracy, AUC) of out-of-fold predictions; groups never straddle folds. NaNs when a
    bootstrap replicate drew fewer than 2 distinct documents (or samples)."""
    folds = min(folds, len(np.unique(groups[y == 1])), len(np.unique(groups[y == 0])))
    if folds < 2:
        return float("nan"), float("nan")
    proba = np.zeros(len(y))
    for train, test in fold_splits(y, groups, folds, seed):
        model = _classifier(regularization).fit(x[train], y[train])
        proba[test] = model.predict_proba(x[test])[:, 1]
    accuracy = float(((proba >= 0.5) == (y == 1)).mean())
    return accuracy, float(roc_auc_score(y, proba))


_SPLITS: dict[tuple, list] = {}
MAX_CACHED_SPLITS = 2048  # ~600 distinct keys in a default evaluation; ~40 KB each


def fold_splits(y: np.ndarray, groups: np.ndarray, folds: int, seed: int) -> list:
    """StratifiedGroupKFold's (train, test) index pairs, cached by labels, groups, folds and
    seed. The split depends on nothing else, and every model and probe is scored on the same
    bootstrap draws (the same y and groups), so one evaluation asks for each split about
    a dozen times; sklearn's group assignment is a Python loop that took a quarter of the
    probes' time. The cache is per process (each joblib worker keeps its own)."""
    key = (folds, seed, hashlib.sha1(y.tobytes() + b"|" + groups.tobytes()).digest())
    found = _SPLITS.get(key)
    if found is None:
        splitter = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
        found = [
            (train.astype(np.int32), test.astype(np.int32))
            for train, test in splitter.split(np.zeros((len(y), 1)), y, groups)
        ]
        if len(_SPLITS) >= MAX_CACHED_SPLITS:
            _SPLITS.clear()
        _SPLITS[key] = found
    return found


def _rows(data: ProbeInput, draw: Draw | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """x, y, groups for the whole set (draw None) or one bootstrap replicate."""
    if draw is None:
        real_idx, fake_idx = np.arange(len(data.real)), np.arange(len(data.fake))
    else:
        real_idx = _expand(data.real_groups, draw.real_docs)
        fake_idx = _expand(data.fake_groups, draw.fake_samples)
    x = np.concatenate([data.real[real_idx], data.fake[fake_idx]])
    y = np.r_[np.ones(len(real_idx)), np.zeros(len(fake_idx))]
    # Generated groups are shifted past the real ones so the two never share an id.
    offset = int(data.real_groups.max()) + 1
    groups = np.r_[data.real_groups[real_idx], data.fake_groups[fake_idx] + offset]
    return x, y, groups


def _expand(groups: np.ndarray, chosen: np.ndarray) -> np.ndarray:
    """Row indices of the chosen groups, a group's rows repeated as often as it was drawn."""
    order = np.argsort(groups, kind="stable")
    sorted_groups = groups[order]
    lo = np.searchsorted(sorted_groups, chosen, side="left")
    hi = np.searchsorted(sorted_groups, chosen, side="right")
    return np.concatenate([order[a:b] for a, b in zip(lo, hi, strict=True)])


@dataclass
class ProbeScore:
    accuracy: float  # mean over the repeated cross-validations
    auc: float
    replicates: np.ndarray  # (num_draws,) accuracy in each bootstrap replicate
    auc_replicates: np.ndarray

    def interval(self) -> tuple[float, float]:
        return _shifted_interval(self.accuracy, self.replicates)

    def to_dict(self) -> dict:
        low, high = self.interval()
        auc_low, auc_high = _shifted_interval(self.auc, self.auc_replicates)
        return {
            "accuracy": self.accuracy,
            "ci_low": low,
            "ci_high": high,
            "auc": self.auc,
            "auc_ci_low": auc_low,
            "auc_ci_high": auc_high,
        }


def _shifted_interval(point: float, replicates: np.ndarray, clip=(0.0, 1.0)):
    """The bootstrap's 95% spread placed around the point estimate: replicate CVs train on
    fewer distinct documents (a resample repeats some), so their accuracies sit below the
    full data's; the percentiles of (replicate - median) + point keep the spread without
    that shift."""
    low, high = _percentiles(_centered(point, replicates))
    return max(low, clip[0]), min(high, clip[1])


def _centered(point: float, replicates: np.ndarray) -> np.ndarray:
    values = np.asarray(replicates)[~np.isnan(replicates)]
    if not len(values):
        raise ValueError("no bootstrap replicate could be scored: too few documents")
    return values - np.median(values) + point


def _percentiles(values: np.ndarray) -> tuple[float, float]:
    """The 95% percentile interval over replicates (those that could be scored)."""
    values = np.asarray(values)[~np.isnan(values)]
    if not len(values):
        raise ValueError("no bootstrap replicate could be scored: too few documents")
    return float(np.percentile(values, 2.5)), float(np.percentile(values, 97.5))


def score(
    data: ProbeInput, draws: list[Draw], folds: int, repeats: int, seed: int, jobs: int = 0
) -> ProbeScore:
    """Repeated grouped CV on the data as drawn, and one CV per bootstrap replicate (spread
    over `jobs` processes; 0 = one per core)."""
    if len(data.real) != len(data.fake):
        raise ValueError(
            f"need equal numbers of real and generated windows: {len(data.real)} vs "
            f"{len(data.fake)}"
        )
    if min(len(np.unique(data.real_groups)), len(np.unique(data.fake_groups))) < 2:
        raise ValueError(
            "a probe needs windows from at least 2 real documents and 2 generated samples; "
            "raise evaluate.num_samples or add documents to the test split"
        )
    runs = _in_one_thread(
        lambda: [cross_validated(*_rows(data, None), folds, seed + r) for r in range(repeats)]
    )
    replicates = _replicates(data, draws, folds, seed, jobs)
    return ProbeScore(
        accuracy=float(np.mean([a for a, _ in runs])),
        auc=float(np.mean([u for _, u in runs])),
        replicates=np.array([a for a, _ in replicates]),
        auc_replicates=np.array([u for _, u in replicates]),
    )


def _in_one_thread(work):
    """One BLAS thread: these fits are small, and threads fighting over 2 cores cost 10x."""
    with threadpool_limits(limits=1):
        return work()


def _replicate_batch(data: ProbeInput, draws: list[Draw], folds: int, seed: int) -> list:
    return _in_one_thread(lambda: [cross_validated(*_rows(data, d), folds, seed) for d in draws])


# Below this many rows fitted (draws x real windows), replicates stay in this process: a
# tiny test evaluation would spend more on the workers than on the fits. Above it two workers
# take 0.49-0.53 of one process's time, down to 40 windows a side with 100 draws (the
# per-position-bin probes, the voice-leading bins and the control tasks: 4,000-12,800 rows;
# docs/PERFORMANCE.md).
PARALLEL_MIN_ROWS = 2_000


def _replicates(data: ProbeInput, draws: list[Draw], folds: int, seed: int, jobs: int) -> list:
    """Bootstrap replicates in order, in `jobs` worker processes (results do not depend on
    how they are split: each replicate is its own draw and fold seed)."""
    jobs = jobs or os.cpu_count() or 1
    if jobs == 1 or len(draws) * len(data.real) < PARALLEL_MIN_ROWS:
        return _replicate_batch(data, draws, folds, seed)

    batches = [draws[i::jobs] for i in range(jobs)]
    parts = Parallel(n_jobs=jobs)(delayed(_replicate_batch)(data, b, folds, seed) for b in batches)
    out = [None] * len(draws)
    for i, part in enumerate(parts):
        out[i::jobs] = part
    return out


def paired_difference(a: ProbeScore, b: ProbeScore) -> dict:
    """accuracy_a - accuracy_b (negative: a is harder to tell from real), its 95% CI and
    two-sided p-value from the paired replicates (same draws for both)."""
    if len(a.replicates) != len(b.replicates):
        raise ValueError("paired comparison needs scores from the same bootstrap draws")
    diffs = _centered(a.accuracy - b.accuracy, a.replicates - b.replicates)
    auc_diffs = _centered(a.auc - b.auc, a.auc_replicates - b.auc_replicates)
    low, high = _percentiles(diffs)
    auc_low, auc_high = _percentiles(auc_diffs)
    return {
        "accuracy_a": a.accuracy,
        "accuracy_b": b.accuracy,
        "difference": a.accuracy - b.accuracy,
        "ci_low": low,
        "ci_high": high,
        "p_value": bootstrap_p_value(diffs),
        "auc_a": a.auc,
        "auc_b": b.auc,
        "auc_difference": a.auc - b.auc,
        "auc_ci_low": auc_low,
        "auc_ci_high": auc_high,
        "num_draws": len(diffs),
    }


def bootstrap_p_value(diffs: np.ndarray) -> float:
    """Two-sided p-value of 'no difference': twice the smaller share of replicates on either
    side of zero (ties count half to each side), at least 1/(draws + 1)."""
    n = len(diffs)
    below = (np.sum(diffs < 0) + 0.5 * np.sum(diffs == 0)) / n
    above = (np.sum(diffs > 0) + 0.5 * np.sum(diffs == 0)) / n
    return float(min(1.0, max(2 * min(below, above), 1.0 / (n + 1))))


def slope(bin_centers: np.ndarray, accuracies: np.ndarray) -> float:
    """Least-squares change of accuracy per 1,000 tokens of position."""
    if len(bin_centers) < 2:
        return 0.0
    return float(np.polyfit(np.asarray(bin_centers) / 1000.0, accuracies, 1)[0])
