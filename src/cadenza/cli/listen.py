"""Blind A/B listening tests whose votes feed the registry: build, serve, results, export."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from cadenza.cli.common import ParamsOption, RootOption, fail, load, run_stage

DatabaseOption = Annotated[
    str | None, typer.Option("--db", help="vote database URL (default: listen.database)")
]
StudyArgument = Annotated[Path, typer.Argument(help="study folder (from `cadenza listen build`)")]


def listen_build(
    source_a: Annotated[
        str,
        typer.Argument(
            help="models:/NAME/N, models:/NAME@alias, a checkpoint folder or a folder of MIDI files"
        ),
    ],
    source_b: Annotated[str, typer.Argument(help="the other source (e.g. the challenger)")],
    out: Annotated[Path, typer.Option("--out", "-o", help="new study folder")],
    matched: Annotated[
        bool,
        typer.Option(
            help="two MIDI folders whose k-th files (name order) are versions of one piece "
            "(e.g. reports/evaluate/samples/tasks_bach and tasks_harmonized): each pair plays "
            "one piece's two versions"
        ),
    ] = False,
    pairs: Annotated[
        int | None,
        typer.Option(min=1, max=1000, help="pairs in the study (default: listen.num_pairs)"),
    ] = None,
    params: ParamsOption = Path("params.yaml"),
    root: RootOption = Path("."),
) -> None:
    """Render listen.num_pairs equal-length clips from each source and pair them blind."""
    from cadenza.listen.study import build_study

    settings, paths = load(params, root)
    listen = settings.listen
    if pairs is not None:
        listen = listen.model_copy(update={"num_pairs": pairs})
    study = run_stage(build_study, out, source_a, source_b, listen, paths.root, matched)
    typer.echo(
        f"study {study.folder}: {len(study.pairs)} pairs of "
        f"{settings.listen.clip_seconds:g} s {settings.listen.audio_format} clips"
    )


def listen_serve(
    study: StudyArgument,
    db: DatabaseOption = None,
    host: Annotated[str, typer.Option(help="address to listen on")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535)] = 8765,
    params: ParamsOption = Path("params.yaml"),
) -> None:
    """Serve the listening page (Ctrl-C stops); votes go to the database."""
    from cadenza.listen.app import serve
    from cadenza.listen.study import load_study

    settings, _ = load(params, Path("."))
    found = run_stage(load_study, study)
    typer.echo(f"listening page: http://{host}:{port}/  ({len(found.pairs)} pairs)")
    typer.echo(
        f"raw votes: http://{host}:{port}/admin/votes.csv?token={found.manifest['admin_token']}"
    )
    run_stage(serve, found, db or settings.listen.database, host, port)


def listen_results(
    study: StudyArgument,
    db: DatabaseOption = None,
    log: Annotated[bool, typer.Option(help="tag the registry versions in MLflow")] = True,
    params: ParamsOption = Path("params.yaml"),
    root: RootOption = Path("."),
) -> None:
    """Each source's preference with a Wilson 95% interval; logged onto registry versions."""
    from cadenza.listen import results as results_mod
    from cadenza.listen.study import load_study

    settings, paths = load(params, root)
    found = run_stage(load_study, study)
    result = run_stage(results_mod.results, found, db or settings.listen.database)
    typer.echo(
        f"study {result.study}: {result.num_votes} votes from {result.num_listeners} listeners"
    )
    for side in result.sides.values():
        typer.echo(
            f"  {side.source}: preferred in {side.wins} of {side.num_votes} votes, "
            f"{side.preference:.1%} (Wilson 95% CI {side.ci_low:.1%}-{side.ci_high:.1%})"
            + (
                f"; sounds composed by a person in {side.human} of {side.num_human_answers} answers"
                if side.num_human_answers
                else ""
            )
        )
    if log:
        try:
            written = results_mod.log_to_registry(found, result, paths.root)
        except ConnectionError as exc:
            raise fail(str(exc)) from None
        for version in written:
            typer.echo(f"logged to {version}")


def listen_export(
    study: StudyArgument,
    out: Annotated[Path, typer.Option("--out", "-o", help="CSV file to write")],
    db: DatabaseOption = None,
    params: ParamsOption = Path("params.yaml"),
) -> None:
    """Write the raw votes (with each clip's source side) as CSV."""
    from cadenza.listen import votes
    from cadenza.listen.study import load_study

    settings, _ = load(params, Path("."))
    found = run_stage(load_study, study)
    engine = run_stage(votes.connect, db or settings.listen.database)
    rows = votes.all_votes(engine, found.name)
    out.write_text(votes.to_csv(rows, found.clips))
    typer.echo(f"wrote {out}: {len(rows)} votes")
