"""`cadenza` command line: the stage commands dvc.yaml runs, plus the pipeline and reports.

Heavy libraries (pandas, music21, great_expectations, torch) are imported inside commands so
that `cadenza --help` answers at once.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(
    name="cadenza",
    help=(
        "Train, evaluate and ship symbolic-music generators as a reproducible pipeline.\n\n"
        "Stage commands (import, validate, split) are what dvc.yaml runs; `cadenza pipeline` "
        "runs the whole DAG through DVC. Every knob lives in params.yaml."
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
log = logging.getLogger("cadenza")

ParamsOption = Annotated[
    Path, typer.Option("--params", "-p", help="params file to read (one section per stage).")
]
RootOption = Annotated[
    Path, typer.Option("--root", help="project root: data/, metrics/ and reports/ live here.")
]


def _setup_logging(verbose: bool) -> None:
    from rich.logging import RichHandler

    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(message)s",
        handlers=[RichHandler(show_path=False, rich_tracebacks=False)],
        force=True,
    )


@app.callback()
def _main(
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="debug logging")] = False,
) -> None:
    _setup_logging(verbose)


def _fail(message: str, code: int = 1) -> typer.Exit:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    return typer.Exit(code)


def _load(params: Path, root: Path):
    """Settings and paths, or a clear exit naming the bad key."""
    from cadenza.config import ParamsError, load_settings
    from cadenza.paths import Paths

    try:
        settings = load_settings(params)
    except ParamsError as exc:
        raise _fail(str(exc), code=2) from None
    return settings, Paths(root=root.resolve(), corpus=settings.import_.corpus)


def _run_stage(stage, *args):
    """Call a stage, turning the errors a user can fix into one clear line and exit code 1."""
    from cadenza.data.sources import SourceError
    from cadenza.validation.stage import ValidationFailed

    try:
        return stage(*args)
    except (SourceError, ValidationFailed, FileNotFoundError, ValueError) as exc:
        raise _fail(str(exc)) from None
    except OSError as exc:  # full disk, permissions: say which file, keep what is stored
        where = f"{exc.filename}: " if exc.filename else ""
        raise _fail(f"{where}{exc.strerror or exc}; nothing already stored was removed") from None


@app.command("import")
def import_corpus(
    params: ParamsOption = Path("params.yaml"),
    root: RootOption = Path("."),
    no_cache: Annotated[
        bool, typer.Option("--no-cache", help="convert every score again, ignoring the cache")
    ] = False,
) -> None:
    """Bring the corpus named in params.yaml into data/raw/<corpus>/ (MIDI + metadata.csv)."""
    from cadenza.data import corpus_import

    settings, paths = _load(params, root)
    result = _run_stage(corpus_import.run, settings.import_, paths, not no_cache)
    typer.echo(
        f"imported {result.num_files} files into {paths.raw_dir} "
        f"({result.num_failed} failed to convert) in {result.seconds:.1f} s "
        f"with {result.num_workers} workers"
    )


@app.command()
def validate(params: ParamsOption = Path("params.yaml"), root: RootOption = Path(".")) -> None:
    """Inspect every file, quarantine bad ones, run the Great Expectations suite."""
    from cadenza.validation import stage
    from cadenza.validation.stage import summarize

    settings, paths = _load(params, root)
    result = _run_stage(stage.run, settings.validate_, paths)
    typer.echo(summarize(result))
    typer.echo(f"manifest: {paths.manifest_path}\nData Docs: {result.suite.docs_index}")


@app.command()
def split(params: ParamsOption = Path("params.yaml"), root: RootOption = Path(".")) -> None:
    """Assign usable files to train/valid/test, grouped by piece (or composer)."""
    from cadenza.data import split as split_stage

    settings, paths = _load(params, root)
    result = _run_stage(split_stage.run, settings.split, paths)
    counts = ", ".join(
        f"{name} {n} files / {result.num_groups[name]} groups"
        for name, n in result.num_files.items()
    )
    typer.echo(f"split: {counts} -> {paths.splits_path}")


@app.command()
def pipeline(
    params: ParamsOption = Path("params.yaml"),
    root: RootOption = Path("."),
    push: Annotated[bool, typer.Option(help="dvc push outputs to the default remote")] = True,
) -> None:
    """Run the DVC pipeline (unchanged stages are skipped), push to the remote, summarise."""
    from cadenza import pipeline as pipeline_mod

    settings, paths = _load(params, root)
    try:
        pipeline_mod.run(paths, push=push)
    except pipeline_mod.PipelineError as exc:
        raise _fail(str(exc)) from None
    pipeline_mod.print_summary(paths)


@app.command()
def summary(params: ParamsOption = Path("params.yaml"), root: RootOption = Path(".")) -> None:
    """Print what the last pipeline run produced (from metrics/)."""
    from cadenza import pipeline as pipeline_mod

    _, paths = _load(params, root)
    pipeline_mod.print_summary(paths)


def main() -> None:
    app()


if __name__ == "__main__":
    sys.exit(main())
