"""Adversarial fine-tuning of the generator (Transformer-GAN, Muhamed et al. 2021).

The loop is built from four parts:

- `Sampler`: generated chunks (differentiable, through a straight-through Gumbel-Softmax, or
  hard) and the real chunks at the same positions of real pieces. A sample of sample_len
  tokens is drawn in chunks of chunk_len with the generator's memory detached between
  chunks, so memory follows chunk_len; samples may be primed with `prime_tokens` real tokens.
- `Critic`: the pretrained SpanBERT discriminator and its optimizer; one RSGAN update on
  hard samples, held-out accuracy.
- `GeneratorUpdate`: NLL on real segments (memory carried, as in pretraining) and, every
  `adv_every` steps, adv_weight x the adversarial loss in an Adam of its own
  (lr_adversarial, clipped on its own, as the reference recipe). The two gradient norms are
  logged apart.
- `Guard`: validation NLL at every evaluation; a candidate checkpoint is kept each time
  (the stage picks one of them by a probe on validation data); divergence beyond
  `tolerance` of the best rolls back to the best weights (or stops).

`estimator: reinforce` replaces the Gumbel path by a score-function estimator
(`policy_gradient_backward`): exact samples, their log-probabilities with gradients, a reward
from the critic or from a `Reward` callable the stage passes in (any judge of finished
samples), less kl_weight x the log-ratio to the frozen start model, against a leave-one-out
baseline. `estimator: preference` reads the same samples and rewards as pairs: DPO
(`preference_backward`) with the start model as its reference, the batch ranked by the
reward (online rounds: a fresh batch and a refitted critic at every update; offline rounds
with `preference_pool`). `estimator: rejection` fits the best `keep_fraction` of each round by
likelihood (rejection-sampling fine-tuning, `RejectionRounds`).

Before adversarial updates the critic is warmed up on generated samples until its
held-out accuracy on `critic_heldout` generated vs as many real validation chunks reaches
`critic_warmup_target` (or `critic_warmup_steps` updates). With adv_weight = 0 the loop is the
likelihood-only control: the same data order, steps and dropout masks (the adversarial parts
draw from a random stream of their own), no sampling, no critic. Torch and numpy only.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from cadenza.models.discriminator import Discriminator, DiscriminatorConfig
from cadenza.models.generator import GeneratorConfig, TransformerXL
from cadenza.models.gumbel import sample_chunks
from cadenza.training import checkpoint
from cadenza.training.config import AdversarialConfig
from cadenza.training.data import SegmentBatches
from cadenza.training.gan_losses import discriminator_loss, generator_loss
from cadenza.training.pretrain import evaluate_nll, resolve_device

log = logging.getLogger(__name__)
CANDIDATES_DIR = "candidates"
Metrics = Callable[[dict[str, float], int], None]


@dataclass
class AdversarialResult:
    steps: int
    initial_valid_nll: float
    best_valid_nll: float
    final_valid_nll: float
    rollbacks: int
    stopped_early: bool
    seconds: float
    discriminator_accuracy: float | None
    """Held-out accuracy at the end (None for the control); `accuracy_history` has it at
    every evaluation."""
    accuracy_history: list[tuple[int, float]]
    warmup: dict = field(default_factory=dict)
    """Critic warm-up: updates, held-out accuracy before and after, and its history."""
    candidates: list[dict] = field(default_factory=list)
    """{step, valid_nll, file} of every kept checkpoint (file relative to the output)."""


def temperature(step: int, config: AdversarialConfig) -> float:
    """Exponential annealing tau_start -> tau_end over tau_anneal_fraction of max_steps."""
    span = max(1, round(config.tau_anneal_fraction * config.max_steps))
    progress = min(1.0, step / max(1, span - 1))
    return config.tau_start * (config.tau_end / config.tau_start) ** progress


class RealChunks:
    """Openings of real pieces, cut at the same positions as the generated chunks."""

    def __init__(self, tokens: np.ndarray, offsets: np.ndarray, length: int, seed: int) -> None:
        lengths = np.diff(offsets)
        self.starts = offsets[:-1][lengths > length]
        if len(self.starts) == 0:
            raise ValueError(f"no document is longer than {length} tokens (sample + prime)")
        self.tokens, self.length = tokens, length
        self.rng = np.random.default_rng(seed)

    def sample(self, batch: int) -> torch.Tensor:
        """(batch, length) tokens following BOS of random pieces."""
        picks = self.rng.choice(self.starts, batch)
        rows = [self.tokens[s + 1 : s + 1 + self.length] for s in picks]
        return torch.from_numpy(np.stack(rows).astype(np.int64))


class RngStream:
    """A torch random stream of its own: what runs inside `active()` (critic dropout,
    gradient-penalty mixing) leaves the main stream, which draws the NLL steps' dropout,
    as it was, so the GAN arm and the control see the same dropout masks."""

    def __init__(self, seed: int) -> None:
        self.state = torch.Generator().manual_seed(seed).get_state()

    def state_dict(self) -> torch.Tensor:
        return self.state

    def load_state_dict(self, state: torch.Tensor) -> None:
        self.state = state

    @contextlib.contextmanager
    def active(self) -> Iterator[None]:
        with torch.random.fork_rng(devices=[]):
            torch.set_rng_state(self.state)
            yield
            self.state = torch.get_rng_state()


class Sampler:
    """Generated chunks and the real chunks at the same positions."""

    def __init__(
        self,
        generator: TransformerXL,
        real: RealChunks,
        config: AdversarialConfig,
        device: torch.device,
        rng: torch.Generator,
        bos: int,
    ) -> None:
        self.generator, self.real, self.config = generator, real, config
        self.device, self.rng, self.bos = device, rng, bos
        self.last: tuple[torch.Tensor, torch.Tensor] | None = None

    def _prompt_and_real(self, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Prompt ([BOS] + prime tokens of some pieces) and the real tokens of other pieces
        at the positions the samples will take."""
        prime = self.config.prime_tokens
        bos = torch.full((batch, 1), self.bos, dtype=torch.long)
        real = self.real.sample(batch)[:, prime:]
        prompt = torch.cat([bos, self.real.sample(batch)[:, :prime]], 1) if prime else bos
        return prompt.to(self.device), real.to(self.device)

    def real_chunks(self, batch: int) -> torch.Tensor:
        """(batch * num_chunks, c) real chunks at the positions samples take."""
        return self._prompt_and_real(batch)[1].reshape(-1, self.config.chunk_len)

    def differentiable(self, tau: float) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """(one-hot chunk with soft gradients (B, c, V), real chunk (B, c)) per chunk."""
        c = self.config.chunk_len
        prompt, real = self._prompt_and_real(self.config.sample_batch)
        chunks = sample_chunks(self.generator, prompt, self.config.num_chunks, c, tau, self.rng)
        ids = []
        for k, (one_hot, chunk_ids) in enumerate(chunks):
            ids.append(chunk_ids)
            yield one_hot, real[:, k * c : (k + 1) * c]
        # The hard tokens are exact samples of the generator (the forward pass of the
        # straight-through estimator): the critic's next update reuses them.
        self.last = (torch.cat(ids, 1).reshape(-1, c), real.reshape(-1, c))

    @torch.no_grad()
    def episodes(self, batch: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(prompt (B, P), exact samples (B, sample_len), real tokens at the same positions
        (B, sample_len)) without dropout, for the score-function estimator (Gumbel-max with
        any tau draws exactly from the generator's distribution)."""
        c = self.config.chunk_len
        was_training = self.generator.training
        self.generator.eval()
        prompt, real = self._prompt_and_real(batch)
        chunks = sample_chunks(self.generator, prompt, self.config.num_chunks, c, 1.0, self.rng)
        ids = torch.cat([chunk_ids for _, chunk_ids in chunks], 1)
        self.generator.train(was_training)
        return prompt, ids, real

    @torch.no_grad()
    def hard(self, batch: int, tau: float) -> tuple[torch.Tensor, torch.Tensor]:
        """(generated chunks (N, c), real chunks (N, c)) of `batch` samples, without
        dropout."""
        c = self.config.chunk_len
        was_training = self.generator.training
        self.generator.eval()
        prompt, real = self._prompt_and_real(batch)
        chunks = sample_chunks(self.generator, prompt, self.config.num_chunks, c, tau, self.rng)
        fake = torch.cat([ids for _, ids in chunks], 1)
        self.generator.train(was_training)
        return fake.reshape(-1, c), real.reshape(-1, c)


def pairwise_accuracy(real: torch.Tensor, fake: torch.Tensor) -> float:
    """P(score(real) > score(fake)) over all pairs (ties count half): threshold-free, so it
    means the same for every loss; 0.5 = the discriminator cannot tell them apart."""
    diff = real[:, None] - fake[None, :]
    return ((diff > 0).float().mean() + 0.5 * (diff == 0).float().mean()).item()


class Critic:
    """The pretrained SpanBERT discriminator as the critic, with its optimizer."""

    def __init__(self, discriminator: Discriminator, config: AdversarialConfig) -> None:
        self.model, self.config = discriminator, config
        self.vocab_size = discriminator.config.vocab_size
        params = [p for p in discriminator.parameters() if p.requires_grad]
        self.trainable = params
        self.optimizer = torch.optim.AdamW(
            [{"params": params, "lr": config.lr_discriminator}], betas=(0.5, 0.999)
        )

    def score(self, x: torch.Tensor) -> torch.Tensor:
        """(B,) real/fake score of token ids (B, c) or one-hot chunks (B, c, V)."""
        return self.model.score(x)

    @contextlib.contextmanager
    def held(self) -> Iterator[None]:
        """The critic as a fixed function while the generator learns from it: no gradient
        into its parameters; afterwards only the trainable ones learn again."""
        for parameter in self.trainable:
            parameter.requires_grad_(False)
        try:
            yield
        finally:
            for parameter in self.trainable:
                parameter.requires_grad_(True)

    def update(self, real: torch.Tensor, fake: torch.Tensor) -> dict[str, float]:
        """One step on real and generated chunks (N, c); loss, scores, accuracy."""
        real_score, fake_score = self.score(real), self.score(fake)
        loss = discriminator_loss(real_score, fake_score)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(self.trainable, self.config.grad_clip)
        self.optimizer.step()
        return {
            "d_loss": loss.item(),
            "d_real_score": real_score.mean().item(),
            "d_fake_score": fake_score.mean().item(),
            "d_accuracy": pairwise_accuracy(real_score.detach(), fake_score.detach()),
            "d_grad_norm": float(grad_norm),
        }

    @torch.no_grad()
    def accuracy(self, real: torch.Tensor, fake: torch.Tensor, batch: int = 256) -> float:
        self.model.eval()
        scores = [
            torch.cat([self.score(x[i : i + batch]) for i in range(0, len(x), batch)])
            for x in (real, fake)
        ]
        self.model.train()
        return pairwise_accuracy(*scores)


def discriminator_step(critic: Critic, sampler: Sampler, tau: float) -> dict[str, float]:
    """One critic update: on the samples the generator's last adversarial pass drew (once),
    else on fresh ones, against real chunks at the same positions."""
    if sampler.last is not None:
        fake, real = sampler.last
        sampler.last = None
    else:
        fake, real = sampler.hard(sampler.config.sample_batch, tau)
    return critic.update(real, fake)


class HeldOut:
    """critic_heldout real validation chunks (fixed) against as many fresh generated ones."""

    def __init__(self, valid: RealChunks, config: AdversarialConfig) -> None:
        self.samples = math.ceil(config.critic_heldout / config.num_chunks)
        prime = config.prime_tokens
        rows = valid.sample(self.samples)[:, prime : prime + config.sample_len]
        self.real = rows.reshape(-1, config.chunk_len)[: config.critic_heldout]
        self.count = config.critic_heldout

    def accuracy(self, critic: Critic, sampler: Sampler, fake: torch.Tensor | None = None):
        if fake is None:
            fake, _ = sampler.hard(self.samples, sampler.config.tau_end)
        return critic.accuracy(self.real.to(fake.device), fake[: self.count])


def warm_up_critic(
    critic: Critic, sampler: Sampler, heldout: HeldOut, config: AdversarialConfig, log_metrics
) -> dict:
    """Critic updates on samples of the (still fixed) generator until its held-out accuracy
    reaches critic_warmup_target or critic_warmup_steps updates are done. The generator does
    not move meanwhile, so its samples are drawn once, in two batches: a training pool and
    the held-out set, each of critic_heldout chunks."""
    pool, _ = sampler.hard(heldout.samples, config.tau_end)
    fake, _ = sampler.hard(heldout.samples, config.tau_end)
    before = heldout.accuracy(critic, sampler, fake)
    history, accuracy, done = [(0, before)], before, 0
    per_step = config.sample_batch * config.num_chunks
    for done in range(1, config.critic_warmup_steps + 1):
        picks = torch.randint(len(pool), (per_step,), device=pool.device)
        metrics = critic.update(sampler.real_chunks(config.sample_batch), pool[picks])
        if done % config.critic_eval_interval == 0 or done == config.critic_warmup_steps:
            accuracy = heldout.accuracy(critic, sampler, fake)
            history.append((done, accuracy))
            if log_metrics:
                warm = {f"warmup_{k}": v for k, v in metrics.items()}
                log_metrics({"warmup_heldout_accuracy": accuracy, **warm}, done)
            if accuracy >= config.critic_warmup_target:
                break
    log.info("critic warm-up: %d updates, held-out accuracy %.3f -> %.3f", done, before, accuracy)
    return {
        "steps": done,
        "heldout_accuracy_before": before,
        "heldout_accuracy": accuracy,
        "heldout_windows": heldout.count,
        "history": history,
    }


def _grad_norm(parameters: list[torch.Tensor]) -> float:
    norms = [p.grad.norm() for p in parameters if p.grad is not None]
    return float(torch.linalg.vector_norm(torch.stack(norms))) if norms else 0.0


class GeneratorUpdate:
    """NLL step on real segments and, when due, the adversarial term on generated chunks."""

    def __init__(self, generator: TransformerXL, config: AdversarialConfig) -> None:
        self.generator, self.config = generator, config
        self.parameters = list(generator.parameters())
        self.optimizer = torch.optim.AdamW(
            self.parameters, lr=config.lr_generator, betas=(0.9, 0.98), weight_decay=0.0
        )
        self.adv_optimizer = None  # the adversarial term's own Adam (not in the control)
        if config.adversarial:
            self.adv_optimizer = torch.optim.Adam(
                self.parameters, lr=config.lr_adversarial, betas=(0.5, 0.999)
            )

    def state_dict(self) -> dict:
        return {
            "nll": self.optimizer.state_dict(),
            "adv": self.adv_optimizer.state_dict() if self.adv_optimizer else {},
        }

    def load_state_dict(self, state: dict) -> None:
        self.optimizer.load_state_dict(state["nll"])
        if self.adv_optimizer:
            self.adv_optimizer.load_state_dict(state["adv"])

    def reset(self) -> None:
        """After a rollback: moments of the abandoned weights are dropped."""
        self.optimizer.state.clear()
        if self.adv_optimizer:
            self.adv_optimizer.state.clear()

    def _clip_and_step(self, optimizer: torch.optim.Optimizer) -> None:
        torch.nn.utils.clip_grad_norm_(self.parameters, self.config.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    def step(self, inputs, targets, mems, adversarial: Callable[[], dict] | None):
        """One update; `adversarial` backpropagates adv_weight x its loss and returns its
        diagnostics (None: an NLL-only step). Returns (mems, metrics)."""
        self.generator.train()
        logits, mems = self.generator(inputs, mems)
        nll = F.cross_entropy(logits.flatten(0, 1), targets.flatten())
        self.optimizer.zero_grad(set_to_none=True)
        nll.backward()
        metrics = {"train_nll": nll.item(), "nll_grad_norm": _grad_norm(self.parameters)}
        if adversarial is None:
            self._clip_and_step(self.optimizer)
            return mems, metrics
        self._clip_and_step(self.optimizer)  # the reference recipe: two optimizers
        self.generator.eval()  # sampling without dropout; gradients still flow
        metrics.update(adversarial())
        metrics["adv_grad_norm"] = _grad_norm(self.parameters)
        self._clip_and_step(self.adv_optimizer)
        return mems, metrics


def adversarial_loss_backward(
    critic: Critic, sampler: Sampler, config: AdversarialConfig, tau: float
) -> dict[str, float]:
    """Backpropagate adv_weight x the generator's adversarial loss chunk by chunk (each
    chunk's graph is freed by its backward pass); return diagnostics."""
    total, fake_scores, real_scores = 0.0, [], []
    with critic.held():
        for one_hot, real_chunk in sampler.differentiable(tau):
            fake_score = critic.score(one_hot)
            with torch.no_grad():
                real_score = critic.score(real_chunk)
            loss = generator_loss(real_score, fake_score) / config.num_chunks
            (config.adv_weight * loss).backward()
            total += loss.item()
            fake_scores.append(fake_score.mean().item())
            real_scores.append(real_score.mean().item())
    return {
        "g_adv_loss": total,
        "d_fake_score_g": float(np.mean(fake_scores)),
        "d_real_score_g": float(np.mean(real_scores)),
    }


Reward = Callable[[np.ndarray], tuple[np.ndarray, dict[str, float]]]
"""(B, sample_len) generated token ids -> ((B,) rewards, diagnostics): a judge of finished
samples that need not be differentiable (reward music: evaluation/critics.py)."""
SampleScore = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, dict]]
"""(samples (B, sample_len), real tokens at their positions) -> ((B,) rewards, diagnostics):
the reward as the sample-scoring estimators call it (`critic_reward`, `external_reward`)."""


def sequence_log_probs(model: TransformerXL, prompt: torch.Tensor, ids: torch.Tensor):
    """(B, L) log-probabilities of the sampled ids after the prompt, by one cached forward
    pass over the whole sequence (the attention window of generation)."""
    sequence = torch.cat([prompt, ids], 1)[:, :-1]
    cache = model.empty_cache(sequence.shape[0], sequence.device)
    logits = model._forward_cached(sequence, cache, 0)[:, prompt.shape[1] - 1 :]
    log_probs = F.log_softmax(logits.float(), dim=-1)
    return log_probs.gather(-1, ids[..., None]).squeeze(-1)


def policy_gradient_backward(
    generator: TransformerXL,
    reference: TransformerXL,
    sampler: Sampler,
    score: SampleScore,
    config: AdversarialConfig,
) -> dict[str, float]:
    """Backpropagate adv_weight x the score-function loss (REINFORCE with a leave-one-out
    baseline, RLOO): each sample's reward less kl_weight x its mean log-ratio to the start
    model, against the mean of the other samples', weights the gradient of its log-probability."""
    prompt, ids, real = sampler.episodes(config.sample_batch)
    log_probs = sequence_log_probs(generator, prompt, ids)
    with torch.no_grad():
        reference_log_probs = sequence_log_probs(reference, prompt, ids)
        rewards, diagnostics = score(ids, real)
        kl = (log_probs.detach() - reference_log_probs).mean(1)
        shaped = rewards.to(kl.device).float() - config.kl_weight * kl
        batch = shaped.shape[0]
        advantage = shaped - (shaped.sum() - shaped) / (batch - 1)
    loss = -(advantage * log_probs.mean(1)).mean()
    (config.adv_weight * loss).backward()
    return {
        "pg_loss": loss.item(),
        "reward_mean": rewards.float().mean().item(),
        "reward_std": rewards.float().std().item(),
        "kl_to_start": kl.mean().item(),
        "sample_log_prob": log_probs.detach().mean().item(),
        **diagnostics,
    }


def ranked_pairs(rewards: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(preferred, other) row indices: the rows ranked by reward, the best paired with the
    worst, the second with the second-worst; pairs whose rewards tie are left out."""
    order = torch.argsort(rewards, descending=True, stable=True)
    half = len(order) // 2
    chosen, rejected = order[:half], order.flip(0)[:half]
    keep = rewards[chosen] > rewards[rejected]
    return chosen[keep], rejected[keep]


def _zero_gradient(generator: TransformerXL) -> None:
    """A backward pass that leaves every gradient zero: an update with nothing to learn from
    (every reward tied) still takes the adversarial Adam's step as a no-op."""
    sum(p.sum() for p in generator.parameters()).mul(0.0).backward()


def _dpo_backward(
    generator: TransformerXL, prompt: torch.Tensor, ids: torch.Tensor,
    reference_sums: torch.Tensor, rewards: torch.Tensor, chosen: torch.Tensor,
    rejected: torch.Tensor, config: AdversarialConfig,
) -> dict[str, float]:  # fmt: skip
    """adv_weight x the DPO loss of the pairs (chosen[i], rejected[i]) of rows of ids, each
    log-ratio the row's summed log-probability less its reference sum."""
    if not len(chosen):  # every pair tied: no preference, a zero gradient
        _zero_gradient(generator)
        return {
            "preference_loss": 0.0, "preference_pairs": 0.0, "preference_accuracy": 0.5,
            "reward_gap": 0.0, "kl_to_start": 0.0, "sample_log_prob": 0.0,
        }  # fmt: skip
    rows = torch.cat([chosen, rejected])
    log_probs = sequence_log_probs(generator, prompt[rows], ids[rows])
    ratios = log_probs.sum(1) - reference_sums[rows]
    margin = config.preference_beta * (ratios[: len(chosen)] - ratios[len(chosen) :])
    loss = -F.logsigmoid(margin).mean()
    (config.adv_weight * loss).backward()
    return {
        "preference_loss": loss.item(),
        "preference_pairs": float(len(chosen)),
        "preference_accuracy": (margin > 0).float().mean().item(),
        "reward_gap": (rewards[chosen] - rewards[rejected]).mean().item(),
        "kl_to_start": (ratios.detach().mean() / log_probs.shape[1]).item(),
        "sample_log_prob": log_probs.detach().mean().item(),
    }


def _reference_sums(reference: TransformerXL, prompt, ids, batch: int) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat([
            sequence_log_probs(reference, prompt[i : i + batch], ids[i : i + batch]).sum(1)
            for i in range(0, len(ids), batch)
        ])  # fmt: skip


class PreferenceRounds:
    """Rounds of generate, rank, update (NotaGen's recipe). A round draws `pool` samples,
    scores them once (a critic refitted on them), ranks them into pairs (`ranked_pairs`) and
    takes sample_batch / 2 of its pairs per update, in a shuffled order, until they run out;
    then the next round. `pool` = sample_batch is online DPO: every update its own fresh batch
    (`preference_backward`); `preference_pool` > sample_batch makes the rounds offline. A
    resumed run starts a new round. `pool` None: the config's preference_pool, or online."""

    def __init__(self, pool: int | None = None) -> None:
        self.pool = pool
        self.round: dict[str, torch.Tensor] | None = None
        self.cursor = 0
        self.rounds = 0
        self.diagnostics: dict[str, float] = {}

    def _units(self, rewards: torch.Tensor, config: AdversarialConfig) -> torch.Tensor:
        """What an update takes from the round: (pairs, 2) rows, preferred first."""
        return torch.stack(ranked_pairs(rewards), 1)

    def _per_update(self, config: AdversarialConfig) -> int:
        return config.sample_batch // 2

    def _new_round(self, reference, sampler, score, config) -> None:
        pool = self.pool or config.preference_pool or config.sample_batch
        prompt, ids, real = sampler.episodes(pool)
        with torch.no_grad():
            rewards, self.diagnostics = score(ids, real)
            rewards = rewards.to(ids.device).float()
        units = self._units(rewards, config)
        if pool > config.sample_batch:  # taken over several updates: in shuffled order
            order = torch.randperm(len(units), generator=sampler.rng, device=sampler.rng.device)
            units = units[order.to(units.device)]
        self.round = {
            "prompt": prompt, "ids": ids, "rewards": rewards, "units": units,
            "reference": self._reference(reference, prompt, ids, config),
        }  # fmt: skip
        self.cursor = 0
        self.rounds += 1

    def _reference(self, reference, prompt, ids, config) -> torch.Tensor | None:
        return _reference_sums(reference, prompt, ids, config.sample_batch)

    def _update(self, generator, reference, units, config) -> dict[str, float]:
        r = self.round
        return _dpo_backward(
            generator, r["prompt"], r["ids"], r["reference"], r["rewards"], units[:, 0],
            units[:, 1], config,
        )  # fmt: skip

    def backward(self, generator, reference, sampler, score, config) -> dict[str, float]:
        if self.round is None or self.cursor >= len(self.round["units"]):
            self._new_round(reference, sampler, score, config)
        take = slice(self.cursor, self.cursor + self._per_update(config))
        self.cursor += self._per_update(config)
        metrics = self._update(generator, reference, self.round["units"][take], config)
        return {
            **metrics, "reward_mean": self.round["rewards"].mean().item(),
            "preference_round": float(self.rounds), **self.diagnostics,
        }  # fmt: skip


def kept_rows(rewards: torch.Tensor, keep_fraction: float) -> torch.Tensor:
    """Row indices of the best max(1, keep_fraction x rows) rewards, best first, less those
    not above the median reward (a reward that ties every row keeps none)."""
    order = torch.argsort(rewards, descending=True, stable=True)
    top = order[: max(1, int(keep_fraction * len(order)))]
    return top[rewards[top] > rewards.median()]


class RejectionRounds(PreferenceRounds):
    """Rounds of generate, rank, fine-tune: rejection-sampling fine-tuning (best-of-N
    distillation; RAFT, ReST, expert iteration). A round draws `pool` samples as the
    preference rounds do, keeps its best `keep_fraction` by reward (`kept_rows`), and the
    generator fits them by likelihood, sample_batch of them per update in a shuffled order,
    until they run out. No reference model enters the loss; the log-ratio to the start
    model is logged."""

    def _units(self, rewards: torch.Tensor, config: AdversarialConfig) -> torch.Tensor:
        return kept_rows(rewards, config.keep_fraction)

    def _per_update(self, config: AdversarialConfig) -> int:
        return config.sample_batch

    def _reference(self, reference, prompt, ids, config) -> None:
        return None

    def _update(self, generator, reference, rows, config) -> dict[str, float]:
        r = self.round
        if not len(rows):  # every reward tied: nothing better than the rest, a zero gradient
            _zero_gradient(generator)
            return {"rejection_nll": 0.0, "kept": 0.0, "reward_kept": 0.0, "kl_to_start": 0.0,
                    "sample_log_prob": 0.0}  # fmt: skip
        prompt, ids = r["prompt"][rows], r["ids"][rows]
        log_probs = sequence_log_probs(generator, prompt, ids)
        loss = -log_probs.mean()
        (config.adv_weight * loss).backward()
        with torch.no_grad():
            start = sequence_log_probs(reference, prompt, ids)
        return {
            "rejection_nll": loss.item(), "kept": float(len(rows)),
            "reward_kept": r["rewards"][rows].mean().item(),
            "kl_to_start": (log_probs.detach() - start).mean().item(),
            "sample_log_prob": log_probs.detach().mean().item(),
        }  # fmt: skip


def preference_backward(
    generator: TransformerXL,
    reference: TransformerXL,
    sampler: Sampler,
    score: SampleScore,
    config: AdversarialConfig,
) -> dict[str, float]:
    """Backpropagate adv_weight x the DPO loss (Rafailov et al. 2023) on a fresh batch of
    sample_batch samples ranked by its reward: one round that is used up in this update.
    The loss is -log sigmoid(beta x (log-ratio of the preferred - log-ratio of the other)),
    each log-ratio the sample's summed log-probability under the generator less the start
    model's."""
    return PreferenceRounds(config.sample_batch).backward(
        generator, reference, sampler, score, config
    )


ROUNDS = {"preference": PreferenceRounds, "rejection": RejectionRounds}
"""The estimators that learn in rounds of generate, rank, update."""


def critic_reward(critic: Critic, sampler: Sampler, config: AdversarialConfig):
    """The SpanBERT critic as a reward: each sample's mean chunk score; the chunks are kept
    for the critic's next update."""

    def score(ids: torch.Tensor, real: torch.Tensor) -> tuple[torch.Tensor, dict]:
        c = config.chunk_len
        fake_chunks, real_chunks = ids.reshape(-1, c), real.reshape(-1, c)
        critic.model.eval()
        scores = critic.score(fake_chunks).reshape(ids.shape[0], -1).mean(1)
        critic.model.train()
        sampler.last = (fake_chunks, real_chunks)
        return scores, {}

    return score


def external_reward(reward: Reward):
    def score(ids: torch.Tensor, real: torch.Tensor) -> tuple[torch.Tensor, dict]:
        values, diagnostics = reward(ids.cpu().numpy())
        return torch.as_tensor(values, dtype=torch.float32), diagnostics

    return score


@dataclass
class Guard:
    """Validation NLL at every evaluation: keeps a candidate checkpoint each time, the best
    weights by NLL, and rolls back (or stops) on divergence beyond `tolerance` of the best."""

    initial_nll: float
    best_nll: float
    best_step: int = 0
    rollbacks: int = 0
    candidates: list[dict] = field(default_factory=list)

    def keep(self, generator: TransformerXL, step: int, nll: float, out_dir: Path) -> None:

        folder = out_dir / CANDIDATES_DIR
        folder.mkdir(parents=True, exist_ok=True)
        name = f"{CANDIDATES_DIR}/step-{step:06d}.safetensors"
        weights = {
            k: v.detach().cpu().clone().contiguous() for k, v in generator.state_dict().items()
        }
        save_file(weights, str(out_dir / name))
        self.candidates = [c for c in self.candidates if c["step"] != step]
        self.candidates.append({"step": step, "valid_nll": nll, "file": name})
        if nll < self.best_nll or step == self.best_step:
            self.best_nll, self.best_step = nll, step

    def diverged(self, nll: float, tolerance: float) -> bool:
        return nll > self.best_nll * (1 + tolerance)

    def restore_best(self, generator: TransformerXL, out_dir: Path) -> None:
        best = next(c for c in self.candidates if c["step"] == self.best_step)
        generator.load_state_dict(load_file(str(out_dir / best["file"])))
        self.rollbacks += 1


@dataclass
class Run:
    """One arm's training run: its parts and what changes between steps."""

    config: AdversarialConfig
    generator: TransformerXL
    update: GeneratorUpdate
    batches: SegmentBatches
    checkpointer: checkpoint.Checkpointer
    valid_nll: Callable[[], float]
    saved_config: dict
    out_dir: Path
    device: torch.device
    critic: Critic | None = None
    sampler: Sampler | None = None
    heldout: HeldOut | None = None
    stream: RngStream | None = None
    guard: Guard | None = None
    reference: TransformerXL | None = None  # reinforce, preference: the frozen start model
    score: SampleScore | None = None  # reinforce, preference: the reward
    rounds: PreferenceRounds | None = None  # preference: its rounds (online: one per update)
    mems: list[torch.Tensor] | None = None
    warmup: dict = field(default_factory=dict)
    accuracy_history: list[tuple[int, float]] = field(default_factory=list)
    d_metrics: dict[str, float] = field(default_factory=dict)
    final_nll: float = math.nan
    step: int = 0
    stopped: bool = False

    def heldout_accuracy(self) -> float | None:
        if self.critic is None:
            return None
        with self.stream.active():
            return self.heldout.accuracy(self.critic, self.sampler)


def setup(
    generator_config: GeneratorConfig,
    discriminator_config: DiscriminatorConfig,
    config: AdversarialConfig,
    train_data: tuple[np.ndarray, np.ndarray],
    valid_data: tuple[np.ndarray, np.ndarray],
    inits: tuple[Path, Path],
    bos: int,
    out_dir: Path,
    saved_config: dict,
    fingerprint: str,
    reward: Reward | None = None,
) -> Run:
    """The generator from its pretrained weights, the critic (GAN arm only), their optimizers
    and random streams, in an order that fixes every draw: the control arm sees the same
    data order and dropout masks as the GAN arm. reinforce and preference add the frozen
    start model and
    the reward (`reward` is required for reward music)."""
    device = resolve_device(config.device)
    torch.manual_seed(config.seed)
    generator = TransformerXL(generator_config)
    checkpoint.load_weights(generator, inits[0])
    generator.to(device)
    update = GeneratorUpdate(generator, config)
    sample_rng = torch.Generator(device=device).manual_seed(config.seed)
    stream = RngStream(config.seed + 3)
    length = config.prime_tokens + config.sample_len
    real = RealChunks(*train_data, length, config.seed)
    valid_chunks = RealChunks(*valid_data, length, config.seed + 2)
    parts = {"model": generator, "g_optimizer": update, "stream": stream}
    parts.update(sample=sample_rng, real=real.rng)
    critic = sampler = heldout = reference = score = None
    if config.adversarial:
        sampler = Sampler(generator, real, config, device, sample_rng, bos)
    if config.uses_critic:
        discriminator = Discriminator(discriminator_config)
        checkpoint.load_weights(discriminator, inits[1])
        discriminator.to(device)
        critic = Critic(discriminator, config)
        heldout = HeldOut(valid_chunks, config)
        parts.update(discriminator=discriminator, d_optimizer=critic.optimizer)
    if config.scores_samples:
        reference = TransformerXL(generator_config)
        checkpoint.load_weights(reference, inits[0])
        reference.to(device).eval().requires_grad_(False)
        if config.reward != "critic" and reward is None:
            raise ValueError(f"adversarial.reward {config.reward} needs the stage's reward")
        score = (
            critic_reward(critic, sampler, config) if config.reward == "critic"
            else external_reward(reward)
        )  # fmt: skip
    valid_tokens = valid_data[0]
    seg_len = generator_config.seg_len
    batches = SegmentBatches(*train_data, config.batch_size, seg_len, config.seed + 1)
    eval_batch = max(1, min(config.batch_size, (len(valid_tokens) - 1) // (seg_len + 1)))

    def valid_nll() -> float:
        return evaluate_nll(generator, valid_tokens, seg_len, device, eval_batch)

    checkpointer = checkpoint.Checkpointer(out_dir, parts, fingerprint)
    return Run(
        config, generator, update, batches, checkpointer, valid_nll, saved_config, out_dir,
        device, critic, sampler, heldout, stream, reference=reference, score=score,
        rounds=ROUNDS[config.estimator]() if config.adversarial and config.estimator in ROUNDS
        else None,
    )  # fmt: skip


def start(run: Run, log_metrics: Metrics | None) -> None:
    """A fresh run: the pretrained weights are candidate 0 and the best so far; the critic
    is warmed up on the generator's samples."""
    initial_nll = run.valid_nll()
    run.guard = Guard(initial_nll, initial_nll)
    run.guard.keep(run.generator, 0, initial_nll, run.out_dir)
    extra = {"best_step": 0, "valid_nll": initial_nll}
    checkpoint.save_weights(run.generator, run.saved_config, run.out_dir, extra)
    first: dict[str, float] = {"valid_nll": initial_nll}
    if run.critic:
        with run.stream.active():
            run.warmup = warm_up_critic(
                run.critic, run.sampler, run.heldout, run.config, log_metrics
            )
        run.accuracy_history.append((0, run.warmup["heldout_accuracy"]))
        first["d_heldout_accuracy"] = run.warmup["heldout_accuracy"]
    if log_metrics:
        log_metrics(first, 0)
    run.final_nll = run.guard.best_nll


def resume(run: Run, resumed: checkpoint.Resumed) -> None:
    values = resumed.values
    run.guard = Guard(**values["guard"])
    run.accuracy_history = [tuple(item) for item in values["accuracy_history"]]
    run.warmup = values["warmup"]
    run.final_nll = values["final_nll"] if resumed.step else run.guard.best_nll
    run.mems = [m.to(run.device) for m in values["mems"]] or None
    run.step = resumed.step
    log.info("resuming adversarial training from step %d", resumed.step)


def train_step(run: Run, step: int, log_metrics: Metrics | None) -> float:
    """One NLL step and, every adv_every steps in the GAN arm, the adversarial term and the
    critic's updates. Returns the Gumbel temperature used."""
    config, critic = run.config, run.critic
    tau = temperature(step, config)
    inputs, targets, new_epoch = run.batches.batch(step)
    if new_epoch:
        run.mems = None
    adversarial = None
    if config.adversarial and step % config.adv_every == 0:

        def adversarial():
            with run.stream.active():
                if config.estimator == "reinforce":
                    return policy_gradient_backward(
                        run.generator, run.reference, run.sampler, run.score, config
                    )
                if run.rounds is not None:
                    return run.rounds.backward(
                        run.generator, run.reference, run.sampler, run.score, config
                    )
                return adversarial_loss_backward(critic, run.sampler, config, tau)

    inputs, targets = inputs.to(run.device), targets.to(run.device)
    run.mems, g_metrics = run.update.step(inputs, targets, run.mems, adversarial)
    if adversarial is not None and critic:
        with run.stream.active():
            for _ in range(config.critic_steps):
                run.d_metrics = discriminator_step(critic, run.sampler, tau)
    run.step = step + 1
    if log_metrics:
        log_metrics({"temperature": tau, **g_metrics, **run.d_metrics}, run.step)
    return tau


def evaluate(run: Run, tau: float, log_metrics: Metrics | None) -> None:
    """Validation NLL (and held-out critic accuracy); keep a candidate, or roll back / stop
    when the NLL degraded beyond tolerance of the best."""
    config, guard, done = run.config, run.guard, run.step
    run.final_nll = run.valid_nll()
    entry: dict[str, float] = {"valid_nll": run.final_nll}
    if run.critic:
        run.accuracy_history.append((done, run.heldout_accuracy()))
        entry["d_heldout_accuracy"] = run.accuracy_history[-1][1]
    log.info(
        "step %d: valid NLL %.4f (best %.4f), tau %.3f, held-out critic accuracy %s",
        done, run.final_nll, guard.best_nll, tau, entry.get("d_heldout_accuracy", "-"),
    )  # fmt: skip
    if guard.diverged(run.final_nll, config.tolerance):
        log.warning(
            "valid NLL %.4f degraded beyond %.0f%% of best %.4f: %s",
            run.final_nll, 100 * config.tolerance, guard.best_nll, config.on_degrade,
        )  # fmt: skip
        if config.on_degrade == "stop":
            run.stopped = True
        else:
            guard.restore_best(run.generator, run.out_dir)
            run.update.reset()
            run.mems = None
        entry["rollbacks"] = guard.rollbacks
    else:
        best_before = guard.best_step
        guard.keep(run.generator, done, run.final_nll, run.out_dir)
        if guard.best_step != best_before:
            extra = {"best_step": done, "valid_nll": run.final_nll}
            checkpoint.save_weights(run.generator, run.saved_config, run.out_dir, extra)
    if log_metrics:
        log_metrics(entry, done)


def save(run: Run) -> None:
    run.checkpointer.save(
        run.step,
        guard=asdict(run.guard),
        final_nll=run.final_nll,
        accuracy_history=run.accuracy_history,
        warmup=run.warmup,
        mems=[m.cpu() for m in run.mems] if run.mems else [],
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
    log_metrics: Metrics | None = None,
    extra_config: dict | None = None,
    fingerprint: str = "",
    reward: Reward | None = None,
) -> AdversarialResult:
    """Fine-tune from the pretrained weights; returns the run's record. out_dir gets
    model.safetensors (best validation NLL), config.json, candidates/ and last/ (a killed
    run resumes from it with the same fingerprint)."""
    saved_config = {
        "model": generator_config.to_dict(),
        "adversarial": asdict(config),
        **(extra_config or {}),
    }
    run = setup(
        generator_config, discriminator_config, config, train_data, valid_data,
        (generator_init, discriminator_init), bos, out_dir, saved_config, fingerprint, reward,
    )  # fmt: skip
    resumed = run.checkpointer.restore()
    if resumed is not None:
        resume(run, resumed)
    else:  # nothing saved, or other settings / an older format: the pretrained weights
        start(run, log_metrics)
    run.checkpointer.start_clock()
    for step in range(run.step, config.max_steps):
        tau = train_step(run, step, log_metrics)
        done = run.step
        if done % config.eval_interval == 0 or done == config.max_steps:
            evaluate(run, tau, log_metrics)
        if done % config.checkpoint_interval == 0 or done == config.max_steps or run.stopped:
            save(run)
        if run.stopped:
            break
    guard = run.guard
    return AdversarialResult(
        steps=run.step,
        initial_valid_nll=guard.initial_nll,
        best_valid_nll=guard.best_nll,
        final_valid_nll=run.final_nll,
        rollbacks=guard.rollbacks,
        stopped_early=run.stopped,
        seconds=run.checkpointer.seconds(),  # all sessions
        discriminator_accuracy=run.accuracy_history[-1][1] if run.accuracy_history else None,
        accuracy_history=run.accuracy_history,
        warmup=run.warmup,
        candidates=sorted(guard.candidates, key=lambda c: c["step"]),
    )
