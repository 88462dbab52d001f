"""`evaluate` stage: compare the generators on matched real and generated windows.

For each candidate (MLE and GAN generators): test NLL against the count baselines; the
evaluation instrument (evaluation/instrument.py): num_samples samples from [BOS] with common
random numbers, one window per position bin each, real test windows at the same offsets,
read by several probes (learned encoder features, interpretable music statistics, both), the
strongest probe as the headline `discriminative_accuracy`, CIs from a cluster bootstrap that
refits, accuracy per position bin, and paired comparisons between models; set-level music
statistics of the samples' openings against real test openings; a samples gallery with an
HTML report. Picks the candidate to register (by the same paired evidence the gate uses) and
logs it as a pyfunc model in the stage's MLflow run, with lineage.json (tracking/lineage.py).
Writes metrics/evaluate.json and reports/evaluate/ (including windows.npz, which `register`
reads to compare the candidate with the champion on the same windows). The library it wires to
files and tracking is evaluation/ (context.py: the windows and their probes).
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from pathlib import Path

import torch

from cadenza.audio import AudioSpec
from cadenza.config import EvaluateSettings, RegisterSettings
from cadenza.evaluation import diversity, gallery, music_stats, report, tasks, voice_leading
from cadenza.evaluation.candidates import CANDIDATES, COMPARISONS, choose_candidate
from cadenza.evaluation.context import (
    WINDOWS_FILE,
    instrument_for,
    model_windows,
    prepare,
    real_pieces,
    save_windows,
    test_nll,
)
from cadenza.evaluation.instrument import compare
from cadenza.generate import clean_ids, decode_ids, load_generator
from cadenza.io import file_digest, write_json
from cadenza.paths import Paths
from cadenza.sampling import PLAIN as PLAIN_SAMPLING
from cadenza.stages.common import lineage_tags, log_final, tracked
from cadenza.tokens.store import load_key_shifts, load_split
from cadenza.tracking.lineage import LINEAGE_FILE, build_record
from cadenza.tracking.runs import EXPERIMENT, client
from cadenza.training.pretrain import resolve_device

log = logging.getLogger(__name__)
PLAIN = "mle_plain"  # the MLE generator sampled at temperature 1, no top-k / top-p


def _generator_folders(paths: Paths) -> dict[str, Path]:
    folders = {
        "mle": paths.generator_mle_dir,
        "gan": paths.generator_gan_dir,
        "control": paths.generator_control_dir,
    }
    for name, folder in folders.items():
        if not (folder / "model.safetensors").is_file():
            raise FileNotFoundError(f"{folder}: no {name} generator; run the pipeline first")
    return folders


def _real_pieces(settings: EvaluateSettings, paths: Paths, context) -> tuple[list, list]:
    """The test pieces the set-level music statistics read, and their statistics."""
    test_tokens, test_offsets = load_split(paths.tokens_dir, "test")
    real_scores = real_pieces(
        context.tokenizer, test_tokens, test_offsets, settings.num_pieces, settings.piece_len,
        load_key_shifts(paths.tokens_dir, "test"),
    )  # fmt: skip
    real_stats = [f for f in map(music_stats.piece_features, real_scores) if f is not None]
    log.info(
        "evaluate: %d real windows from %d documents (%s), %d real pieces",
        context.real.tokens.shape[0] * context.plan.num_bins, context.real.num_documents,
        "+".join(context.splits), len(real_scores),
    )  # fmt: skip
    return real_scores, real_stats


def _plan_metrics(settings: EvaluateSettings, context) -> dict:
    return {
        "num_samples": settings.num_samples,
        "num_windows": settings.num_samples * context.plan.num_bins,
        "window_len": settings.window_len,
        "sample_len": settings.sample_len,
        "real_splits": context.splits,
        "real_documents": context.real.num_documents,
        "real_documents_per_bin": context.real.eligible,
        "samples_fingerprint": context.fingerprint(),
        "sampling": settings.sampling.model_dump(),
    }


def _sample_models(settings, paths, context, folders, real_stats, metrics, gallery_scores, device):
    """Every candidate's test NLL, samples, windows and set statistics into metrics (common
    random numbers: the same seeds for every model; identical weights are sampled once).
    Returns (samples, window sets, the models actually sampled)."""
    tokenizer = context.tokenizer
    sets, samples = {}, {}
    seed = settings.seed + 1
    seen: dict[str, str] = {}  # weights digest -> the model evaluated with those weights
    for name in CANDIDATES:
        digest = file_digest(folders[name] / "model.safetensors")
        if digest in seen:  # e.g. an arm whose selected checkpoint is the pretrained start
            twin = seen[digest]
            samples[name], sets[name] = samples[twin], sets[twin]
            metrics[name] = {**metrics[twin], "same_weights_as": twin}
            gallery_scores[name] = gallery_scores[twin]
            log.info("evaluate %s: the same weights as %s, its samples reused", name, twin)
            continue
        seen[digest] = name
        net, _ = load_generator(folders[name])
        net.to(device)
        nll = test_nll(net, paths, device)
        with torch.no_grad():
            samples[name], sets[name] = model_windows(context, net, seed)
        openings = samples[name][: settings.num_pieces, : settings.piece_len]
        scores = [decode_ids(tokenizer, clean_ids(tokenizer, row.tolist())) for row in openings]
        metrics[name] = {"test_nll": nll, **_set_statistics(real_stats, scores, name)}
        gallery_scores[name] = scores[: settings.gallery_size]
        log.info("evaluate %s: test NLL %.4f", name, nll)
    if settings.report_plain and not settings.sampling.is_plain:
        net, _ = load_generator(folders["mle"])
        net.to(device)
        with torch.no_grad():
            _, sets[PLAIN] = model_windows(context, net, seed, sampling=PLAIN_SAMPLING)
        seen[PLAIN] = PLAIN
    return samples, sets, list(seen.values())


def _probe_models(context, sets: dict, sampled: list[str], metrics: dict) -> None:
    """The instrument's probes on every model's windows, and the paired comparisons."""
    results, probe_scores = instrument_for(context).evaluate({n: sets[n] for n in sampled})
    for name in CANDIDATES:  # a twin's scores are its original's (same windows, same draws)
        twin = metrics[name].get("same_weights_as", name)
        results[name], probe_scores[name] = results[twin], probe_scores[twin]
    for name in CANDIDATES:
        metrics[name].update(results[name])
    metrics["comparisons"] = {f"{a}_vs_{b}": compare(probe_scores, a, b) for a, b in COMPARISONS}
    if PLAIN in results:  # the same model, plain sampling: what the sampling setting buys
        metrics["plain_sampling"] = {
            "mle": {k: v for k, v in results[PLAIN].items() if k != "position_bins"},
            "mle_vs_plain": compare(probe_scores, "mle", PLAIN),
        }


def _voice_leading(context, samples: dict, sets: dict, metrics: dict) -> dict:
    """The held-out judge (evaluation/voice_leading.py): every model's rule rates against the
    real windows', and the grader as a probe family of its own, per model, per position bin
    and in the same paired comparisons. No training stage reads it."""
    sampled = [n for n in CANDIDATES if "same_weights_as" not in metrics[n]]
    judge = voice_leading.judge(
        context, {n: samples[n] for n in sampled}, {n: sets[n] for n in sampled}
    )
    for name in CANDIDATES:
        twin = metrics[name].get("same_weights_as", name)
        judge["models"][name] = judge["models"][twin]
        judge["scores"][name] = judge["scores"][twin]
    scores = judge.pop("scores")
    judge["comparisons"] = {f"{a}_vs_{b}": compare(scores, a, b) for a, b in COMPARISONS}
    return judge


def _judges(folder: Path) -> dict:
    """Which judges the GAN arm trained against and was selected by, and which it never saw:
    a claim about the arm is read on the held-out ones."""
    config = json.loads((folder / "config.json").read_text())
    loop = config.get("adversarial", {})
    estimator, reward = loop.get("estimator", "gumbel"), loop.get("reward", "critic")
    if estimator == "gumbel" or reward == "critic":
        trained = ["spanbert_critic"]
    else:
        trained = ["music_critic" if reward == "music" else "voice_leading"]
    selected = config.get("selection", "")
    selected_by = ["learned", "music", "combined"] if "probe" in selected else []
    used = set(trained) | set(selected_by) | ({"music"} if "music_critic" in trained else set())
    everything = ("learned", "music", "combined", "voice_leading")
    return {
        "estimator": estimator, "reward": reward if estimator != "gumbel" else None,
        "trained_against": trained, "selected_by": selected_by,
        "held_out": [j for j in everything if j not in used],
    }  # fmt: skip


def _write_report(settings, paths, context, metrics, samples, sets, gallery_scores) -> Path:
    """reports/evaluate/: windows, figures, the gallery (MIDI, piano rolls, audio), index.html."""
    report_dir = paths.root / "reports" / "evaluate"
    if report_dir.exists():
        shutil.rmtree(report_dir)
    report_dir.mkdir(parents=True)
    save_windows(report_dir / WINDOWS_FILE, context, samples, sets)
    figures = report.figures(metrics, CANDIDATES, report_dir)
    spec = AudioSpec(settings.synthesizer, settings.audio_format)
    samples_gallery = gallery.write_gallery(
        gallery_scores, report_dir / "samples", settings.render_audio, spec
    )
    metrics["audio"] = (
        samples_gallery.audio_note or f"{spec.format} rendered with {spec.synthesizer}"
    )
    gallery.write_report(
        report_dir / "index.html", f"Cadenza evaluation: corpus '{paths.corpus}'",
        report.summary_table(metrics, CANDIDATES), samples_gallery,
        extra_html=report.html_sections(metrics, CANDIDATES, figures, report_dir),
    )  # fmt: skip
    return report_dir


def run(
    settings: EvaluateSettings,
    register: RegisterSettings,
    paths: Paths,
    all_params: dict,
    track: bool = True,
) -> dict:
    started = time.perf_counter()
    device = resolve_device(settings.device)
    folders = _generator_folders(paths)
    context = prepare(settings, paths, device)
    real_scores, real_stats = _real_pieces(settings, paths, context)
    metrics = _plan_metrics(settings, context)
    metrics["real"] = music_stats.set_summary(real_stats) if real_stats else {}
    metrics["baselines"] = _baselines(paths)
    gallery_scores = {"real": real_scores[: settings.gallery_size]}
    samples, sets, sampled = _sample_models(
        settings, paths, context, folders, real_stats, metrics, gallery_scores, device
    )
    _probe_models(context, sets, sampled, metrics)
    metrics["voice_leading"] = _voice_leading(context, samples, sets, metrics)
    metrics["judges"] = _judges(folders["gan"])
    metrics["diversity"] = diversity.report(  # what over-optimization would show
        context.tokenizer, {n: samples[n] for n in CANDIDATES},
        load_split(paths.tokens_dir, "train"), COMPARISONS, settings.seed,
    )  # fmt: skip
    candidate = choose_candidate(metrics, settings.candidate, register)
    metrics["candidate"] = candidate
    if settings.tasks:
        metrics["tasks"], examples = _tasks(settings, paths, context, folders[candidate])
        for name, rows in examples.items():  # the gallery: Bach beside the candidate's
            gallery_scores[f"tasks_{name}"] = [  # harmonization of his melody, and infill
                decode_ids(context.tokenizer, ids) for ids in rows[: settings.gallery_size]
            ]
    report_dir = _write_report(settings, paths, context, metrics, samples, sets, gallery_scores)
    metrics["seconds"] = time.perf_counter() - started
    record = build_record(paths, all_params)
    (report_dir / LINEAGE_FILE).write_text(json.dumps(record, indent=1) + "\n")
    tags = lineage_tags(paths, **{"cadenza.candidate": candidate})
    tags.update(_stage_run_tags(paths, tags.get("dvc.tokens_md5", "")) if track else {})
    params = {"evaluate": settings.model_dump(), "sampling": settings.sampling.model_dump()}
    with tracked(paths, "evaluate", params, tags, track) as log_metrics:
        if log_metrics:
            import mlflow  # lazy, as serving (which imports it): only a tracked run needs them

            from cadenza.serving import log_generator

            log_final(_flat(metrics), {})
            mlflow.log_artifact(str(report_dir / LINEAGE_FILE))
            mlflow.log_artifacts(str(report_dir), artifact_path="report")
            info = log_generator(folders[candidate], sampling=settings.sampling.value)
            metrics["mlflow_run_id"] = mlflow.active_run().info.run_id
            metrics["model_uri"] = info.model_uri
        write_json(paths.metrics_path("evaluate"), metrics)
    return metrics


def _tasks(settings: EvaluateSettings, paths: Paths, context, folder: Path):
    """The candidate harmonizing and infilling the pieces the real windows come from (the test
    split, and valid when the context added it; evaluation/tasks.py): (metrics, examples)."""
    net, tokenizer = load_generator(folder)
    net.to("cpu")  # the controllers' masks live on the CPU
    documents = []
    for split in context.splits:
        tokens, offsets = load_split(paths.tokens_dir, split)
        documents += [
            clean_ids(tokenizer, tokens[a:b].tolist())
            for a, b in zip(offsets[:-1], offsets[1:], strict=True)
        ]
    probe = tasks.Probe(
        tokenizer, context.encoder, context.device, settings.folds, settings.cv_repeats,
        settings.bootstrap, settings.seed,
    )  # fmt: skip
    with torch.no_grad():
        examples, result = tasks.measure(net, tokenizer, documents, probe, settings)
    if "note" in result:  # too few pieces: a result, not an error
        log.warning("evaluate tasks: %s", result["note"])
        return result, examples
    log.info(
        "evaluate tasks: harmonized %.3f, infilled %.3f (strongest probe; given notes "
        "changed %d)", result["harmonize"]["harmonized"]["accuracy"],
        result["infill"]["infilled"]["accuracy"], result["harmonize"]["given_notes_changed"],
    )  # fmt: skip
    return result, examples


def _set_statistics(real_stats: list, scores: list, name: str) -> dict:
    """Set-level music statistics of generated openings against real ones."""
    fake_stats = [f for f in map(music_stats.piece_features, scores) if f is not None]
    result: dict = {"num_pieces_with_notes": len(fake_stats)}
    if len(fake_stats) >= 2 and len(real_stats) >= 2:
        result.update(music_stats.compare_sets(real_stats, fake_stats))
    else:  # a model that writes no notes is a result, not an error
        result.update(music_stats.unavailable())
        result["music_stats_note"] = (
            f"{len(fake_stats)} of {len(scores)} generated pieces and {len(real_stats)} "
            "real pieces have notes: statistics need 2 of each"
        )
        log.warning("evaluate %s: %s", name, result["music_stats_note"])
    return result


def _baselines(paths: Paths) -> dict[str, float]:
    pretrain = paths.metrics_path("pretrain")
    if not pretrain.is_file():
        return {}
    data = json.loads(pretrain.read_text())
    return {
        k.removeprefix("baseline_").removesuffix("_test_nll"): v
        for k, v in data.items()
        if k.startswith("baseline_")
    }


def _stage_run_tags(paths: Paths, tokens_md5: str) -> dict[str, str]:
    """Tags cadenza.run.<stage> = the latest MLflow run of each training stage on these
    tokens (the runs this evaluation's models came from)."""
    mlflow_client = client(paths.root)
    experiment = mlflow_client.get_experiment_by_name(EXPERIMENT)
    if experiment is None:
        return {}
    tags = {}
    for stage in ("pretrain", "pretrain_discriminator", "adversarial"):
        runs = mlflow_client.search_runs(
            [experiment.experiment_id],
            f"tags.`cadenza.stage` = '{stage}' and tags.`dvc.tokens_md5` = '{tokens_md5}'",
            order_by=["attributes.start_time DESC"],
            max_results=1,
        )
        if runs:
            tags[f"cadenza.run.{stage}"] = runs[0].info.run_id
    return tags


def _flat(metrics: dict, prefix: str = "") -> dict[str, float]:
    flat = {}
    for key, value in metrics.items():
        if isinstance(value, dict):
            flat.update(_flat(value, f"{prefix}{key}."))
        elif isinstance(value, list) and all(isinstance(v, dict) for v in value):
            for index, item in enumerate(value):
                flat.update(_flat(item, f"{prefix}{key}.{index}."))
        elif isinstance(value, int | float) and not isinstance(value, bool):
            flat[f"{prefix}{key}"] = value
    return flat


def report_path(paths: Paths) -> Path:
    return paths.root / "reports" / "evaluate" / "index.html"
