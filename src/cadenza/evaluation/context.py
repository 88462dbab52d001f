"""What every evaluation of a generator is read against, and how a model's windows are made.

A `Context` holds the window plan, the real windows and their features, the frozen encoder of
models/discriminator and the tokenizer. `prepare` builds it from the test (or valid) split;
`model_windows` samples a model with the plan's seeds (common random numbers) and reads its
windows with the same probes; `instrument_for` scores them. The `evaluate` stage, `register`
(tracking/challenge.py), sampling tuning and the adversarial stage's checkpoint selection all
use these, so every number they report is made the same way.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cadenza.config import EvaluateSettings
from cadenza.evaluation import discriminative, window_stats, windows
from cadenza.evaluation.instrument import Instrument, WindowSet, window_set
from cadenza.generate import clean_ids, decode_ids, load_generator
from cadenza.models.discriminator import Discriminator, DiscriminatorConfig
from cadenza.paths import Paths
from cadenza.sampling import Sampling
from cadenza.tokens.keys import place, place_samples
from cadenza.tokens.store import load_key_shifts, load_split
from cadenza.training import checkpoint
from cadenza.training.pretrain import evaluate_nll

log = logging.getLogger(__name__)
WINDOWS_FILE = "windows.npz"
"""In reports/evaluate/: the plan, real windows and samples `register` re-scores on."""
PROBES = ("learned", "music", "combined")


@dataclass
class Context:
    """What every model's windows are scored against: the plan, the real windows and their
    features, the frozen encoder and the tokenizer."""

    settings: EvaluateSettings
    plan: windows.WindowPlan
    real: windows.RealWindows | None
    real_set: WindowSet | None
    encoder: Discriminator
    tokenizer: object
    device: object
    splits: list[str]

    def fingerprint(self) -> str:
        """Identity of the generated samples: plan, seeds, sampling and vocabulary."""
        s, sampling = self.settings, self.settings.sampling.value
        keys = (s.num_samples, s.sample_len, s.window_len, s.num_bins, s.seed,
                sampling.temperature, sampling.top_k, sampling.top_p, s.generation_batch,
                len(self.tokenizer.vocab))  # fmt: skip
        if sampling.grammar:  # (a plain fingerprint stays what it was before the option)
            keys = (*keys, "grammar")
        if sampling.pitch_top_p < 1.0:  # (likewise)
            keys = (*keys, "pitch_top_p", sampling.pitch_top_p)
        return hashlib.sha256(json.dumps(keys).encode()).hexdigest()[:16]


def load_encoder(folder: Path) -> Discriminator:
    """The frozen SpanBERT encoder of a discriminator folder (config.json + weights)."""
    encoder = Discriminator(DiscriminatorConfig(**checkpoint.read_config(folder)["model"]))
    checkpoint.load_weights(encoder, folder)
    return encoder


def prepare_encoder(
    settings: EvaluateSettings, paths: Paths, device, plan: windows.WindowPlan | None = None
) -> Context:
    """The context without real windows: plan (made from settings unless given), the frozen
    encoder of models/discriminator, the tokenizer of the pipeline's generators."""
    encoder = load_encoder(paths.discriminator_dir).to(device)
    _, tokenizer = load_generator(paths.generator_mle_dir)
    if plan is None:
        plan = windows.make_plan(
            settings.num_samples, settings.sample_len, settings.window_len, settings.num_bins,
            settings.seed,
        )  # fmt: skip
    return Context(settings, plan, None, None, encoder, tokenizer, device, [])


def prepare(settings: EvaluateSettings, paths: Paths, device, split: str = "test") -> Context:
    """The context with real windows and their features: from the test documents (valid ones
    added when too few are long enough for the last bin), or with split="valid" from the valid
    documents only (choices tuned on them never see test data)."""
    context = prepare_encoder(settings, paths, device)
    plan, tokenizer = context.plan, context.tokenizer
    bos, eos = tokenizer["BOS_None"], tokenizer["EOS_None"]
    docs, context.splits = windows.documents(*load_split(paths.tokens_dir, split), bos), [split]
    longest_needed = int(plan.offsets[:, -1].max()) + plan.window_len
    long_enough = sum(len(d) - 1 >= longest_needed for d in docs)
    if split == "test" and long_enough < settings.min_documents:
        log.warning(
            "evaluate: %d test documents hold %d tokens (evaluate.min_documents %d): adding "
            "the valid split's documents to the real windows",
            long_enough, longest_needed, settings.min_documents,
        )  # fmt: skip
        docs += windows.documents(*load_split(paths.tokens_dir, "valid"), bos)
        context.splits.append("valid")
    context.real = windows.real_windows(docs, plan, eos, settings.seed)
    context.real.tokens = real_in_own_keys(paths, context.splits, tokenizer, context.real)
    features, music = features_of(context, context.real.tokens)
    context.real_set = window_set(plan, features, context.real.documents, music)
    return context


def real_in_own_keys(
    paths: Paths, splits: list[str], tokenizer, real: windows.RealWindows
) -> np.ndarray:
    """The real windows' tokens, each moved back into its document's own key when the tokens
    were key-normalized (`tokenize.key_normalize`); else unchanged."""
    shifts = [load_key_shifts(paths.tokens_dir, split) for split in splits]
    if any(s is None for s in shifts):
        return real.tokens
    return place(tokenizer, real.tokens, -np.concatenate(shifts)[real.documents])


def real_pieces(tokenizer, tokens, offsets, count: int, length: int, key_shifts=None) -> list:
    """count real pieces of length tokens, decoded: the opening of each test document first,
    then (for small test splits) later windows of the documents, round by round. key_shifts:
    (documents,) semitones each document was key-normalized by, moved back before decoding."""
    pieces = []
    documents = list(zip(offsets[:-1], offsets[1:], strict=True))
    for round_index in range(max(1, int(max(offsets[1:] - offsets[:-1], default=0)) // length)):
        for doc, (start, end) in enumerate(documents):
            begin = start + round_index * length
            if begin >= end - 1:
                continue
            window = np.asarray(tokens[begin : min(end, begin + length)], dtype=np.int64)
            if key_shifts is not None:
                window = place(tokenizer, window[None], -key_shifts[doc : doc + 1])[0]
            ids = clean_ids(tokenizer, window.tolist())
            if ids:
                pieces.append(decode_ids(tokenizer, ids))
            if len(pieces) == count:
                return pieces
    return pieces


def features_of(context: Context, tokens: np.ndarray) -> tuple[dict, np.ndarray]:
    """Per-probe features and the music-statistics matrix of (S, K, W) windows."""
    flat = tokens.reshape(-1, tokens.shape[-1])
    learned = discriminative.encoder_features(context.encoder, flat, context.device)
    music = window_stats.features_of_windows(context.tokenizer, flat)
    features = {"learned": learned, "music": music, "combined": np.hstack([learned, music])}
    return features, music


def test_nll(net, paths: Paths, device) -> float:
    """The generator's NLL per token on the test split."""
    tokens, _ = load_split(paths.tokens_dir, "test")
    return evaluate_nll(net, tokens, net.config.seg_len, device)


def sample_model(
    context: Context, net, seed: int, sampling: Sampling | None = None, tokenizer=None
) -> np.ndarray:
    """(num_samples, sample_len) samples of one model with the context's plan and seed and
    `sampling` (default: the pipeline's), in its `tokenizer`'s tokens (default the
    context's); a key-normalized model's are placed in keys drawn from its train split's."""
    s = context.settings
    sampling = sampling or s.sampling.value
    tokenizer = tokenizer or context.tokenizer
    samples = windows.generate_samples(
        net, tokenizer, context.plan, sampling, seed, context.device, s.generation_batch
    )
    return place_samples(tokenizer, samples, seed)


def model_windows(
    context: Context, net, seed: int, samples: np.ndarray | None = None,
    sampling: Sampling | None = None, tokenizer=None,
) -> tuple[np.ndarray, WindowSet]:  # fmt: skip
    """(samples, WindowSet) of one model: generated with the context's plan and seed and
    `sampling` (default: the pipeline's), or the given samples, generated earlier with the
    same fingerprint. Generated samples of a key-normalized model (its `tokenizer`, default
    the context's) are placed in keys drawn from its train split's."""
    if samples is None:
        samples = sample_model(context, net, seed, sampling, tokenizer)
    features, music = features_of(context, windows.cut(samples, context.plan))
    groups = np.repeat(np.arange(context.plan.num_samples), context.plan.num_bins)
    return samples, window_set(context.plan, features, groups, music)


def instrument_for(context: Context) -> Instrument:
    s = context.settings
    return Instrument(context.plan, context.real_set, s.folds, s.cv_repeats, s.bootstrap, s.seed)


def save_windows(path: Path, context: Context, samples: dict, sets: dict) -> None:
    """Everything `register` needs to score another model on the same windows."""
    arrays = {
        "offsets": context.plan.offsets,
        "bin_edges": context.plan.bin_edges,
        "real_tokens": context.real.tokens.astype(np.int32),
        "real_documents": context.real.documents,
        "fingerprint": np.array(context.fingerprint()),
    }
    for probe in PROBES:
        arrays[f"real_{probe}"] = context.real_set.features[probe].astype(np.float32)
    for name in samples:
        arrays[f"samples_{name}"] = samples[name].astype(np.int32)
        for probe in PROBES:
            arrays[f"{name}_{probe}"] = sets[name].features[probe].astype(np.float32)
    np.savez_compressed(path, **arrays)
