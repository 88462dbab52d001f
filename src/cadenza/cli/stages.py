"""The stage commands dvc.yaml runs, made from the stage registry, and the commands that run
or summarise the whole pipeline."""

from __future__ import annotations

import inspect
import os
from pathlib import Path
from typing import Annotated

import typer

from cadenza.cli.common import ParamsOption, RootOption, ScopeOption, fail, load, run_stage
from cadenza.cli.registry import print_champion
from cadenza.stages.registry import STAGES, Stage

_KEYWORD = inspect.Parameter.KEYWORD_ONLY


def stage_command(stage: Stage):
    """`cadenza <stage> [--params] [--root] [--scope] [flags]`: load the settings, run the
    stage, print its summary and outputs. The stage's module is imported only here."""

    def command(params: Path, root: Path, scope: str = "", **flags: bool) -> None:
        settings, paths = load(params, root, scope)
        from cadenza.tracking.registry import RegistryError

        switches = {flag.keyword: not flags[flag.keyword] for flag in stage.flags}
        function = stage.function()
        arguments = stage.arguments(settings, paths)
        plain = (RegistryError, ConnectionError)
        if run_stage(function, *arguments, plain=plain, **switches) is None:
            return  # a DDP rank other than 0: rank 0 reports
        for label, text in stage.summarize(paths):
            typer.echo(text if label == stage.name else f"{label}: {text}")
        for label, path in stage.outputs(paths).items():
            typer.echo(f"{label}: {path}")

    options = [
        inspect.Parameter("params", _KEYWORD, default=Path("params.yaml"), annotation=ParamsOption),
        inspect.Parameter("root", _KEYWORD, default=Path("."), annotation=RootOption),
    ]
    if stage.base:
        options.append(inspect.Parameter("scope", _KEYWORD, default="", annotation=ScopeOption))
    for flag in stage.flags:
        option = Annotated[bool, typer.Option(flag.option, help=flag.help)]
        options.append(inspect.Parameter(flag.keyword, _KEYWORD, default=False, annotation=option))
    command.__signature__ = inspect.Signature(options)
    command.__name__ = stage.name
    command.__doc__ = stage.help
    return command


def add_stage_commands(app: typer.Typer) -> None:
    for stage in STAGES:
        app.command(stage.command)(stage_command(stage))


def pipeline(
    params: ParamsOption = Path("params.yaml"),
    root: RootOption = Path("."),
    push: Annotated[bool, typer.Option(help="dvc push outputs to the default remote")] = True,
) -> None:
    """Run the DVC pipeline (unchanged stages are skipped), push to the remote, summarise."""
    from cadenza import pipeline as pipeline_mod

    _, paths = load(params, root)
    try:
        pipeline_mod.run(paths, push=push)
    except pipeline_mod.PipelineError as exc:
        raise fail(str(exc)) from None
    pipeline_mod.print_summary(paths)


def retrain(
    root: RootOption = Path("."),
    corpus: Annotated[
        str | None, typer.Option(help="corpus name to train on (sets import.corpus)")
    ] = None,
    preset: Annotated[
        str | None, typer.Option(help="model preset: tiny | cpu | gpu (sets pretrain.preset)")
    ] = None,
    force: Annotated[bool, typer.Option(help="re-run every stage, changed or not")] = False,
    wait: Annotated[
        float, typer.Option(help="seconds to wait for another retrain of this workspace")
    ] = 0.0,
    push: Annotated[bool, typer.Option(help="dvc push outputs to the default remote")] = True,
) -> None:
    """Run the Prefect `retrain` flow here: validate -> ... -> evaluate -> register/promote,
    skipping unchanged stages; then print the champion, its metrics and where the reports are.
    Without PREFECT_API_URL, Prefect runs against a temporary local API."""
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    from cadenza import flows
    from cadenza import pipeline as pipeline_mod

    resolved = root.resolve()
    try:
        result = flows.retrain(str(resolved), corpus, preset, force, wait, push)
    except (flows.RetrainError, ConnectionError) as exc:
        raise fail(str(exc)) from None
    settings, paths = load(resolved / "params.yaml", resolved)
    pipeline_mod.print_summary(paths)
    print_champion(paths, settings.register_.model_name)
    typer.echo(f"retrain: {result['note']} in {result['seconds']:.0f} s")


def watch(root: RootOption = Path(".")) -> None:
    """Check the corpus folder once: when its files changed since the last check, emit the
    event that starts the retrain deployment (prefect.yaml's trigger). Needs PREFECT_API_URL:
    the last digest and the event live on the Prefect server. The `watch-corpus` deployment
    runs this every five minutes."""
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    from cadenza import flows

    result = flows.watch_corpus(str(root.resolve()))
    if result["folder"] is None:
        typer.echo("no corpus folder to watch: import.source is a music21 corpus")
    elif result["changed"]:
        typer.echo(f"{result['folder']}: changed ({result['num_files']} files); "
                   f"emitted {flows.CORPUS_EVENT}")  # fmt: skip
    else:
        typer.echo(f"{result['folder']}: unchanged; no event")


def summary(params: ParamsOption = Path("params.yaml"), root: RootOption = Path(".")) -> None:
    """Print what the last pipeline run produced (from metrics/)."""
    from cadenza import pipeline as pipeline_mod

    _, paths = load(params, root)
    pipeline_mod.print_summary(paths)


def schedule_serve(
    root: RootOption = Path("."),
    cron: Annotated[str, typer.Option(help="cron schedule (UTC)")] = "0 3 * * *",
    name: Annotated[str, typer.Option(help="deployment name")] = "nightly-retrain",
) -> None:
    """Serve the retrain flow on this box on a cron schedule (flow.serve; Ctrl-C stops).
    A team deploys prefect.yaml to a process work pool instead (see infra/README.md)."""
    from cadenza import flows

    flows.serve(root, cron, name)
