"""Matched real and generated token windows: what the evaluation's probes compare.

A plan fixes, for every generated sample, one window per position bin: window starts are
drawn uniformly inside each bin, with a seeded generator, so every model compared gets the
same offsets. Generated samples continue a bare [BOS] for `sample_len` tokens (special tokens
suppressed, so every sample reaches that length), in batches whose random numbers depend only
on (seed, batch index): common random numbers across models. Real window i is cut at the same
offset from the start of a document (never across a document boundary), drawn at random among
the documents long enough; documents repeat, which is why the probes' bootstrap resamples
documents, not windows.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch

from cadenza.models.sampling import filter_logits
from cadenza.sampling import Sampling
from cadenza.tokens.grammar import build_grammar, pitch_mask

log = logging.getLogger(__name__)
SPECIAL_TOKENS = ("PAD_None", "BOS_None", "EOS_None", "MASK_None")


@dataclass
class WindowPlan:
    """Where the windows lie: offsets[i, k] is the start of sample i's window in bin k,
    counted in tokens after [BOS]."""

    window_len: int
    sample_len: int
    bin_edges: np.ndarray  # (num_bins + 1,) window-start edges; bin k: [edges[k], edges[k+1])
    offsets: np.ndarray  # (num_samples, num_bins) int64

    @property
    def num_samples(self) -> int:
        return self.offsets.shape[0]

    @property
    def num_bins(self) -> int:
        return self.offsets.shape[1]

    def bin_span(self, k: int) -> tuple[int, int]:
        """First and one-past-last token position that bin k's windows can cover."""
        return int(self.bin_edges[k]), int(self.bin_edges[k + 1] - 1 + self.window_len)


def make_plan(
    num_samples: int, sample_len: int, window_len: int, num_bins: int, seed: int
) -> WindowPlan:
    """num_bins equal ranges of window starts over [0, sample_len - window_len]."""
    if window_len > sample_len:
        raise ValueError(
            f"evaluate.window_len {window_len} exceeds evaluate.sample_len {sample_len}"
        )
    last_start = sample_len - window_len
    if num_bins > last_start + 1:
        raise ValueError(
            f"evaluate.num_bins {num_bins}: only {last_start + 1} window starts fit in "
            f"sample_len {sample_len} with window_len {window_len}; use fewer bins"
        )
    edges = np.linspace(0, last_start + 1, num_bins + 1).round().astype(np.int64)
    rng = np.random.default_rng([seed, 1])
    offsets = np.stack(
        [rng.integers(edges[k], edges[k + 1], num_samples) for k in range(num_bins)], axis=1
    )
    return WindowPlan(window_len, sample_len, edges, offsets)


def documents(tokens: np.ndarray, offsets: np.ndarray, bos: int) -> list[np.ndarray]:
    """The documents of a flat split, each without its leading [BOS] (so positions count
    like a generated sample's) and without a trailing [EOS]."""
    out = []
    for start, end in zip(offsets[:-1], offsets[1:], strict=True):
        doc = np.asarray(tokens[start:end], dtype=np.int64)
        if len(doc) and doc[0] == bos:
            doc = doc[1:]
        out.append(doc)
    return out


@dataclass
class RealWindows:
    tokens: np.ndarray  # (num_samples, num_bins, window_len)
    documents: np.ndarray  # (num_samples, num_bins) index of the document each came from
    num_documents: int  # distinct documents available
    eligible: list[int]  # per bin: documents long enough for every offset in it


def real_windows(docs: list[np.ndarray], plan: WindowPlan, eos: int, seed: int) -> RealWindows:
    """For each planned (sample, bin) offset o, a window [o, o + window_len) of a random
    document at least that long (end-of-document tokens excluded)."""
    lengths = np.array([len(d) - (1 if len(d) and d[-1] == eos else 0) for d in docs])
    rng = np.random.default_rng([seed, 2])
    tokens = np.zeros((*plan.offsets.shape, plan.window_len), dtype=np.int64)
    chosen = np.zeros(plan.offsets.shape, dtype=np.int64)
    eligible_counts = []
    for k in range(plan.num_bins):
        top = int(plan.offsets[:, k].max()) + plan.window_len
        eligible_counts.append(int((lengths >= top).sum()))
        for i, offset in enumerate(plan.offsets[:, k]):
            candidates = np.flatnonzero(lengths >= offset + plan.window_len)
            if not len(candidates):
                raise ValueError(
                    f"no real document holds a window at offset {offset} of "
                    f"{plan.window_len} tokens (longest: {lengths.max()} tokens); lower "
                    "evaluate.sample_len or evaluate.window_len"
                )
            doc = int(rng.choice(candidates))
            chosen[i, k] = doc
            tokens[i, k] = docs[doc][offset : offset + plan.window_len]
    return RealWindows(tokens, chosen, len(docs), eligible_counts)


def generate_samples(
    net, tokenizer, plan: WindowPlan, sampling: Sampling, seed: int, device, batch_size: int = 64
) -> np.ndarray:
    """(num_samples, sample_len) tokens continuing [BOS], drawn with `sampling`; batch b draws
    from a generator seeded by (seed, b) only, so two models see the same random numbers. Its
    grammar masks the tokens the tokenizer's grammar does not allow (cadenza.tokens.grammar),
    when it has one; its pitch_top_p is a nucleus within the pitch tokens
    (models.sampling.filter_logits)."""
    temperature, top_k, top_p = sampling.temperature, sampling.top_k, sampling.top_p
    pitch_top_p = sampling.pitch_top_p
    suppressed = [tokenizer[name] for name in SPECIAL_TOKENS if name in tokenizer.vocab]
    rules = build_grammar(tokenizer) if sampling.grammar else None
    pitches = pitch_mask(tokenizer) if pitch_top_p < 1.0 else None
    if rules is not None:
        rules.to(device)
    out = []
    net.eval()
    with torch.no_grad():
        for b, start in enumerate(range(0, plan.num_samples, batch_size)):
            count = min(batch_size, plan.num_samples - start)
            generator = torch.Generator(device=device).manual_seed(seed * 1_000_003 + b)
            bos = torch.full((count, 1), tokenizer["BOS_None"], dtype=torch.long, device=device)
            # [BOS] through the cache, then the model's ring-buffer decode path, one token a step.
            cache = net.empty_cache(count, device)
            logits = net._forward_cached(bos, cache, 0)[:, -1]  # (B, V)
            state = net.start_decoding(cache, plan.sample_len + 1)
            grammar_state = rules.start(bos) if rules is not None else None
            rows = []
            for position in range(1, plan.sample_len + 1):
                logits = logits.float()
                logits[:, suppressed] = float("-inf")
                if rules is not None:
                    logits = rules.constrain(logits, grammar_state)
                probs = filter_logits(
                    logits / temperature, top_k, top_p, pitches, pitch_top_p
                ).softmax(dim=-1)
                token = torch.multinomial(probs, 1, generator=generator)[:, 0]  # (B,)
                if rules is not None:
                    rules.advance(grammar_state, token)
                rows.append(token)
                if position < plan.sample_len:
                    logits = net.decode_step(token, position, state)
            out.append(torch.stack(rows, dim=1).cpu().numpy())
    return np.concatenate(out)


def cut(samples: np.ndarray, plan: WindowPlan) -> np.ndarray:
    """(num_samples, num_bins, window_len) windows of samples at the plan's offsets."""
    index = plan.offsets[:, :, None] + np.arange(plan.window_len)[None, None, :]
    return np.take_along_axis(samples[:, None, :], index, axis=2)
