"""params.yaml -> typed, validated settings, one section per stage.

Settings are read once, at the edge (the CLI), and handed to stage functions. Bad values stop
the run before any work starts, with an error naming the key, the value and what is allowed.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)

from cadenza.sampling import Sampling
from cadenza.training.config import (
    PRESETS,
    AdversarialConfig,
    MaskedLMConfig,
    Preset,
    TrainConfig,
    at_least,
    check_fields,
    within,
)

DEFAULT_PARAMS_PATH = Path("params.yaml")

# Sources the `import` stage understands; see cadenza.data.sources.
SourceName = Literal["music21", "folder", "maestro", "lakh", "nesmdb", "pop909", "mix"]


class ParamsError(ValueError):
    """params.yaml is missing, unreadable or holds a value that is not allowed."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class ImportSettings(_Section):
    """`import` stage: which corpus to bring into data/raw/<corpus>/."""

    corpus: str = Field("bach", pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    """Name of the imported corpus; its files land in data/raw/<corpus>/."""
    source: SourceName = "music21"
    """music21: a corpus shipped inside the music21 package; folder: a user's MIDI folder;
    maestro / lakh / nesmdb / pop909: that data set's layout, unpacked under `path`;
    mix: every source listed in `mix`, in one corpus."""
    music21_corpus: str = "bach"
    """With source=music21: the corpus directory inside music21 (bach, ryansMammoth, ...)."""
    path: str = "data/external"
    """With any other source: the folder to read, relative to the project root or absolute."""
    mix: list[str] = ["music21:*"]
    """With source=mix: the sources, each `<kind>:<name or folder>` (music21:palestrina,
    music21:* for every music21 corpus, folder:data/external, lakh:/data/lmd_full, ...)."""
    mix_exclude: list[str] = []
    """music21 corpora that `music21:*` leaves out: the target (bach for the base corpus)."""
    limit: int = Field(0, ge=0)
    """Import at most this many files (in sorted order); 0 imports all."""
    num_workers: int = Field(0, ge=0)
    """Processes for conversion; 0 uses every core."""


class ValidateSettings(_Section):
    """`validate` stage: per-file checks, quarantine, and the Great Expectations gate."""

    max_file_bytes: int = Field(20_000_000, gt=0)
    """Files larger than this are quarantined unread."""
    min_notes: int = Field(8, ge=1)
    max_notes: int = Field(200_000, ge=1)
    min_duration_seconds: float = Field(1.0, ge=0)
    max_duration_seconds: float = Field(3600.0, gt=0)
    """Longer files (e.g. absurd delta times) are quarantined."""
    max_bad_fraction: float = Field(0.05, ge=0, le=1)
    """The stage fails when more than this fraction of files is quarantined."""
    min_files: int = Field(1, ge=1)
    """The stage fails when fewer usable files remain."""

    @model_validator(mode="after")
    def _bounds_ordered(self) -> ValidateSettings:
        if self.min_notes > self.max_notes:
            raise ValueError(
                f"min_notes ({self.min_notes}) must be <= max_notes ({self.max_notes})"
            )
        if self.min_duration_seconds >= self.max_duration_seconds:
            raise ValueError(
                f"min_duration_seconds ({self.min_duration_seconds}) must be < "
                f"max_duration_seconds ({self.max_duration_seconds})"
            )
        return self


class SplitSettings(_Section):
    """`split` stage: deterministic, grouped train/valid/test assignment."""

    train: float = Field(0.8, ge=0, le=1)
    valid: float = Field(0.1, ge=0, le=1)
    test: float = Field(0.1, ge=0, le=1)
    seed: int = 0
    """Changing the seed reshuffles every group; adding files never moves existing ones."""
    group_by: Literal["piece", "composer"] = "piece"
    """Files of one group always share a split."""
    use_official: bool = True
    """Keep a data set's own split (MAESTRO, NES-MDB) where its metadata gives one."""

    @model_validator(mode="after")
    def _fractions_sum_to_one(self) -> SplitSettings:
        total = self.train + self.valid + self.test
        if abs(total - 1.0) > 1e-6:
            raise ValueError(
                f"train + valid + test must sum to 1, got {self.train} + {self.valid} + "
                f"{self.test} = {total:g}"
            )
        return self


class TokenizeSettings(_Section):
    """`tokenize` stage: the miditok tokenizer and train-only augmentation."""

    tokenizer: Literal["REMI", "TSD", "MIDILike", "Structured"] = "REMI"
    num_velocities: int = Field(0, ge=0, le=127)
    """Velocity bins; 0 = no Velocity tokens (notes decode at miditok's default velocity): for
    corpora whose velocities carry nothing, like music21's Bach (one velocity), it saves a
    token per note."""
    pitch_range: tuple[int, int] = (21, 109)
    """Lowest pitch and one past the highest (miditok convention)."""
    beat_resolution: int = Field(8, ge=1, le=64)
    """Positions per beat for the first 4 beats of durations/time shifts (half beyond)."""
    bpe_vocab_size: int = Field(0, ge=0)
    """0: no BPE; otherwise train BPE on the train split up to this vocabulary size."""
    transpositions: list[int] = [-3, -2, -1, 1, 2, 3]
    """Semitone shifts added for the train split (a shift that takes a note out of
    pitch_range is skipped for that file)."""
    time_stretches: list[float] = [0.95, 1.05]
    """Tempo-stretch factors added for the train split."""
    voice_programs: bool = True
    """Number the parts of a multi-part score by register (program 0 = top voice) where they
    share one program, so each note's Program token names its voice."""
    key_normalize: bool = False
    """Move every piece into C major / A minor before encoding (train, valid and test); the
    model learns key-relative music, samples are placed in keys drawn from the train split's
    and real windows moved back to their own keys for evaluation (cadenza.tokens.keys)."""
    num_workers: int = Field(0, ge=0)
    """Processes for encoding; 0 uses every core."""

    @model_validator(mode="after")
    def _check(self) -> TokenizeSettings:
        if self.key_normalize and self.transpositions:
            raise ValueError(
                f"key_normalize: true with transpositions {self.transpositions}: transposing "
                "normalized pieces undoes the normalization; set transpositions: [] (the key "
                "is drawn at generation instead)"
            )
        if self.key_normalize and self.bpe_vocab_size:
            raise ValueError(
                "key_normalize: true needs bpe_vocab_size: 0 (keys are placed by moving Pitch "
                "tokens, which BPE merges hide)"
            )
        low, high = self.pitch_range
        if not 0 <= low < high <= 128:
            raise ValueError(
                f"pitch_range {list(self.pitch_range)} must satisfy 0 <= low < high <= 128"
            )
        if any(not -24 <= t <= 24 for t in self.transpositions):
            raise ValueError(f"transpositions {self.transpositions} must lie within -24..24")
        if any(not 0.5 <= f <= 2.0 for f in self.time_stretches):
            raise ValueError(f"time_stretches {self.time_stretches} must lie within 0.5..2.0")
        if self.bpe_vocab_size and self.bpe_vocab_size < 600:
            raise ValueError(
                f"bpe_vocab_size {self.bpe_vocab_size} must be 0 or at least 600 "
                "(above the base vocabulary)"
            )
        return self


class PretrainSettings(_Section):
    """`pretrain` stage: NLL training of the Transformer-XL generator. The loop's own fields
    (schedule, optimizer, lr decay, clip, seed, device, compile, cpu_bf16) take their defaults from
    cadenza.training.config.TrainConfig; the model size and budget from the preset."""

    preset: str = "cpu-long"
    """Which entry of `presets` to train: tiny (tests), cpu, cpu-long (default), cpu-xl, gpu."""
    presets: dict[str, Preset] = Field(default_factory=lambda: dict(PRESETS))
    """Named model sizes with their budgets (cadenza.training.config.PRESETS); a params.yaml
    entry `presets.<name>.<field>` overrides that field, a new name adds a preset."""
    schedule: Literal["cosine", "inverse_sqrt"] = TrainConfig.schedule
    optimizer: Literal["muon", "adamw"] = TrainConfig.optimizer
    min_lr_ratio: float = TrainConfig.min_lr_ratio
    weight_decay: float = TrainConfig.weight_decay
    grad_clip: float = TrainConfig.grad_clip
    seed: int = TrainConfig.seed
    device: Literal["auto", "cpu", "cuda"] = TrainConfig.device
    compile: bool = TrainConfig.compile
    cpu_bf16: bool | Literal["auto"] = TrainConfig.cpu_bf16
    final_original_fraction: float = Field(0.15, ge=0, lt=1)
    """The last this fraction of steps read only the train documents as the corpus wrote them
    (no transposed or stretched versions): augmentation teaches every key about equally, the
    corpus has its own keys, and samples drifted towards the augmented ones (EXPERIMENTS.md)."""
    ngram_order: int = Field(4, ge=2, le=6)
    """Order of the n-gram baseline written next to the model's test NLL."""
    init: Literal["scratch", "base"] = "scratch"
    """scratch: random initial weights; base: start from models/generator-base/ (the base
    pipeline's model, same preset and tokenizer), i.e. fine-tune it on this corpus."""

    @field_validator("presets", mode="before")
    @classmethod
    def _over_code_presets(cls, value: Any) -> Any:
        """params.yaml's presets override the code's field by field."""
        if not isinstance(value, dict):
            return value
        merged = {name: asdict(preset) for name, preset in PRESETS.items()}
        for name, fields_ in value.items():
            base = merged.get(name, {})
            merged[name] = {**base, **fields_} if isinstance(fields_, dict) else fields_
        return merged

    @model_validator(mode="after")
    def _preset_exists(self) -> PretrainSettings:
        if self.preset not in self.presets:
            raise ValueError(f"preset {self.preset!r} is not one of {sorted(self.presets)}")
        TrainConfig(**self._train_fields())  # the loop's own checks, before any work
        return self

    def _train_fields(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in _PRETRAIN_LOOP_FIELDS}

    @property
    def selected(self) -> Preset:
        return self.presets[self.preset]

    def train_config(self) -> TrainConfig:
        """The loop's config: the selected preset's budget and this section's loop fields."""
        preset = self.selected
        budget = {name: getattr(preset, name) for name in _PRESET_BUDGET_FIELDS}
        return TrainConfig(
            **budget,
            **self._train_fields(),
            final_original_steps=round(self.final_original_fraction * preset.max_steps),
        )


_PRETRAIN_LOOP_FIELDS = (
    "schedule", "optimizer", "min_lr_ratio", "weight_decay", "grad_clip", "seed", "device",
    "compile", "cpu_bf16",
)  # fmt: skip
_PRESET_BUDGET_FIELDS = (
    "batch_size", "max_steps", "lr", "warmup_steps", "eval_interval", "checkpoint_interval",
    "log_interval",
)  # fmt: skip


@dataclass
class DiscriminatorSettings(MaskedLMConfig):
    """`pretrain_discriminator` stage: SpanBERT pretraining of the discriminator encoder. The
    training fields are MaskedLMConfig's (cadenza.training.config); these add the encoder's
    shape (cadenza.models.discriminator.DiscriminatorConfig, max_len = seq_len)."""

    d_model: int = 128
    n_layers: int = 3
    n_heads: int = 4
    d_ff: int = 512
    dropout: float = 0.1
    local_bias: bool = True
    """ALiBi-style distance bias in the encoder's attention: without it the masked-LM loss
    sat at the unigram loss for hundreds of steps (docs/LOG.md)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        check_fields(self, {
            "d_model": at_least(8), "n_layers": at_least(1), "n_heads": at_least(1),
            "d_ff": at_least(8), "dropout": within(0, 1, open_high=True),
        })  # fmt: skip
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model {self.d_model} must be divisible by n_heads {self.n_heads}")

    def encoder_fields(self) -> dict[str, Any]:
        """The DiscriminatorConfig fields this section sets (vocab_size comes from the tokens)."""
        names = ("d_model", "n_layers", "n_heads", "d_ff", "dropout", "max_span", "local_bias")
        return {"max_len": self.seq_len, **{name: getattr(self, name) for name in names}}


class SamplingSettings(_Section):
    """`sampling`: the one default of generate, serving, the evaluation's samples (and the
    gallery), the listening clips and the champion's re-scoring. Chosen on the valid split by
    the strongest probe (`cadenza tune-sampling`); plain sampling is temperature 1, top_k 0,
    top_p 1."""

    temperature: float = Field(1.0, gt=0)
    top_k: int = Field(0, ge=0)
    """Keep the k likeliest tokens (0 = off)."""
    top_p: float = Field(1.0, gt=0, le=1)
    """Nucleus: keep the likeliest tokens holding this much probability (1 = off)."""
    grammar: bool = False
    """Mask the tokens the tokenizer's grammar does not allow next (a REMI Position before
    the last one in its bar, a Pitch without its Velocity and Duration): cadenza.tokens.grammar.
    No effect for tokenizations without one (BPE, TSD, ...)."""
    pitch_top_p: float = Field(1.0, gt=0, le=1)
    """Nucleus within the pitch tokens only: when a note's pitch is drawn, keep the likeliest
    pitches holding this much of the pitch probability (1 = off); positions, durations and
    voices keep their probabilities. No effect for a BPE vocabulary."""

    @property
    def value(self) -> Sampling:
        """These settings as the value object every sampler takes (cadenza.sampling)."""
        return Sampling(**self.model_dump())

    @property
    def is_plain(self) -> bool:
        return self.value.is_plain


class _Sampled(_Section):
    """A section that samples: it reads the top-level `sampling` section (set by Settings)."""

    _sampling: SamplingSettings = PrivateAttr(default_factory=SamplingSettings)

    @property
    def sampling(self) -> SamplingSettings:
        return self._sampling

    def with_sampling(self, sampling: SamplingSettings):
        copy = self.model_copy()
        copy._sampling = sampling
        return copy


@dataclass
class AdversarialSettings(AdversarialConfig):
    """`adversarial` stage: the loop's AdversarialConfig (cadenza.training.config), run as a GAN
    arm and a likelihood-only control, plus the data it trains on and the rule that picks
    each arm's checkpoint by a probe on validation data."""

    train_documents: Literal["all", "original"] = "original"
    """Train documents for the NLL term, the primes and the critic's real chunks: all (with
    the augmented versions) or original (the corpus as written, as pretrain's final phase)."""
    select: Literal["probe", "nll"] = "probe"
    """probe: the candidate the strongest probe finds hardest to tell from real validation
    windows (both arms alike); nll: the lowest validation NLL."""
    select_samples: int = 48
    """Samples per candidate for the selection probe (no bootstrap)."""
    select_sample_len: int = 512
    select_window_len: int = 256
    select_bins: int = 2
    select_folds: int = 5

    def __post_init__(self) -> None:
        super().__post_init__()
        check_fields(self, {
            "select_samples": at_least(4), "select_sample_len": at_least(16),
            "select_window_len": at_least(8), "select_bins": at_least(1),
            "select_folds": at_least(2),
        })  # fmt: skip
        if self.select_window_len > self.select_sample_len:
            raise ValueError(
                f"select_window_len {self.select_window_len} must not exceed "
                f"select_sample_len {self.select_sample_len}"
            )
        if self.adv_weight == 0:
            raise ValueError(
                "adv_weight = 0 is not allowed: the GAN arm would be the likelihood-only "
                "control the stage trains beside it (set adv_weight > 0)"
            )

    @property
    def sampling(self) -> SamplingSettings:
        """The top-level `sampling` (set by Settings): the selection samples like evaluate."""
        return self.__dict__.get("_sampling") or SamplingSettings()

    def loop_config(self) -> AdversarialConfig:
        """The GAN arm's loop config: this section without the stage's own fields."""
        return AdversarialConfig(
            **{f.name: getattr(self, f.name) for f in fields(AdversarialConfig)}
        )


class EvaluateSettings(_Sampled):
    """`evaluate` stage: test NLL, probes of real vs generated windows, music statistics,
    paired comparisons, position bins, samples gallery."""

    num_samples: int = Field(128, ge=4)
    """Generated samples per model, each started at [BOS]; one window per position bin each."""
    sample_len: int = Field(800, ge=16)
    """Tokens per generated sample (special tokens suppressed, so every sample is this long)."""
    window_len: int = Field(256, ge=8)
    """Tokens per window the probes read (real windows: the same offsets, the same length)."""
    num_bins: int = Field(4, ge=1)
    """Position bins: window starts split into this many equal ranges of [0, sample_len -
    window_len]; accuracy is reported per bin."""
    min_documents: int = Field(20, ge=2)
    """When fewer test documents are long enough for the last bin, valid documents are added
    (and the metrics say so)."""
    num_pieces: int = Field(32, ge=2)
    """Pieces per model for the set-level music statistics (first piece_len tokens)."""
    piece_len: int = Field(512, ge=16)
    """Tokens per piece (generated openings and real test openings alike)."""
    gallery_size: int = Field(4, ge=0)
    report_plain: bool = True
    """When `sampling` is not plain, also score the MLE generator's plain (temperature-1)
    samples on the same windows, so model quality and sampling are not confused."""
    generation_batch: int = Field(64, ge=1)
    """Samples generated together (a batch's random numbers depend on seed and batch index)."""
    folds: int = Field(5, ge=2)
    """Grouped cross-validation folds of each probe."""
    cv_repeats: int = Field(2, ge=1)
    """Cross-validations with reshuffled folds averaged for each point estimate."""
    bootstrap: int = Field(100, ge=10)
    """Cluster-bootstrap replicates (documents and samples resampled, probe refitted)."""
    candidate: Literal["auto", "gan", "control", "mle"] = "auto"
    """Which generator to register: auto = the GAN when the paired comparison finds it harder
    to tell from real than its likelihood-only control at register.alpha, within
    register.max_nll_increase of the control's test NLL; else the control when it beats the
    MLE generator by the same rule; else the MLE generator."""
    render_audio: bool = True
    """An audio file beside each piano roll in the report (see cadenza.audio)."""
    synthesizer: Literal["tinysoundfont", "fluidsynth"] = "tinysoundfont"
    """tinysoundfont (a wheel, with the GM soundfont shipped in pretty_midi) or fluidsynth
    (only when installed; the soundfont: $CADENZA_SOUNDFONT or a system GM soundfont)."""
    audio_format: Literal["mp3", "ogg", "wav"] = "mp3"
    tasks: bool = True
    """Also measure the control tasks on the test pieces (evaluation/tasks.py): the candidate
    harmonizes each piece's top voice and infills its middle bars; results under `tasks`."""
    tasks_window_len: int = Field(256, ge=8)
    """Tokens per harmonization window (at bar 1 and at the middle bar of each piece)."""
    infill_bars: int = Field(2, ge=1)
    """Bars rewritten in the middle of each test piece."""
    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"

    @model_validator(mode="after")
    def _windows_fit(self) -> EvaluateSettings:
        if self.window_len > self.sample_len:
            raise ValueError(
                f"window_len {self.window_len} must not exceed sample_len {self.sample_len}"
            )
        return self


class RegisterSettings(_Section):
    """Registration of the evaluated candidate and the promotion gate."""

    model_name: str = Field("cadenza-generator", min_length=1, pattern=r"^[A-Za-z0-9_.\-]+$")
    alpha: float = Field(0.05, gt=0, lt=1)
    """The challenger is promoted only when the paired comparison (challenger - champion
    discriminative accuracy) is below zero with its 95% CI, at p < alpha."""
    max_nll_increase: float = Field(0.02, ge=0)
    """epsilon: test NLL (nats/token) may exceed the champion's by at most this."""
    require_validation: bool = True
    """Refuse promotion unless the data validation suite passed."""
    listening_min_votes: int = Field(0, ge=0)
    """Listening rule (0 = off): promote only when a `cadenza listen` study of the candidate
    against the champion has at least this many votes..."""
    listening_min_preference: float = Field(0.5, ge=0, le=1)
    """...and listeners preferred the candidate in at least this share of them."""


class ListenSettings(_Sampled):
    """`cadenza listen`: blind A/B listening studies and their vote database."""

    num_pairs: int = Field(10, ge=1, le=1000)
    """Pairs per study (one clip from each source per pair)."""
    clip_seconds: float = Field(10.0, gt=0, le=300)
    """Every clip is cut (with a fade) or padded to exactly this length."""
    piece_tokens: int = Field(512, ge=16)
    """Tokens generated per piece when a source is a generator (sampled with `sampling`)."""
    synthesizer: Literal["tinysoundfont", "fluidsynth"] = "tinysoundfont"
    audio_format: Literal["mp3", "ogg", "wav"] = "mp3"
    ask_human: bool = True
    """Also ask which clip sounds composed by a person."""
    database: str = Field("sqlite:///listening.db", min_length=1)
    """SQLAlchemy URL of the vote database: a SQLite file, or postgresql://user@host/db."""
    seed: int = 0


class Settings(_Section):
    import_: ImportSettings = Field(default_factory=ImportSettings, alias="import")
    validate_: ValidateSettings = Field(default_factory=ValidateSettings, alias="validate")
    split: SplitSettings = Field(default_factory=SplitSettings)
    tokenize: TokenizeSettings = Field(default_factory=TokenizeSettings)
    pretrain: PretrainSettings = Field(default_factory=PretrainSettings)
    pretrain_discriminator: DiscriminatorSettings = Field(default_factory=DiscriminatorSettings)
    adversarial: AdversarialSettings = Field(default_factory=AdversarialSettings)
    evaluate: EvaluateSettings = Field(default_factory=EvaluateSettings)
    register_: RegisterSettings = Field(default_factory=RegisterSettings, alias="register")
    listen: ListenSettings = Field(default_factory=ListenSettings)
    sampling: SamplingSettings = Field(default_factory=SamplingSettings)

    @model_validator(mode="after")
    def _share_sampling(self) -> Settings:
        self.evaluate._sampling = self.sampling
        self.listen._sampling = self.sampling
        self.adversarial.__dict__["_sampling"] = self.sampling  # selection samples like evaluate
        return self

    @model_validator(mode="after")
    def _chunk_fits_discriminator(self) -> Settings:
        if self.adversarial.chunk_len > self.pretrain_discriminator.seq_len:
            raise ValueError(
                f"adversarial.chunk_len {self.adversarial.chunk_len} exceeds "
                f"pretrain_discriminator.seq_len {self.pretrain_discriminator.seq_len}"
            )
        return self


def _format_error(error: dict[str, Any], source: str) -> str:
    key = ".".join(str(part) for part in error["loc"]) or "(top level)"
    message = error["msg"].removeprefix("Value error, ")
    if error["type"] in ("extra_forbidden", "unexpected_keyword_argument"):
        section, _, name = key.partition(".")
        moved = ("temperature", "top_k", "top_p", "pitch_top_p")
        if section in ("evaluate", "listen") and name in moved:
            return (
                f"{source}: '{key}' has moved to the top-level `sampling` section (one default "
                f"for generate, serving, evaluation and listening): set sampling.{name} instead"
            )
        return (
            f"{source}: unknown key '{key}' (check the spelling; every key is documented in"
            " src/cadenza/config.py and src/cadenza/training/config.py; retired options are in"
            " docs/LOG.md)"
        )
    if error["type"] == "missing":
        return f"{source}: missing key '{key}'"
    if isinstance(error.get("input"), dict):  # a section's check: its message names the keys
        parts = message.split("; ")
        if all(re.match(r"\w+ = ", part) for part in parts):  # "field = value is not allowed"
            return "\n".join(f"{source}: {key}.{part}" for part in parts)
        return f"{source}: {key}: {message}"
    return f"{source}: {key} = {error.get('input')!r} is not allowed: {message}"


def parse_settings(raw: dict[str, Any], source: str = "params.yaml") -> Settings:
    """Validate a params mapping; raise ParamsError naming every bad key."""
    try:
        return Settings.model_validate(raw)
    except ValidationError as exc:
        lines = [_format_error(error, source) for error in exc.errors()]
        raise ParamsError("\n".join(lines)) from None


def load_settings(path: Path | str = DEFAULT_PARAMS_PATH) -> Settings:
    """Read params.yaml into validated Settings."""
    path = Path(path)
    if not path.is_file():
        raise ParamsError(
            f"{path}: no such params file (run from the project root or pass --params)"
        )
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ParamsError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(raw, dict):
        raise ParamsError(f"{path}: expected a mapping of sections, got {type(raw).__name__}")
    return parse_settings(raw, source=str(path))
