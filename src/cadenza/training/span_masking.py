"""SpanBERT masking: contiguous spans with geometric lengths until a budget is masked.

Span lengths ~ Geometric(p), clipped at max_span (p = 0.2, max 10 gives a mean of 3.8); spans
are added until mask_fraction of the tokens is covered. Each span is replaced as a unit:
80% by [MASK], 10% by random tokens, 10% left unchanged (the choice is per span, as in
SpanBERT). Special tokens (PAD/BOS/EOS) are never masked.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


@dataclass
class SpanMask:
    inputs: torch.Tensor
    """(B, T) tokens with spans replaced."""
    targets: torch.Tensor
    """(B, T) original token where masked, -100 elsewhere (ignored by cross_entropy)."""
    span_left: torch.Tensor
    """(B, T) index of the token just before the span (or 0), for masked positions."""
    span_right: torch.Tensor
    """(B, T) index of the token just after the span (or T-1), for masked positions."""
    span_offset: torch.Tensor
    """(B, T) position of the token inside its span (0-based)."""


def sample_span_lengths(rng: np.random.Generator, p: float, max_span: int, size: int) -> np.ndarray:
    return np.minimum(rng.geometric(p, size=size), max_span)


def span_mask(
    tokens: torch.Tensor,
    rng: np.random.Generator,
    mask_id: int,
    vocab_size: int,
    special_ids: set[int],
    mask_fraction: float = 0.15,
    p: float = 0.2,
    max_span: int = 10,
) -> SpanMask:
    B, T = tokens.shape
    inputs = tokens.clone()
    targets = torch.full_like(tokens, -100)
    left = torch.zeros_like(tokens)
    right = torch.full_like(tokens, T - 1)
    offset = torch.zeros_like(tokens)
    original = tokens.numpy()
    budget = max(1, round(mask_fraction * T))
    for b in range(B):
        masked = np.zeros(T, dtype=bool)
        maskable = ~np.isin(original[b], list(special_ids))
        attempts = 0
        while masked.sum() < budget and attempts < 10 * T:
            attempts += 1
            length = int(sample_span_lengths(rng, p, max_span, 1)[0])
            length = min(length, budget - int(masked.sum()))
            start = int(rng.integers(0, T - length + 1))
            span = slice(start, start + length)
            if masked[span].any() or not maskable[span].all():
                continue
            masked[span] = True
            choice = rng.random()
            if choice < 0.8:
                inputs[b, span] = mask_id
            elif choice < 0.9:
                inputs[b, span] = torch.from_numpy(rng.integers(0, vocab_size, length))
            targets[b, span] = tokens[b, span]
            left[b, span] = max(start - 1, 0)
            right[b, span] = min(start + length, T - 1)
            offset[b, span] = torch.arange(length)
    return SpanMask(inputs, targets, left, right, offset)
