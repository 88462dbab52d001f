"""SpanBERT pretraining of the discriminator's encoder: span-masked LM + span boundary
objective on windows of the same tokens the generator learns from. Torch and numpy only.

`pretrain_masked_lm` is the loop; `setup`, `train_step` and `validate` are its pieces; a killed
run resumes from out_dir/last through checkpoint.Checkpointer."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from cadenza.models.discriminator import Discriminator, DiscriminatorConfig
from cadenza.training import checkpoint
from cadenza.training.config import MaskedLMConfig
from cadenza.training.pretrain import lr_factor, muon_and_adamw, resolve_device
from cadenza.training.span_masking import SpanMask, span_mask

log = logging.getLogger(__name__)


@dataclass
class MaskedLMResult:
    steps: int
    valid_mlm_loss: float
    valid_mlm_accuracy: float
    seconds: float
    """Training time of every session (a resumed run adds the killed one's)."""
    num_parameters: int
    resumed_from_step: int


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


@dataclass
class _Run:
    """The parts of a masked-LM run and where it stands: what the pieces below share."""

    config: MaskedLMConfig
    device: torch.device
    model: Discriminator
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    rng: np.random.Generator  # draws the training windows and their masks
    masking: dict  # span_mask's arguments besides tokens and rng
    checkpointer: checkpoint.Checkpointer
    saved_config: dict  # config.json beside the best weights
    start_step: int = 0
    best_loss: float = math.inf
    best_accuracy: float = 0.0


def setup(
    model_config: DiscriminatorConfig,
    config: MaskedLMConfig,
    special_ids: dict[str, int],
    out_dir: Path,
    fingerprint: str = "",
) -> _Run:
    """Device, seed, model, optimizer and schedule; resumed from out_dir/last when an
    unfinished run with this fingerprint left it there, else fresh."""
    device = resolve_device(config.device)
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    model = Discriminator(model_config).to(device)
    if config.optimizer == "muon":
        named = list(model.named_parameters())
        is_matrix = {  # the encoder's and span head's weights; not embeddings or score head
            n: p.dim() == 2 and n.startswith(("encoder.", "span_boundary.mlp.")) for n, p in named
        }
        optimizer = muon_and_adamw(named, is_matrix, config, device)
    else:
        optimizer = torch.optim.AdamW(
            model.parameters(), lr=config.lr, weight_decay=config.weight_decay
        )
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, config))
    parts = {"model": model, "optimizer": optimizer, "scheduler": scheduler, "rng": rng}
    no_mask = {special_ids[name] for name in ("PAD", "BOS", "EOS")}
    run = _Run(
        config=config,
        device=device,
        model=model,
        optimizer=optimizer,
        scheduler=scheduler,
        rng=rng,
        masking=dict(
            mask_id=special_ids["MASK"],
            vocab_size=model_config.vocab_size,
            special_ids=no_mask,
            mask_fraction=config.mask_fraction,
            p=config.span_p,
            max_span=config.max_span,
        ),
        checkpointer=checkpoint.Checkpointer(out_dir, parts, fingerprint),
        saved_config={
            "model": model_config.to_dict(),
            "train": asdict(config),
            "special_ids": special_ids,
        },
    )
    resumed = run.checkpointer.restore(finished_at=config.max_steps)
    if resumed is None:  # a fresh run: best weights of another run are stale
        for name in (checkpoint.WEIGHTS, checkpoint.CONFIG):
            (out_dir / name).unlink(missing_ok=True)
    else:
        run.start_step = resumed.step
        run.best_loss = resumed.values["best_loss"]
        run.best_accuracy = resumed.values["best_accuracy"]
        log.info("resuming from step %d (best valid MLM loss %.4f)", run.start_step, run.best_loss)
    return run


def validation_batches(run: _Run, valid_tokens: np.ndarray) -> list[SpanMask]:
    """A fixed validation set: the same windows and masks at every evaluation."""
    config = run.config
    valid_rng = np.random.default_rng(config.seed + 1)
    return [
        span_mask(
            random_windows(valid_tokens, config.batch_size, config.seq_len, valid_rng),
            valid_rng,
            **run.masking,
        )
        for _ in range(config.eval_batches)
    ]


def train_step(run: _Run, train_tokens: np.ndarray) -> tuple[torch.Tensor, torch.Tensor, float]:
    """One optimizer step on freshly masked random windows: (MLM loss, SBO loss, accuracy)."""
    config = run.config
    run.model.train()
    mask = span_mask(
        random_windows(train_tokens, config.batch_size, config.seq_len, run.rng),
        run.rng,
        **run.masking,
    )
    mlm, sbo, accuracy = masked_lm_losses(run.model, mask, run.device)
    loss = mlm + config.sbo_weight * sbo
    run.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(run.model.parameters(), config.grad_clip)
    run.optimizer.step()
    run.scheduler.step()
    return mlm, sbo, accuracy


def validate(
    run: _Run,
    valid: list[SpanMask],
    done: int,
    log_metrics: Callable[[dict[str, float], int], None] | None,
) -> None:
    """MLM loss and accuracy on the validation set; a new best goes to model.safetensors."""
    run.model.eval()
    with torch.no_grad():
        results = [masked_lm_losses(run.model, m, run.device) for m in valid]
    valid_loss = float(np.mean([r[0].item() for r in results]))
    valid_accuracy = float(np.mean([r[2] for r in results]))
    log.info("step %d: valid MLM loss %.4f, accuracy %.3f", done, valid_loss, valid_accuracy)
    if log_metrics:
        log_metrics({"valid_mlm_loss": valid_loss, "valid_mlm_accuracy": valid_accuracy}, done)
    if valid_loss < run.best_loss:
        run.best_loss, run.best_accuracy = valid_loss, valid_accuracy
        checkpoint.save_weights(
            run.model,
            run.saved_config,
            run.checkpointer.folder,
            {"best_step": done, "valid_mlm_loss": valid_loss},
        )


def pretrain_masked_lm(
    model_config: DiscriminatorConfig,
    config: MaskedLMConfig,
    train_tokens: np.ndarray,
    valid_tokens: np.ndarray,
    special_ids: dict[str, int],
    out_dir: Path,
    log_metrics: Callable[[dict[str, float], int], None] | None = None,
    fingerprint: str = "",
) -> MaskedLMResult:
    """Train (or resume an unfinished run from out_dir/last) until max_steps; keep the best
    weights by validation MLM loss in out_dir/model.safetensors.

    A saved state is resumed only when its fingerprint (config and data identity, chosen by
    the caller) matches; otherwise, or when it is a finished run's, training starts afresh.
    """
    run = setup(model_config, config, special_ids, out_dir, fingerprint)
    valid = validation_batches(run, valid_tokens)
    run.checkpointer.start_clock()
    for step in range(run.start_step, config.max_steps):
        mlm, sbo, accuracy = train_step(run, train_tokens)
        done = step + 1
        if log_metrics and done % 10 == 0:
            log_metrics(
                {"mlm_loss": mlm.item(), "sbo_loss": sbo.item(), "mlm_accuracy": accuracy}, done
            )
        if done % config.eval_interval == 0 or done == config.max_steps:
            validate(run, valid, done, log_metrics)
        if done % config.checkpoint_interval == 0 or done == config.max_steps:
            values = {"best_loss": run.best_loss, "best_accuracy": run.best_accuracy}
            run.checkpointer.save(done, **values)
    return MaskedLMResult(
        config.max_steps,
        run.best_loss,
        run.best_accuracy,
        run.checkpointer.seconds(),
        sum(p.numel() for p in run.model.parameters()),
        run.start_step,
    )
