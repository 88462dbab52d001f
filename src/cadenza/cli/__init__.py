"""`cadenza` command line: the stage commands dvc.yaml runs (made from the stage registry),
plus the pipeline, the registry, lineage, generation and listening tests.

Every command imports its heavy libraries (pandas, music21, great_expectations, torch,
mlflow) when it runs, so that `cadenza --help` answers at once.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Annotated

import typer

from cadenza.cli import listen, models, registry, stages

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
stages.add_stage_commands(app)  # import, validate, ..., evaluate, register
app.command("compare")(models.compare_command)
app.command("tune-sampling")(models.tune_sampling)
app.command()(registry.lineage)
app.command()(models.generate)
app.command()(stages.pipeline)
app.command()(stages.retrain)
app.command()(stages.watch)
app.command()(stages.summary)

registry_app = typer.Typer(help="Inspect and move the model registry's aliases.")
registry_app.command("status")(registry.registry_status)
registry_app.command("promote")(registry.registry_promote)
registry_app.command("rollback")(registry.registry_rollback)
app.add_typer(registry_app, name="registry")

listen_app = typer.Typer(help="Blind A/B listening tests whose votes feed the registry.")
listen_app.command("build")(listen.listen_build)
listen_app.command("serve")(listen.listen_serve)
listen_app.command("results")(listen.listen_results)
listen_app.command("export")(listen.listen_export)
app.add_typer(listen_app, name="listen")

schedule_app = typer.Typer(help="Scheduled retraining.")
schedule_app.command("serve")(stages.schedule_serve)
app.add_typer(schedule_app, name="schedule")


def _setup_logging(verbose: bool) -> None:
    from rich.logging import RichHandler

    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(message)s",
        handlers=[RichHandler(show_path=False, rich_tracebacks=False)],
        force=True,
    )
    for noisy in ("httpx", "httpcore"):  # one line per Prefect API call otherwise
        logging.getLogger(noisy).setLevel(logging.WARNING)


@app.callback()
def _main(
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="debug logging")] = False,
) -> None:
    _setup_logging(verbose)


def openmp_wait_policy(load: float, cpus: int) -> str | None:
    """OMP_WAIT_POLICY for torch's OpenMP threads on a box with this 1-minute load: spin
    (libgomp's default, None) while the cores are ours, sleep (PASSIVE) when other work is
    running. benchmarks/thread_policy.py on 2 cores: at load 5-14, spinning threads made
    training 6x and batch-1 generation 20x slower than sleeping ones; on an idle box sleeping
    cost 24% of training and 59% of batch-1 generation speed. Our own previous stage leaves
    a load of about `cpus`, hence the margin."""
    return "PASSIVE" if load > 1.5 * cpus else None


def main() -> None:
    # Before anything loads torch's OpenMP runtime (an explicit OMP_WAIT_POLICY wins).
    if "OMP_WAIT_POLICY" not in os.environ:
        policy = openmp_wait_policy(os.getloadavg()[0], os.cpu_count() or 1)
        if policy:
            os.environ["OMP_WAIT_POLICY"] = policy
    app()


if __name__ == "__main__":
    sys.exit(main())
