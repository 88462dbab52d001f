"""The evaluation instrument: matched windows of several models scored by every probe.

Input: the real windows and each model's generated windows of one WindowPlan (so all share
offsets and sampling seeds). Output, per model: each probe's accuracy with its CI, the
strongest probe as the headline, per-position-bin accuracy of that probe with CIs and the
slope, and music checks per bin; and paired comparisons between models on the same draws.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np

from cadenza.evaluation import probes
from cadenza.evaluation.window_stats import FEATURE_NAMES
from cadenza.evaluation.windows import WindowPlan

log = logging.getLogger(__name__)
MUSIC_CHECKS = ("scale_consistency", "used_pitch_classes", "seconds_clusters", "voices_mean")


@dataclass
class WindowSet:
    """Features of (num_samples, num_bins) windows, flattened sample-major, per probe."""

    features: dict[str, np.ndarray]  # probe name -> (num_samples * num_bins, d)
    groups: np.ndarray  # (num_samples * num_bins,) document (real) or sample (generated)
    bins: np.ndarray  # (num_samples * num_bins,) position bin of each window
    music: np.ndarray  # (num_samples * num_bins, len(FEATURE_NAMES)) for the music checks


def window_set(plan: WindowPlan, features: dict[str, np.ndarray], groups: np.ndarray, music):
    num = plan.num_samples * plan.num_bins
    bins = np.tile(np.arange(plan.num_bins), plan.num_samples)
    for name, values in features.items():
        if len(values) != num:
            raise ValueError(f"probe {name}: {len(values)} rows for {num} windows")
    return WindowSet(features, np.asarray(groups).reshape(-1), bins, music)


@dataclass
class Instrument:
    plan: WindowPlan
    real: WindowSet
    folds: int = 5
    repeats: int = 2
    num_draws: int = 100
    seed: int = 0
    draws: list = field(default_factory=list)

    def __post_init__(self):
        samples = np.repeat(np.arange(self.plan.num_samples), self.plan.num_bins)
        self.draws = probes.make_draws(self.real.groups, samples, self.num_draws, self.seed)

    def _input(self, fake: WindowSet, probe: str, bin_index: int | None) -> probes.ProbeInput:
        real_rows = fake_rows = slice(None)
        if bin_index is not None:
            real_rows = self.real.bins == bin_index
            fake_rows = fake.bins == bin_index
        return probes.ProbeInput(
            self.real.features[probe][real_rows],
            fake.features[probe][fake_rows],
            self.real.groups[real_rows],
            fake.groups[fake_rows],
        )

    def score(self, fake: WindowSet, probe: str, bin_index: int | None = None):
        data = self._input(fake, probe, bin_index)
        return probes.score(data, self.draws, self.folds, self.repeats, self.seed)

    def evaluate(self, models: dict[str, WindowSet]) -> tuple[dict, dict]:
        """(per-model results, every probe's ProbeScore per model) for metrics and pairs."""
        results, scores = {}, {}
        for name, fake in models.items():
            scores[name] = {p: self.score(fake, p) for p in self.real.features}
            per_probe = {p: s.to_dict() for p, s in scores[name].items()}
            strongest = max(per_probe, key=lambda p: per_probe[p]["accuracy"])
            headline = per_probe[strongest]
            results[name] = {
                "discriminative_accuracy": headline["accuracy"],
                "discriminative_accuracy_ci_low": headline["ci_low"],
                "discriminative_accuracy_ci_high": headline["ci_high"],
                "discriminative_auc": headline["auc"],
                "discriminative_probe": strongest,
                "probes": per_probe,
                "num_windows": int(len(fake.groups)),
                "num_samples": self.plan.num_samples,
                "window_len": self.plan.window_len,
                "sample_len": self.plan.sample_len,
                **self.positions(fake, strongest),
            }
            log.info(
                "evaluate %s: strongest probe %s, accuracy %.3f [%.3f, %.3f]",
                name, strongest, headline["accuracy"], headline["ci_low"], headline["ci_high"],
            )  # fmt: skip
        return results, scores

    def positions(self, fake: WindowSet, probe: str) -> dict:
        """Accuracy of one probe per position bin (real windows of the same bin), the slope
        per 1,000 tokens with its CI, and the music checks per bin."""
        bins, centers, replicate_rows = [], [], []
        for k in range(self.plan.num_bins):
            start, end = self.plan.bin_span(k)
            entry = {"start": start, "end": end, "music": self.music_checks(fake, k)}
            try:
                result = self.score(fake, probe, k)
            except ValueError as exc:  # a bin too few real documents reach: said, not scored
                bins.append({**entry, "accuracy": None, "ci_low": None, "ci_high": None,
                             "note": str(exc)})  # fmt: skip
                continue
            low, high = result.interval()
            bins.append({**entry, "accuracy": result.accuracy, "ci_low": low, "ci_high": high})
            centers.append((start + end) / 2)
            replicate_rows.append(result.replicates)
        accuracies = np.array([b["accuracy"] for b in bins if b["accuracy"] is not None])
        point = probes.slope(np.array(centers), accuracies)
        replicate_slopes = np.array(
            [
                probes.slope(np.array(centers), column)
                for column in np.array(replicate_rows).T
                if not np.isnan(column).any()
            ]
            or [point]
        )
        low, high = probes._percentiles(probes._centered(point, replicate_slopes))
        return {
            "position_bins": bins,
            "position_probe": probe,
            "position_slope": point,
            "position_slope_ci_low": low,
            "position_slope_ci_high": high,
        }

    def music_checks(self, fake: WindowSet, k: int) -> dict:
        """Mean of each music check over the bin's real and generated windows."""
        checks = {}
        for name in MUSIC_CHECKS:
            column = FEATURE_NAMES.index(name)
            checks[name] = {
                "real": float(self.real.music[self.real.bins == k, column].mean()),
                "generated": float(fake.music[fake.bins == k, column].mean()),
            }
        return checks


def compare(scores: dict, a: str, b: str) -> dict:
    """Paired comparison of models a and b with the probe strongest on either of them (the
    headline: a model cannot win by evading a weak probe), and with every probe under
    `by_probe` (a saturated strongest probe hides what a weaker one still separates)."""
    probe = max(scores[a], key=lambda p: max(scores[a][p].accuracy, scores[b][p].accuracy))
    by_probe = {}
    for name in scores[a]:
        pair = probes.paired_difference(scores[a][name], scores[b][name])
        by_probe[name] = {k: pair[k] for k in ("difference", "ci_low", "ci_high", "p_value")}
    return {
        "probe": probe,
        **probes.paired_difference(scores[a][probe], scores[b][probe]),
        "by_probe": by_probe,
    }


def evidence_for(
    comparison: dict, nll_a: float, nll_b: float, alpha: float, max_nll_increase: float
) -> tuple[bool, str]:
    """(does a beat b?, why): a's accuracy lower than b's at p < alpha, and a's test NLL at
    most max_nll_increase above b's."""
    diff, p = comparison["difference"], comparison["p_value"]
    interval = f"{diff:+.3f} [{comparison['ci_low']:+.3f}, {comparison['ci_high']:+.3f}]"
    said = f"paired accuracy difference {interval}, p = {p:.3f} ({comparison['probe']} probe)"
    if not (diff < 0 and p < alpha):
        return False, f"{said}: not lower at alpha {alpha}"
    if nll_a > nll_b + max_nll_increase:
        return False, (
            f"{said}, but test NLL {nll_a:.4f} exceeds {nll_b:.4f} by more than {max_nll_increase}"
        )
    return True, f"{said} < alpha {alpha}; test NLL {nll_a:.4f} vs {nll_b:.4f}"


def across_seeds(differences: list[float] | np.ndarray) -> dict:
    """One recipe trained with several seeds, each arm read against its own control: the mean
    of the per-seed differences with a t-interval over seeds and a one-sample t-test p-value.
    One evaluation's bootstrap resamples one trained model's samples and documents, so its
    interval leaves out the spread between training runs; this one is made of it."""
    from scipy import stats

    values = np.asarray(differences, dtype=float)
    if len(values) < 2:
        raise ValueError(f"{len(values)} seed(s): a spread across seeds needs at least 2")
    mean, sd = float(values.mean()), float(values.std(ddof=1))
    half = float(stats.t.ppf(0.975, len(values) - 1)) * sd / np.sqrt(len(values))
    same = 1.0 if mean == 0 else 0.0  # every seed read the same difference
    p_value = float(stats.ttest_1samp(values, 0.0).pvalue) if sd > 0 else same
    return {
        "mean": mean, "ci_low": mean - half, "ci_high": mean + half, "p_value": p_value,
        "sd": sd, "seeds": len(values),
    }  # fmt: skip
