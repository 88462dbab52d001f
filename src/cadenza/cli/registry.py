"""The model registry's commands: status, promote, rollback; and lineage, where a model came
from. The printing of their answers lives here too (the answers come from tracking/)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from cadenza.cli.common import ParamsOption, RootOption, fail, load


def registry_status(
    params: ParamsOption = Path("params.yaml"), root: RootOption = Path(".")
) -> None:
    """Every version of the generator with its aliases, metrics and gate decision."""
    from rich import box
    from rich.console import Console
    from rich.table import Table

    from cadenza.tracking import registry as reg

    settings, paths = load(params, root)
    try:
        rows = reg.status(paths, settings.register_)
    except ConnectionError as exc:
        raise fail(str(exc)) from None
    console = Console(width=min(Console().width, 80))  # fits an 80-column terminal
    table = Table(
        title=f"{settings.register_.model_name} ({len(rows)} versions)",
        box=box.SIMPLE_HEAD, padding=(0, 1), pad_edge=False,
    )  # fmt: skip
    for column in ("ver", "aliases", "NLL", "acc.", "vs champion", "corpus", "decision"):
        table.add_column(column, no_wrap=True)
    for row in rows:
        table.add_row(
            row["version"],
            ",".join(row["aliases"]),
            row.get("metrics.test_nll", "")[:6],
            row.get("metrics.discriminative_accuracy", "")[:5],
            _comparison_cell(row),
            row.get("dvc.corpus_md5", "")[:8],
            row.get("decision", ""),
        )
    console.print(table)
    for row in rows:
        console.print(f"version {row['version']}: {row.get('decision.reason', '')}")
        if "hand.action" in row:
            console.print(
                f"version {row['version']}: {row['hand.action']} by {row.get('hand.by', '?')}: "
                f"{row.get('hand.reason', '')}"
            )
        if heard := _listening_cell(row):
            console.print(f"version {row['version']}: listeners preferred it {heard}")


def _comparison_cell(row: dict) -> str:
    """'-0.041 p.02' (challenger - champion accuracy, p-value) when a comparison was made."""
    try:
        diff = float(row["comparison.difference"])
        p_value = float(row["comparison.p_value"])
    except (KeyError, ValueError):
        return ""
    return f"{diff:+.3f} p{p_value:.2f}".replace("p0.", "p.")


def _listening_cell(tags: dict) -> str:
    """'62% [41%-79%] n=20 vs cadenza-generator v1' from a version's listening.* tags."""
    if "listening.preference" not in tags:
        return ""
    share, low, high = (float(tags[f"listening.{k}"]) for k in ("preference", "ci_low", "ci_high"))
    return (f"{share:.0%} [{low:.0%}-{high:.0%}] n={tags.get('listening.votes', '?')} "
            f"vs {tags.get('listening.vs', '?')}")  # fmt: skip


ReasonOption = Annotated[
    str, typer.Option("--reason", help="why (kept on the version with who decided)")
]
ByOption = Annotated[
    str | None, typer.Option("--by", help="who decides (default: git user.name, else $USER)")
]


def who(by: str | None, root: Path) -> str:
    """The person behind a decision by hand: --by, else git's user.name, else $USER."""
    import getpass
    import subprocess

    if by:
        return by
    named = subprocess.run(
        ["git", "config", "user.name"], cwd=root, capture_output=True, text=True, check=False
    ).stdout.strip()
    return named or getpass.getuser()


def _reason(reason: str) -> str:
    if not reason.strip():
        raise fail("--reason must say why (it is kept on the version, with who decided)", 2)
    return reason.strip()


def registry_promote(
    version: Annotated[str, typer.Argument(help="version number to promote")],
    reason: ReasonOption,
    force: Annotated[
        bool,
        typer.Option(help="skip the metric comparison (never the validation/evaluation check)"),
    ] = False,
    by: ByOption = None,
    params: ParamsOption = Path("params.yaml"),
    root: RootOption = Path("."),
) -> None:
    """Run the promotion gate on a version against the current champion; who and why are
    kept on the version (shown by `cadenza registry status`)."""
    from cadenza.tracking import registry as reg

    why = _reason(reason)
    settings, paths = load(params, root)
    try:
        decision = reg.promote(
            paths, settings.register_, version, force, settings.evaluate,
            by=who(by, paths.root), why=why,
        )  # fmt: skip
    except (reg.RegistryError, ConnectionError) as exc:
        raise fail(str(exc)) from None
    except Exception as exc:  # noqa: BLE001 - MLflow's "no such version"
        raise fail(f"{settings.register_.model_name} version {version}: {exc}") from None
    if not decision.promoted:
        raise fail(f"version {version} not promoted: {decision.reason}")
    typer.echo(f"version {version} is champion: {decision.reason}")


def registry_rollback(
    reason: ReasonOption,
    by: ByOption = None,
    params: ParamsOption = Path("params.yaml"),
    root: RootOption = Path("."),
) -> None:
    """Give the champion alias back to the version the current champion replaced; who and
    why are kept on both versions."""
    from cadenza.tracking import registry as reg

    why = _reason(reason)
    settings, paths = load(params, root)
    try:
        old, new = reg.rollback(paths, settings.register_, by=who(by, paths.root), why=why)
    except (reg.RegistryError, ConnectionError) as exc:
        raise fail(str(exc)) from None
    typer.echo(f"champion: version {old} -> version {new}")


def lineage(
    target: Annotated[
        str | None,
        typer.Argument(help="models:/name@alias, models:/name/N, a version number or a run id"),
    ] = None,
    file: Annotated[
        Path | None, typer.Option("--file", help="list the versions trained on this MIDI file")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="machine-readable output")] = False,
    params: ParamsOption = Path("params.yaml"),
    root: RootOption = Path("."),
) -> None:
    """Where a model came from (version -> run -> commit -> params -> data), or which models
    were trained on a file."""
    import json

    from cadenza.tracking import lineage as lin
    from cadenza.tracking.registry import client_for

    settings, paths = load(params, root)
    if (target is None) == (file is None):
        raise fail("give either a model (models:/..., a version or a run id) or --file", 2)
    try:
        client = client_for(paths)
    except ConnectionError as exc:
        raise fail(str(exc)) from None
    name = settings.register_.model_name
    try:
        if file is not None:
            answer = {
                "file": str(file),
                "versions": lin.versions_with_file(client, name, file, None),
            }
        else:
            answer = lin.chain(client, target, name)
    except FileNotFoundError as exc:
        raise fail(str(exc)) from None
    except Exception as exc:  # noqa: BLE001 - MLflow: no such version/alias/run
        raise fail(f"{target or file}: {exc}") from None
    if as_json:
        typer.echo(json.dumps(answer, indent=2))
    elif file is not None:
        _print_file_lineage(answer)
    else:
        _print_chain(answer)


def _print_file_lineage(answer: dict) -> None:
    if not answer["versions"]:
        typer.echo(f"{answer['file']}: no registered version was trained on data containing it")
        return
    for hit in answer["versions"]:
        via = " (through its base model)" if hit.get("via") == "base" else ""
        typer.echo(
            f"version {hit['version']} (run {hit['run_id']}): corpus {hit['corpus']}{via} "
            f"{hit['corpus_md5']}, as {hit['path']} [{hit['status']}, split {hit['split'] or '-'}]"
        )


def _print_chain(answer: dict) -> None:
    version = answer["version"]
    if version:
        aliases = f" @{', @'.join(version['aliases'])}" if version["aliases"] else ""
        typer.echo(f"registry:   {version['name']} version {version['version']}{aliases}")
    run = answer["run"]
    typer.echo(f"run:        {run['id']} ({run['name']})")
    for stage, run_id in run["stage_runs"].items():
        typer.echo(f"  {stage}: {run_id}")
    typer.echo(f"git commit: {answer['git_commit']}")
    typer.echo(f"params:     sha256 {answer['params_hash'][:16]}")
    for key, value in answer["dvc"].items():
        typer.echo(f"dvc.lock:   {key} {value}")
    typer.echo(
        f"corpus:     {answer['corpus']}: {answer['num_files']} files, {answer['num_usable']} "
        f"usable; manifest sha256 {answer['manifest_sha256'][:16]}; validation "
        f"{'passed' if answer['validation_passed'] else 'FAILED'}"
    )
    typer.echo(f"quarantine: {len(answer['quarantined'])} files")
    for entry in answer["quarantined"]:
        typer.echo(f"  {entry['path']}: {entry['reason_code']}")
    base = answer.get("base")
    if base:
        record, version = base.get("lineage") or {}, base.get("version")
        registered = (
            f"{version['name']} version {version['version']}" if version else "unregistered"
        )
        typer.echo(
            f"base model: {base['dir']} (weights sha256 {base['weights_sha256'][:16]}), "
            f"{registered}, run {record.get('mlflow_run_id') or '-'}"
        )
        if record:
            typer.echo(
                f"  corpus:   {record['corpus']}: {record['num_files']} files, "
                f"{record['num_usable']} usable, {len(record['quarantined'])} quarantined; "
                f"dvc {record['dvc']['corpus_md5']}; git {record['git_commit'][:12]}"
            )


def print_champion(paths, name: str) -> None:
    """The champion's own numbers, from its registry tags (it may predate this run)."""
    from cadenza.tracking.registry import champion_version, client_for

    champion = champion_version(client_for(paths), name)
    if champion is None:
        typer.echo(f"no champion yet for {name}: see `cadenza registry status`")
        return
    tags = champion.tags
    typer.echo(
        f"champion {name} version {champion.version}: test NLL "
        f"{float(tags.get('metrics.test_nll', 'nan')):.4f}, discriminative accuracy "
        f"{float(tags.get('metrics.discriminative_accuracy', 'nan')):.3f} (0.5 is best), "
        f"candidate {tags.get('candidate', '?')}, corpus {tags.get('corpus', '?')} "
        f"{tags.get('dvc.corpus_md5', '')[:12]}, run {champion.run_id}"
    )
