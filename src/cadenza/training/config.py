"""The training loops' configs: each field's one definition, default and check.

Plain dataclasses (no torch, no pydantic), so a bare GPU box runs the loops from Python and
params.yaml reaches them unchanged: config.py embeds these classes in its settings sections
(pydantic validates the types; `__post_init__` checks the values), and a key missing from
params.yaml takes the default written here. Each check names the field, the value and what
is allowed.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

Device = Literal["auto", "cpu", "cuda"]
# Unknown keys are errors when pydantic validates these classes (a plain dict: no import).
FORBID_EXTRA = {"extra": "forbid"}


def at_least(low: float) -> tuple[Callable[[Any], bool], str]:
    return (lambda v: v >= low), f"must be >= {low:g}"


def above(low: float) -> tuple[Callable[[Any], bool], str]:
    return (lambda v: v > low), f"must be > {low:g}"


def within(low: float, high: float, open_low: bool = False, open_high: bool = False):
    def ok(v: Any) -> bool:
        return (v > low if open_low else v >= low) and (v < high if open_high else v <= high)

    left, right = "(" if open_low else "[", ")" if open_high else "]"
    return ok, f"must lie in {left}{low:g}, {high:g}{right}"


def check_fields(config: Any, rules: dict[str, tuple[Callable[[Any], bool], str]]) -> None:
    """Raise one ValueError naming every field whose value breaks its rule."""
    problems = [
        f"{name} = {getattr(config, name)!r} is not allowed: {allowed}"
        for name, (ok, allowed) in rules.items()
        if not ok(getattr(config, name))
    ]
    if problems:
        raise ValueError("; ".join(problems))


def choose(config: Any, name: str, allowed: tuple) -> None:
    value = getattr(config, name)
    if value not in allowed:
        raise ValueError(f"{name} = {value!r} is not allowed: choose one of {list(allowed)}")


@dataclass
class Preset:
    """A generator size with the training budget that suits it (`pretrain.preset`)."""

    __pydantic_config__ = FORBID_EXTRA

    d_model: int
    n_layers: int
    n_heads: int
    d_ff: int
    seg_len: int
    """Tokens per training segment (Transformer-XL)."""
    mem_len: int
    """Cached hidden states carried into the next segment."""
    batch_size: int
    max_steps: int
    lr: float
    eval_interval: int
    checkpoint_interval: int
    dropout: float = 0.1
    attn_dropout: float | None = None
    """Dropout on the attention probabilities; None = `dropout`."""
    rezero: bool = False
    """No block norms; residual weight 0 at init (models/generator.py)."""
    warmup_steps: int = 0
    log_interval: int = 10

    def __post_init__(self) -> None:
        check_fields(self, {
            "d_model": at_least(8), "n_layers": at_least(1), "n_heads": at_least(1),
            "d_ff": at_least(8), "seg_len": at_least(2), "mem_len": at_least(1),
            "dropout": within(0, 1, open_high=True), "batch_size": at_least(1),
            "max_steps": at_least(1), "lr": within(0, 1, open_low=True),
            "warmup_steps": at_least(0), "eval_interval": at_least(1),
            "checkpoint_interval": at_least(1), "log_interval": at_least(1),
        })  # fmt: skip
        if self.attn_dropout is not None:
            check_fields(self, {"attn_dropout": within(0, 1, open_high=True)})
        if self.d_model % self.n_heads or (self.d_model // self.n_heads) % 2:
            raise ValueError(
                f"d_model {self.d_model} must split into n_heads {self.n_heads} heads of even width"
            )


def _cpu(max_steps: int, eval_interval: int) -> Preset:
    """The cpu model (4 layers, width 192) with a budget. No dropout on the attention
    probabilities (residual and embedding dropout 0.1): better valid and test NLL, and 0.72x
    the pretraining time under bf16 (EXPERIMENTS.md, "Attention dropout")."""
    return Preset(
        d_model=192, n_layers=4, n_heads=4, d_ff=768, seg_len=128, mem_len=128, dropout=0.1,
        attn_dropout=0.0, batch_size=16, max_steps=max_steps, lr=0.002, warmup_steps=40,
        eval_interval=eval_interval, checkpoint_interval=100, log_interval=10,
    )  # fmt: skip


# `pretrain.preset` picks one; `pretrain.presets.<name>.<field>` in params.yaml overrides a field.
PRESETS: dict[str, Preset] = {
    # tests: seconds
    "tiny": Preset(
        d_model=32,
        n_layers=2,
        n_heads=2,
        d_ff=64,
        seg_len=32,
        mem_len=32,
        dropout=0.0,
        batch_size=4,
        max_steps=24,
        lr=0.003,
        warmup_steps=4,
        eval_interval=12,
        checkpoint_interval=6,
        log_interval=4,
    ),  # fmt: skip
    # 400 steps, ~2 min on 2 cores
    "cpu": _cpu(400, 100),
    # the default: the cpu model trained 2.5x longer (~4.5 min on 2 cores with cpu_bf16): with
    # Muon, the music and test NLL of 2,000 AdamW steps (EXPERIMENTS.md, "Muon")
    "cpu-long": _cpu(1000, 200),
    # 6,000 steps (~25 min on 2 cores with Muon; measured with AdamW: EXPERIMENTS.md row 39)
    "cpu-xl": _cpu(6000, 500),
    # an H100
    "gpu": Preset(
        d_model=640,
        n_layers=12,
        n_heads=10,
        d_ff=2560,
        seg_len=512,
        mem_len=512,
        dropout=0.1,
        batch_size=32,
        max_steps=20000,
        lr=0.0006,
        warmup_steps=1000,
        eval_interval=1000,
        checkpoint_interval=1000,
        log_interval=50,
    ),  # fmt: skip
}


@dataclass
class TrainConfig:
    """NLL pretraining of the generator (training/pretrain.py)."""

    __pydantic_config__ = FORBID_EXTRA

    batch_size: int = 16
    """Streams per rank."""
    max_steps: int = 1000
    lr: float = 1e-3
    min_lr_ratio: float = 0.1
    """Cosine decay ends at lr * min_lr_ratio."""
    warmup_steps: int = 100
    schedule: Literal["cosine", "inverse_sqrt"] = "cosine"
    """cosine | inverse_sqrt (both after linear warmup)."""
    optimizer: Literal["muon", "adamw"] = "muon"
    """muon: Muon on the blocks' weight matrices, AdamW on the rest (training/pretrain.py's
    build_optimizer); adamw: AdamW on everything (EXPERIMENTS.md, "Muon")."""
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    eval_interval: int = 200
    checkpoint_interval: int = 100
    log_interval: int = 10
    seed: int = 0
    device: Device = "auto"
    compile: bool = True
    """torch.compile the model (CUDA only; ignored on CPU)."""
    cpu_bf16: bool | Literal["auto"] = "auto"
    """True | False | "auto": bf16 autocast for training steps on CPU (auto: where the CPU has
    native bf16 matmuls, AMX or AVX512-BF16; docs/PERFORMANCE.md); validation NLL stays fp32."""
    final_original_steps: int = 0
    """The last this many steps read `final_data` (the train documents as the corpus wrote
    them, without augmented versions) instead of `train_data`."""

    def __post_init__(self) -> None:
        check_fields(self, {
            "min_lr_ratio": within(0, 1), "weight_decay": at_least(0), "grad_clip": above(0),
            "final_original_steps": at_least(0),
        })  # fmt: skip


@dataclass
class MaskedLMConfig:
    """SpanBERT pretraining of the discriminator's encoder (training/discriminator.py)."""

    __pydantic_config__ = FORBID_EXTRA

    batch_size: int = 32
    seq_len: int = 64
    """Window length; also the longest chunk the adversarial stage scores."""
    max_steps: int = 400
    """With muon, MLM loss 1.78 in 400 steps (AdamW: 2.18 in 400, 1.55 in 800); the learned
    probe reads the same at 400 as at 800 (paired, EXPERIMENTS.md "The encoder's steps")."""
    lr: float = 1e-3
    optimizer: Literal["adamw", "muon"] = "muon"
    """adamw: AdamW on everything; muon: Muon on the encoder's and span head's weight
    matrices, AdamW on the embeddings, norms, biases and the score head (as in pretraining)."""
    warmup_steps: int = 50
    schedule: Literal["cosine"] = "cosine"
    """Linear warmup, then cosine decay to lr * min_lr_ratio (as in pretraining)."""
    min_lr_ratio: float = 0.1
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    eval_interval: int = 100
    eval_batches: int = 8
    mask_fraction: float = 0.15
    """Of tokens, in spans."""
    span_p: float = 0.5
    """Span length ~ Geometric(span_p) (mean ~1.9 at 0.5), clipped at max_span."""
    max_span: int = 4
    sbo_weight: float = 1.0
    """Weight of the span boundary objective next to the MLM loss."""
    seed: int = 0
    device: Device = "auto"
    checkpoint_interval: int = 100
    """Steps between saves of last/, the state a killed run resumes from."""

    def __post_init__(self) -> None:
        check_fields(self, {
            "batch_size": at_least(1), "seq_len": at_least(8), "max_steps": at_least(1),
            "checkpoint_interval": at_least(1),
            "lr": within(0, 1, open_low=True), "warmup_steps": at_least(0),
            "eval_interval": at_least(1), "eval_batches": at_least(1),
            "mask_fraction": within(0, 1, open_low=True, open_high=True),
            "span_p": within(0, 1, open_low=True), "max_span": at_least(1),
            "sbo_weight": at_least(0),
        })  # fmt: skip


@dataclass
class AdversarialConfig:
    """NLL + adv_weight x RSGAN fine-tuning of the generator (training/adversarial.py); with
    adv_weight 0 the likelihood-only control."""

    __pydantic_config__ = FORBID_EXTRA

    max_steps: int = 80
    """The control arm (adv_weight 0) takes the same steps, data and seeds."""
    batch_size: int = 8
    """Real segments per NLL step."""
    sample_batch: int = 8
    """Generated samples per adversarial step."""
    sample_len: int = 128
    """Tokens per sample (after the prime), generated in chunks of chunk_len."""
    chunk_len: int = 64
    """Memory detached between chunks, one backward per chunk; must not exceed
    pretrain_discriminator.seq_len."""
    prime_tokens: int = 16
    """Real tokens after [BOS] that start each sample (0 = a bare [BOS]); its chunks are then
    compared with the real chunks at the same positions."""
    adv_weight: float = 0.1
    """lambda in NLL + lambda * adversarial; 0 = the likelihood-only control."""
    estimator: Literal["gumbel", "reinforce", "preference", "rejection"] = "gumbel"
    """How the adversarial term reaches the generator. gumbel: the paper's straight-through
    Gumbel-Softmax through the SpanBERT critic. reinforce: a score-function (policy-gradient)
    estimator on finished samples scored by `reward`, with a leave-one-out baseline over the
    sample batch and a KL penalty to the start model; any judge can score. preference: DPO on
    the sample batch ranked by `reward` (the best sample paired with the worst, the second
    with the second-worst, ...), the start model as DPO's reference; a new batch, ranked by a
    critic refitted on it, every update (online rounds of generate, rank, update). rejection:
    rejection-sampling fine-tuning (best-of-N distillation): the best keep_fraction of each
    round's samples by `reward`, fitted by likelihood."""
    reward: Literal["critic", "music", "voice_leading"] = "critic"
    """What scores a sample under reinforce, preference or rejection. critic: the SpanBERT
    critic's mean chunk score (the critic keeps learning, as under gumbel); music: the log-odds
    of a logistic regression on the sample's music statistics, refitted at every update on the
    newest samples against real train windows; voice_leading: minus the sample's voice-leading
    rule rates (fixed; the evaluation's voice-leading judge then no longer held out). The stage
    provides music and voice_leading (evaluation/critics.py)."""
    kl_weight: float = 0.1
    """reinforce: beta in reward - beta x the per-token log-ratio to the start model."""
    preference_beta: float = 0.1
    """preference: DPO's beta (the strength of the implicit KL to the start model) on the
    summed log-ratios of a pair's samples."""
    preference_pool: int = 0
    """preference and rejection: 0 = online (each update ranks its own batch); N = offline
    rounds: N samples drawn and ranked at once, their pairs taken sample_batch / 2 per update
    (preference) or their kept samples sample_batch per update (rejection)."""
    keep_fraction: float = 0.25
    """rejection: the share of each round's samples, best by reward, the generator fits (only
    those above the round's median reward)."""
    reward_buffer: int = 64
    """reward music: the newest generated samples the classifier is refitted on (in rounds:
    the newest of the round's pool, then it scores the whole pool; EXPERIMENTS.md)."""
    adv_every: int = 4
    """An adversarial update (generator and critic) every this many steps."""
    lr_adversarial: float = 2e-4
    """The adversarial term's own Adam (adv_weight then only scales its clip)."""
    critic_steps: int = 1
    """Critic updates per adversarial update; 0 keeps the warmed-up critic fixed."""
    critic_warmup_steps: int = 300
    """Most critic updates on generated samples before the first adversarial update."""
    critic_warmup_target: float = 0.9
    """The warm-up stops once held-out accuracy reaches this."""
    critic_heldout: int = 256
    """Generated and real (validation) chunks in each held-out accuracy."""
    critic_eval_interval: int = 50
    """Warm-up updates between held-out accuracy checks."""
    tau_start: float = 1.0
    """Gumbel temperature, annealed exponentially to tau_end."""
    tau_end: float = 0.01
    tau_anneal_fraction: float = 1.0
    """tau reaches tau_end after this fraction of max_steps (then stays)."""
    lr_generator: float = 5e-5
    lr_discriminator: float = 2e-4
    grad_clip: float = 1.0
    eval_interval: int = 20
    """Validation NLL, held-out critic accuracy and a candidate checkpoint."""
    checkpoint_interval: int = 20
    tolerance: float = 0.05
    """Allowed relative rise of validation NLL: above the best, the guard rail acts; above
    the start, a candidate is not eligible for selection."""
    on_degrade: Literal["rollback", "stop"] = "rollback"
    """rollback (restore the best weights and continue) | stop."""
    seed: int = 0
    device: Device = "auto"

    def __post_init__(self) -> None:
        check_fields(self, {
            "max_steps": at_least(1), "batch_size": at_least(1), "sample_batch": at_least(1),
            "sample_len": at_least(2), "chunk_len": at_least(1), "prime_tokens": at_least(0),
            "adv_weight": at_least(0), "adv_every": at_least(1),
            "lr_adversarial": within(0, 1, open_low=True), "critic_steps": at_least(0),
            "critic_warmup_steps": at_least(0),
            "critic_warmup_target": within(0.5, 1, open_low=True),
            "critic_heldout": at_least(2), "critic_eval_interval": at_least(1),
            "tau_start": above(0), "tau_end": above(0),
            "tau_anneal_fraction": within(0, 1, open_low=True),
            "lr_generator": within(0, 1, open_low=True),
            "lr_discriminator": within(0, 1, open_low=True), "grad_clip": above(0),
            "eval_interval": at_least(1), "checkpoint_interval": at_least(1),
            "tolerance": at_least(0),
        })  # fmt: skip
        choose(self, "on_degrade", ("rollback", "stop"))
        choose(self, "estimator", ("gumbel", "reinforce", "preference", "rejection"))
        choose(self, "reward", ("critic", "music", "voice_leading"))
        check_fields(self, {
            "kl_weight": at_least(0), "reward_buffer": at_least(4),
            "preference_beta": above(0), "preference_pool": at_least(0),
            "keep_fraction": within(0, 0.5, open_low=True),
        })  # fmt: skip
        if self.estimator == "reinforce" and self.sample_batch < 2:
            raise ValueError(
                f"sample_batch {self.sample_batch}: the reinforce estimator's leave-one-out "
                "baseline needs at least 2 samples per update"
            )
        if self.preference_pool and self.preference_pool < self.sample_batch:
            raise ValueError(
                f"preference_pool {self.preference_pool}: a round must hold at least "
                f"sample_batch ({self.sample_batch}) samples (0 = online pairs)"
            )
        if self.estimator == "preference" and self.sample_batch < 2:
            raise ValueError(
                f"sample_batch {self.sample_batch}: the preference estimator pairs samples "
                "and needs at least 2 per update"
            )
        if self.estimator == "rejection" and self.sample_batch < 2:
            raise ValueError(
                f"sample_batch {self.sample_batch}: the rejection estimator keeps samples "
                "above the batch's median reward and needs at least 2 per update"
            )
        if self.sample_len % self.chunk_len:
            raise ValueError(
                f"sample_len {self.sample_len} must be a multiple of chunk_len {self.chunk_len}"
            )
        if self.tau_end > self.tau_start:
            raise ValueError(f"tau_end {self.tau_end} must not exceed tau_start {self.tau_start}")
        if self.critic_warmup_steps and self.critic_eval_interval > self.critic_warmup_steps:
            raise ValueError(
                f"critic_eval_interval {self.critic_eval_interval} exceeds critic_warmup_steps "
                f"{self.critic_warmup_steps}: the warm-up would never check its accuracy"
            )

    @property
    def num_chunks(self) -> int:
        return self.sample_len // self.chunk_len

    @property
    def adversarial(self) -> bool:
        return self.adv_weight > 0

    @property
    def uses_critic(self) -> bool:
        """The SpanBERT critic trains in this arm (not when a sample-scoring estimator reads
        another reward)."""
        return self.adversarial and (self.estimator == "gumbel" or self.reward == "critic")

    @property
    def scores_samples(self) -> bool:
        """An estimator that needs only a score of finished samples (reinforce, preference,
        rejection)."""
        return self.adversarial and self.estimator != "gumbel"
