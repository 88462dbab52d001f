"""Critics that score finished samples without a gradient, for the reinforce and preference
estimators.

`MusicCritic` is the music-statistics probe turned into a discriminator that keeps learning:
a logistic regression on the window statistics (window_stats: pitch classes and key fit,
melodic and harmonic intervals, clusters of seconds, voices, durations, register), refitted at
every call on the newest generated samples against as many real TRAIN windows at the positions
the samples take (never valid or test, which the selection and the evaluation read). A
sample's reward is the log-odds that it is real. Each refit's accuracy on rows it was not
fitted on (2-fold cross-validation) is logged as `music_critic_accuracy`: 0.5 = the critic
cannot tell the generator from real.

`VoiceLeadingReward` is the voice-leading grader (evaluation/voice_leading.py) as a fixed
reward: minus the sum of a sample's rule rates. An arm trained on it must be judged on the
other probes: the grader is then no longer a judge it never saw.
"""

from __future__ import annotations

import numpy as np

from cadenza.evaluation import probes, voice_leading, window_stats


def real_train_windows(
    tokens: np.ndarray, offsets: np.ndarray, start: int, length: int
) -> np.ndarray:
    """(documents, length) tokens start..start+length after [BOS] of every train document
    that long: the positions the generated samples take after their real prime."""
    starts, ends = offsets[:-1], offsets[1:]
    chosen = starts[ends - starts > start + length]
    if not len(chosen):
        raise ValueError(
            f"no train document holds {start + length + 1} tokens: lower "
            "adversarial.sample_len or adversarial.prime_tokens"
        )
    begin = chosen + 1 + start
    return np.stack([np.asarray(tokens[b : b + length], dtype=np.int64) for b in begin])


class MusicCritic:
    """reward(ids) -> (log-odds real per sample, diagnostics); see the module docstring."""

    def __init__(self, tokenizer, real: np.ndarray, buffer: int, seed: int) -> None:
        self.tokenizer, self.buffer = tokenizer, buffer
        self.real = window_stats.features_of_windows(tokenizer, real)
        self.fake = np.zeros((0, self.real.shape[1]))
        self.rng = np.random.default_rng([seed, 12])
        self.refits = 0

    def __call__(self, ids: np.ndarray) -> tuple[np.ndarray, dict[str, float]]:
        features = window_stats.features_of_windows(self.tokenizer, ids)
        self.fake = np.vstack([self.fake, features])[-self.buffer :]
        count = min(len(self.fake), len(self.real))
        real = self.real[self.rng.choice(len(self.real), count, replace=False)]  # fresh each call
        fake = self.fake[-count:]
        x = np.vstack([real, fake])
        y = np.r_[np.ones(count), np.zeros(count)]
        groups = np.arange(2 * count)
        accuracy, _ = probes.cross_validated(x, y, groups, 2, self.refits)
        model = probes.fit_classifier(x, y)
        self.refits += 1
        reward = np.clip(model.decision_function(features), -10.0, 10.0)
        return reward, {"music_critic_accuracy": accuracy, "music_critic_rows": float(2 * count)}


class VoiceLeadingReward:
    """reward(ids) -> (minus the sum of each sample's voice-leading rule rates, diagnostics)."""

    def __init__(self, tokenizer) -> None:
        self.tokenizer = tokenizer

    def __call__(self, ids: np.ndarray) -> tuple[np.ndarray, dict[str, float]]:
        grades = voice_leading.features_of_windows(self.tokenizer, ids)
        broken = grades[:, : len(voice_leading.RULES)].sum(axis=1)
        return -broken, {"voice_leading_broken": float(broken.mean())}
