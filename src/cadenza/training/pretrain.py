"""NLL pretraining of the Transformer-XL generator: `train` is the loop, read top to bottom;
`setup`, `train_step`, `validate` and `save_checkpoint` are its pieces (resume through
checkpoint.Checkpointer).

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
CPU = torch.device("cpu")


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


class Optimizers(torch.optim.Optimizer):
    """Several optimizers stepped, zeroed, saved and scheduled as one. param_groups lists
    their groups (the same dicts), so one LR scheduler sets every group's lr."""

    def __init__(self, optimizers: list[torch.optim.Optimizer]) -> None:
        # Not Optimizer.__init__: the parts own their parameters and state.
        self.optimizers = optimizers
        self.defaults = {}
        self.state = {}

    @property
    def param_groups(self) -> list[dict]:
        # Read afresh: a part's load_state_dict replaces its group dicts.
        return [group for optimizer in self.optimizers for group in optimizer.param_groups]

    def zero_grad(self, set_to_none: bool = True) -> None:
        for optimizer in self.optimizers:
            optimizer.zero_grad(set_to_none=set_to_none)

    def step(self, closure=None) -> None:
        for optimizer in self.optimizers:
            optimizer.step()

    def state_dict(self) -> dict:
        return {"optimizers": [o.state_dict() for o in self.optimizers]}

    def load_state_dict(self, state_dict: dict) -> None:
        parts = state_dict.get("optimizers")
        if parts is None or len(parts) != len(self.optimizers):
            raise ValueError(
                "the saved optimizer state is not this run's optimizer (pretrain.optimizer "
                "changed?): delete the checkpoint's last/ folder to start afresh"
            )
        for optimizer, part in zip(self.optimizers, parts, strict=True):
            optimizer.load_state_dict(part)


class Muon(torch.optim.Muon):
    """torch's Muon, with its Newton-Schulz iterations in `ns_dtype`. torch runs them in bf16,
    which without oneDNN's bf16 (a CPU without AVX-512) takes a slow path: 1.95 s a step
    against 0.05 s in fp32 for the cpu preset's matrices (benchmarks/muon_step.py). With
    ns_dtype bf16 this is torch.optim.Muon itself; with fp32 the same update, computed in fp32."""

    def __init__(self, params, ns_dtype: torch.dtype = torch.bfloat16, **kwargs) -> None:
        super().__init__(params, **kwargs)
        self.ns_dtype = ns_dtype

    @torch.no_grad()
    def step(self, closure=None):
        if self.ns_dtype == torch.bfloat16:
            return super().step(closure)
        for group in self.param_groups:  # torch's _single_tensor_muon, NS in ns_dtype
            lr, momentum = group["lr"], group["momentum"]
            for param in group["params"]:
                if param.grad is None:
                    continue
                grad = param.grad
                buf = self.state[param].setdefault("momentum_buffer", torch.zeros_like(grad))
                buf.lerp_(grad, 1 - momentum)
                update = grad.lerp(buf, momentum) if group["nesterov"] else buf
                update = newton_schulz(
                    update, group["ns_coefficients"], group["ns_steps"], group["eps"],
                    self.ns_dtype,
                )  # fmt: skip
                param.mul_(1 - lr * group["weight_decay"])
                param.add_(update, alpha=-lr * _muon_lr_ratio(group["adjust_lr_fn"], param.shape))
        return None


def newton_schulz(grad, coefficients, steps: int, eps: float, dtype: torch.dtype):
    """torch.optim._muon's orthogonalization of a 2D gradient, in `dtype`."""
    a, b, c = coefficients
    x = grad.to(dtype)
    tall = grad.size(0) > grad.size(1)
    if tall:
        x = x.T
    x = x / x.norm().clamp(min=eps)
    for _ in range(steps):
        gram = x @ x.T
        x = torch.addmm(x, torch.addmm(gram, gram, gram, beta=b, alpha=c), x, beta=a)
    return x.T if tall else x


def _muon_lr_ratio(adjust_lr_fn: str | None, shape: torch.Size) -> float:
    """torch's Muon learning-rate adjustment for a (rows, cols) matrix."""
    rows, cols = shape[:2]
    if adjust_lr_fn == "match_rms_adamw":
        return 0.2 * math.sqrt(max(rows, cols))
    if adjust_lr_fn in (None, "original"):
        return math.sqrt(max(1, rows / cols))
    return 1.0


def muon_and_adamw(
    named: list, is_matrix: dict[str, bool], config, device: torch.device, **adamw
) -> Optimizers:
    """Muon (at AdamW's update size, config.lr and config.weight_decay) on the parameters
    is_matrix names, AdamW without weight decay on the others. Muon orthogonalizes in bf16
    where `device` multiplies bf16 natively (CUDA, AMX, AVX512-BF16), else in fp32."""
    native = device.type == "cuda" or native_cpu_bf16()
    return Optimizers([
        Muon(
            [p for n, p in named if is_matrix[n]],
            ns_dtype=torch.bfloat16 if native else torch.float32,
            lr=config.lr, weight_decay=config.weight_decay, adjust_lr_fn="match_rms_adamw",
        ),
        torch.optim.AdamW(
            [p for n, p in named if not is_matrix[n]], lr=config.lr, weight_decay=0.0, **adamw
        ),
    ])  # fmt: skip


def build_optimizer(
    model: torch.nn.Module, config: TrainConfig, device: torch.device = CPU
) -> torch.optim.Optimizer:
    """adamw: AdamW; no weight decay on biases, norms, ReZero scalars and embeddings.
    muon: Muon (orthogonalized momentum) on the blocks' weight matrices, its step scaled to
    AdamW's update size so both take `lr`; AdamW on the embedding (tied to the output layer),
    biases, norms and ReZero scalars, without weight decay (muon_and_adamw)."""
    named = list(model.named_parameters())
    if config.optimizer == "muon":
        is_matrix = {n: p.dim() == 2 and "embedding" not in n for n, p in named}
        return muon_and_adamw(named, is_matrix, config, device, betas=(0.9, 0.98))
    decay = [p for n, p in named if p.dim() >= 2 and "embedding" not in n]
    no_decay = [p for n, p in named if p.dim() < 2 or "embedding" in n]
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


@dataclass
class _Run:
    """The parts of a pretraining run and where it stands: what the pieces below share."""

    config: TrainConfig
    model_config: GeneratorConfig
    dist: DistributedContext
    device: torch.device
    cpu_bf16: bool
    model: TransformerXL
    train_model: torch.nn.Module  # the model as trained: DDP-wrapped and/or compiled
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    checkpointer: checkpoint.Checkpointer
    saved_config: dict  # config.json beside the best weights
    start_step: int = 0
    best_nll: float = math.inf
    best_step: int = -1
    mems: list[torch.Tensor] | None = None  # Transformer-XL memory carried between steps


def setup(
    model_config: GeneratorConfig,
    config: TrainConfig,
    out_dir: Path,
    extra_config: dict | None = None,
    fingerprint: str = "",
    init_from: Path | None = None,
) -> _Run:
    """Device, seed, model, optimizer and schedule; resumed from out_dir/last when it was
    saved with this fingerprint, else fresh (from init_from's weights when given)."""
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
    optimizer = build_optimizer(model, config, device)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, config))
    model.to(device)
    run = _Run(
        config=config,
        model_config=model_config,
        dist=dist,
        device=device,
        cpu_bf16=cpu_bf16,
        model=model,
        train_model=model,
        optimizer=optimizer,
        scheduler=scheduler,
        checkpointer=checkpoint.Checkpointer(
            out_dir, {"model": model, "optimizer": optimizer, "scheduler": scheduler}, fingerprint
        ),
        saved_config={
            "model": model_config.to_dict(),
            "train": asdict(config),
            **(extra_config or {}),
        },
    )
    _resume_or_start(run, init_from)
    run.train_model = dist.wrap(model)  # after loading: DDP starts from rank 0's weights
    if config.compile and device.type == "cuda":
        run.train_model = torch.compile(run.train_model)
    return run


def _resume_or_start(run: _Run, init_from: Path | None) -> None:
    resumed = run.checkpointer.restore()
    if resumed is not None:
        run.start_step = resumed.step
        run.best_nll, run.best_step = resumed.values["best_nll"], resumed.values["best_step"]
        run.mems = [m.to(run.device) for m in resumed.values["mems"]] or None
        log.info(
            "resuming from step %d (best valid NLL %.4f at step %d)",
            run.start_step, run.best_nll, run.best_step,
        )  # fmt: skip
        return
    if run.dist.is_main:  # a fresh run: best weights of another run are stale
        for name in (checkpoint.WEIGHTS, checkpoint.CONFIG):
            (run.checkpointer.folder / name).unlink(missing_ok=True)
    if init_from is not None:
        checkpoint.load_weights(run.model, init_from)  # every rank: the same starting weights


def batch_schedule(
    run: _Run,
    train_data: tuple[np.ndarray, np.ndarray],
    final_data: tuple[np.ndarray, np.ndarray] | None,
) -> Callable[[int], tuple[torch.Tensor, torch.Tensor, bool]]:
    """step -> (inputs, targets, starts_epoch) of this rank: train_data's streams, then
    final_data's for the last final_original_steps steps."""
    config, dist = run.config, run.dist

    def segment_batches(data: tuple[np.ndarray, np.ndarray], seed: int) -> SegmentBatches:
        return SegmentBatches(
            *data, config.batch_size, run.model_config.seg_len, seed, True, dist.rank,
            dist.world_size,
        )  # fmt: skip

    batches = segment_batches(train_data, config.seed)
    if not config.final_original_steps:
        return batches.batch
    final_batches = segment_batches(final_data, config.seed + 1)
    switch = config.max_steps - config.final_original_steps  # first step of the final phase
    return lambda step: (
        final_batches.batch(step - switch) if step >= switch else batches.batch(step)
    )


def train_step(
    run: _Run, inputs: torch.Tensor, targets: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """One optimizer step on a (B, T) batch, carrying run.mems forward. Returns (loss,
    grad_norm), still on the device: reading them is a sync point with the GPU."""
    with autocast_context(run.device, run.cpu_bf16):
        logits, run.mems = run.train_model(inputs.to(run.device, non_blocking=True), run.mems)
        loss = F.cross_entropy(logits.float().flatten(0, 1), targets.to(run.device).flatten())
    run.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    grad_norm = torch.nn.utils.clip_grad_norm_(run.model.parameters(), run.config.grad_clip)
    run.optimizer.step()
    run.scheduler.step()
    return loss, grad_norm


class _Throughput:
    """Tokens per second over a window of steps."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.start, self.tokens = time.perf_counter(), 0

    def rate(self) -> float:
        return self.tokens / max(time.perf_counter() - self.start, 1e-9)


def log_progress(
    run: _Run,
    log_metrics: LogFn,
    done: int,
    loss: torch.Tensor,
    grad_norm: torch.Tensor,
    throughput: _Throughput,
) -> None:
    """Training NLL, learning rate, gradient norm and tokens per second since the last call."""
    tokens_per_second = throughput.rate()
    log_metrics(
        {
            "train_nll": loss.item(),  # sync point with the GPU
            "lr": run.scheduler.get_last_lr()[0],
            "grad_norm": float(grad_norm),
            "tokens_per_second": tokens_per_second,
        },
        done,
    )
    throughput.reset()


def validate(
    run: _Run, valid_tokens: np.ndarray, eval_batch: int, done: int, log_metrics: LogFn | None
) -> None:
    """Validation NLL on rank 0; a new best goes to model.safetensors + config.json."""
    if run.dist.is_main:
        seg_len = run.model_config.seg_len
        valid_nll = evaluate_nll(run.model, valid_tokens, seg_len, run.device, eval_batch)
        bits = valid_nll / math.log(2)
        log.info("step %d: valid NLL %.4f nats (%.4f bits)", done, valid_nll, bits)
        if log_metrics:
            log_metrics({"valid_nll": valid_nll, "valid_bits_per_token": bits}, done)
        if valid_nll < run.best_nll:
            run.best_nll, run.best_step = valid_nll, done
            checkpoint.save_weights(
                run.model,
                run.saved_config,
                run.checkpointer.folder,
                {"best_step": done, "valid_nll": valid_nll},
            )
    run.dist.barrier()


def save_checkpoint(run: _Run, done: int) -> None:
    """last/ on rank 0: everything a killed run needs to go on as if never stopped."""
    if run.dist.is_main:
        # Under DDP each rank carries its own memory; a resumed run starts those afresh.
        mems = [m.cpu() for m in run.mems] if run.mems and run.dist.world_size == 1 else []
        run.checkpointer.save(done, best_nll=run.best_nll, best_step=run.best_step, mems=mems)
    run.dist.barrier()


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
    if config.final_original_steps and final_data is None:
        raise ValueError("final_original_steps > 0 needs final_data")
    run = setup(model_config, config, out_dir, extra_config, fingerprint, init_from)
    next_batch = batch_schedule(run, train_data, final_data)
    tokens_per_step = config.batch_size * model_config.seg_len * run.dist.world_size
    eval_batch = max(
        1, min(config.batch_size, (len(valid_tokens) - 1) // (model_config.seg_len + 1))
    )
    run.model.train()
    run.checkpointer.start_clock()
    throughput = _Throughput()
    for step in range(run.start_step, config.max_steps):
        inputs, targets, new_epoch = next_batch(step)
        if new_epoch:
            run.mems = None  # the streams were reshuffled: old memory is not their past
        loss, grad_norm = train_step(run, inputs, targets)
        throughput.tokens += tokens_per_step
        done = step + 1
        last = done == config.max_steps
        if run.dist.is_main and log_metrics and (done % config.log_interval == 0 or last):
            log_progress(run, log_metrics, done, loss, grad_norm, throughput)
        if done % config.eval_interval == 0 or last:
            validate(run, valid_tokens, eval_batch, done, log_metrics)
        if done % config.checkpoint_interval == 0 or last:
            save_checkpoint(run, done)
    seconds = run.checkpointer.seconds()  # all sessions
    run.dist.close()
    return TrainResult(
        steps=config.max_steps,
        best_valid_nll=run.best_nll,
        best_step=run.best_step,
        tokens_per_second=config.max_steps * tokens_per_step / max(seconds, 1e-9),
        seconds=seconds,
        num_parameters=run.model.num_parameters(),
        resumed_from=run.start_step,
    )
