"""Sampling from next-token logits: temperature, top-k, top-p (nucleus), and a nucleus
within the pitch tokens only (pitch_top_p)."""

from __future__ import annotations

import torch


def filter_logits(
    logits: torch.Tensor,
    top_k: int = 0,
    top_p: float = 1.0,
    pitch_mask: torch.Tensor | None = None,
    pitch_top_p: float = 1.0,
) -> torch.Tensor:
    """Set to -inf every logit outside the top-k and outside the smallest set whose
    probability reaches top_p. logits (B, V). With a pitch_mask (V,) of the pitch tokens and
    pitch_top_p < 1, also drop the pitch tokens outside the smallest set of pitch tokens
    holding pitch_top_p of the pitch tokens' probability: the tail of unlikely notes goes,
    every other token (positions, durations, voices) keeps its probability."""
    logits = _top_k_top_p(logits, top_k, top_p)
    if pitch_mask is not None and pitch_top_p < 1.0:
        pitch_mask = pitch_mask.to(logits.device)
        within = _top_k_top_p(logits.masked_fill(~pitch_mask, float("-inf")), 0, pitch_top_p)
        logits = logits.masked_fill(pitch_mask & torch.isneginf(within), float("-inf"))
    return logits


def _top_k_top_p(logits: torch.Tensor, top_k: int, top_p: float) -> torch.Tensor:
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
    pitch_mask: torch.Tensor | None = None,
    pitch_top_p: float = 1.0,
) -> torch.Tensor:
    """One token id per row of logits (B, V); temperature 0 means greedy."""
    if temperature < 0 or not 0 < top_p <= 1 or top_k < 0 or not 0 < pitch_top_p <= 1:
        raise ValueError(
            "temperature >= 0, 0 < top_p <= 1, top_k >= 0, 0 < pitch_top_p <= 1 required; "
            f"got {temperature}, {top_p}, {top_k}, {pitch_top_p}"
        )
    if temperature == 0:
        return logits.argmax(dim=-1)
    filtered = filter_logits(logits.float() / temperature, top_k, top_p, pitch_mask, pitch_top_p)
    return torch.multinomial(filtered.softmax(dim=-1), 1, generator=generator).squeeze(-1)
