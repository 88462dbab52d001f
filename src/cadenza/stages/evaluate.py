"""`evaluate` stage: compare the MLE and GAN generators on the test split.

For each candidate: test NLL (nats/token, against the count baselines), the discriminative
metric (a fresh logistic regression on frozen SpanBERT features tells real test chunks from
generated chunks; 50% = indistinguishable), music statistics against real test pieces
(overlapping areas and a Frechet distance), and a samples gallery with an HTML report.
Picks the candidate to register and logs it as a pyfunc model in the stage's MLflow run,
with lineage.json (tracking/lineage.py). Writes metrics/evaluate.json and reports/evaluate/.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from pathlib import Path

import numpy as np

from cadenza.config import EvaluateSettings, RegisterSettings
from cadenza.io import write_json
from cadenza.paths import Paths
from cadenza.stages.common import lineage_tags, log_final, tracked

log = logging.getLogger(__name__)
CANDIDATES = ("mle", "gan")


def real_chunks(tokens: np.ndarray, count: int, length: int, seed: int) -> np.ndarray:
    """count windows of length tokens from the flat test stream, at random offsets."""
    if len(tokens) < length:
        raise ValueError(
            f"the test split has {len(tokens)} tokens, fewer than evaluate.chunk_len {length}"
        )
    starts = np.random.default_rng(seed).integers(0, len(tokens) - length + 1, count)
    return np.stack([np.asarray(tokens[s : s + length], dtype=np.int64) for s in starts])


def real_pieces(tokenizer, tokens, offsets, count: int, length: int) -> list:
    """count real pieces of length tokens, decoded: the opening of each test document first,
    then (for small test splits) later windows of the documents, round by round."""
    from cadenza.generate import clean_ids

    pieces = []
    documents = list(zip(offsets[:-1], offsets[1:], strict=True))
    for round_index in range(max(1, int(max(offsets[1:] - offsets[:-1], default=0)) // length)):
        for start, end in documents:
            begin = start + round_index * length
            if begin >= end - 1:
                continue
            ids = clean_ids(
                tokenizer, np.asarray(tokens[begin : min(end, begin + length)]).tolist()
            )
            if ids:
                pieces.append(tokenizer.decode(ids))
            if len(pieces) == count:
                return pieces
    return pieces


def generate_batch(net, tokenizer, count: int, length: int, settings, seed: int, device):
    """(count, length) sampled continuations of [BOS], in batches."""
    import torch

    generator = torch.Generator(device=device).manual_seed(seed)
    out = []
    for start in range(0, count, 64):
        batch = min(64, count - start)
        prompt = torch.full((batch, 1), tokenizer["BOS_None"], dtype=torch.long, device=device)
        sequence = net.generate(
            prompt, length, settings.temperature, settings.top_k, 1.0, generator
        )
        out.append(sequence[:, 1:].cpu().numpy())
    return np.concatenate(out)


def run(
    settings: EvaluateSettings,
    register: RegisterSettings,
    paths: Paths,
    all_params: dict,
    track: bool = True,
) -> dict:
    import torch

    from cadenza.audio import AudioSpec
    from cadenza.evaluation import discriminative, gallery, music_stats
    from cadenza.generate import clean_ids, load_generator
    from cadenza.models.discriminator import Discriminator, DiscriminatorConfig
    from cadenza.tokens.stage import load_split
    from cadenza.training import checkpoint
    from cadenza.training.pretrain import evaluate_nll, resolve_device

    started = time.perf_counter()
    device = resolve_device(settings.device)
    folders = {"mle": paths.generator_mle_dir, "gan": paths.generator_gan_dir}
    for name, folder in folders.items():
        if not (folder / "model.safetensors").is_file():
            raise FileNotFoundError(f"{folder}: no {name} generator; run the pipeline first")
    test_tokens, test_offsets = load_split(paths.tokens_dir, "test")
    discriminator_config = DiscriminatorConfig(
        **checkpoint.read_config(paths.discriminator_dir)["model"]
    )
    if settings.chunk_len > discriminator_config.max_len:
        raise ValueError(
            f"evaluate.chunk_len {settings.chunk_len} exceeds the discriminator's max_len "
            f"{discriminator_config.max_len}"
        )
    probe = Discriminator(discriminator_config)
    checkpoint.load_weights(probe, paths.discriminator_dir)
    probe.to(device)

    _, tokenizer = load_generator(paths.generator_mle_dir)
    real = real_chunks(test_tokens, settings.num_chunks, settings.chunk_len, settings.seed)
    real_features = discriminative.encoder_features(probe, real, device)
    real_scores = real_pieces(
        tokenizer, test_tokens, test_offsets, settings.num_pieces, settings.piece_len
    )
    real_stats = [f for f in map(music_stats.piece_features, real_scores) if f is not None]
    num_pieces = len(real_scores)
    log.info("evaluate: %d real chunks, %d real pieces", len(real), num_pieces)

    metrics: dict = {"num_chunks": len(real), "chunk_len": settings.chunk_len}
    metrics["real"] = music_stats.set_summary(real_stats) if real_stats else {}
    baselines = _baselines(paths)
    metrics["baselines"] = baselines
    gallery_scores = {"real": real_scores[: settings.gallery_size]}
    for name in CANDIDATES:
        net, _ = load_generator(folders[name])
        net.to(device)
        seed = settings.seed + 1  # common random numbers: same seeds for every candidate
        result: dict = {
            "test_nll": evaluate_nll(net, test_tokens, net.config.seg_len, device),
        }
        with torch.no_grad():
            chunks = generate_batch(
                net,
                tokenizer,
                settings.num_chunks,
                settings.warmup_tokens + settings.chunk_len,
                settings,
                seed,
                device,
            )[:, settings.warmup_tokens :]
            fake_features = discriminative.encoder_features(probe, chunks, device)
            verdict = discriminative.classify(
                real_features, fake_features, settings.folds, settings.bootstrap, settings.seed
            )
            result.update(verdict.to_dict("discriminative_"))
            pieces = generate_batch(
                net, tokenizer, num_pieces, settings.piece_len, settings, seed + 1, device
            )
        scores = [tokenizer.decode(clean_ids(tokenizer, row.tolist())) for row in pieces]
        fake_stats = [f for f in map(music_stats.piece_features, scores) if f is not None]
        result["num_pieces_with_notes"] = len(fake_stats)
        if len(fake_stats) >= 2 and len(real_stats) >= 2:
            result.update(music_stats.compare_sets(real_stats, fake_stats))
        else:  # a model that writes no notes is a result, not an error
            result.update(music_stats.unavailable())
            result["music_stats_note"] = (
                f"{len(fake_stats)} of {len(scores)} generated pieces and {len(real_stats)} "
                "real pieces have notes: statistics need 2 of each"
            )
            log.warning("evaluate %s: %s", name, result["music_stats_note"])
        metrics[name] = result
        gallery_scores[name] = scores[: settings.gallery_size]
        log.info(
            "evaluate %s: test NLL %.4f, discriminative accuracy %.3f",
            name,
            result["test_nll"],
            result["discriminative_accuracy"],
        )

    candidate = choose_candidate(metrics, settings.candidate, register.max_nll_increase)
    metrics["candidate"] = candidate
    report_dir = paths.root / "reports" / "evaluate"
    if report_dir.exists():
        shutil.rmtree(report_dir)
    spec = AudioSpec(settings.synthesizer, settings.audio_format)
    samples = gallery.write_gallery(
        gallery_scores, report_dir / "samples", settings.render_audio, spec
    )
    metrics["audio"] = samples.audio_note or f"{spec.format} rendered with {spec.synthesizer}"
    gallery.write_report(
        report_dir / "index.html", f"Cadenza evaluation: corpus '{paths.corpus}'",
        _report_table(metrics), samples,
    )  # fmt: skip
    metrics["seconds"] = time.perf_counter() - started

    from cadenza.tracking.lineage import LINEAGE_FILE, build_record

    record = build_record(paths, all_params)
    (report_dir / LINEAGE_FILE).write_text(json.dumps(record, indent=1) + "\n")
    tags = lineage_tags(paths, **{"cadenza.candidate": candidate})
    tags.update(_stage_run_tags(paths, tags.get("dvc.tokens_md5", "")) if track else {})
    params = {"evaluate": settings.model_dump()}
    with tracked(paths, "evaluate", params, tags, track) as log_metrics:
        if log_metrics:
            import mlflow

            from cadenza.serving import log_generator

            log_final(_flat(metrics), {})
            mlflow.log_artifact(str(report_dir / LINEAGE_FILE))
            mlflow.log_artifacts(str(report_dir), artifact_path="report")
            info = log_generator(folders[candidate])
            metrics["mlflow_run_id"] = mlflow.active_run().info.run_id
            metrics["model_uri"] = info.model_uri
        write_json(paths.metrics_path("evaluate"), metrics)
    return metrics


def choose_candidate(metrics: dict, rule: str, max_nll_increase: float) -> str:
    """The generator to register: as asked, or (auto) the one whose discriminative accuracy
    is closest to 50% among those within max_nll_increase of the best test NLL."""
    if rule != "auto":
        return rule
    best_nll = min(metrics[name]["test_nll"] for name in CANDIDATES)
    eligible = [n for n in CANDIDATES if metrics[n]["test_nll"] <= best_nll + max_nll_increase]
    return min(eligible, key=lambda n: abs(metrics[n]["discriminative_accuracy"] - 0.5))


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
        elif isinstance(value, int | float) and not isinstance(value, bool):
            flat[f"{prefix}{key}"] = value
    return flat


def _fmt(value, spec: str) -> str:
    return "n/a" if value is None else format(value, spec)


def _report_table(metrics: dict) -> dict[str, dict[str, str]]:
    table = {}
    for name in CANDIDATES:
        m = metrics[name]
        table[name + (" (candidate)" if metrics["candidate"] == name else "")] = {
            "test NLL": f"{m['test_nll']:.4f}",
            "discriminative acc. [95% CI]": (
                f"{m['discriminative_accuracy']:.3f} "
                f"[{m['discriminative_accuracy_ci_low']:.3f}, "
                f"{m['discriminative_accuracy_ci_high']:.3f}]"
            ),
            "AUC": f"{m['discriminative_auc']:.3f}",
            "mean overlap": _fmt(m["mean_overlap"], ".3f"),
            "Frechet": _fmt(m["frechet_distance"], ".3f"),
            "pitch range": _fmt(m["pitch_range_mean"], ".1f"),
            "polyphony": _fmt(m["polyphony_mean"], ".2f"),
            "scale consistency": _fmt(m["scale_consistency_mean"], ".3f"),
            "empty beats": _fmt(m["empty_beat_rate_mean"], ".3f"),
        }
    real = metrics["real"]
    table["real test pieces"] = {
        "pitch range": _fmt(real.get("pitch_range_mean"), ".1f"),
        "polyphony": _fmt(real.get("polyphony_mean"), ".2f"),
        "scale consistency": _fmt(real.get("scale_consistency_mean"), ".3f"),
        "empty beats": _fmt(real.get("empty_beat_rate_mean"), ".3f"),
    }
    for name, value in metrics["baselines"].items():
        table[f"{name} baseline"] = {"test NLL": f"{value:.4f}"}
    return table


def report_path(paths: Paths) -> Path:
    return paths.root / "reports" / "evaluate" / "index.html"
