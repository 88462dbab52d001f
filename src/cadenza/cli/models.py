"""Commands on trained generators: compare two, tune sampling on the valid split, sample one."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from cadenza.cli.common import ParamsOption, RootOption, fail, load, run_stage


def _numbers(text: str, kind, option: str) -> list:
    try:
        return [kind(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise fail(f"{option} {text!r}: give comma-separated numbers, e.g. 0.9,1.0", 2) from None


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
        raise fail(f"--split {split!r}: choose test or valid", 2)
    settings, paths = load(params, root)
    folders = {"a": model_a, "b": model_b}
    result = run_stage(tuning.compare_generators, settings.evaluate, paths, folders, split)
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
    ratio = result["test_nll_ratio"]
    typer.echo(
        f"test nats a / b: {ratio['ratio']:.4f} [{ratio['ci_low']:.4f}, {ratio['ci_high']:.4f}], "
        f"p = {ratio['p_value']:.3f} (paired over {ratio['documents']} test documents)"
    )
    if out:
        write_json(out, result)


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

    settings, paths = load(params, root)
    overrides = {k: v for k, v in (("num_samples", samples), ("bootstrap", bootstrap)) if v}
    evaluate_settings = settings.evaluate.model_copy(update=overrides)
    grid = run_stage(
        tuning.grid,
        _numbers(temperatures, float, "--temperatures"),
        _numbers(top_ks, int, "--top-ks"),
        _numbers(top_ps, float, "--top-ps"),
        tuple(bool(g) for g in _numbers(grammars, int, "--grammars")),
        tuple(_numbers(pitch_top_ps, float, "--pitch-top-ps")),
    )
    folder = model if model.is_absolute() else paths.root / model
    result = run_stage(tuning.tune, evaluate_settings, paths, folder, grid)
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
        run_stage(tuning.apply, params, chosen)
        typer.echo(f"{params}: sampling updated")


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
    harmonize: Annotated[
        Path | None,
        typer.Option(
            exists=True,
            dir_okay=False,
            help="MIDI melody: its top line becomes voice 1, the model writes the others",
        ),
    ] = None,
    infill: Annotated[
        Path | None,
        typer.Option(exists=True, dir_okay=False, help="MIDI piece whose --bars are rewritten"),
    ] = None,
    bars: Annotated[
        str | None, typer.Option(help="with --infill: A:B, bars counted from 1, both included")
    ] = None,
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
    """Sample a MIDI file from a trained generator (and, with --audio, render it): from
    nothing, continuing --primer, harmonizing --harmonize's melody, or rewriting --bars A:B
    of --infill's piece with everything else kept note for note.

    Sampling options left out come from the model (a registered model carries the sampling it
    was evaluated with), else from params.yaml's `sampling` section."""
    from cadenza.generate import generate_midi, write_audio

    default = None
    if params.is_file():
        default = load(params, Path("."))[0].sampling.model_dump()
    result = run_stage(
        generate_midi, model, tokens, out, temperature, top_k, top_p, seed, primer, primer_tokens,
        default, grammar, pitch_top_p, harmonize, infill, bars,
    )  # fmt: skip
    typer.echo(f"wrote {result.out_path}: {len(result.token_ids)} tokens, {result.num_notes} notes")
    if audio:
        sound = run_stage(write_audio, result.out_path, audio, synthesizer)
        typer.echo(f"wrote {sound}")
