"""NLL pretraining of the Transformer-XL generator: one readable training loop.

Torch and numpy only; the caller passes `log` (a callable taking a metrics dict and a step)
to track metrics wherever it likes. Launched under `torchrun`, the same loop trains with
DistributedDataParallel: every rank reads its own streams, rank 0 evaluates, logs and writes
checkpoints.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from cadenza.models.generator import GeneratorConfig, TransformerXL
from cadenza.training import checkpoint
from cadenza.training.config import TrainConfig
from cadenza.training.data import SegmentBatches
from cadenza.training.distributed import DistributedContext

log = logging.getLogger(__name__)
LogFn = Callable[[dict[str, float], int], None]


@dataclass
class TrainResult:
    steps: int
    best_valid_nll: float
    best_step: int
    tokens_per_second: float
    seconds: float
    num_parameters: int
    resumed_from: int


def lr_factor(step: int, config: TrainConfig) -> float:
    """Multiplier of the base learning rate at a step: linear warmup, then decay."""
    if step < config.warmup_steps:
        return (step + 1) / config.warmup_steps
    if config.schedule == "inverse_sqrt":
        return math.sqrt(max(config.warmup_steps, 1) / (step + 1))
    progress = (step - config.warmup_steps) / max(1, config.max_steps - config.warmup_steps)
    cosine = 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))
    return config.min_lr_ratio + (1 - config.min_lr_ratio) * cosine


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("pretrain.device = 'cuda' but no CUDA device is available")
    return torch.device(name)


def build_optimizer(model: torch.nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    """AdamW; no weight decay on biases, norms, ReZero scalars and embeddings."""
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2 and "embedding" not in n]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2 or "embedding" in n]
    return torch.optim.AdamW(
        [
            {"params": decay, "weight_decay": config.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ],
        lr=config.lr,
        betas=(0.9, 0.98),
    )


def autocast_context(device: torch.device, cpu_bf16: bool = False):
    """bf16 autocast on CUDA, and on CPU when asked; plain fp32 elsewhere."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    if cpu_bf16:
        return torch.autocast("cpu", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def native_cpu_bf16() -> bool:
    """Whether this CPU runs bf16 matmuls natively (oneDNN with AMX or AVX512-BF16)."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def use_cpu_bf16(setting: bool | str, device: torch.device) -> bool:
    if device.type != "cpu":
        return False
    return native_cpu_bf16() if setting == "auto" else bool(setting)


@torch.no_grad()
def evaluate_nll(
    model: TransformerXL,
    tokens: np.ndarray,
    seg_len: int,
    device: torch.device,
    batch_size: int = 1,
    max_batches: int = 0,
) -> float:
    """Mean NLL (nats/token) over a token array, read in order with memory carried.

    batch_size=1 scores every position 1..N-1 exactly once (the test metric).
    """
    was_training = model.training
    model.eval()
    offsets = np.array([0, len(tokens)], dtype=np.int64)
    batches = SegmentBatches(tokens, offsets, batch_size, seg_len, shuffle=False)
    total, count, mems = 0.0, 0, None
    num = (
        batches.batches_per_epoch
        if not max_batches
        else min(max_batches, batches.batches_per_epoch)
    )
    for index in range(num):
        inputs, targets, _ = batches.batch(index)
        with autocast_context(device):
            logits, mems = model(inputs.to(device), mems)
        loss = F.cross_entropy(
            logits.float().flatten(0, 1), targets.to(device).flatten(), reduction="sum"
        )
        total += loss.item()
        count += targets.numel()
    # The tail shorter than one segment (batch_size=1 only): score it too.
    tail_start = num * seg_len
    if batch_size == 1 and not max_batches and tail_start < len(tokens) - 1:
        window = torch.from_numpy(np.asarray(tokens[tail_start:], dtype=np.int64))[None]
        with autocast_context(device):
            logits, _ = model(window[:, :-1].to(device), mems)
        total += F.cross_entropy(
            logits.float()[0], window[0, 1:].to(device), reduction="sum"
        ).item()
        count += window.shape[1] - 1
    model.train(was_training)
    return total / max(count, 1)


def _rng_state(device: torch.device) -> dict:
    state = {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state: dict, device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def train(
    model_config: GeneratorConfig,
    config: TrainConfig,
    train_data: tuple[np.ndarray, np.ndarray],
    valid_tokens: np.ndarray,
    out_dir: Path,
    log_metrics: LogFn | None = None,
    extra_config: dict | None = None,
    fingerprint: str = "",
    init_from: Path | None = None,
    final_data: tuple[np.ndarray, np.ndarray] | None = None,
) -> TrainResult:
    """Train (or resume from out_dir/last) until max_steps; keep the best weights by
    validation NLL in out_dir/model.safetensors.

    init_from: a checkpoint folder whose weights a fresh run starts from (fine-tuning);
    the caller makes sure its architecture and vocabulary match model_config.

    final_data: (tokens, offsets) the last config.final_original_steps steps train on (memory
    starts afresh where they begin).

    A saved state is resumed only when its fingerprint (config and data identity, chosen by
    the caller) matches; otherwise training starts afresh.
    """
    dist = DistributedContext.from_env()
    device = dist.device if dist.enabled else resolve_device(config.device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    torch.manual_seed(config.seed + dist.rank)
    cpu_bf16 = use_cpu_bf16(config.cpu_bf16, device)
    if cpu_bf16:
        log.info("training steps under CPU bf16 autocast")

    model = TransformerXL(model_config)
    optimizer = build_optimizer(model, config)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, config))
    state = checkpoint.load_training_state(
        model, out_dir, matches=lambda saved: saved.get("fingerprint", "") == fingerprint
    )
    if state is None and dist.is_main:  # a fresh run: best weights of another run are stale
        for name in (checkpoint.WEIGHTS, checkpoint.CONFIG):
            (out_dir / name).unlink(missing_ok=True)
    if state is None and init_from is not None:
        checkpoint.load_weights(model, init_from)  # every rank: the same starting weights
    start_step, best_nll, best_step, mems = 0, float("inf"), -1, None
    previous_seconds = 0.0  # training time of earlier (interrupted) sessions
    model.to(device)
    if state is not None:
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        _set_rng_state(state["rng"], device)
        start_step, best_nll, best_step = state["step"], state["best_nll"], state["best_step"]
        previous_seconds = float(state.get("train_seconds", 0.0))
        mems = [m.to(device) for m in state["mems"]] if state["mems"] else None
        log.info(
            "resuming from step %d (best valid NLL %.4f at step %d)",
            start_step,
            best_nll,
            best_step,
        )
    saved_config = {
        "model": model_config.to_dict(),
        "train": asdict(config),
        **(extra_config or {}),
    }

    train_model = dist.wrap(model)
    if config.compile and device.type == "cuda":
        train_model = torch.compile(train_model)

    def segment_batches(data: tuple[np.ndarray, np.ndarray], seed: int) -> SegmentBatches:
        return SegmentBatches(
            *data, config.batch_size, model_config.seg_len, seed, True, dist.rank, dist.world_size
        )

    batches = segment_batches(train_data, config.seed)
    switch = config.max_steps - config.final_original_steps  # first step of the final phase
    final_batches = None
    if config.final_original_steps:
        if final_data is None:
            raise ValueError("final_original_steps > 0 needs final_data")
        final_batches = segment_batches(final_data, config.seed + 1)
    tokens_per_step = config.batch_size * model_config.seg_len * dist.world_size
    eval_batch = max(
        1, min(config.batch_size, (len(valid_tokens) - 1) // (model_config.seg_len + 1))
    )
    model.train()
    started, window_start, window_tokens = time.perf_counter(), time.perf_counter(), 0
    step = start_step
    for step in range(start_step, config.max_steps):
        if final_batches is not None and step >= switch:
            inputs, targets, new_epoch = final_batches.batch(step - switch)
        else:
            inputs, targets, new_epoch = batches.batch(step)
        if new_epoch:
            mems = None  # the streams were reshuffled: old memory is not their past
        with autocast_context(device, cpu_bf16):
            logits, mems = train_model(inputs.to(device, non_blocking=True), mems)
            loss = F.cross_entropy(logits.float().flatten(0, 1), targets.to(device).flatten())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
        optimizer.step()
        scheduler.step()
        window_tokens += tokens_per_step

        done = step + 1
        if (
            dist.is_main
            and log_metrics
            and (done % config.log_interval == 0 or done == config.max_steps)
        ):
            elapsed = time.perf_counter() - window_start
            log_metrics(
                {
                    "train_nll": loss.item(),  # sync point with the GPU
                    "lr": scheduler.get_last_lr()[0],
                    "grad_norm": float(grad_norm),
                    "tokens_per_second": window_tokens / max(elapsed, 1e-9),
                },
                done,
            )
            window_start, window_tokens = time.perf_counter(), 0
        if done % config.eval_interval == 0 or done == config.max_steps:
            if dist.is_main:
                valid_nll = evaluate_nll(
                    model, valid_tokens, model_config.seg_len, device, eval_batch
                )
                log.info(
                    "step %d: valid NLL %.4f nats (%.4f bits)",
                    done,
                    valid_nll,
                    valid_nll / math.log(2),
                )
                if log_metrics:
                    log_metrics(
                        {"valid_nll": valid_nll, "valid_bits_per_token": valid_nll / math.log(2)},
                        done,
                    )
                if valid_nll < best_nll:
                    best_nll, best_step = valid_nll, done
                    checkpoint.save_weights(
                        model, saved_config, out_dir, {"best_step": done, "valid_nll": valid_nll}
                    )
            dist.barrier()
        if done % config.checkpoint_interval == 0 or done == config.max_steps:
            if dist.is_main:
                checkpoint.save_training_state(
                    model,
                    {
                        "optimizer": optimizer.state_dict(),
                        "scheduler": scheduler.state_dict(),
                        "rng": _rng_state(device),
                        "step": done,
                        "best_nll": best_nll,
                        "best_step": best_step,
                        "fingerprint": fingerprint,
                        "train_seconds": previous_seconds + time.perf_counter() - started,
                        "mems": [m.cpu() for m in mems] if mems and dist.world_size == 1 else [],
                    },
                    out_dir,
                )
            dist.barrier()
    seconds = previous_seconds + time.perf_counter() - started  # all sessions
    trained_tokens = config.max_steps * tokens_per_step
    dist.close()
    return TrainResult(
        steps=config.max_steps,
        best_valid_nll=best_nll,
        best_step=best_step,
        tokens_per_second=trained_tokens / max(seconds, 1e-9),
        seconds=seconds,
        num_parameters=model.num_parameters(),
        resumed_from=start_step,
    )
