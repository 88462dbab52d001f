"""`pretrain_discriminator` stage: SpanBERT pretraining of the discriminator on the tokens.

Writes models/discriminator/ (model.safetensors, config.json; last/ resumable state),
metrics/pretrain_discriminator.json and an MLflow run with MLM/SBO losses and MLM accuracy.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

import numpy as np

from cadenza.config import DiscriminatorSettings
from cadenza.io import fingerprint, write_json
from cadenza.models.discriminator import DiscriminatorConfig
from cadenza.paths import Paths
from cadenza.stages.common import lineage_tags, log_final, tracked
from cadenza.tokens.store import load_split
from cadenza.tokens.tokenizer import load_tokenizer, special_ids
from cadenza.training.discriminator import pretrain_masked_lm


@dataclass
class DiscriminatorResult:
    valid_mlm_loss: float
    valid_mlm_accuracy: float
    seconds: float
    num_parameters: int


def reference_losses(train_tokens, valid_tokens, vocab_size: int, paths: Paths) -> dict:
    """What the masked-token loss is read against: the unigram model's loss on valid tokens
    (train counts, add-one) and the generator's causal validation NLL (metrics/pretrain.json),
    which sees only the left side of each token where the encoder sees both."""

    counts = np.bincount(np.asarray(train_tokens), minlength=vocab_size) + 1.0
    unigram = float(-np.log(counts / counts.sum())[np.asarray(valid_tokens)].mean())
    out = {"valid_unigram_nll": unigram}
    pretrain = paths.metrics_path("pretrain")
    if pretrain.is_file():
        out["generator_valid_nll"] = json.loads(pretrain.read_text()).get("best_valid_nll")
    return out


def run(settings: DiscriminatorSettings, paths: Paths, track: bool = True) -> DiscriminatorResult:
    tokenizer = load_tokenizer(paths.tokens_dir / "tokenizer.json")
    train_tokens, _ = load_split(paths.tokens_dir, "train")
    valid_tokens, _ = load_split(paths.tokens_dir, "valid")
    model_config = DiscriminatorConfig(vocab_size=len(tokenizer), **settings.encoder_fields())
    train_config = settings  # a MaskedLMConfig with the encoder's shape beside its fields
    identity = fingerprint(  # a killed run resumes only with the same settings and data
        model_config.to_dict(),
        asdict(train_config),
        special_ids(tokenizer),
        files=(paths.tokens_dir / "train.npy", paths.tokens_dir / "valid.npy"),
    )
    out_dir = paths.discriminator_dir
    params = {"pretrain_discriminator": asdict(settings)}
    with tracked(
        paths, "pretrain_discriminator", params, lineage_tags(paths), track
    ) as log_metrics:
        result = pretrain_masked_lm(
            model_config,
            train_config,
            train_tokens,
            valid_tokens,
            special_ids(tokenizer),
            out_dir,
            log_metrics,
            identity,
        )
        metrics = {
            **asdict(result),
            **reference_losses(train_tokens, valid_tokens, model_config.vocab_size, paths),
            "device": train_config.device,
        }
        write_json(paths.metrics_path("pretrain_discriminator"), metrics)
        if log_metrics:
            log_final(
                metrics, {"discriminator": [out_dir / "model.safetensors", out_dir / "config.json"]}
            )
    return DiscriminatorResult(
        result.valid_mlm_loss, result.valid_mlm_accuracy, result.seconds, result.num_parameters
    )
