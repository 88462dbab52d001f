"""SpanBERT pretraining of the discriminator's encoder: span-masked LM + span boundary
objective on windows of the same tokens the generator learns from. Torch and numpy only."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from cadenza.models.discriminator import Discriminator, DiscriminatorConfig
from cadenza.training import checkpoint
from cadenza.training.config import MaskedLMConfig
from cadenza.training.pretrain import lr_factor, resolve_device
from cadenza.training.span_masking import SpanMask, span_mask

log = logging.getLogger(__name__)


@dataclass
class MaskedLMResult:
    steps: int
    valid_mlm_loss: float
    valid_mlm_accuracy: float
    seconds: float
    num_parameters: int


def random_windows(
    tokens: np.ndarray, batch: int, length: int, rng: np.random.Generator
) -> torch.Tensor:
    """(batch, length) windows at random offsets of a flat token array."""
    if len(tokens) <= length:
        raise ValueError(f"{len(tokens)} tokens are too few for windows of {length}")
    starts = rng.integers(0, len(tokens) - length, batch)
    return torch.from_numpy(np.stack([tokens[s : s + length] for s in starts]).astype(np.int64))


def masked_lm_losses(
    model: Discriminator, mask: SpanMask, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor, float]:
    """(MLM loss, SBO loss, MLM accuracy) over the masked positions."""
    h = model.encode(mask.inputs.to(device))  # (B, T, C)
    selected = (mask.targets != -100).to(device)
    rows = torch.arange(h.shape[0], device=device)[:, None].expand_as(selected)[selected]
    targets = mask.targets.to(device)[selected]
    mlm_logits = model.token_logits(h[selected])  # (N, V)
    boundary = model.span_boundary(
        h[rows, mask.span_left.to(device)[selected]],
        h[rows, mask.span_right.to(device)[selected]],
        mask.span_offset.to(device)[selected],
    )
    sbo_logits = model.token_logits(boundary)
    accuracy = (mlm_logits.argmax(-1) == targets).float().mean().item()
    return F.cross_entropy(mlm_logits, targets), F.cross_entropy(sbo_logits, targets), accuracy


def pretrain_masked_lm(
    model_config: DiscriminatorConfig,
    config: MaskedLMConfig,
    train_tokens: np.ndarray,
    valid_tokens: np.ndarray,
    special_ids: dict[str, int],
    out_dir: Path,
    log_metrics: Callable[[dict[str, float], int], None] | None = None,
) -> MaskedLMResult:
    device = resolve_device(config.device)
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    model = Discriminator(model_config).to(device)
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=config.lr, weight_decay=config.weight_decay
    )

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, config))
    no_mask = {special_ids[name] for name in ("PAD", "BOS", "EOS")}
    masking = dict(
        mask_id=special_ids["MASK"], vocab_size=model_config.vocab_size, special_ids=no_mask,
        mask_fraction=config.mask_fraction, p=config.span_p, max_span=config.max_span,
    )  # fmt: skip
    # A fixed validation set: the same windows and masks at every evaluation.
    valid_rng = np.random.default_rng(config.seed + 1)
    valid = [
        span_mask(
            random_windows(valid_tokens, config.batch_size, config.seq_len, valid_rng),
            valid_rng,
            **masking,
        )
        for _ in range(config.eval_batches)
    ]
    saved_config = {
        "model": model_config.to_dict(),
        "train": asdict(config),
        "special_ids": special_ids,
    }
    best, best_accuracy, started = float("inf"), 0.0, time.perf_counter()
    for step in range(config.max_steps):
        model.train()
        mask = span_mask(
            random_windows(train_tokens, config.batch_size, config.seq_len, rng), rng, **masking
        )
        mlm, sbo, accuracy = masked_lm_losses(model, mask, device)
        loss = mlm + config.sbo_weight * sbo
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
        optimizer.step()
        scheduler.step()
        done = step + 1
        if log_metrics and done % 10 == 0:
            log_metrics(
                {"mlm_loss": mlm.item(), "sbo_loss": sbo.item(), "mlm_accuracy": accuracy}, done
            )
        if done % config.eval_interval == 0 or done == config.max_steps:
            model.eval()
            with torch.no_grad():
                results = [masked_lm_losses(model, m, device) for m in valid]
            valid_loss = float(np.mean([r[0].item() for r in results]))
            valid_accuracy = float(np.mean([r[2] for r in results]))
            log.info(
                "step %d: valid MLM loss %.4f, accuracy %.3f", done, valid_loss, valid_accuracy
            )
            if log_metrics:
                log_metrics(
                    {"valid_mlm_loss": valid_loss, "valid_mlm_accuracy": valid_accuracy}, done
                )
            if valid_loss < best:
                best, best_accuracy = valid_loss, valid_accuracy
                checkpoint.save_weights(
                    model, saved_config, out_dir, {"best_step": done, "valid_mlm_loss": valid_loss}
                )
    return MaskedLMResult(
        config.max_steps,
        best,
        best_accuracy,
        time.perf_counter() - started,
        sum(p.numel() for p in model.parameters()),
    )
