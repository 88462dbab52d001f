"""The generators an evaluation compares, and the rule that picks the one to register."""

from __future__ import annotations

from cadenza.config import RegisterSettings
from cadenza.evaluation.instrument import evidence_for

CANDIDATES = ("mle", "gan", "control")
COMPARISONS = (("gan", "control"), ("gan", "mle"), ("control", "mle"))
"""gan_vs_control is the claim (the adversarial term against the same steps without it)."""


def choose_candidate(metrics: dict, rule: str, register: RegisterSettings) -> str:
    """The generator to register: as asked, or (auto) by the gate's rule of evidence: the
    GAN when the paired comparison finds it harder to tell from real than its likelihood-only
    control (difference < 0 at p < alpha) with test NLL within max_nll_increase of the
    control's; otherwise the control when it beats the MLE generator by the same rule;
    otherwise the MLE generator."""
    if rule != "auto":
        return rule

    def beats(a: str, b: str) -> bool:
        wins, _ = evidence_for(
            metrics["comparisons"][f"{a}_vs_{b}"], metrics[a]["test_nll"],
            metrics[b]["test_nll"], register.alpha, register.max_nll_increase,
        )  # fmt: skip
        return wins

    if beats("gan", "control"):
        return "gan"
    return "control" if beats("control", "mle") else "mle"
