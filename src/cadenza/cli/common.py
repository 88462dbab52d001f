"""What every command shares: the --params/--root/--scope options, loading settings, and
turning the errors a user can fix into one clear line and an exit code."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

ParamsOption = Annotated[
    Path, typer.Option("--params", "-p", help="params file to read (one section per stage).")
]
RootOption = Annotated[
    Path, typer.Option("--root", help="project root: data/, metrics/ and reports/ live here.")
]
ScopeOption = Annotated[
    str,
    typer.Option(
        "--scope",
        help="'base': run the stage for the base pipeline (base/params.yaml; outputs in "
        "data/interim/base/, data/tokens-base/, models/generator-base/, metrics/base/)",
    ),
]


def fail(message: str, code: int = 1) -> typer.Exit:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    return typer.Exit(code)


def load(params: Path, root: Path, scope: str = ""):
    """Settings and paths, or a clear exit naming the bad key."""
    from cadenza.config import ParamsError, load_settings
    from cadenza.paths import Paths

    if scope not in ("", "base"):
        raise fail(f"--scope {scope!r}: only 'base' (or nothing, the target) exists", code=2)
    try:
        settings = load_settings(params)
    except ParamsError as exc:
        raise fail(str(exc), code=2) from None
    return settings, Paths(root=root.resolve(), corpus=settings.import_.corpus, scope=scope)


def run_stage(stage, *args, plain: tuple[type[Exception], ...] = (), **kwargs):
    """Call a stage, turning the errors a user can fix into one clear line and exit code 1.
    `plain`: further exceptions whose message is the whole answer (a service's errors)."""
    from cadenza.data.sources import SourceError
    from cadenza.stages.validate import ValidationFailed

    try:
        return stage(*args, **kwargs)
    except (SourceError, ValidationFailed, FileNotFoundError, ValueError, *plain) as exc:
        raise fail(str(exc)) from None
    except OSError as exc:  # full disk, permissions: say which file, keep what is stored
        where = f"{exc.filename}: " if exc.filename else ""
        raise fail(f"{where}{exc.strerror or exc}; nothing already stored was removed") from None
