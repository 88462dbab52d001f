"""`pretrain` stage: NLL training of the generator, test NLL against count baselines.

Writes models/generator-mle/ (best weights as safetensors, config.json, last/ resumable
state), reports/pretrain/loss.csv, metrics/pretrain.json, and an MLflow run tagged with the
git commit and the dvc.lock hash of the token inputs.
"""

from __future__ import annotations

import csv
import logging
import math
import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from cadenza.config import PretrainSettings
from cadenza.io import fingerprint, write_json
from cadenza.models.generator import GeneratorConfig, TransformerXL
from cadenza.paths import Paths
from cadenza.stages import transfer
from cadenza.stages.common import lineage_tags, log_final, tracked
from cadenza.tokens.store import load_originals, load_split, originals_path
from cadenza.tokens.tokenizer import load_tokenizer
from cadenza.tracking.lineage import build_record
from cadenza.training import checkpoint
from cadenza.training.baselines import NGramModel, unigram_nll
from cadenza.training.pretrain import evaluate_nll, resolve_device, train, use_cpu_bf16

log = logging.getLogger(__name__)


@dataclass
class PretrainResult:
    test_nll: float
    unigram_nll: float
    ngram_nll: float
    best_valid_nll: float
    seconds: float
    tokens_per_second: float
    num_parameters: int


def build_configs(settings: PretrainSettings, vocab_size: int, bos_id: int = -1):
    """(GeneratorConfig of the selected preset, the loop's TrainConfig)."""

    preset = settings.selected
    names = ("d_model", "n_layers", "n_heads", "d_ff", "seg_len", "mem_len", "dropout",
             "attn_dropout", "rezero")  # fmt: skip
    model_config = GeneratorConfig(
        vocab_size=vocab_size, bos_id=bos_id, **{name: getattr(preset, name) for name in names}
    )
    return model_config, settings.train_config()


class _CurveRecorder:
    """Forwards metrics to MLflow (when given) and keeps them for the loss-curve CSV."""

    def __init__(self, forward) -> None:
        self.forward, self.rows = forward, {}

    def __call__(self, metrics: dict[str, float], step: int) -> None:
        self.rows.setdefault(step, {"step": step}).update(metrics)
        if self.forward:
            self.forward(metrics, step)

    def write(self, path: Path, resumed_from: int) -> None:
        """Write the curve; rows of earlier sessions (steps <= resumed_from) are kept."""
        columns = ["step", "train_nll", "valid_nll", "lr", "tokens_per_second", "grad_norm"]
        rows = {}
        if resumed_from and path.is_file():
            with path.open(newline="") as handle:
                rows = {
                    int(r["step"]): r
                    for r in csv.DictReader(handle)
                    if int(r["step"]) <= resumed_from
                }
        rows.update(self.rows)
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=columns, extrasaction="ignore")
            writer.writeheader()
            writer.writerows(rows[s] for s in sorted(rows))


@dataclass
class _Inputs:
    """What one pretraining run reads: its configs, the starting base (if any), the tokens."""

    model_config: object  # GeneratorConfig
    train_config: object  # TrainConfig
    vocab_size: int
    base: dict | None
    train: tuple
    valid_tokens: object
    test_tokens: object
    final_data: tuple | None
    identity: str


def _inputs(settings: PretrainSettings, paths: Paths) -> _Inputs:
    tokenizer = load_tokenizer(paths.tokens_dir / "tokenizer.json")
    vocab_size = len(tokenizer)
    model_config, train_config = build_configs(settings, vocab_size, tokenizer["BOS_None"])
    use_base = settings.init == "base" and not paths.scope
    if settings.init == "base" and paths.scope:
        raise ValueError(
            f"pretrain.init = base in the {paths.scope} pipeline: a base starts from scratch"
        )
    # Checked before any token array is read: a wrong base fails in a second.
    base = transfer.prepare(paths, model_config.to_dict()) if use_base else None
    train = load_split(paths.tokens_dir, "train")
    valid_tokens, _ = load_split(paths.tokens_dir, "valid")
    test_tokens, _ = load_split(paths.tokens_dir, "test")
    final_data = (
        load_originals(paths.tokens_dir, "train") if train_config.final_original_steps else None
    )
    identity = fingerprint(  # a fine-tuning run also names its starting weights
        model_config.to_dict(),
        asdict(train_config),
        *([base["weights_sha256"]] if base else []),
        files=(
            paths.tokens_dir / "train.npy",
            *([originals_path(paths.tokens_dir)] if final_data is not None else []),
        ),
    )
    return _Inputs(
        model_config, train_config, vocab_size, base, train, valid_tokens, test_tokens,
        final_data, identity,
    )  # fmt: skip


def _prepare_out_dir(out_dir: Path, paths: Paths, base: dict | None) -> None:
    """The checkpoint folder is self-contained: it carries its tokenizer (and its base)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(paths.tokens_dir / "tokenizer.json", out_dir / "tokenizer.json")
    record = out_dir / transfer.BASE_RECORD
    if base:
        write_json(record, base)
    else:
        record.unlink(missing_ok=True)


def _tags(settings: PretrainSettings, paths: Paths, base: dict | None) -> dict[str, str]:
    tags = lineage_tags(paths, **{"cadenza.preset": settings.preset, "cadenza.init": settings.init})
    if base:
        tags["cadenza.base.weights_sha256"] = base["weights_sha256"]
        if base["lineage"]:
            tags["cadenza.base.run_id"] = base["lineage"].get("mlflow_run_id", "")
            tags["cadenza.base.corpus"] = base["lineage"]["corpus"]
    return tags


def _test_metrics(settings: PretrainSettings, inputs: _Inputs, result, out_dir: Path) -> dict:
    """The best weights' test NLL beside the unigram and n-gram baselines, and the run."""
    device = resolve_device(settings.device)
    model = TransformerXL(inputs.model_config)
    checkpoint.load_weights(model, out_dir)
    model.to(device)
    seg_len = inputs.model_config.seg_len
    test_nll = evaluate_nll(model, inputs.test_tokens, seg_len, device)
    train_tokens, test_tokens, vocab_size = inputs.train[0], inputs.test_tokens, inputs.vocab_size
    uni = unigram_nll(train_tokens, test_tokens, vocab_size)
    ngram = NGramModel(train_tokens, vocab_size, settings.ngram_order).nll(test_tokens)
    return {
        "test_nll": test_nll,
        "test_bits_per_token": test_nll / math.log(2),
        "best_valid_nll": result.best_valid_nll,
        "best_step": result.best_step,
        "baseline_unigram_test_nll": uni,
        f"baseline_{settings.ngram_order}gram_test_nll": ngram,
        "train_seconds": result.seconds,
        "tokens_per_second": result.tokens_per_second,
        "num_parameters": result.num_parameters,
        "steps": result.steps,
        "resumed_from_step": result.resumed_from,
        "device": str(device),
        "torch_threads": torch.get_num_threads(),
        "cpu_bf16": use_cpu_bf16(inputs.train_config.cpu_bf16, device),
    }


def run(settings: PretrainSettings, paths: Paths, track: bool = True) -> PretrainResult:
    inputs = _inputs(settings, paths)
    base, out_dir = inputs.base, paths.generator_mle_dir
    is_main = int(os.environ.get("RANK", "0")) == 0
    extra = {"preset": settings.preset, "init": settings.init}
    if base:
        extra["init_from"] = {k: base[k] for k in ("dir", "weights_sha256")}
    if is_main:
        _prepare_out_dir(out_dir, paths, base)
    params = {
        "pretrain": settings.model_dump(exclude={"presets"}),
        "preset": asdict(settings.selected),
    }
    tags = _tags(settings, paths, base)
    with tracked(paths, "pretrain", params, tags, track and is_main) as log_metrics:
        recorder = _CurveRecorder(log_metrics)
        result = train(
            inputs.model_config,
            inputs.train_config,
            inputs.train,
            inputs.valid_tokens,
            out_dir,
            log_metrics=recorder if is_main else None,
            extra_config=extra,
            fingerprint=inputs.identity,
            init_from=paths.base_model_dir if base else None,
            final_data=inputs.final_data,
        )
        if not is_main:
            return None
        metrics = _test_metrics(settings, inputs, result, out_dir)
        curve = paths.reports_dir / "pretrain" / "loss.csv"
        recorder.write(curve, result.resumed_from)
        if log_metrics:
            import mlflow  # lazy: mlflow takes seconds to import; only a tracked run needs it

            metrics["mlflow_run_id"] = mlflow.active_run().info.run_id
        if paths.scope:  # a base: its folder says what it was trained on, for the lineage
            record = build_record(paths, {"pretrain": settings.model_dump(mode="json")})
            record["mlflow_run_id"] = metrics.get("mlflow_run_id", "")
            record["test_nll"] = metrics["test_nll"]
            write_json(out_dir / transfer.LINEAGE, record)
        write_json(paths.metrics_path("pretrain"), metrics)
        if log_metrics:
            names = ("model.safetensors", "config.json", "tokenizer.json", transfer.LINEAGE)
            files = [out_dir / n for n in names]
            log_final(metrics, {out_dir.name: files, "": [curve]})
    ngram_key = f"baseline_{settings.ngram_order}gram_test_nll"
    return PretrainResult(
        metrics["test_nll"],
        metrics["baseline_unigram_test_nll"],
        metrics[ngram_key],
        result.best_valid_nll,
        result.seconds,
        result.tokens_per_second,
        result.num_parameters,
    )
