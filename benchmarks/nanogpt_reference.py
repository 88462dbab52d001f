"""A nanoGPT-style decoder (Karpathy's model.py, trimmed): the reference the speed benchmarks
measure our generator against, at the same width, depth, heads and feed-forward size.

Learned absolute positions, pre-norm blocks, one fused query/key/value projection and
F.scaled_dot_product_attention(is_causal=True) (the fast path), tied embeddings. For
generation it keeps a key/value cache trimmed to the last `window` tokens, the same
sliding window our generator attends over, so both decoders do the same work per token.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class CausalSelfAttention(nn.Module):
    def __init__(self, d_model: int, n_heads: int, dropout: float) -> None:
        super().__init__()
        self.n_heads = n_heads
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.proj = nn.Linear(d_model, d_model)
        self.dropout = dropout
        self.resid_dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, cache: dict | None = None, window: int = 0) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = (
            t.view(B, T, self.n_heads, C // self.n_heads).transpose(1, 2)  # (B, H, T, D)
            for t in self.qkv(x).split(C, dim=2)
        )
        if cache is None:
            y = F.scaled_dot_product_attention(
                q, k, v, dropout_p=self.dropout if self.training else 0.0, is_causal=True
            )
        else:  # one new token per call: it attends to every cached key, no mask needed
            assert T == 1, "the cached path decodes one token at a time"
            if "k" in cache:
                k = torch.cat([cache["k"], k], dim=2)[:, :, -window:]
                v = torch.cat([cache["v"], v], dim=2)[:, :, -window:]
            cache.update(k=k, v=v)
            y = F.scaled_dot_product_attention(q, k, v)
        return self.resid_dropout(self.proj(y.transpose(1, 2).reshape(B, T, C)))


class Block(nn.Module):
    def __init__(self, d_model: int, n_heads: int, d_ff: int, dropout: float) -> None:
        super().__init__()
        self.ln_1, self.ln_2 = nn.LayerNorm(d_model), nn.LayerNorm(d_model)
        self.attn = CausalSelfAttention(d_model, n_heads, dropout)
        self.mlp = nn.Sequential(
            nn.Linear(d_model, d_ff), nn.GELU(), nn.Linear(d_ff, d_model), nn.Dropout(dropout)
        )

    def forward(self, x: torch.Tensor, cache: dict | None = None, window: int = 0) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), cache, window)
        return x + self.mlp(self.ln_2(x))


class NanoGPT(nn.Module):
    def __init__(
        self,
        vocab_size: int,
        d_model: int,
        n_layers: int,
        n_heads: int,
        d_ff: int,
        max_len: int = 8192,
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        self.token = nn.Embedding(vocab_size, d_model)
        self.position = nn.Embedding(max_len, d_model)
        self.drop = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(Block(d_model, n_heads, d_ff, dropout) for _ in range(n_layers))
        self.ln_f = nn.LayerNorm(d_model)

    def forward(self, tokens: torch.Tensor, mems=None) -> tuple[torch.Tensor, None]:
        """tokens (B, T) -> logits (B, T, V); the `mems` slot matches our generator's call."""
        T = tokens.shape[1]
        x = self.drop(self.token(tokens) + self.position(torch.arange(T, device=tokens.device)))
        for block in self.blocks:
            x = block(x)
        return F.linear(self.ln_f(x), self.token.weight), None

    @torch.no_grad()
    def generate(
        self,
        prompt: torch.Tensor,
        num_tokens: int,
        window: int,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Temperature-1 sampling, one token per step through the key/value cache."""
        self.eval()
        caches = [{} for _ in self.blocks]
        out = [prompt]
        token = prompt[:, :1]
        for position in range(prompt.shape[1] - 1 + num_tokens):
            x = self.token(token) + self.position.weight[position]  # (B, 1, C)
            for block, cache in zip(self.blocks, caches, strict=True):
                x = block(x, cache, window)
            logits = F.linear(self.ln_f(x[:, -1]), self.token.weight)  # (B, V)
            if position + 1 < prompt.shape[1]:
                token = prompt[:, position + 1 : position + 2]
                continue
            token = torch.multinomial(logits.softmax(dim=-1), 1, generator=generator)
            out.append(token)
        return torch.cat(out, dim=1)
