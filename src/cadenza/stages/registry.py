"""The pipeline's stages, in dvc.yaml's order: one list that the CLI's stage commands, the
pipeline's summary and the retrain flow are made from (tests/test_stage_registry.py checks
it against dvc.yaml and base/dvc.yaml).

Each stage names its run function by import path, imported only when the stage runs, so
`cadenza --help` stays instant, and the Settings sections it is handed (`inputs`, in the
function's argument order; "paths" is the project's Paths, "params" the whole params as
JSON for the lineage record). Its summary turns metrics/<stage>.json into rows of text.
"""

from __future__ import annotations

import importlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from cadenza.paths import Paths
from cadenza.stages import summaries
from cadenza.stages.summaries import Row


@dataclass(frozen=True)
class Flag:
    """A command-line switch that turns one keyword argument of the run function off."""

    option: str
    keyword: str
    help: str


@dataclass(frozen=True)
class Stage:
    name: str  # the stage in dvc.yaml; `cadenza <name with - for _>` runs it
    run: str  # "module:function" of its entry point
    inputs: tuple[str, ...]  # the run function's arguments: Settings sections, paths, params
    help: str
    summary: Callable[[dict], list[Row]]
    outputs: Callable[[Paths], dict[str, Path]] = lambda paths: {}
    base: bool = False  # also a stage of base/dvc.yaml (base_<name>; the command has --scope)
    service: bool = False  # talks to the MLflow registry: the flow retries it
    flags: tuple[Flag, ...] = ()

    @property
    def command(self) -> str:
        return self.name.replace("_", "-")

    @property
    def section(self) -> str:
        """The Settings section the stage is about (its params.yaml section)."""
        return self.inputs[0]

    def function(self) -> Callable:
        module, _, name = self.run.partition(":")
        return getattr(importlib.import_module(module), name)

    def arguments(self, settings, paths: Paths) -> list:
        """The run function's positional arguments, taken from the settings."""
        special = {
            "paths": lambda: paths,
            "params": lambda: settings.model_dump(mode="json", by_alias=True),
        }
        return [special[n]() if n in special else getattr(settings, n) for n in self.inputs]

    def summarize(self, paths: Paths) -> list[Row]:
        """Rows from the metrics the stage last wrote (none before it has run)."""
        path = paths.metrics_path(self.name)
        return self.summary(json.loads(path.read_text())) if path.is_file() else []


def _evaluation_report(paths: Paths) -> dict[str, Path]:
    report = paths.reports_dir / "evaluate"
    return {"report": report / "index.html", "samples": report / "samples"}


STAGES: tuple[Stage, ...] = (
    Stage(
        "import",
        "cadenza.stages.import_corpus:run",
        ("import_", "paths"),
        "Bring the corpus named in params.yaml into data/raw/<corpus>/ (MIDI + metadata.csv).",
        summaries.import_summary,
        lambda paths: {"corpus": paths.raw_dir},
        base=True,
        flags=(Flag("--no-cache", "use_cache", "convert every score again, ignoring the cache"),),
    ),
    Stage(
        "validate",
        "cadenza.stages.validate:run",
        ("validate_", "paths"),
        "Inspect every file, quarantine bad ones, run the Great Expectations suite.",
        summaries.validate_summary,
        lambda paths: {
            "manifest": paths.manifest_path,
            "quarantine": paths.quarantine_path,
            "Data Docs": paths.validation_report_dir / "index.html",
        },
        base=True,
    ),
    Stage(
        "split",
        "cadenza.stages.split:run",
        ("split", "paths"),
        "Assign usable files to train/valid/test, grouped by piece (or composer).",
        summaries.split_summary,
        lambda paths: {"splits": paths.splits_path},
        base=True,
    ),
    Stage(
        "tokenize",
        "cadenza.stages.tokenize:run",
        ("tokenize", "paths"),
        "Build the miditok tokenizer and encode every split into flat token arrays.",
        summaries.tokenize_summary,
        lambda paths: {"tokens": paths.tokens_dir},
        base=True,
    ),
    Stage(
        "pretrain",
        "cadenza.stages.pretrain:run",
        ("pretrain", "paths"),
        "Train the Transformer-XL generator by NLL (resumes from models/generator-mle/last)."
        "\n\nUnder `torchrun --nproc_per_node N` the same command trains with DDP.",
        summaries.pretrain_summary,
        lambda paths: {"generator": paths.generator_mle_dir},
        base=True,
    ),
    Stage(
        "pretrain_discriminator",
        "cadenza.stages.pretrain_discriminator:run",
        ("pretrain_discriminator", "paths"),
        "Pretrain the discriminator encoder SpanBERT-style (span masking + span boundary).",
        summaries.discriminator_summary,
        lambda paths: {"discriminator": paths.discriminator_dir},
    ),
    Stage(
        "adversarial",
        "cadenza.stages.adversarial:run",
        ("adversarial", "paths"),
        "Fine-tune the generator with NLL + lambda * adversarial loss (Gumbel-Softmax), beside "
        "a likelihood-only control arm.",
        summaries.adversarial_summary,
        lambda paths: {
            "GAN arm": paths.generator_gan_dir,
            "control arm": paths.generator_control_dir,
        },
    ),
    Stage(
        "evaluate",
        "cadenza.stages.evaluate:run",
        ("evaluate", "register_", "paths", "params"),
        "Compare the MLE, GAN and control generators: test NLL, discriminative metric, music "
        "statistics, samples gallery; log the chosen candidate as a pyfunc model with its "
        "lineage.",
        summaries.evaluate_summary,
        _evaluation_report,
        service=True,
    ),
    Stage(
        "register",
        "cadenza.stages.register:run",
        ("register_", "evaluate", "paths"),
        "Register the evaluated candidate in the MLflow Model Registry and run the promotion "
        "gate (alias `challenger`; `champion` when the gate holds). Idempotent per evaluation. "
        "With --scope base: register models/generator-base/ (as cadenza-base).",
        summaries.register_summary,
        base=True,
        service=True,
    ),
)


def names(scope: str = "") -> tuple[str, ...]:
    """dvc.yaml's stage names in DAG order; with scope "base", base/dvc.yaml's."""
    if scope:
        return tuple(f"{scope}_{stage.name}" for stage in STAGES if stage.base)
    return tuple(stage.name for stage in STAGES)


def service_names(scope: str = "") -> tuple[str, ...]:
    """The stages that talk to a service (the flow retries them)."""
    prefix = f"{scope}_" if scope else ""
    return tuple(prefix + s.name for s in STAGES if s.service and (s.base or not scope))


def rows(paths: Paths) -> list[Row]:
    """Every stage's summary rows, in pipeline order (stages not run yet say nothing)."""
    return [row for stage in STAGES for row in stage.summarize(paths)]
