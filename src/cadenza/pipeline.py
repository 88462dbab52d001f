"""Run the DVC pipeline from Python (the main job) and summarise its metrics."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from cadenza.paths import Paths

STAGES = (
    "import",
    "validate",
    "split",
    "tokenize",
    "pretrain",
    "pretrain_discriminator",
    "adversarial",
    "evaluate",
    "register",
)  # dvc.yaml's stages in DAG order


class PipelineError(RuntimeError):
    """A DVC command failed; the message says which and how to look closer."""


def dvc_env() -> dict[str, str]:
    """Environment for DVC subprocesses: this interpreter's bin first, so stage commands
    (`cadenza ...`) resolve to this installation even when the venv is not activated."""
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return env


def dvc(root: Path, *args: str) -> None:
    command = [sys.executable, "-m", "dvc", *args]
    completed = subprocess.run(command, cwd=root, env=dvc_env())
    if completed.returncode != 0:
        raise PipelineError(
            f"`dvc {' '.join(args)}` failed (exit {completed.returncode}) in {root}; "
            "the stage's own error is printed above"
        )


def run(paths: Paths, push: bool = True) -> None:
    if not (paths.root / ".dvc").is_dir():
        raise PipelineError(
            f"{paths.root} is not a DVC project (no .dvc/); run from the project root"
        )
    dvc(paths.root, "repro")
    if push:
        dvc(paths.root, "push")


def _metrics(paths: Paths, stage: str) -> dict:
    path = paths.metrics_path(stage)
    return json.loads(path.read_text()) if path.is_file() else {}


def print_summary(paths: Paths) -> None:
    from rich.console import Console
    from rich.table import Table

    imported, validated, split, tokenized, pretrained, discriminator, adversarial = (
        _metrics(paths, s) for s in STAGES[:7]
    )
    table = Table(title=f"Cadenza pipeline: corpus '{paths.corpus}'")
    table.add_column("stage")
    table.add_column("result")
    if imported:
        table.add_row(
            "import",
            f"{imported['num_files']} files ({imported['num_failed']} failed) in "
            f"{imported['seconds']:.1f} s, {imported['files_per_second']:.1f} files/s",
        )
    if validated:
        reasons = ", ".join(f"{k}: {v}" for k, v in validated["quarantine_reasons"].items())
        table.add_row(
            "validate",
            f"{validated['num_ok']} usable, {validated['num_quarantined']} quarantined"
            f"{f' ({reasons})' if reasons else ''}, {validated['num_duplicates']} duplicates; "
            f"suite {'passed' if validated['suite_success'] else 'FAILED'}",
        )
    if split:
        table.add_row(
            "split",
            ", ".join(f"{name}: {n} files" for name, n in split["num_files"].items()),
        )
    if tokenized:
        table.add_row(
            "tokenize",
            f"{tokenized['tokenizer']}, vocabulary {tokenized['vocab_size']}; "
            + ", ".join(f"{k}: {v:,} tokens" for k, v in tokenized["num_tokens"].items()),
        )
    if pretrained:
        baselines = ", ".join(
            f"{k.removeprefix('baseline_').removesuffix('_test_nll')} {v:.3f}"
            for k, v in pretrained.items()
            if k.startswith("baseline_")
        )
        table.add_row(
            "pretrain",
            f"test NLL {pretrained['test_nll']:.3f} nats/token (baselines: {baselines}); "
            f"{pretrained['num_parameters']:,} parameters, {pretrained['train_seconds']:.0f} s",
        )
    if discriminator:
        table.add_row(
            "discriminator",
            f"SpanBERT MLM accuracy {discriminator['valid_mlm_accuracy']:.3f} "
            f"(loss {discriminator['valid_mlm_loss']:.3f}), {discriminator['seconds']:.0f} s",
        )
    if adversarial:
        table.add_row(
            "adversarial",
            f"valid NLL {adversarial['initial_valid_nll']:.3f} -> "
            f"best {adversarial['best_valid_nll']:.3f}; "
            f"held-out discriminator accuracy {adversarial['discriminator_accuracy']:.2f}; "
            f"{adversarial['rollbacks']} rollbacks, {adversarial['seconds']:.0f} s",
        )
    evaluated, registered = _metrics(paths, "evaluate"), _metrics(paths, "register")
    for name in [n for n in ("mle", "gan", "control") if n in evaluated] if evaluated else ():
        m = evaluated[name]
        table.add_row(
            f"evaluate {name}",
            f"test NLL {m['test_nll']:.3f}; real-vs-generated accuracy "
            f"{m['discriminative_accuracy']:.2f} [{m['discriminative_accuracy_ci_low']:.2f}, "
            f"{m['discriminative_accuracy_ci_high']:.2f}] (0.5 = indistinguishable), "
            f"music overlap {m['mean_overlap']:.2f}"
            + (" <- candidate" if evaluated["candidate"] == name else ""),
        )
    if registered:
        table.add_row(
            "register",
            f"{registered['model_name']} version {registered['version']}: "
            f"{'champion' if registered['promoted'] else 'not promoted'} "
            f"({registered['reason']}); champion is version {registered['champion']}",
        )
    console = Console()
    console.print(table)
    console.print(f"corpus:     {paths.raw_dir}")
    console.print(f"manifest:   {paths.manifest_path}")
    console.print(f"quarantine: {paths.quarantine_path}")
    console.print(f"splits:     {paths.splits_path}")
    console.print(f"Data Docs:  {paths.validation_report_dir / 'index.html'}")
    if pretrained:
        console.print(
            f"generator:  {paths.generator_mle_dir}  (try: cadenza generate -o sample.mid)"
        )
        console.print("MLflow UI:  mlflow ui --backend-store-uri sqlite:///mlflow.db")
    if evaluated:
        console.print(f"report:     {paths.root / 'reports' / 'evaluate' / 'index.html'}")
        console.print(f"samples:    {paths.root / 'reports' / 'evaluate' / 'samples'}")
    if registered and registered.get("champion"):
        name = registered["model_name"]
        console.print(
            f"champion:   models:/{name}@champion = version {registered['champion']}  "
            f"(serve: mlflow models serve -m models:/{name}@champion --env-manager local)"
        )
