"""`register` stage: register the evaluated candidate in the MLflow Model Registry and run
the promotion gate (alias `challenger`; `champion` when the gate holds). Idempotent per
evaluation run; a DVC experiment registers nothing. In the base scope it registers
models/generator-base/ (as cadenza-base). Writes metrics/register.json with the decision.
"""

from __future__ import annotations

from cadenza.config import EvaluateSettings, RegisterSettings
from cadenza.paths import Paths
from cadenza.tracking import registry
from cadenza.tracking.registry import Decision


def run(settings: RegisterSettings, evaluate: EvaluateSettings, paths: Paths) -> Decision:
    """The gate compares candidates on `evaluate`'s instrument (the same test windows)."""
    if paths.scope:
        return registry.register_base(paths, settings)
    return registry.register(paths, settings, evaluate)
