"""Adversarial fine-tuning of the generator (Transformer-GAN, Muhamed et al. 2021).

Each generator step: NLL on real segments (memory carried, as in pretraining) plus
lambda x the adversarial loss on samples drawn with a straight-through Gumbel-Softmax. A
sample of sample_len tokens is drawn in chunks of chunk_len; each chunk is scored by the
discriminator against the real chunk at the same position of real pieces and
backpropagated at once, with the generator's memory detached between chunks, so memory
follows chunk_len. Then `critic_steps` discriminator updates on hard samples. The Gumbel
temperature anneals exponentially from tau_start to tau_end. Validation NLL is watched at
every eval: when it degrades beyond `tolerance` from the best, training rolls back to the
best weights (or stops). Torch and numpy only.
"""

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
from cadenza.models.generator import GeneratorConfig, TransformerXL
from cadenza.models.gumbel import sample_chunks
from cadenza.training import checkpoint
from cadenza.training.data import SegmentBatches
from cadenza.training.gan_losses import discriminator_loss, generator_loss, gradient_penalty
from cadenza.training.pretrain import evaluate_nll, resolve_device

log = logging.getLogger(__name__)
STATE_FORMAT = 2  # bump when last/state.pt changes shape: older states then start afresh


@dataclass
class AdversarialConfig:
    max_steps: int = 100
    batch_size: int = 16
    """Real segments per NLL step."""
    sample_batch: int = 8
    """Samples per adversarial step."""
    sample_len: int = 128
    chunk_len: int = 32
    adv_weight: float = 0.1
    """lambda in NLL + lambda * adversarial."""
    loss: str = "rsgan"
    gp_weight: float = 10.0
    critic_steps: int = 1
    freeze_layers: int = 0
    """Discriminator encoder layers (from the bottom) kept frozen."""
    tau_start: float = 1.0
    tau_end: float = 0.01
    lr_generator: float = 1e-4
    lr_discriminator: float = 1e-4
    grad_clip: float = 1.0
    eval_interval: int = 25
    checkpoint_interval: int = 25
    tolerance: float = 0.05
    """Allowed relative rise of validation NLL above its best before acting."""
    on_degrade: str = "rollback"
    """rollback (restore best weights and continue) | stop."""
    seed: int = 0
    device: str = "auto"

    def __post_init__(self) -> None:
        if self.sample_len % self.chunk_len:
            raise ValueError(
                f"sample_len {self.sample_len} must be a multiple of chunk_len {self.chunk_len}"
            )


@dataclass
class AdversarialResult:
    steps: int
    initial_valid_nll: float
    best_valid_nll: float
    final_valid_nll: float
    rollbacks: int
    stopped_early: bool
    seconds: float
    discriminator_accuracy: float
    """Held-out accuracy at the end; `accuracy_history` has it at every evaluation."""
    accuracy_history: list[tuple[int, float]]


def temperature(step: int, config: AdversarialConfig) -> float:
    """Exponential annealing tau_start -> tau_end over max_steps."""
    progress = step / max(1, config.max_steps - 1)
    return config.tau_start * (config.tau_end / config.tau_start) ** progress


class RealChunks:
    """Openings of real pieces, cut at the same positions as the generated chunks."""

    def __init__(self, tokens: np.ndarray, offsets: np.ndarray, sample_len: int, seed: int) -> None:
        lengths = np.diff(offsets)
        self.starts = offsets[:-1][lengths > sample_len]
        if len(self.starts) == 0:
            raise ValueError(f"no document is longer than sample_len {sample_len}")
        self.tokens, self.sample_len = tokens, sample_len
        self.rng = np.random.default_rng(seed)

    def sample(self, batch: int) -> torch.Tensor:
        """(batch, sample_len) tokens following BOS of random pieces."""
        picks = self.rng.choice(self.starts, batch)
        rows = [self.tokens[s + 1 : s + 1 + self.sample_len] for s in picks]
        return torch.from_numpy(np.stack(rows).astype(np.int64))


def _freeze(discriminator: Discriminator, num_layers: int) -> None:
    for layer in list(discriminator.encoder.layers)[:num_layers]:
        layer.requires_grad_(False)
    if num_layers:
        discriminator.embedding.requires_grad_(False)
        discriminator.position.requires_grad_(False)


def adversarial_generator_step(
    generator: TransformerXL,
    discriminator: Discriminator,
    real: RealChunks,
    config: AdversarialConfig,
    tau: float,
    device: torch.device,
    rng: torch.Generator,
    bos: int,
) -> dict[str, float]:
    """Backpropagate lambda * adversarial loss chunk by chunk; return diagnostics."""
    trainable = [p for p in discriminator.parameters() if p.requires_grad]
    for parameter in trainable:  # frozen layers (freeze_layers) stay frozen afterwards
        parameter.requires_grad_(False)
    num_chunks = config.sample_len // config.chunk_len
    real_tokens = real.sample(config.sample_batch).to(device)
    prompt = torch.full((config.sample_batch, 1), bos, dtype=torch.long, device=device)
    total, fake_scores, real_scores = 0.0, [], []
    for k, (one_hot, _) in enumerate(
        sample_chunks(generator, prompt, num_chunks, config.chunk_len, tau, rng)
    ):
        real_chunk = real_tokens[:, k * config.chunk_len : (k + 1) * config.chunk_len]
        fake_score = discriminator.score(one_hot)
        with torch.no_grad():
            real_score = discriminator.score(real_chunk)
        loss = generator_loss(config.loss, real_score, fake_score) / num_chunks
        (config.adv_weight * loss).backward()  # frees this chunk's graph
        total += loss.item()
        fake_scores.append(fake_score.mean().item())
        real_scores.append(real_score.mean().item())
    for parameter in trainable:
        parameter.requires_grad_(True)
    return {
        "g_adv_loss": total,
        "d_fake_score_g": float(np.mean(fake_scores)),
        "d_real_score_g": float(np.mean(real_scores)),
    }


def discriminator_step(
    generator: TransformerXL,
    discriminator: Discriminator,
    optimizer: torch.optim.Optimizer,
    real: RealChunks,
    config: AdversarialConfig,
    tau: float,
    device: torch.device,
    rng: torch.Generator,
    bos: int,
) -> dict[str, float]:
    """One critic update on hard samples; returns loss, scores, accuracy, penalty."""
    num_chunks = config.sample_len // config.chunk_len
    prompt = torch.full((config.sample_batch, 1), bos, dtype=torch.long, device=device)
    with torch.no_grad():
        fake_ids = torch.cat(
            [
                ids
                for _, ids in sample_chunks(
                    generator, prompt, num_chunks, config.chunk_len, tau, rng
                )
            ],
            1,
        )
    real_ids = real.sample(config.sample_batch).to(device)
    # Score chunk-wise, as the generator is scored.
    fake_chunks = fake_ids.reshape(-1, config.chunk_len)
    real_chunks = real_ids.reshape(-1, config.chunk_len)
    real_score, fake_score = discriminator.score(real_chunks), discriminator.score(fake_chunks)
    loss = discriminator_loss(config.loss, real_score, fake_score)
    penalty = torch.zeros((), device=device)
    if config.loss == "wgan-gp":
        vocab = discriminator.config.vocab_size
        penalty = gradient_penalty(
            discriminator.score,
            F.one_hot(real_chunks, vocab).float(),
            F.one_hot(fake_chunks, vocab).float(),
        )
        loss = loss + config.gp_weight * penalty
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    trainable = [p for group in optimizer.param_groups for p in group["params"]]
    grad_norm = torch.nn.utils.clip_grad_norm_(trainable, config.grad_clip)
    optimizer.step()
    accuracy = pairwise_accuracy(real_score.detach(), fake_score.detach())
    return {
        "d_loss": loss.item(),
        "d_real_score": real_score.mean().item(),
        "d_fake_score": fake_score.mean().item(),
        "d_accuracy": accuracy,
        "gradient_penalty": penalty.item(),
        "d_grad_norm": float(grad_norm),
    }


def pairwise_accuracy(real: torch.Tensor, fake: torch.Tensor) -> float:
    """P(score(real) > score(fake)) over all pairs (ties count half): threshold-free, so it
    means the same for every loss; 0.5 = the discriminator cannot tell them apart."""
    diff = real[:, None] - fake[None, :]
    return ((diff > 0).float().mean() + 0.5 * (diff == 0).float().mean()).item()


@torch.no_grad()
def discriminator_accuracy(discriminator, real_ids: torch.Tensor, fake_ids: torch.Tensor) -> float:
    discriminator.eval()
    accuracy = pairwise_accuracy(discriminator.score(real_ids), discriminator.score(fake_ids))
    discriminator.train()
    return accuracy


def heldout_accuracy(
    generator: TransformerXL,
    discriminator: Discriminator,
    heldout: RealChunks,
    config: AdversarialConfig,
    device: torch.device,
    rng: torch.Generator,
    bos: int,
) -> float:
    """Discriminator accuracy on fresh samples against chunks of the validation split, which
    it never trained on (0.5 = it cannot tell them apart)."""
    num_chunks = config.sample_len // config.chunk_len
    prompt = torch.full((config.sample_batch, 1), bos, dtype=torch.long, device=device)
    was_training = generator.training
    generator.eval()  # samples without dropout, whatever mode the caller left it in
    with torch.no_grad():
        chunks = sample_chunks(generator, prompt, num_chunks, config.chunk_len, config.tau_end, rng)
        fake = torch.cat([ids for _, ids in chunks], dim=1)
    generator.train(was_training)
    real = heldout.sample(config.sample_batch).to(device)
    return discriminator_accuracy(
        discriminator, real.reshape(-1, config.chunk_len), fake.reshape(-1, config.chunk_len)
    )


def train_adversarial(
    generator_config: GeneratorConfig,
    discriminator_config: DiscriminatorConfig,
    config: AdversarialConfig,
    train_data: tuple[np.ndarray, np.ndarray],
    valid_data: tuple[np.ndarray, np.ndarray],
    generator_init: Path,
    discriminator_init: Path,
    bos: int,
    out_dir: Path,
    log_metrics: Callable[[dict[str, float], int], None] | None = None,
    extra_config: dict | None = None,
    fingerprint: str = "",
) -> AdversarialResult:
    device = resolve_device(config.device)
    torch.manual_seed(config.seed)
    generator, discriminator = TransformerXL(generator_config), Discriminator(discriminator_config)
    checkpoint.load_weights(generator, generator_init)
    checkpoint.load_weights(discriminator, discriminator_init)
    _freeze(discriminator, config.freeze_layers)
    generator.to(device)
    discriminator.to(device)
    g_opt = torch.optim.AdamW(
        generator.parameters(), lr=config.lr_generator, betas=(0.9, 0.98), weight_decay=0.0
    )
    d_opt = torch.optim.AdamW(
        [p for p in discriminator.parameters() if p.requires_grad],
        lr=config.lr_discriminator,
        betas=(0.5, 0.999),
    )
    sample_rng = torch.Generator(device=device).manual_seed(config.seed)
    real = RealChunks(*train_data, config.sample_len, config.seed)
    valid_tokens = valid_data[0]
    heldout = RealChunks(*valid_data, config.sample_len, config.seed + 2)
    batches = SegmentBatches(
        *train_data, config.batch_size, generator_config.seg_len, config.seed + 1
    )
    eval_batch = max(
        1, min(config.batch_size, (len(valid_tokens) - 1) // (generator_config.seg_len + 1))
    )
    saved_config = {
        "model": generator_config.to_dict(),
        "adversarial": asdict(config),
        **(extra_config or {}),
    }

    start_step, rollbacks, mems = 0, 0, None
    accuracy_history: list[tuple[int, float]] = []  # (step, held-out discriminator accuracy)
    previous_seconds = 0.0  # training time of earlier (interrupted) sessions
    state = checkpoint.load_training_state(generator, out_dir, {"discriminator": discriminator})
    if state is not None and (state.get("fingerprint"), state.get("format")) == (
        fingerprint,
        STATE_FORMAT,
    ):
        g_opt.load_state_dict(state["g_optimizer"])
        d_opt.load_state_dict(state["d_optimizer"])
        torch.set_rng_state(state["rng"]["torch"])
        sample_rng.set_state(state["rng"]["sample"])
        real.rng.bit_generator.state = state["rng"]["real"]
        heldout.rng.bit_generator.state = state["rng"]["heldout"]
        accuracy_history = [tuple(item) for item in state["accuracy_history"]]
        previous_seconds = float(state.get("train_seconds", 0.0))
        start_step, best_nll, initial_nll, rollbacks = (
            state["step"],
            state["best_nll"],
            state["initial_nll"],
            state["rollbacks"],
        )
        mems = [m.to(device) for m in state["mems"]] or None
        log.info("resuming adversarial training from step %d", start_step)
    else:
        if state is not None:  # other settings or an older format: start from pretrained weights
            log.warning("%s/last does not match these settings: starting afresh", out_dir)
            checkpoint.load_weights(generator, generator_init)
            checkpoint.load_weights(discriminator, discriminator_init)
        initial_nll = evaluate_nll(
            generator, valid_tokens, generator_config.seg_len, device, eval_batch
        )
        best_nll = initial_nll
        checkpoint.save_weights(
            generator, saved_config, out_dir, {"best_step": 0, "valid_nll": best_nll}
        )
        accuracy = heldout_accuracy(
            generator, discriminator, heldout, config, device, sample_rng, bos
        )
        accuracy_history.append((0, accuracy))
        if log_metrics:
            log_metrics({"valid_nll": initial_nll, "d_heldout_accuracy": accuracy}, 0)
    final_nll = state.get("final_nll", best_nll) if start_step else best_nll
    stopped, started, done = False, time.perf_counter(), start_step
    d_metrics: dict[str, float] = {}
    for step in range(start_step, config.max_steps):
        tau = temperature(step, config)
        generator.train()
        inputs, targets, new_epoch = batches.batch(step)
        if new_epoch:
            mems = None
        logits, mems = generator(inputs.to(device), mems)
        nll = F.cross_entropy(logits.flatten(0, 1), targets.to(device).flatten())
        g_opt.zero_grad(set_to_none=True)
        nll.backward()
        generator.eval()  # sampling without dropout; gradients still flow
        g_metrics = adversarial_generator_step(
            generator, discriminator, real, config, tau, device, sample_rng, bos
        )
        grad_norm = torch.nn.utils.clip_grad_norm_(generator.parameters(), config.grad_clip)
        g_opt.step()
        for _ in range(config.critic_steps):
            d_metrics = discriminator_step(
                generator, discriminator, d_opt, real, config, tau, device, sample_rng, bos
            )
        done = step + 1
        if log_metrics:
            log_metrics(
                {
                    "train_nll": nll.item(),
                    "temperature": tau,
                    "g_grad_norm": float(grad_norm),
                    **g_metrics,
                    **d_metrics,
                },
                done,
            )
        if done % config.eval_interval == 0 or done == config.max_steps:
            final_nll = evaluate_nll(
                generator, valid_tokens, generator_config.seg_len, device, eval_batch
            )
            log.info(
                "step %d: valid NLL %.4f (best %.4f), tau %.3f, D acc %.2f",
                done,
                final_nll,
                best_nll,
                tau,
                d_metrics.get("d_accuracy", float("nan")),
            )
            accuracy = heldout_accuracy(
                generator, discriminator, heldout, config, device, sample_rng, bos
            )
            accuracy_history.append((done, accuracy))
            if log_metrics:
                log_metrics({"valid_nll": final_nll, "d_heldout_accuracy": accuracy}, done)
            if final_nll < best_nll:
                best_nll = final_nll
                checkpoint.save_weights(
                    generator, saved_config, out_dir, {"best_step": done, "valid_nll": final_nll}
                )
            elif final_nll > best_nll * (1 + config.tolerance):
                log.warning(
                    "valid NLL %.4f degraded beyond %.0f%% of best %.4f: %s",
                    final_nll,
                    100 * config.tolerance,
                    best_nll,
                    config.on_degrade,
                )
                if config.on_degrade == "stop":
                    stopped = True
                else:
                    checkpoint.load_weights(generator, out_dir)
                    g_opt.state.clear()
                    rollbacks += 1
                    mems = None
                if log_metrics:
                    log_metrics({"rollbacks": rollbacks}, done)
        if done % config.checkpoint_interval == 0 or done == config.max_steps or stopped:
            checkpoint.save_training_state(
                generator,
                {
                    "g_optimizer": g_opt.state_dict(),
                    "d_optimizer": d_opt.state_dict(),
                    "rng": {
                        "torch": torch.get_rng_state(),
                        "sample": sample_rng.get_state(),
                        "real": real.rng.bit_generator.state,
                        "heldout": heldout.rng.bit_generator.state,
                    },
                    "step": done,
                    "best_nll": best_nll,
                    "initial_nll": initial_nll,
                    "rollbacks": rollbacks,
                    "final_nll": final_nll,
                    "accuracy_history": accuracy_history,
                    "train_seconds": previous_seconds + time.perf_counter() - started,
                    "mems": [m.cpu() for m in mems] if mems else [],
                    "fingerprint": fingerprint,
                    "format": STATE_FORMAT,
                },
                out_dir,
                {"discriminator": discriminator},
            )
        if stopped:
            break
    accuracy = heldout_accuracy(generator, discriminator, heldout, config, device, sample_rng, bos)
    return AdversarialResult(
        steps=done,
        initial_valid_nll=initial_nll,
        best_valid_nll=best_nll,
        final_valid_nll=final_nll,
        rollbacks=rollbacks,
        stopped_early=stopped,
        seconds=previous_seconds + time.perf_counter() - started,  # all sessions
        discriminator_accuracy=accuracy,
        accuracy_history=accuracy_history,
    )
