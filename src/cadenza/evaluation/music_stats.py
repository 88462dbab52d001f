"""Music statistics of a set of pieces against a reference set.

Per-piece features follow MusPy / Yang & Lerch (2020): pitch-class histogram and transition
matrix, pitch range, polyphony, note density, inter-onset interval, scale consistency,
groove consistency, empty-beat rate. Sets are compared two ways:
- overlapping area (OA) and KL divergence between the reference set's intra-set distance
  distribution and the inter-set distance distribution (Yang & Lerch), per feature;
- a Frechet distance between Gaussians fitted to the scalar features (standardised by the
  reference set), in the manner of FID.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import linalg
from scipy.stats import gaussian_kde

SCALAR_FEATURES = (
    "pitch_range",
    "used_pitch_classes",
    "polyphony",
    "note_density",
    "mean_ioi",
    "scale_consistency",
    "groove_consistency",
    "empty_beat_rate",
)
VECTOR_FEATURES = ("pitch_class_histogram", "pitch_class_transitions")
MAJOR = np.array([0, 2, 4, 5, 7, 9, 11])
MINOR = np.array([0, 2, 3, 5, 7, 8, 10])
GROOVE_GRID = 24  # onset positions per bar for groove consistency (per 4 beats)


@dataclass
class PieceFeatures:
    num_notes: int
    values: dict[str, float | np.ndarray]


def _scales() -> np.ndarray:
    """(24, 12) membership masks of the major and natural-minor scales on every root."""
    masks = np.zeros((24, 12), dtype=bool)
    for root in range(12):
        masks[root, (MAJOR + root) % 12] = True
        masks[12 + root, (MINOR + root) % 12] = True
    return masks


SCALES = _scales()


def piece_features(score) -> PieceFeatures | None:
    """Features of a symusic Score (ticks); None when it holds no notes."""
    arrays = [track.notes.numpy() for track in score.tracks if not track.is_drum]
    arrays = [a for a in arrays if len(a["time"])]
    if not arrays:
        return None
    time = np.concatenate([a["time"] for a in arrays]).astype(np.float64)
    duration = np.concatenate([a["duration"] for a in arrays]).astype(np.float64)
    pitch = np.concatenate([a["pitch"] for a in arrays]).astype(np.int64)
    tpq = float(score.ticks_per_quarter)
    order = np.lexsort((pitch, time))
    beats, length, pitch = time[order] / tpq, np.maximum(duration[order] / tpq, 1e-6), pitch[order]

    classes = pitch % 12
    histogram = np.bincount(classes, minlength=12).astype(np.float64)
    histogram /= histogram.sum()
    transitions = np.zeros((12, 12))
    np.add.at(transitions, (classes[:-1], classes[1:]), 1.0)
    transitions /= max(transitions.sum(), 1.0)

    onsets = np.unique(beats)
    ends = beats + length
    span = max(float(ends.max()), 1.0)
    # Notes sounding at each distinct onset, averaged: the polyphony where something starts.
    sounding = (beats[None, :] <= onsets[:, None] + 1e-9) & (ends[None, :] > onsets[:, None])
    polyphony = float(sounding.sum(axis=1).mean())
    ioi = np.diff(onsets)
    in_scale = SCALES[:, classes].mean(axis=1)

    num_beats = int(np.ceil(span))
    covered = np.zeros(num_beats, dtype=bool)
    for start, end in zip(beats, ends, strict=True):
        covered[int(start) : max(int(np.ceil(end)), int(start) + 1)] = True
    bars = np.floor(beats / 4.0).astype(np.int64)
    positions = np.floor((beats % 4.0) / 4.0 * GROOVE_GRID).astype(np.int64)
    patterns = np.zeros((int(bars.max()) + 1, GROOVE_GRID), dtype=bool)
    patterns[bars, positions] = True
    groove = 1.0 - float(np.mean(patterns[1:] != patterns[:-1])) if len(patterns) > 1 else 1.0
    values: dict[str, float | np.ndarray] = {
        "pitch_range": float(pitch.max() - pitch.min()),
        "used_pitch_classes": float(np.count_nonzero(histogram)),
        "polyphony": polyphony,
        "note_density": len(pitch) / span,
        "mean_ioi": float(ioi.mean()) if len(ioi) else 0.0,
        "scale_consistency": float(in_scale.max()),
        "groove_consistency": groove,
        "empty_beat_rate": float(1.0 - covered[:num_beats].mean()),
        "pitch_class_histogram": histogram,
        "pitch_class_transitions": transitions.ravel(),
    }
    return PieceFeatures(len(pitch), values)


def _matrix(features: list[PieceFeatures], name: str) -> np.ndarray:
    return np.array([np.atleast_1d(f.values[name]) for f in features], dtype=np.float64)


def _pairwise(a: np.ndarray, b: np.ndarray | None = None) -> np.ndarray:
    """Euclidean distances: within a (upper triangle) or between a and b (all pairs)."""
    if b is None:
        d = np.linalg.norm(a[:, None] - a[None], axis=-1)
        return d[np.triu_indices(len(a), k=1)]
    return np.linalg.norm(a[:, None] - b[None], axis=-1).ravel()


def overlap_and_kl(intra: np.ndarray, inter: np.ndarray) -> tuple[float, float]:
    """Overlapping area of two distance distributions (Gaussian KDEs) and KL(intra || inter)."""
    lo = min(intra.min(), inter.min())
    hi = max(intra.max(), inter.max())
    if hi - lo < 1e-12:  # both degenerate at one value: identical distributions
        return 1.0, 0.0
    grid = np.linspace(lo - 0.1 * (hi - lo), hi + 0.1 * (hi - lo), 512)

    def density(x: np.ndarray) -> np.ndarray:
        jitter = np.random.default_rng(0).normal(0, 1e-6 * (hi - lo), len(x))
        p = gaussian_kde(x + jitter if np.ptp(x) < 1e-12 else x)(grid)
        return p / np.trapezoid(p, grid)

    p, q = density(intra), density(inter)
    overlap = float(np.trapezoid(np.minimum(p, q), grid))
    kl = float(np.trapezoid(p * np.log((p + 1e-10) / (q + 1e-10)), grid))
    return overlap, kl


def frechet_distance(real: np.ndarray, fake: np.ndarray) -> float:
    """Frechet distance between Gaussians fitted to two (N, D) feature sets."""
    mu1, mu2 = real.mean(axis=0), fake.mean(axis=0)
    eps = 1e-6 * np.eye(real.shape[1])
    s1 = np.cov(real, rowvar=False) + eps
    s2 = np.cov(fake, rowvar=False) + eps
    covmean = linalg.sqrtm(s1 @ s2)
    covmean = np.real(covmean)
    value = float(np.sum((mu1 - mu2) ** 2) + np.trace(s1 + s2 - 2 * covmean))
    return max(value, 0.0)


def compare_sets(real: list[PieceFeatures], fake: list[PieceFeatures]) -> dict:
    """Every set-level statistic of fake against real (both need >= 2 pieces)."""
    if len(real) < 2 or len(fake) < 2:
        raise ValueError(
            f"music statistics need at least 2 pieces with notes per set "
            f"(got {len(real)} real, {len(fake)} generated)"
        )
    result: dict[str, float] = {}
    overlaps = []
    for name in SCALAR_FEATURES + VECTOR_FEATURES:
        r, f = _matrix(real, name), _matrix(fake, name)
        if name in SCALAR_FEATURES:
            result[f"{name}_mean"] = float(f.mean())
            result[f"{name}_real_mean"] = float(r.mean())
        overlap, kl = overlap_and_kl(_pairwise(r), _pairwise(r, f))
        result[f"{name}_overlap"] = overlap
        result[f"{name}_kl"] = kl
        overlaps.append(overlap)
    result["mean_overlap"] = float(np.mean(overlaps))
    scalars_real = np.column_stack([_matrix(real, n)[:, 0] for n in SCALAR_FEATURES])
    scalars_fake = np.column_stack([_matrix(fake, n)[:, 0] for n in SCALAR_FEATURES])
    scale = scalars_real.std(axis=0) + 1e-8
    center = scalars_real.mean(axis=0)
    result["frechet_distance"] = frechet_distance(
        (scalars_real - center) / scale, (scalars_fake - center) / scale
    )
    return result


def unavailable() -> dict:
    """compare_sets' keys for a generated set with fewer than 2 pieces with notes: overlaps
    0 (nothing in common), the rest undefined (None)."""
    result: dict[str, float | None] = {}
    for name in SCALAR_FEATURES + VECTOR_FEATURES:
        if name in SCALAR_FEATURES:
            result[f"{name}_mean"] = None
            result[f"{name}_real_mean"] = None
        result[f"{name}_overlap"] = 0.0
        result[f"{name}_kl"] = None
    result["mean_overlap"] = 0.0
    result["frechet_distance"] = None
    return result


def set_summary(features: list[PieceFeatures]) -> dict[str, float]:
    """Mean of each scalar feature over a set (for the real reference set)."""
    return {f"{n}_mean": float(_matrix(features, n).mean()) for n in SCALAR_FEATURES}
