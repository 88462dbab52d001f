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
reads to compare the candidate with the champion on the same windows).
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cadenza.config import EvaluateSettings, RegisterSettings
from cadenza.io import write_json
from cadenza.paths import Paths
from cadenza.stages.common import file_digest, lineage_tags, log_final, tracked

log = logging.getLogger(__name__)
CANDIDATES = ("mle", "gan", "control")
COMPARISONS = (("gan", "control"), ("gan", "mle"), ("control", "mle"))
"""gan_vs_control is the claim (the adversarial term against the same steps without it)."""
WINDOWS_FILE = "windows.npz"
PROBES = ("learned", "music", "combined")
PLAIN = "mle_plain"  # the MLE generator sampled at temperature 1, no top-k / top-p


def real_pieces(tokenizer, tokens, offsets, count: int, length: int, key_shifts=None) -> list:
    """count real pieces of length tokens, decoded: the opening of each test document first,
    then (for small test splits) later windows of the documents, round by round. key_shifts:
    (documents,) semitones each document was key-normalized by, moved back before decoding."""
    from cadenza.generate import clean_ids, decode_ids
    from cadenza.tokens.keys import place

    pieces = []
    documents = list(zip(offsets[:-1], offsets[1:], strict=True))
    for round_index in range(max(1, int(max(offsets[1:] - offsets[:-1], default=0)) // length)):
        for doc, (start, end) in enumerate(documents):
            begin = start + round_index * length
            if begin >= end - 1:
                continue
            window = np.asarray(tokens[begin : min(end, begin + length)], dtype=np.int64)
            if key_shifts is not None:
                window = place(tokenizer, window[None], -key_shifts[doc : doc + 1])[0]
            ids = clean_ids(tokenizer, window.tolist())
            if ids:
                pieces.append(decode_ids(tokenizer, ids))
            if len(pieces) == count:
                return pieces
    return pieces


@dataclass
class Context:
    """What every model's windows are scored against: the plan, the real windows and their
    features, the frozen encoder and the tokenizer."""

    settings: EvaluateSettings
    plan: object
    real: object  # windows.RealWindows
    real_set: object  # instrument.WindowSet
    encoder: object
    tokenizer: object
    device: object
    splits: list[str]

    def fingerprint(self) -> str:
        """Identity of the generated samples: plan, seeds, sampling and vocabulary."""
        s = self.settings
        keys = (s.num_samples, s.sample_len, s.window_len, s.num_bins, s.seed,
                s.sampling.temperature, s.sampling.top_k, s.sampling.top_p, s.generation_batch,
                len(self.tokenizer.vocab))  # fmt: skip
        if s.sampling.grammar:  # (a plain fingerprint stays what it was before the option)
            keys = (*keys, "grammar")
        if s.sampling.pitch_top_p < 1.0:  # (likewise)
            keys = (*keys, "pitch_top_p", s.sampling.pitch_top_p)
        return hashlib.sha256(json.dumps(keys).encode()).hexdigest()[:16]


def prepare_encoder(settings: EvaluateSettings, paths: Paths, device, plan=None) -> Context:
    """The context without real windows: plan (made from settings unless given), the frozen
    encoder of models/discriminator, the tokenizer of the pipeline's generators."""
    from cadenza.evaluation import windows
    from cadenza.generate import load_generator
    from cadenza.models.discriminator import Discriminator, DiscriminatorConfig
    from cadenza.training import checkpoint

    config = checkpoint.read_config(paths.discriminator_dir)["model"]
    encoder = Discriminator(DiscriminatorConfig(**config))
    checkpoint.load_weights(encoder, paths.discriminator_dir)
    encoder.to(device)
    _, tokenizer = load_generator(paths.generator_mle_dir)
    if plan is None:
        plan = windows.make_plan(
            settings.num_samples, settings.sample_len, settings.window_len, settings.num_bins,
            settings.seed,
        )  # fmt: skip
    return Context(settings, plan, None, None, encoder, tokenizer, device, [])


def prepare(settings: EvaluateSettings, paths: Paths, device, split: str = "test") -> Context:
    """The context with real windows and their features: from the test documents (valid ones
    added when too few are long enough for the last bin), or with split="valid" from the valid
    documents only (choices tuned on them never see test data)."""
    from cadenza.evaluation import windows
    from cadenza.evaluation.instrument import window_set
    from cadenza.tokens.store import load_split

    context = prepare_encoder(settings, paths, device)
    plan, tokenizer = context.plan, context.tokenizer
    bos, eos = tokenizer["BOS_None"], tokenizer["EOS_None"]
    docs, context.splits = windows.documents(*load_split(paths.tokens_dir, split), bos), [split]
    longest_needed = int(plan.offsets[:, -1].max()) + plan.window_len
    long_enough = sum(len(d) - 1 >= longest_needed for d in docs)
    if split == "test" and long_enough < settings.min_documents:
        log.warning(
            "evaluate: %d test documents hold %d tokens (evaluate.min_documents %d): adding "
            "the valid split's documents to the real windows",
            long_enough, longest_needed, settings.min_documents,
        )  # fmt: skip
        docs += windows.documents(*load_split(paths.tokens_dir, "valid"), bos)
        context.splits.append("valid")
    context.real = windows.real_windows(docs, plan, eos, settings.seed)
    context.real.tokens = real_in_own_keys(paths, context.splits, tokenizer, context.real)
    features, music = features_of(context, context.real.tokens)
    context.real_set = window_set(plan, features, context.real.documents, music)
    return context


def real_in_own_keys(paths: Paths, splits: list[str], tokenizer, real) -> np.ndarray:
    """The real windows' tokens, each moved back into its document's own key when the tokens
    were key-normalized (`tokenize.key_normalize`); else unchanged."""
    from cadenza.tokens.keys import place
    from cadenza.tokens.store import load_key_shifts

    shifts = [load_key_shifts(paths.tokens_dir, split) for split in splits]
    if any(s is None for s in shifts):
        return real.tokens
    return place(tokenizer, real.tokens, -np.concatenate(shifts)[real.documents])


def features_of(context: Context, tokens: np.ndarray) -> tuple[dict, np.ndarray]:
    """Per-probe features and the music-statistics matrix of (S, K, W) windows."""
    from cadenza.evaluation import discriminative, window_stats

    flat = tokens.reshape(-1, tokens.shape[-1])
    learned = discriminative.encoder_features(context.encoder, flat, context.device)
    music = window_stats.features_of_windows(context.tokenizer, flat)
    features = {"learned": learned, "music": music, "combined": np.hstack([learned, music])}
    return features, music


def test_nll(net, paths: Paths, device) -> float:
    from cadenza.tokens.store import load_split
    from cadenza.training.pretrain import evaluate_nll

    tokens, _ = load_split(paths.tokens_dir, "test")
    return evaluate_nll(net, tokens, net.config.seg_len, device)


def sample_model(context: Context, net, seed: int, sampling=None, tokenizer=None) -> np.ndarray:
    """(num_samples, sample_len) samples of one model with the context's plan and seed and
    the `sampling` settings (default: the pipeline's), in its `tokenizer`'s tokens (default
    the context's); a key-normalized model's are placed in keys drawn from its train split's."""
    from cadenza.evaluation import windows
    from cadenza.tokens.keys import place_samples

    s = context.settings
    sampling = sampling or s.sampling
    tokenizer = tokenizer or context.tokenizer
    samples = windows.generate_samples(
        net, tokenizer, context.plan, sampling.temperature, sampling.top_k, sampling.top_p,
        seed, context.device, s.generation_batch, sampling.grammar,
        sampling.pitch_top_p,
    )  # fmt: skip
    return place_samples(tokenizer, samples, seed)


def model_windows(
    context: Context, net, seed: int, samples: np.ndarray | None = None, sampling=None,
    tokenizer=None,
):  # fmt: skip
    """(samples, WindowSet) of one model: generated with the context's plan and seed and the
    `sampling` settings (default: the pipeline's), or the given samples, generated earlier
    with the same fingerprint. Generated samples of a key-normalized model (its `tokenizer`,
    default the context's) are placed in keys drawn from its train split's."""
    from cadenza.evaluation import windows
    from cadenza.evaluation.instrument import window_set

    if samples is None:
        samples = sample_model(context, net, seed, sampling, tokenizer)
    features, music = features_of(context, windows.cut(samples, context.plan))
    groups = np.repeat(np.arange(context.plan.num_samples), context.plan.num_bins)
    return samples, window_set(context.plan, features, groups, music)


def instrument_for(context: Context):
    from cadenza.evaluation.instrument import Instrument

    s = context.settings
    return Instrument(context.plan, context.real_set, s.folds, s.cv_repeats, s.bootstrap, s.seed)


def run(
    settings: EvaluateSettings,
    register: RegisterSettings,
    paths: Paths,
    all_params: dict,
    track: bool = True,
) -> dict:
    import torch

    from cadenza.audio import AudioSpec
    from cadenza.evaluation import gallery, music_stats, report
    from cadenza.evaluation.instrument import compare
    from cadenza.generate import clean_ids, decode_ids, load_generator
    from cadenza.tokens.store import load_key_shifts, load_split
    from cadenza.training.pretrain import resolve_device

    started = time.perf_counter()
    device = resolve_device(settings.device)
    folders = {
        "mle": paths.generator_mle_dir,
        "gan": paths.generator_gan_dir,
        "control": paths.generator_control_dir,
    }
    for name, folder in folders.items():
        if not (folder / "model.safetensors").is_file():
            raise FileNotFoundError(f"{folder}: no {name} generator; run the pipeline first")
    test_tokens, test_offsets = load_split(paths.tokens_dir, "test")
    context = prepare(settings, paths, device)
    tokenizer = context.tokenizer
    real_scores = real_pieces(
        tokenizer, test_tokens, test_offsets, settings.num_pieces, settings.piece_len,
        load_key_shifts(paths.tokens_dir, "test"),
    )  # fmt: skip
    real_stats = [f for f in map(music_stats.piece_features, real_scores) if f is not None]
    log.info(
        "evaluate: %d real windows from %d documents (%s), %d real pieces",
        context.real.tokens.shape[0] * context.plan.num_bins, context.real.num_documents,
        "+".join(context.splits), len(real_scores),
    )  # fmt: skip

    metrics: dict = {
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
    metrics["real"] = music_stats.set_summary(real_stats) if real_stats else {}
    metrics["baselines"] = _baselines(paths)
    gallery_scores = {"real": real_scores[: settings.gallery_size]}
    sets, samples = {}, {}
    seed = settings.seed + 1  # common random numbers: same seeds for every candidate
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
        from cadenza.config import SamplingSettings

        net, _ = load_generator(folders["mle"])
        net.to(device)
        with torch.no_grad():
            _, sets[PLAIN] = model_windows(context, net, seed, sampling=SamplingSettings())
        seen[PLAIN] = PLAIN
    unique = {name: sets[name] for name in seen.values()}
    results, probe_scores = instrument_for(context).evaluate(unique)
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
    candidate = choose_candidate(metrics, settings.candidate, register)
    metrics["candidate"] = candidate
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
        _report_table(metrics), samples_gallery,
        extra_html=report.html_sections(metrics, CANDIDATES, figures, report_dir),
    )  # fmt: skip
    metrics["seconds"] = time.perf_counter() - started

    from cadenza.tracking.lineage import LINEAGE_FILE, build_record

    record = build_record(paths, all_params)
    (report_dir / LINEAGE_FILE).write_text(json.dumps(record, indent=1) + "\n")
    tags = lineage_tags(paths, **{"cadenza.candidate": candidate})
    tags.update(_stage_run_tags(paths, tags.get("dvc.tokens_md5", "")) if track else {})
    params = {"evaluate": settings.model_dump(), "sampling": settings.sampling.model_dump()}
    with tracked(paths, "evaluate", params, tags, track) as log_metrics:
        if log_metrics:
            import mlflow

            from cadenza.serving import log_generator

            log_final(_flat(metrics), {})
            mlflow.log_artifact(str(report_dir / LINEAGE_FILE))
            mlflow.log_artifacts(str(report_dir), artifact_path="report")
            info = log_generator(folders[candidate], sampling=settings.sampling.model_dump())
            metrics["mlflow_run_id"] = mlflow.active_run().info.run_id
            metrics["model_uri"] = info.model_uri
        write_json(paths.metrics_path("evaluate"), metrics)
    return metrics


def _set_statistics(real_stats: list, scores: list, name: str) -> dict:
    """Set-level music statistics of generated openings against real ones."""
    from cadenza.evaluation import music_stats

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


def save_windows(path: Path, context: Context, samples: dict, sets: dict) -> None:
    """Everything `register` needs to score another model on the same windows."""
    arrays = {
        "offsets": context.plan.offsets,
        "bin_edges": context.plan.bin_edges,
        "real_tokens": context.real.tokens.astype(np.int32),
        "real_documents": context.real.documents,
        "fingerprint": np.array(context.fingerprint()),
    }
    for probe in PROBES:
        arrays[f"real_{probe}"] = context.real_set.features[probe].astype(np.float32)
    for name in samples:
        arrays[f"samples_{name}"] = samples[name].astype(np.int32)
        for probe in PROBES:
            arrays[f"{name}_{probe}"] = sets[name].features[probe].astype(np.float32)
    np.savez_compressed(path, **arrays)


def choose_candidate(metrics: dict, rule: str, register: RegisterSettings) -> str:
    """The generator to register: as asked, or (auto) by the gate's rule of evidence: the
    GAN when the paired comparison finds it harder to tell from real than its likelihood-only
    control (difference < 0 at p < alpha) with test NLL within max_nll_increase of the
    control's; otherwise the control when it beats the MLE generator by the same rule;
    otherwise the MLE generator."""
    from cadenza.evaluation.instrument import evidence_for

    if rule != "auto":
        return rule

    def beats(a: str, b: str) -> bool:
        wins, _ = evidence_for(
            metrics["comparisons"][f"{a}_vs_{b}"], metrics[a]["test_nll"],
            metrics[b]["test_nll"], register.alpha, register.max_nll_increase,
        )  # fmt: skip
        return wins

    if beats("gan", "control"):
        return "gan"
    return "control" if beats("control", "mle") else "mle"


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
    from cadenza.tracking.runs import EXPERIMENT, client

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


def _fmt(value, spec: str) -> str:
    return "n/a" if value is None else format(value, spec)


def _ci(m: dict, key: str) -> str:
    return f"{m[key]:.3f} [{m[key + '_ci_low']:.3f}, {m[key + '_ci_high']:.3f}]"


def _report_table(metrics: dict) -> dict[str, dict[str, str]]:
    table = {}
    for name in CANDIDATES:
        m = metrics[name]
        row = {
            "test NLL": f"{m['test_nll']:.4f}",
            "discriminative acc. [95% CI]": _ci(m, "discriminative_accuracy"),
            "strongest probe": m["discriminative_probe"],
        }
        for probe, values in m["probes"].items():
            row[f"{probe} probe"] = (
                f"{values['accuracy']:.3f} [{values['ci_low']:.3f}, {values['ci_high']:.3f}]"
            )
        row.update({
            "mean overlap": _fmt(m["mean_overlap"], ".3f"),
            "Frechet": _fmt(m["frechet_distance"], ".3f"),
            "scale consistency": _fmt(m["scale_consistency_mean"], ".3f"),
            "polyphony": _fmt(m["polyphony_mean"], ".2f"),
        })  # fmt: skip
        table[name + (" (candidate)" if metrics["candidate"] == name else "")] = row
    real = metrics["real"]
    table["real test pieces"] = {
        "scale consistency": _fmt(real.get("scale_consistency_mean"), ".3f"),
        "polyphony": _fmt(real.get("polyphony_mean"), ".2f"),
    }
    for name, value in metrics["baselines"].items():
        table[f"{name} baseline"] = {"test NLL": f"{value:.4f}"}
    return table


def report_path(paths: Paths) -> Path:
    return paths.root / "reports" / "evaluate" / "index.html"
