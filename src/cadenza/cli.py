"""`cadenza` command line: the stage commands dvc.yaml runs, plus the pipeline and reports.

Heavy libraries (pandas, music21, great_expectations, torch) are imported inside commands so
that `cadenza --help` answers at once.
"""

from __future__ import annotations

import logging
import os
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
ScopeOption = Annotated[
    str,
    typer.Option(
        "--scope",
        help="'base': run the stage for the base pipeline (base/params.yaml; outputs in "
        "data/interim/base/, data/tokens-base/, models/generator-base/, metrics/base/)",
    ),
]


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


def _fail(message: str, code: int = 1) -> typer.Exit:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    return typer.Exit(code)


def _load(params: Path, root: Path, scope: str = ""):
    """Settings and paths, or a clear exit naming the bad key."""
    from cadenza.config import ParamsError, load_settings
    from cadenza.paths import Paths

    if scope not in ("", "base"):
        raise _fail(f"--scope {scope!r}: only 'base' (or nothing, the target) exists", code=2)
    try:
        settings = load_settings(params)
    except ParamsError as exc:
        raise _fail(str(exc), code=2) from None
    return settings, Paths(root=root.resolve(), corpus=settings.import_.corpus, scope=scope)


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
    scope: ScopeOption = "",
    no_cache: Annotated[
        bool, typer.Option("--no-cache", help="convert every score again, ignoring the cache")
    ] = False,
) -> None:
    """Bring the corpus named in params.yaml into data/raw/<corpus>/ (MIDI + metadata.csv)."""
    from cadenza.data import corpus_import

    settings, paths = _load(params, root, scope)
    result = _run_stage(corpus_import.run, settings.import_, paths, not no_cache)
    typer.echo(
        f"imported {result.num_files} files into {paths.raw_dir} "
        f"({result.num_failed} failed to convert) in {result.seconds:.1f} s "
        f"with {result.num_workers} workers"
    )


@app.command()
def validate(
    params: ParamsOption = Path("params.yaml"),
    root: RootOption = Path("."),
    scope: ScopeOption = "",
) -> None:
    """Inspect every file, quarantine bad ones, run the Great Expectations suite."""
    from cadenza.validation import stage
    from cadenza.validation.stage import summarize

    settings, paths = _load(params, root, scope)
    result = _run_stage(stage.run, settings.validate_, paths)
    typer.echo(summarize(result))
    typer.echo(f"manifest: {paths.manifest_path}\nData Docs: {result.suite.docs_index}")


@app.command()
def split(
    params: ParamsOption = Path("params.yaml"),
    root: RootOption = Path("."),
    scope: ScopeOption = "",
) -> None:
    """Assign usable files to train/valid/test, grouped by piece (or composer)."""
    from cadenza.data import split as split_stage

    settings, paths = _load(params, root, scope)
    result = _run_stage(split_stage.run, settings.split, paths)
    counts = ", ".join(
        f"{name} {n} files / {result.num_groups[name]} groups"
        for name, n in result.num_files.items()
    )
    typer.echo(f"split: {counts} -> {paths.splits_path}")


@app.command()
def tokenize(
    params: ParamsOption = Path("params.yaml"),
    root: RootOption = Path("."),
    scope: ScopeOption = "",
) -> None:
    """Build the miditok tokenizer and encode every split into flat token arrays."""
    from cadenza.tokens import stage as tokenize_stage

    settings, paths = _load(params, root, scope)
    result = _run_stage(tokenize_stage.run, settings.tokenize, paths)
    counts = ", ".join(
        f"{s} {n} tokens / {result.num_documents[s]} docs" for s, n in result.num_tokens.items()
    )
    typer.echo(f"vocabulary {result.vocab_size}; {counts} -> {paths.tokens_dir}")


@app.command()
def pretrain(
    params: ParamsOption = Path("params.yaml"),
    root: RootOption = Path("."),
    scope: ScopeOption = "",
) -> None:
    """Train the Transformer-XL generator by NLL (resumes from models/generator-mle/last).

    Under `torchrun --nproc_per_node N` the same command trains with DDP.
    """
    from cadenza.stages import pretrain as pretrain_stage

    settings, paths = _load(params, root, scope)
    result = _run_stage(pretrain_stage.run, settings.pretrain, paths)
    if result is not None:
        typer.echo(
            f"test NLL {result.test_nll:.4f} nats/token (unigram {result.unigram_nll:.4f}, "
            f"{settings.pretrain.ngram_order}-gram {result.ngram_nll:.4f}); "
            f"{result.num_parameters:,} parameters, {result.seconds:.0f} s, "
            f"{result.tokens_per_second:,.0f} tokens/s -> {paths.generator_mle_dir}"
        )


@app.command("pretrain-discriminator")
def pretrain_discriminator(
    params: ParamsOption = Path("params.yaml"), root: RootOption = Path(".")
) -> None:
    """Pretrain the discriminator encoder SpanBERT-style (span masking + span boundary)."""
    from cadenza.stages import pretrain_discriminator as stage

    settings, paths = _load(params, root)
    result = _run_stage(stage.run, settings.pretrain_discriminator, paths)
    typer.echo(
        f"discriminator: valid MLM loss {result.valid_mlm_loss:.4f}, accuracy "
        f"{result.valid_mlm_accuracy:.3f}; {result.num_parameters:,} parameters, "
        f"{result.seconds:.0f} s -> {paths.discriminator_dir}"
    )


@app.command()
def adversarial(params: ParamsOption = Path("params.yaml"), root: RootOption = Path(".")) -> None:
    """Fine-tune the generator with NLL + lambda * adversarial loss (Gumbel-Softmax)."""
    from cadenza.stages import adversarial as stage

    settings, paths = _load(params, root)
    result = _run_stage(stage.run, settings.adversarial, paths)
    typer.echo(
        f"adversarial: valid NLL {result.initial_valid_nll:.4f} -> "
        f"best {result.best_valid_nll:.4f} "
        f"(final {result.final_valid_nll:.4f}, {result.rollbacks} rollbacks); held-out "
        f"discriminator accuracy {result.discriminator_accuracy:.2f}; {result.seconds:.0f} s; "
        f"selected step {result.selected_step} -> {paths.generator_gan_dir}, control step "
        f"{result.control_selected_step} -> {paths.generator_control_dir}"
    )


@app.command()
def evaluate(params: ParamsOption = Path("params.yaml"), root: RootOption = Path(".")) -> None:
    """Compare the MLE and GAN generators: test NLL, discriminative metric, music statistics,
    samples gallery; log the chosen candidate as a pyfunc model with its lineage."""
    from cadenza.stages import evaluate as stage

    settings, paths = _load(params, root)
    all_params = settings.model_dump(mode="json", by_alias=True)
    metrics = _run_stage(stage.run, settings.evaluate, settings.register_, paths, all_params)
    for name in [n for n in stage.CANDIDATES if n in metrics]:
        m = metrics[name]
        typer.echo(
            f"{name}: test NLL {m['test_nll']:.4f}, discriminative accuracy "
            f"{m['discriminative_accuracy']:.3f} [{m['discriminative_accuracy_ci_low']:.3f}, "
            f"{m['discriminative_accuracy_ci_high']:.3f}], AUC {m['discriminative_auc']:.3f}, "
            f"mean overlap {m['mean_overlap']:.3f}, Frechet "
            + ("n/a" if m["frechet_distance"] is None else f"{m['frechet_distance']:.3f}")
        )
    typer.echo(f"candidate: {metrics['candidate']}; report: {stage.report_path(paths)}")


def _numbers(text: str, kind, option: str) -> list:
    try:
        return [kind(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise _fail(f"{option} {text!r}: give comma-separated numbers, e.g. 0.9,1.0", 2) from None


@app.command("compare")
def compare_command(
    model_a: Annotated[Path, typer.Argument(help="generator folder A")],
    model_b: Annotated[Path, typer.Argument(help="generator folder B")],
    params: ParamsOption = Path("params.yaml"),
    root: RootOption = Path("."),
    split: Annotated[str, typer.Option(help="real windows from: test | valid")] = "test",
    out: Annotated[Path | None, typer.Option(help="also write the result as JSON")] = None,
) -> None:
    """Paired comparison of two generators on the same windows: strongest-probe accuracy of
    A minus B with its 95% CI and p-value (negative: A is harder to tell from real), each
    one's probes, music checks and test NLL. Uses the `evaluate` and `sampling` settings."""
    from cadenza.evaluation import tuning
    from cadenza.io import write_json

    if split not in ("test", "valid"):
        raise _fail(f"--split {split!r}: choose test or valid", 2)
    settings, paths = _load(params, root)
    folders = {"a": model_a, "b": model_b}
    result = _run_stage(tuning.compare_generators, settings.evaluate, paths, folders, split)
    for name, folder in folders.items():
        m = result["models"][name]
        typer.echo(
            f"{name} ({folder}): test NLL {m['test_nll']:.4f} per token "
            f"({m['tokenizer']} tokens), {m['test_nll_per_note']:.3f} per note; strongest probe "
            f"{m['discriminative_probe']} {m['discriminative_accuracy']:.3f} "
            f"[{m['discriminative_accuracy_ci_low']:.3f}, "
            f"{m['discriminative_accuracy_ci_high']:.3f}]"
        )
    pair = result["comparison"]
    typer.echo(
        f"a - b: {pair['difference']:+.3f} [{pair['ci_low']:+.3f}, {pair['ci_high']:+.3f}], "
        f"p = {pair['p_value']:.3f} ({pair['probe']} probe, {result['num_windows']} windows "
        f"per side, {split})"
    )
    if out:
        write_json(out, result)


@app.command("tune-sampling")
def tune_sampling(
    params: ParamsOption = Path("params.yaml"),
    root: RootOption = Path("."),
    model: Annotated[Path, typer.Option(help="generator folder")] = Path("models/generator-mle"),
    temperatures: Annotated[str, typer.Option(help="comma-separated")] = "0.8,0.9,1.0",
    top_ks: Annotated[str, typer.Option("--top-ks", help="comma-separated; 0 = off")] = "0",
    top_ps: Annotated[str, typer.Option("--top-ps", help="comma-separated; 1 = off")] = "0.9,1.0",
    grammars: Annotated[
        str, typer.Option("--grammars", help="comma-separated 0/1: token grammar off/on")
    ] = "0,1",
    pitch_top_ps: Annotated[
        str,
        typer.Option("--pitch-top-ps", help="comma-separated; nucleus within the pitch tokens"),
    ] = "1.0",
    samples: Annotated[
        int | None, typer.Option(min=4, help="evaluate.num_samples if unset")
    ] = None,
    bootstrap: Annotated[
        int | None, typer.Option(min=10, help="evaluate.bootstrap if unset")
    ] = None,
    apply: Annotated[bool, typer.Option(help="write the chosen setting to params.yaml")] = False,
) -> None:
    """Choose sampling (temperature, top-k, top-p) on the VALID split by the evaluation's
    strongest probe: every setting against plain temperature-1 sampling, paired, with CIs.
    Writes reports/sampling/sweep.{json,md}; --apply sets params.yaml's `sampling`."""
    from cadenza.evaluation import tuning
    from cadenza.io import write_json

    settings, paths = _load(params, root)
    overrides = {k: v for k, v in (("num_samples", samples), ("bootstrap", bootstrap)) if v}
    evaluate_settings = settings.evaluate.model_copy(update=overrides)
    grid = _run_stage(
        tuning.grid,
        _numbers(temperatures, float, "--temperatures"),
        _numbers(top_ks, int, "--top-ks"),
        _numbers(top_ps, float, "--top-ps"),
        tuple(bool(g) for g in _numbers(grammars, int, "--grammars")),
        tuple(_numbers(pitch_top_ps, float, "--pitch-top-ps")),
    )
    folder = model if model.is_absolute() else paths.root / model
    result = _run_stage(tuning.tune, evaluate_settings, paths, folder, grid)
    out = paths.root / "reports" / "sampling"
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "sweep.json", result)
    table = tuning.markdown(result)
    (out / "sweep.md").write_text(table)
    typer.echo(table)
    chosen = result["chosen"]
    typer.echo(
        f"chosen: temperature {chosen['temperature']:g}, top_k {chosen['top_k']}, top_p "
        f"{chosen['top_p']:g}, grammar {chosen['grammar']}, pitch_top_p "
        f"{chosen['pitch_top_p']:g} (strongest-probe accuracy "
        f"{chosen['accuracy']:.3f} on valid)"
    )
    if apply:
        _run_stage(tuning.apply, params, chosen)
        typer.echo(f"{params}: sampling updated")


@app.command()
def register(
    params: ParamsOption = Path("params.yaml"),
    root: RootOption = Path("."),
    scope: ScopeOption = "",
) -> None:
    """Register the evaluated candidate in the MLflow Model Registry and run the promotion
    gate (alias `challenger`; `champion` when the gate holds). Idempotent per evaluation.
    With --scope base: register models/generator-base/ (as cadenza-base)."""
    from cadenza.tracking import registry as reg

    settings, paths = _load(params, root, scope)
    try:
        if scope:
            decision = reg.register_base(paths, settings.register_)
        else:
            decision = reg.register(paths, settings.register_, settings.evaluate)
    except (reg.RegistryError, ConnectionError) as exc:
        raise _fail(str(exc)) from None
    name = settings.register_.model_name
    if not decision.version:  # a DVC experiment: nothing registered
        typer.echo(decision.reason)
        return
    if not decision.new_version:
        typer.echo(f"nothing changed: {name} version {decision.version} ({decision.reason})")
        return
    verdict = "promoted to champion" if decision.promoted else "not promoted"
    typer.echo(f"registered {name} version {decision.version}: {verdict} ({decision.reason})")


registry_app = typer.Typer(help="Inspect and move the model registry's aliases.")
app.add_typer(registry_app, name="registry")


@registry_app.command("status")
def registry_status(
    params: ParamsOption = Path("params.yaml"), root: RootOption = Path(".")
) -> None:
    """Every version of the generator with its aliases, metrics and gate decision."""
    from rich import box
    from rich.console import Console
    from rich.table import Table

    from cadenza.tracking import registry as reg

    settings, paths = _load(params, root)
    try:
        rows = reg.status(paths, settings.register_)
    except ConnectionError as exc:
        raise _fail(str(exc)) from None
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


@registry_app.command("promote")
def registry_promote(
    version: Annotated[str, typer.Argument(help="version number to promote")],
    force: Annotated[
        bool,
        typer.Option(help="skip the metric comparison (never the validation/evaluation check)"),
    ] = False,
    params: ParamsOption = Path("params.yaml"),
    root: RootOption = Path("."),
) -> None:
    """Run the promotion gate on a version against the current champion."""
    from cadenza.tracking import registry as reg

    settings, paths = _load(params, root)
    try:
        decision = reg.promote(paths, settings.register_, version, force, settings.evaluate)
    except (reg.RegistryError, ConnectionError) as exc:
        raise _fail(str(exc)) from None
    except Exception as exc:  # noqa: BLE001 - MLflow's "no such version"
        raise _fail(f"{settings.register_.model_name} version {version}: {exc}") from None
    if not decision.promoted:
        raise _fail(f"version {version} not promoted: {decision.reason}")
    typer.echo(f"version {version} is champion: {decision.reason}")


@registry_app.command("rollback")
def registry_rollback(
    params: ParamsOption = Path("params.yaml"), root: RootOption = Path(".")
) -> None:
    """Give the champion alias back to the version the current champion replaced."""
    from cadenza.tracking import registry as reg

    settings, paths = _load(params, root)
    try:
        old, new = reg.rollback(paths, settings.register_)
    except (reg.RegistryError, ConnectionError) as exc:
        raise _fail(str(exc)) from None
    typer.echo(f"champion: version {old} -> version {new}")


@app.command()
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

    settings, paths = _load(params, root)
    if (target is None) == (file is None):
        raise _fail("give either a model (models:/..., a version or a run id) or --file", 2)
    try:
        client = client_for(paths)
    except ConnectionError as exc:
        raise _fail(str(exc)) from None
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
        raise _fail(str(exc)) from None
    except Exception as exc:  # noqa: BLE001 - MLflow: no such version/alias/run
        raise _fail(f"{target or file}: {exc}") from None
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


@app.command()
def generate(
    model: Annotated[
        str, typer.Option("--model", "-m", help="checkpoint folder, or models:/... / runs:/... URI")
    ] = "models/generator-mle",
    tokens: Annotated[int, typer.Option("--tokens", "-n", min=1, help="tokens to generate")] = 512,
    out: Annotated[Path, typer.Option("--out", "-o", help="MIDI file to write")] = Path(
        "sample.mid"
    ),
    temperature: Annotated[
        float | None, typer.Option(min=0.0, help="0 = greedy [default: the model's sampling]")
    ] = None,
    top_k: Annotated[
        int | None, typer.Option(min=0, help="keep the k likeliest tokens (0 = all)")
    ] = None,
    top_p: Annotated[
        float | None, typer.Option(min=0.0, max=1.0, help="nucleus mass to keep (1 = all)")
    ] = None,
    seed: Annotated[int, typer.Option(help="sampling seed")] = 0,
    primer: Annotated[
        Path | None,
        typer.Option(exists=True, dir_okay=False, help="MIDI file whose opening primes the model"),
    ] = None,
    primer_tokens: Annotated[int, typer.Option(min=1, help="tokens of the primer to use")] = 64,
    audio: Annotated[
        str | None, typer.Option(help="also write audio beside the MIDI: mp3 | ogg | wav")
    ] = None,
    synthesizer: Annotated[
        str, typer.Option(help="tinysoundfont (pip) | fluidsynth (when installed)")
    ] = "tinysoundfont",
    grammar: Annotated[
        bool | None,
        typer.Option("--grammar/--no-grammar", help="mask tokens the token grammar forbids"),
    ] = None,
    pitch_top_p: Annotated[
        float | None,
        typer.Option(min=0.0, max=1.0, help="nucleus within the pitch tokens only (1 = off)"),
    ] = None,
    params: ParamsOption = Path("params.yaml"),
) -> None:
    """Sample a MIDI file from a trained generator (and, with --audio, render it).

    Sampling options left out come from the model (a registered model carries the sampling it
    was evaluated with), else from params.yaml's `sampling` section."""
    from cadenza.generate import generate_midi, write_audio

    default = None
    if params.is_file():
        default = _load(params, Path("."))[0].sampling.model_dump()
    result = _run_stage(
        generate_midi, model, tokens, out, temperature, top_k, top_p, seed, primer, primer_tokens,
        default, grammar, pitch_top_p,
    )  # fmt: skip
    typer.echo(f"wrote {result.out_path}: {len(result.token_ids)} tokens, {result.num_notes} notes")
    if audio:
        sound = _run_stage(write_audio, result.out_path, audio, synthesizer)
        typer.echo(f"wrote {sound}")


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
    import os

    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    from cadenza import flows
    from cadenza import pipeline as pipeline_mod

    resolved = root.resolve()
    try:
        result = flows.retrain(str(resolved), corpus, preset, force, wait, push)
    except (flows.RetrainError, ConnectionError) as exc:
        raise _fail(str(exc)) from None
    settings, paths = _load(resolved / "params.yaml", resolved)
    pipeline_mod.print_summary(paths)
    _print_champion(paths, settings.register_.model_name)
    typer.echo(f"retrain: {result['note']} in {result['seconds']:.0f} s")


def _print_champion(paths, name: str) -> None:
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


listen_app = typer.Typer(help="Blind A/B listening tests whose votes feed the registry.")
app.add_typer(listen_app, name="listen")
DatabaseOption = Annotated[
    str | None, typer.Option("--db", help="vote database URL (default: listen.database)")
]
StudyArgument = Annotated[Path, typer.Argument(help="study folder (from `cadenza listen build`)")]


@listen_app.command("build")
def listen_build(
    source_a: Annotated[
        str,
        typer.Argument(
            help="models:/NAME/N, models:/NAME@alias, a checkpoint folder or a folder of MIDI files"
        ),
    ],
    source_b: Annotated[str, typer.Argument(help="the other source (e.g. the challenger)")],
    out: Annotated[Path, typer.Option("--out", "-o", help="new study folder")],
    params: ParamsOption = Path("params.yaml"),
    root: RootOption = Path("."),
) -> None:
    """Render listen.num_pairs equal-length clips from each source and pair them blind."""
    from cadenza.listen.study import build_study

    settings, paths = _load(params, root)
    study = _run_stage(build_study, out, source_a, source_b, settings.listen, paths.root)
    typer.echo(
        f"study {study.folder}: {len(study.pairs)} pairs of "
        f"{settings.listen.clip_seconds:g} s {settings.listen.audio_format} clips"
    )


@listen_app.command("serve")
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

    settings, _ = _load(params, Path("."))
    found = _run_stage(load_study, study)
    typer.echo(f"listening page: http://{host}:{port}/  ({len(found.pairs)} pairs)")
    typer.echo(
        f"raw votes: http://{host}:{port}/admin/votes.csv?token={found.manifest['admin_token']}"
    )
    _run_stage(serve, found, db or settings.listen.database, host, port)


@listen_app.command("results")
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

    settings, paths = _load(params, root)
    found = _run_stage(load_study, study)
    result = _run_stage(results_mod.results, found, db or settings.listen.database)
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
            raise _fail(str(exc)) from None
        for version in written:
            typer.echo(f"logged to {version}")


@listen_app.command("export")
def listen_export(
    study: StudyArgument,
    out: Annotated[Path, typer.Option("--out", "-o", help="CSV file to write")],
    db: DatabaseOption = None,
    params: ParamsOption = Path("params.yaml"),
) -> None:
    """Write the raw votes (with each clip's source side) as CSV."""
    from cadenza.listen import votes
    from cadenza.listen.study import load_study

    settings, _ = _load(params, Path("."))
    found = _run_stage(load_study, study)
    engine = _run_stage(votes.connect, db or settings.listen.database)
    rows = votes.all_votes(engine, found.name)
    out.write_text(votes.to_csv(rows, found.clips))
    typer.echo(f"wrote {out}: {len(rows)} votes")


schedule_app = typer.Typer(help="Scheduled retraining.")
app.add_typer(schedule_app, name="schedule")


@schedule_app.command("serve")
def schedule_serve(
    root: RootOption = Path("."),
    cron: Annotated[str, typer.Option(help="cron schedule (UTC)")] = "0 3 * * *",
    name: Annotated[str, typer.Option(help="deployment name")] = "nightly-retrain",
) -> None:
    """Serve the retrain flow on this box on a cron schedule (flow.serve; Ctrl-C stops).
    A team deploys prefect.yaml to a process work pool instead (see infra/README.md)."""
    from cadenza import flows

    flows.serve(root, cron, name)


@app.command()
def summary(params: ParamsOption = Path("params.yaml"), root: RootOption = Path(".")) -> None:
    """Print what the last pipeline run produced (from metrics/)."""
    from cadenza import pipeline as pipeline_mod

    _, paths = _load(params, root)
    pipeline_mod.print_summary(paths)


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
