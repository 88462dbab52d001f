"""`adversarial` stage: fine-tune the pretrained generator with NLL + lambda * GAN loss.

Reads models/generator-mle/ and models/discriminator/; writes models/generator-gan/ (best
weights by validation NLL, config.json, tokenizer.json, resumable last/ with both models),
metrics/adversarial.json and an MLflow run with every GAN diagnostic (scores on real and
fake, gradient penalty, temperature, gradient norms, rollbacks, validation NLL).
"""

from __future__ import annotations

import shutil
from dataclasses import asdict, dataclass

from cadenza.config import AdversarialSettings
from cadenza.io import write_json
from cadenza.paths import Paths
from cadenza.stages.common import fingerprint, lineage_tags, log_final, tracked


@dataclass
class AdversarialStageResult:
    initial_valid_nll: float
    best_valid_nll: float
    final_valid_nll: float
    discriminator_accuracy: float
    rollbacks: int
    seconds: float


def run(settings: AdversarialSettings, paths: Paths, track: bool = True) -> AdversarialStageResult:
    from cadenza.models.discriminator import DiscriminatorConfig
    from cadenza.models.generator import GeneratorConfig
    from cadenza.tokens.stage import load_split
    from cadenza.tokens.tokenizer import load_tokenizer
    from cadenza.training import checkpoint
    from cadenza.training.adversarial import AdversarialConfig, train_adversarial

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
    train_data = load_split(paths.tokens_dir, "train")
    valid_data = load_split(paths.tokens_dir, "valid")
    config = AdversarialConfig(**settings.model_dump())
    out_dir = paths.generator_gan_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(paths.generator_mle_dir / "tokenizer.json", out_dir / "tokenizer.json")
    identity = fingerprint(
        asdict(config),
        files=(
            paths.generator_mle_dir / "model.safetensors",
            paths.discriminator_dir / "model.safetensors",
            paths.tokens_dir / "train.npy",
        ),
    )
    params = {"adversarial": settings.model_dump()}
    with tracked(paths, "adversarial", params, lineage_tags(paths), track) as log_metrics:
        result = train_adversarial(
            generator_config,
            discriminator_config,
            config,
            train_data,
            valid_data,
            paths.generator_mle_dir,
            paths.discriminator_dir,
            tokenizer["BOS_None"],
            out_dir,
            log_metrics,
            extra_config={"stage": "adversarial"},
            fingerprint=identity,
        )
        metrics = asdict(result)
        write_json(paths.metrics_path("adversarial"), metrics)
        if log_metrics:
            files = [out_dir / n for n in ("model.safetensors", "config.json", "tokenizer.json")]
            log_final(metrics, {"generator-gan": files})
    return AdversarialStageResult(
        result.initial_valid_nll,
        result.best_valid_nll,
        result.final_valid_nll,
        result.discriminator_accuracy,
        result.rollbacks,
        result.seconds,
    )
