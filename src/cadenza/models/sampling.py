"""Sampling from next-token logits: temperature, top-k, top-p (nucleus)."""

from __future__ import annotations

import torch


def filter_logits(logits: torch.Tensor, top_k: int = 0, top_p: float = 1.0) -> torch.Tensor:
    """Set to -inf every logit outside the top-k and outside the smallest set whose
    probability reaches top_p. logits (B, V)."""
    if top_k and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
        cumulative = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
        # Drop a token when the tokens before it already reach top_p (the first always stays).
        drop_sorted = (cumulative - sorted_logits.softmax(dim=-1)) >= top_p
        drop = drop_sorted.scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


def sample_next(
    logits: torch.Tensor,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """One token id per row of logits (B, V); temperature 0 means greedy."""
    if temperature < 0 or not 0 < top_p <= 1 or top_k < 0:
        raise ValueError(
            "temperature >= 0, 0 < top_p <= 1, top_k >= 0 required; "
            f"got {temperature}, {top_p}, {top_k}"
        )
    if temperature == 0:
        return logits.argmax(dim=-1)
    filtered = filter_logits(logits.float() / temperature, top_k, top_p)
    return torch.multinomial(filtered.softmax(dim=-1), 1, generator=generator).squeeze(-1)
