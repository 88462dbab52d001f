"""`adversarial` stage: fine-tune the pretrained generator with NLL + lambda * GAN loss, beside
a likelihood-only control, and keep the checkpoint a probe finds hardest to tell from real.

Reads models/generator-mle/ and models/discriminator/. Two arms start from the same
pretrained weights with the same data order, steps and seeds:
- gan: NLL + adv_weight x the adversarial loss -> models/generator-gan/ (the estimator is
  the paper's straight-through Gumbel-Softmax through the SpanBERT critic, or REINFORCE or DPO
  on finished samples scored by that critic, by a music-statistics classifier refitted on the
  newest samples against real train windows, or by the voice-leading grader:
  evaluation/critics.py);
- control: adv_weight = 0 (NLL only) -> models/generator-control/.
Each arm keeps a candidate checkpoint at every evaluation (candidates/). Selection (the same
rule for both arms): among the candidates whose validation NLL stays within `tolerance` of the
start, the one whose samples the strongest probe (the evaluation's learned, music-statistics
and combined probes, grouped cross-validation, no bootstrap) tells apart from real
VALIDATION windows least often; `select: nll` keeps the lowest validation NLL instead. The
selected weights become model.safetensors. metrics/adversarial.json holds both arms and the
selection table; the MLflow run every GAN diagnostic (control metrics prefixed control_).
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file

from cadenza.config import AdversarialSettings, EvaluateSettings
from cadenza.evaluation import critics, windows
from cadenza.evaluation.context import features_of, prepare_encoder, real_in_own_keys
from cadenza.evaluation.probes import cross_validated
from cadenza.generate import load_generator
from cadenza.io import fingerprint, write_json
from cadenza.models.discriminator import DiscriminatorConfig
from cadenza.models.generator import GeneratorConfig
from cadenza.paths import Paths
from cadenza.stages.common import lineage_tags, log_final, tracked
from cadenza.tokens.keys import place_samples
from cadenza.tokens.store import load_originals, load_split, originals_path
from cadenza.tokens.tokenizer import load_tokenizer
from cadenza.training import checkpoint
from cadenza.training.adversarial import train_adversarial
from cadenza.training.pretrain import resolve_device

log = logging.getLogger(__name__)
SELECTION_PROBES = ("learned", "music", "combined")


@dataclass
class AdversarialStageResult:
    initial_valid_nll: float
    best_valid_nll: float
    final_valid_nll: float
    discriminator_accuracy: float | None
    rollbacks: int
    seconds: float
    selected_step: int
    control_selected_step: int


def _prefixed(log_metrics, prefix: str):
    if log_metrics is None:
        return None
    return lambda metrics, step: log_metrics({prefix + k: v for k, v in metrics.items()}, step)


def run(settings: AdversarialSettings, paths: Paths, track: bool = True) -> AdversarialStageResult:
    generator_config = GeneratorConfig(**checkpoint.read_config(paths.generator_mle_dir)["model"])
    discriminator_config = DiscriminatorConfig(
        **checkpoint.read_config(paths.discriminator_dir)["model"]
    )
    if settings.chunk_len > discriminator_config.max_len:
        raise ValueError(
            f"adversarial.chunk_len {settings.chunk_len} exceeds the discriminator's max_len "
            f"{discriminator_config.max_len}"
        )
    tokenizer = load_tokenizer(paths.generator_mle_dir / "tokenizer.json")
    originals = settings.train_documents == "original"
    train_data = (load_originals if originals else load_split)(paths.tokens_dir, "train")
    valid_data = load_split(paths.tokens_dir, "valid")
    config = settings.loop_config()
    control = replace(config, adv_weight=0.0)
    arms = {
        "gan": (config, paths.generator_gan_dir),
        "control": (control, paths.generator_control_dir),
    }
    inputs = (
        paths.generator_mle_dir / "model.safetensors",
        paths.discriminator_dir / "model.safetensors",
        paths.tokens_dir / "train.npy",
        *([originals_path(paths.tokens_dir)] if originals else []),
    )
    params = {"adversarial": asdict(settings)}
    results, metrics = {}, {}
    reward = None
    if config.scores_samples and config.reward == "music":
        real = critics.real_train_windows(*train_data, config.prime_tokens, config.sample_len)
        reward = critics.MusicCritic(tokenizer, real, config.reward_buffer, config.seed)
    elif config.scores_samples and config.reward == "voice_leading":
        reward = critics.VoiceLeadingReward(tokenizer)
    with tracked(paths, "adversarial", params, lineage_tags(paths), track) as log_metrics:
        for arm, (arm_config, out_dir) in arms.items():
            out_dir.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(paths.generator_mle_dir / "tokenizer.json", out_dir / "tokenizer.json")
            results[arm] = train_adversarial(
                generator_config,
                discriminator_config,
                arm_config,
                train_data,
                valid_data,
                paths.generator_mle_dir,
                paths.discriminator_dir,
                tokenizer["BOS_None"],
                out_dir,
                log_metrics if arm == "gan" else _prefixed(log_metrics, f"{arm}_"),
                extra_config={"stage": "adversarial", "arm": arm},
                fingerprint=fingerprint(asdict(arm_config), files=inputs),
                reward=reward if arm == "gan" else None,
            )
        selections = select(settings, paths, {a: (arms[a][1], results[a]) for a in arms})
        for arm, (_, out_dir) in arms.items():
            install(out_dir, selections[arm])
            metrics[arm] = {**asdict(results[arm]), "selection": selections[arm]}
        gan = metrics["gan"]
        summary = {**gan, "selected_step": selections["gan"]["step"], "control": metrics["control"]}
        write_json(paths.metrics_path("adversarial"), summary)
        if log_metrics:
            flat = {k: v for k, v in gan.items() if not isinstance(v, dict | list)}
            flat["selected_step"] = selections["gan"]["step"]
            flat["control_selected_step"] = selections["control"]["step"]
            files = {}
            for arm, (_, out_dir) in arms.items():
                names = ("model.safetensors", "config.json", "tokenizer.json")
                files[f"generator-{arm}"] = [out_dir / n for n in names]
            log_final(flat, files)
    result = results["gan"]
    return AdversarialStageResult(
        result.initial_valid_nll,
        result.best_valid_nll,
        result.final_valid_nll,
        result.discriminator_accuracy,
        result.rollbacks,
        result.seconds,
        selections["gan"]["step"],
        selections["control"]["step"],
    )


def install(out_dir: Path, selection: dict) -> None:
    """The selected candidate becomes model.safetensors; config.json says which."""

    shutil.copyfile(out_dir / selection["file"], out_dir / "model.safetensors")
    config_path = out_dir / "config.json"
    config = json.loads(config_path.read_text())
    config.update(
        best_step=selection["step"], valid_nll=selection["valid_nll"], selection=selection["rule"]
    )
    config_path.write_text(json.dumps(config, indent=2) + "\n")


def select(settings: AdversarialSettings, paths: Paths, arms: dict) -> dict[str, dict]:
    """Per arm: the chosen candidate {step, valid_nll, file, rule, table}. Candidates more
    than `tolerance` above the start's validation NLL are not eligible."""
    scores = _probe_scores(settings, paths, arms) if settings.select == "probe" else {}
    out = {}
    for arm, (_, result) in arms.items():
        limit = result.initial_valid_nll * (1 + settings.tolerance)
        table = []
        for candidate in result.candidates:
            row = {**candidate, "eligible": candidate["valid_nll"] <= limit}
            row.update(scores.get((arm, candidate["step"]), {}))
            table.append(row)
        eligible = [row for row in table if row["eligible"]] or table[:1]
        if settings.select == "probe":
            chosen = min(eligible, key=lambda r: (r["probe_accuracy"], r["valid_nll"]))
            rule = (
                "lowest strongest-probe accuracy against real validation windows among "
                f"candidates within {settings.tolerance:.0%} of the start's validation NLL"
            )
        else:
            chosen = min(eligible, key=lambda r: r["valid_nll"])
            rule = "lowest validation NLL"
        log.info("adversarial %s: selected step %d (%s)", arm, chosen["step"], rule)
        out[arm] = {
            "step": chosen["step"], "valid_nll": chosen["valid_nll"], "file": chosen["file"],
            "probe_accuracy": chosen.get("probe_accuracy"), "rule": rule, "table": table,
        }  # fmt: skip
    return out


def _probe_scores(settings: AdversarialSettings, paths: Paths, arms: dict) -> dict:
    """{(arm, step): {probe_accuracy, probe, probes}} of every eligible candidate: samples
    with common random numbers, windows matched with real validation documents, each probe
    scored by grouped cross-validation (no bootstrap: a ranking, not a claim). Identical
    weights (the shared start) are scored once."""

    device = resolve_device(settings.device)
    evaluate = EvaluateSettings(
        num_samples=settings.select_samples, sample_len=settings.select_sample_len,
        window_len=settings.select_window_len, num_bins=settings.select_bins,
        folds=settings.select_folds, seed=settings.seed, device=settings.device,
    )  # fmt: skip
    context = prepare_encoder(evaluate, paths, device)
    plan, tokenizer = context.plan, context.tokenizer
    docs = windows.documents(*load_split(paths.tokens_dir, "valid"), tokenizer["BOS_None"])
    real = windows.real_windows(docs, plan, tokenizer["EOS_None"], settings.seed)
    real.tokens = real_in_own_keys(paths, ["valid"], tokenizer, real)  # as the evaluation
    real_features, _ = features_of(context, real.tokens)
    real_groups = real.documents.reshape(-1)
    fake_groups = np.repeat(np.arange(plan.num_samples), plan.num_bins)
    labels = np.r_[np.ones(len(real_groups)), np.zeros(len(fake_groups))]
    groups = np.r_[real_groups, fake_groups + real_groups.max() + 1]
    net, _ = load_generator(paths.generator_mle_dir)
    net.to(device)
    scores, by_weights = {}, {}
    for arm, (out_dir, result) in arms.items():
        limit = result.initial_valid_nll * (1 + settings.tolerance)
        for candidate in result.candidates:
            if candidate["valid_nll"] > limit and candidate["step"] != 0:
                continue
            path = out_dir / candidate["file"]
            digest = hashlib.sha256(path.read_bytes()).hexdigest()
            if digest not in by_weights:
                net.load_state_dict(load_file(str(path)))
                with torch.no_grad():
                    samples = windows.generate_samples(  # the pipeline's sampling, as evaluate's
                        net, tokenizer, plan, settings.sampling.value, settings.seed + 1, device,
                        evaluate.generation_batch,
                    )  # fmt: skip
                samples = place_samples(tokenizer, samples, settings.seed + 1)
                fake_features, _ = features_of(context, windows.cut(samples, plan))
                probes = {}
                for probe in SELECTION_PROBES:
                    x = np.vstack([real_features[probe], fake_features[probe]])
                    accuracy, _ = cross_validated(
                        x, labels, groups, settings.select_folds, settings.seed
                    )
                    probes[probe] = accuracy
                strongest = max(probes, key=probes.get)
                by_weights[digest] = {
                    "probe_accuracy": probes[strongest], "probe": strongest, "probes": probes,
                }  # fmt: skip
                log.info(
                    "adversarial %s step %d: probe accuracy %.3f (%s) on validation windows",
                    arm, candidate["step"], probes[strongest], strongest,
                )  # fmt: skip
            scores[(arm, candidate["step"])] = by_weights[digest]
    return scores
