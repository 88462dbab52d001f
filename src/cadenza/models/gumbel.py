"""Straight-through Gumbel-Softmax (Jang et al. 2017) and chunked differentiable sampling.

Forward: a hard one-hot sample. Backward: the gradient of the soft relaxation
softmax((logits + g) / tau). Feeding the (B, V) one-hot back into the generator as
`one_hot @ embedding` keeps the whole sample differentiable.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
import torch.nn.functional as F


def gumbel_noise(
    shape: torch.Size, device: torch.device, generator: torch.Generator | None
) -> torch.Tensor:
    uniform = torch.rand(shape, device=device, generator=generator).clamp_(1e-10, 1.0 - 1e-7)
    return -torch.log(-torch.log(uniform))


def straight_through_sample(
    logits: torch.Tensor, tau: float, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(one-hot with soft gradients (B, V), sampled ids (B,)) from logits (B, V)."""
    soft = F.softmax(
        (logits.float() + gumbel_noise(logits.shape, logits.device, generator)) / tau, dim=-1
    )
    index = soft.argmax(dim=-1)
    hard = F.one_hot(index, logits.shape[-1]).to(soft.dtype)
    return hard - soft.detach() + soft, index


def sample_chunks(
    model,
    prompt: torch.Tensor,
    num_chunks: int,
    chunk_len: int,
    tau: float,
    generator: torch.Generator | None = None,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield num_chunks differentiable samples (one-hot (B, c, V), ids (B, c)).

    Inside a chunk the gradient flows through every fed-back soft token and the key/value
    memory; at each chunk boundary the memory is detached, so the caller can backpropagate
    one chunk at a time and peak memory follows chunk_len, not the sample length.
    """
    cache = model.empty_cache(prompt.shape[0], prompt.device)
    pending, position = prompt, 0  # tokens to feed before sampling the next chunk
    for _ in range(num_chunks):
        logits = model._forward_cached(pending, cache, position)[:, -1]
        position += pending.shape[1]
        one_hots, ids = [], []
        for step in range(chunk_len):
            one_hot, index = straight_through_sample(logits, tau, generator)
            one_hots.append(one_hot)
            ids.append(index)
            if step < chunk_len - 1:
                logits = model._forward_cached(one_hot[:, None], cache, position)[:, -1]
                position += 1
        yield torch.stack(one_hots, dim=1), torch.stack(ids, dim=1)
        model.detach_cache(cache)
        # The chunk's last token enters the next chunk as a constant: nothing of this chunk's
        # graph is referenced once the caller has run its backward pass.
        pending = one_hot.detach()[:, None]
