"""SpanBERT-style discriminator: a bidirectional Transformer encoder over the generator's
tokens, with three heads.

- MLM head (tied to the token embedding): predicts masked tokens.
- Span boundary objective (SBO, Joshi et al. 2020): predicts each token of a masked span
  from the encodings of the two tokens just outside the span plus a relative-position
  embedding, through a two-layer GELU/LayerNorm MLP.
- Real/fake head: a score per sequence, from the mean of the final encodings.

Inputs are token ids (B, T) or soft one-hot vectors (B, T, V): probabilities times the
embedding matrix, so gradients flow from the score back into whatever produced the
probabilities (the straight-through Gumbel-Softmax samples of the generator).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class DiscriminatorConfig:
    vocab_size: int
    d_model: int = 192
    n_layers: int = 4
    n_heads: int = 4
    d_ff: int = 768
    max_len: int = 512
    """Longest sequence (learned absolute positions)."""
    dropout: float = 0.1
    max_span: int = 10
    """Longest masked span; sizes the SBO position embedding."""
    local_bias: bool = False
    """ALiBi-style distance bias in every attention layer (see local_bias). False (the
    default) reads checkpoints written before it existed as they were trained; the
    pretrain_discriminator stage sets it from its settings (true by default)."""

    def __post_init__(self) -> None:
        if self.d_model % self.n_heads:
            raise ValueError(
                f"d_model ({self.d_model}) must be divisible by n_heads ({self.n_heads})"
            )

    def to_dict(self) -> dict:
        return asdict(self)


def local_bias(length: int, heads: int, device, dtype) -> torch.Tensor:
    """(heads, T, T) additive attention bias -slope_h * |i - j| (ALiBi, Press et al. 2022, in
    both directions), slopes 2^(-8 (h + 1) / heads). With learned positions alone attention
    starts uniform and the masked-LM loss sat at the unigram loss for hundreds of steps; with
    the bias each head starts local at its own range, so a masked token is read from its
    neighbours from the first step."""
    slopes = torch.tensor([2 ** (-8 * (h + 1) / heads) for h in range(heads)], device=device)
    position = torch.arange(length, device=device)
    distance = (position[None, :] - position[:, None]).abs()
    return (-slopes[:, None, None] * distance[None]).to(dtype)


class SpanBoundaryHead(nn.Module):
    """f(x_{s-1}, x_{e+1}, p_i) -> vocabulary logits, as in SpanBERT."""

    def __init__(self, config: DiscriminatorConfig) -> None:
        super().__init__()
        d = config.d_model
        self.position = nn.Embedding(config.max_span, d)
        self.mlp = nn.Sequential(
            nn.Linear(3 * d, d),
            nn.GELU(),
            nn.LayerNorm(d),
            nn.Linear(d, d),
            nn.GELU(),
            nn.LayerNorm(d),
        )

    def forward(
        self, left: torch.Tensor, right: torch.Tensor, offsets: torch.Tensor
    ) -> torch.Tensor:
        """left, right (N, C) boundary encodings; offsets (N,) position inside the span."""
        return self.mlp(torch.cat([left, right, self.position(offsets)], dim=-1))  # (N, C)


class Discriminator(nn.Module):
    def __init__(self, config: DiscriminatorConfig) -> None:
        super().__init__()
        self.config = config
        self.embedding = nn.Embedding(config.vocab_size, config.d_model)
        self.position = nn.Embedding(config.max_len, config.d_model)
        layer = nn.TransformerEncoderLayer(
            config.d_model, config.n_heads, config.d_ff, config.dropout,
            activation="gelu", batch_first=True, norm_first=True,
        )  # fmt: skip
        self.encoder = nn.TransformerEncoder(layer, config.n_layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(config.d_model)
        self.span_boundary = SpanBoundaryHead(config)
        self.score_head = nn.Sequential(
            nn.Linear(config.d_model, config.d_model), nn.GELU(), nn.Linear(config.d_model, 1)
        )
        self.dropout = nn.Dropout(config.dropout)
        for embedding in (self.embedding, self.position, self.span_boundary.position):
            nn.init.normal_(embedding.weight, std=0.02)  # small: the output layer is tied

    def embed(self, tokens: torch.Tensor) -> torch.Tensor:
        """Ids (B, T) or soft one-hot (B, T, V) -> (B, T, C)."""
        if tokens.dtype in (torch.long, torch.int32, torch.int64):
            x = self.embedding(tokens)
        else:
            x = tokens.to(self.embedding.weight.dtype) @ self.embedding.weight
        T = x.shape[1]
        if self.config.max_len < T:
            raise ValueError(
                f"sequence of {T} tokens exceeds the discriminator's max_len {self.config.max_len}"
            )
        return self.dropout(x + self.position(torch.arange(T, device=x.device)))

    def encode(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, T) or (B, T, V) -> final encodings (B, T, C)."""
        x = self.embed(tokens)
        if not self.config.local_bias:
            return self.norm(self.encoder(x))
        B, T = x.shape[:2]
        bias = local_bias(T, self.config.n_heads, x.device, x.dtype).repeat(B, 1, 1)
        # PyTorch's inference fast path misreads a per-head float mask (eval and train
        # outputs differed by ~2.8 on the same input, dropout off): the standard path only.
        enabled = torch.backends.mha.get_fastpath_enabled()
        torch.backends.mha.set_fastpath_enabled(False)
        try:
            return self.norm(self.encoder(x, mask=bias))
        finally:
            torch.backends.mha.set_fastpath_enabled(enabled)

    def token_logits(self, h: torch.Tensor) -> torch.Tensor:
        """Tied MLM output layer: (..., C) -> (..., V)."""
        return F.linear(h, self.embedding.weight)

    def score(self, tokens: torch.Tensor) -> torch.Tensor:
        """Real/fake score (B,) of each sequence; higher means 'looks real'."""
        return self.score_head(self.encode(tokens).mean(dim=1)).squeeze(-1)
