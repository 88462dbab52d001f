"""Transformer-XL generator over MIDI tokens, readable top to bottom.

- Segment-level recurrence (Dai et al., 2019): each layer sees, besides the current segment,
  a memory of the hidden states that entered it on the previous segment (detached).
- Relative positions through rotary embeddings applied to queries and keys with positions
  relative to the current segment, so memory keys sit at negative positions: only
  differences matter, as in Transformer-XL's relative attention.
- Every query attends to itself and at most `mem_len` earlier tokens (a sliding window the
  memory serves). Training with memory, cached generation and a naive full forward pass
  therefore compute the same function; the tests check cached == naive token for token.
- Pre-norm blocks, or ReZero (no norm, residual weight initialised at 0; Bachlechner et al.).
- Tied input/output embeddings; attention through F.scaled_dot_product_attention.

Shapes: B batch, T new tokens, M memory length, C model width, H heads, D = C / H.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from cadenza.models.sampling import sample_next

NO_DOCUMENT_START = -(10**9)


@dataclass
class GeneratorConfig:
    vocab_size: int
    d_model: int = 256
    """Model width C."""
    n_layers: int = 4
    n_heads: int = 4
    d_ff: int = 1024
    """Hidden width of the feed-forward block."""
    seg_len: int = 256
    """Tokens per training segment."""
    mem_len: int = 256
    """Hidden states kept from earlier segments; also the attention window."""
    dropout: float = 0.1
    attn_dropout: float | None = None
    """Dropout on the attention probabilities; None = `dropout`."""
    rezero: bool = False
    """ReZero residuals (alpha = 0 at init, no LayerNorm in blocks) instead of pre-norm."""
    rope_base: float = 10_000.0
    bos_id: int = -1
    """Document masking: a token attends only back to its document's BOS (as in generation
    from [BOS], which has no earlier context). -1 = attend across documents."""

    def __post_init__(self) -> None:
        if self.d_model % self.n_heads or (self.d_model // self.n_heads) % 2:
            raise ValueError(
                f"d_model ({self.d_model}) must split into n_heads ({self.n_heads}) "
                "heads of even width"
            )

    def to_dict(self) -> dict:
        return asdict(self)


def rotary_tables(
    positions: torch.Tensor, head_dim: int, base: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin of shape (L, D/2) for integer positions (L,), computed in float32."""
    inv_freq = base ** (
        -torch.arange(0, head_dim, 2, device=positions.device, dtype=torch.float32) / head_dim
    )
    angles = positions.to(torch.float32)[:, None] * inv_freq[None, :]
    return angles.cos(), angles.sin()


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate pairs (x[..., :D/2], x[..., D/2:]) of x (B, H, L, D) by the given angles."""
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half].float(), x[..., half:].float()
    rotated = torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)
    return rotated.to(x.dtype)


def window_mask(query_pos: torch.Tensor, key_pos: torch.Tensor, window: int) -> torch.Tensor:
    """(Tq, Tk) bool, True where a query may attend: the key is not later and at most
    `window` tokens earlier."""
    distance = query_pos[:, None] - key_pos[None, :]
    return (distance >= 0) & (distance <= window)


Rotary = tuple[torch.Tensor, torch.Tensor]


@dataclass
class Shared:
    """Per call, alike in every layer: the queries' rotary tables (cos, sin), the window mask
    of the keys (with document masking (B, 1, T, Tk), else (T, Tk)) and of the memory."""

    rotary: Rotary
    mask: torch.Tensor
    memory_mask: torch.Tensor | None


class Attention(nn.Module):
    def __init__(self, config: GeneratorConfig) -> None:
        super().__init__()
        self.n_heads, self.head_dim = config.n_heads, config.d_model // config.n_heads
        self.query = nn.Linear(config.d_model, config.d_model, bias=False)
        self.key_value = nn.Linear(config.d_model, 2 * config.d_model, bias=False)
        self.out = nn.Linear(config.d_model, config.d_model, bias=False)
        self.dropout = config.dropout if config.attn_dropout is None else config.attn_dropout
        self.rope_base = config.rope_base

    def _heads(self, x: torch.Tensor) -> torch.Tensor:  # (B, L, C) -> (B, H, L, D)
        B, L, _ = x.shape
        return x.view(B, L, self.n_heads, self.head_dim).transpose(1, 2)

    def project_keys(
        self, h: torch.Tensor, positions: torch.Tensor, rotary: Rotary | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Rotated keys and values (B, H, L, D) of hidden states h (B, L, C) at positions (L,);
        `rotary` = rotary_tables(positions) when the caller already has them."""
        k, v = self.key_value(h).chunk(2, dim=-1)
        cos, sin = rotary or rotary_tables(positions, self.head_dim, self.rope_base)
        return apply_rotary(self._heads(k), cos, sin), self._heads(v)

    def forward(
        self,
        x: torch.Tensor,
        positions: torch.Tensor,
        keys: torch.Tensor,
        values: torch.Tensor,
        key_positions: torch.Tensor,
        window: int,
        memory: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None,
        doc_mask: torch.Tensor | None = None,
        shared: Shared | None = None,
    ) -> torch.Tensor:
        """x (B, T, C) at positions (T,) attends to keys/values (B, H, Tk, D) at key_positions,
        and to a detached `memory` (keys, values, positions) when one is given. doc_mask
        (B, T, Tk), True where allowed, further limits each row to its own document.
        `shared`: the query's rotary tables and the masks, computed once for all layers."""
        B, T, C = x.shape
        if shared is None:
            memory_positions = None if memory is None else memory[2]
            shared = self.shared(positions, key_positions, window, memory_positions, doc_mask)
        q = apply_rotary(self._heads(self.query(x)), *shared.rotary)  # (B, H, T, D)
        if memory is not None and memory[0].shape[2]:
            y = self._attend_with_memory(q, keys, values, memory, shared)
        else:
            mask = shared.mask  # (T, Tk) or with documents (B, 1, T, Tk)
            dropout = self.dropout if self.training else 0.0
            if q.dtype == torch.bfloat16 and not dropout and q.device.type == "cpu":
                # bf16 on a CPU: plain matmuls take 0.4x the time of the fused kernel, forward
                # and backward (docs/PERFORMANCE.md); fp32 and GPUs keep the kernel.
                scores = (q @ keys.transpose(-2, -1)) * self.head_dim**-0.5
                y = scores.masked_fill(~mask, float("-inf")).softmax(dim=-1) @ values
            else:
                y = F.scaled_dot_product_attention(
                    q, keys, values, attn_mask=mask, dropout_p=dropout
                )
        return self.out(y.transpose(1, 2).reshape(B, T, C))

    def decode(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        qkv_weight: torch.Tensor,
        ring: dict,
        slot: int,
        num_keys: int,
    ) -> torch.Tensor:
        """Generation fast path, one new token per row: x (B, 1, C). Its rotated key and value
        go into `slot` of the ring buffers ring["k"], ring["v"] (B, H, W + 1, D); the query
        attends to the first num_keys slots. The ring holds exactly the window (the token and
        its W predecessors, in any order), so no mask is needed. qkv_weight (3C, C) is the
        query and key/value weights stacked: one matmul instead of two. cos (D,) repeats the
        rotary cosines over both halves; sin (D,) is (-sin, sin)."""
        B, _, C = x.shape
        qkv = F.linear(x, qkv_weight).view(B, 3 * self.n_heads, self.head_dim)  # (B, 3H, D)
        # Queries and keys rotate together: x * cos + swap_halves(x) * (-sin, sin) is
        # bit-identical to apply_rotary's (x1 cos - x2 sin, x1 sin + x2 cos) in fewer ops.
        qk = qkv[:, : 2 * self.n_heads]
        qk = qk * cos + qk.roll(self.head_dim // 2, dims=-1) * sin  # (B, 2H, D)
        q = (qk[:, : self.n_heads] * self.head_dim**-0.5)[:, :, None]  # (B, H, 1, D)
        ring["k"][:, :, slot] = qk[:, self.n_heads :]
        ring["v"][:, :, slot] = qkv[:, 2 * self.n_heads :]
        keys, values = ring["k"][:, :, :num_keys], ring["v"][:, :, :num_keys]
        # Plain matmuls: for a single query, 2.8x faster than the CPU flash-attention kernel
        # of scaled_dot_product_attention at batch 64, 2x slower (+9 us) at batch 1.
        weights = (q @ keys.transpose(-2, -1)).softmax(dim=-1)  # (B, H, 1, num_keys)
        return self.out((weights @ values).transpose(1, 2).reshape(B, 1, C))

    def shared(
        self, positions, key_positions, window, memory_positions=None, doc_mask=None
    ) -> Shared:
        """What every layer of one call needs alike: the rotary tables of the queries, the
        window mask (with documents: (B, 1, T, Tk)) and, with a memory, its window mask."""
        mask = window_mask(positions, key_positions, window)  # (T, Tk)
        if doc_mask is not None:
            mask = (mask[None] & doc_mask)[:, None]  # (B, 1, T, Tk)
        memory_mask = (
            None if memory_positions is None else window_mask(positions, memory_positions, window)
        )
        rotary = rotary_tables(positions, self.head_dim, self.rope_base)
        return Shared(rotary, mask, memory_mask)

    def _attend_with_memory(self, q, keys, values, memory, shared: Shared):
        """Softmax over [memory; keys] without concatenating them: the memory tensors stay
        one shared storage for every step, so autograd saves them once per chunk instead of
        a fresh (B, H, M + t, D) copy per generated token."""
        mem_keys, mem_values, _ = memory
        scale = self.head_dim**-0.5
        scores = torch.cat(
            [
                (q @ mem_keys.transpose(-2, -1) * scale).masked_fill(
                    ~shared.memory_mask, float("-inf")
                ),
                (q @ keys.transpose(-2, -1) * scale).masked_fill(~shared.mask, float("-inf")),
            ],
            dim=-1,
        )  # (B, H, T, M + Tk)
        weights = F.dropout(scores.softmax(dim=-1), self.dropout, self.training)
        M = mem_keys.shape[2]
        return weights[..., :M] @ mem_values + weights[..., M:] @ values  # (B, H, T, D)


class Block(nn.Module):
    def __init__(self, config: GeneratorConfig) -> None:
        super().__init__()
        norm = nn.Identity if config.rezero else nn.LayerNorm
        self.norm_attn, self.norm_ff = norm(config.d_model), norm(config.d_model)
        self.attention = Attention(config)
        self.feed_forward = nn.Sequential(
            nn.Linear(config.d_model, config.d_ff),
            nn.GELU(),
            nn.Linear(config.d_ff, config.d_model),
        )
        self.dropout = nn.Dropout(config.dropout)
        # ReZero: each residual branch starts switched off and learns its weight.
        self.alpha = nn.Parameter(torch.zeros(1)) if config.rezero else None

    def _residual(self, x: torch.Tensor, branch: torch.Tensor) -> torch.Tensor:
        branch = self.dropout(branch)
        return x + (self.alpha * branch if self.alpha is not None else branch)

    def forward(
        self,
        x,
        positions,
        keys,
        values,
        key_positions,
        window,
        memory=None,
        doc_mask=None,
        shared: Shared | None = None,
        normed: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """`normed` = norm_attn(x) when the caller already computed it (for the keys)."""
        attended = self.attention(
            self.norm_attn(x) if normed is None else normed,
            positions, keys, values, key_positions, window, memory, doc_mask, shared,
        )  # fmt: skip
        x = self._residual(x, attended)
        return self._residual(x, self.feed_forward(self.norm_ff(x)))

    def decode(self, x, cos, sin, qkv_weight, ring, slot, num_keys) -> torch.Tensor:
        """One generated token per row (see Attention.decode); eval mode (no dropout)."""
        alpha = 1.0 if self.alpha is None else self.alpha
        x = x + alpha * self.attention.decode(
            self.norm_attn(x), cos, sin, qkv_weight, ring, slot, num_keys
        )
        return x + alpha * self.feed_forward(self.norm_ff(x))


class TransformerXL(nn.Module):
    def __init__(self, config: GeneratorConfig) -> None:
        super().__init__()
        self.config = config
        self.embedding = nn.Embedding(config.vocab_size, config.d_model)
        self.dropout = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.n_layers))
        self.norm_out = nn.LayerNorm(config.d_model)
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, std=0.02)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def logits(self, h: torch.Tensor) -> torch.Tensor:
        """Tied output layer: (B, T, C) -> (B, T, V)."""
        return F.linear(self.norm_out(h), self.embedding.weight)

    def forward(
        self, tokens: torch.Tensor, mems: list[torch.Tensor] | None = None
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Training / naive forward. tokens (B, T); mems: per layer (B, M, C) hidden states
        that entered that layer on the previous segment. Returns logits (B, T, V) and the
        new memory (detached, at most mem_len long)."""
        B, T = tokens.shape
        M = 0 if mems is None else mems[0].shape[1]
        device = tokens.device
        positions = torch.arange(T, device=device)
        key_positions = torch.arange(-M, T, device=device)
        doc_mask, doc_start = self._document_mask(tokens, mems, key_positions)
        h = self.dropout(self.embedding(tokens))  # (B, T, C)
        new_mems = []
        # Rotary tables and masks are the same in every layer: computed once. Queries sit at
        # key positions 0..T-1, the last T rows of the keys' tables.
        D = self.config.d_model // self.config.n_heads
        key_rotary = rotary_tables(key_positions, D, self.config.rope_base)
        mask = window_mask(positions, key_positions, self.config.mem_len)  # (T, M+T)
        if doc_mask is not None:
            mask = (mask[None] & doc_mask)[:, None]  # (B, 1, T, M+T)
        shared = Shared((key_rotary[0][M:], key_rotary[1][M:]), mask, None)
        for i, block in enumerate(self.blocks):
            context = h if mems is None else torch.cat([mems[i], h], dim=1)  # (B, M+T, C)
            new_mems.append(context[:, -self.config.mem_len :].detach())
            normed = block.norm_attn(context)  # (B, M+T, C)
            keys, values = block.attention.project_keys(normed, key_positions, key_rotary)
            # The block norms h again rather than take the strided view normed[:, M:]: with
            # the view, a resumed run's weights differed from a straight run's in the last
            # bits (tests/test_pretrain.py's SIGKILL test).
            h = block(h, positions, keys, values, key_positions, self.config.mem_len,
                      shared=shared)  # fmt: skip
        if doc_start is not None:
            new_mems.append(doc_start)
        return self.logits(h), new_mems

    def _document_mask(self, tokens, mems, key_positions):
        """(B, T, M+T) keys at or after each query's document start, and the document start
        carried to the next segment (relative to it) as the last entry of the memory list."""
        if self.config.bos_id < 0:
            return None, None
        B, T = tokens.shape
        floor = torch.full((B,), NO_DOCUMENT_START, dtype=torch.long, device=tokens.device)
        previous = mems[-1] if mems is not None and len(mems) > len(self.blocks) else floor
        positions = torch.arange(T, device=tokens.device)
        marks = torch.where(tokens == self.config.bos_id, positions, NO_DOCUMENT_START)
        starts = torch.maximum(marks.cummax(dim=1).values, previous[:, None])  # (B, T)
        mask = key_positions[None, None, :] >= starts[:, :, None]
        return mask, torch.maximum(starts[:, -1] - T, floor)

    # Cached generation ------------------------------------------------------------------

    def embed(self, tokens: torch.Tensor) -> torch.Tensor:
        """Ids (B, T) -> (B, T, C); soft one-hot (B, T, V) -> probabilities @ embedding, so
        gradients flow through fed-back samples (straight-through Gumbel-Softmax)."""
        if tokens.is_floating_point():
            return tokens.to(self.embedding.weight.dtype) @ self.embedding.weight
        return self.embedding(tokens)

    def _forward_cached(self, tokens: torch.Tensor, cache: list[dict], start: int) -> torch.Tensor:
        """Process tokens (B, T) or soft one-hot (B, T, V) at absolute positions start..
        using and extending the per-layer key/value cache (trimmed to the attention window).
        Returns (B, T, V). Gradients flow through the cache until detach_cache()."""
        T = tokens.shape[1]
        positions = torch.arange(start, start + T, device=tokens.device)
        h = self.embed(tokens)
        W = self.config.mem_len
        # Every layer holds the same positions: rotary tables and masks computed once.
        key_positions = torch.cat([cache[0]["pos"], positions])
        memory_positions = cache[0]["mem_pos"]
        shared = self.blocks[0].attention.shared(positions, key_positions, W, memory_positions)
        for block, c in zip(self.blocks, cache, strict=True):
            normed = block.norm_attn(h)
            k_new, v_new = block.attention.project_keys(normed, positions, shared.rotary)
            keys = torch.cat([c["k"], k_new], dim=2)  # live part (B, H, Tc+T, D)
            values = torch.cat([c["v"], v_new], dim=2)
            memory = (c["mem_k"], c["mem_v"], c["mem_pos"])
            h = block(h, positions, keys, values, key_positions, W, memory, None, shared, normed)
            # The window needs only the last W keys for the next token: live ones first.
            c.update(k=keys[:, :, -W:], v=values[:, :, -W:], pos=key_positions[-W:])
            drop = max(0, c["mem_pos"].shape[0] + c["pos"].shape[0] - W)  # oldest memory first
            c.update(
                mem_k=c["mem_k"][:, :, drop:],
                mem_v=c["mem_v"][:, :, drop:],
                mem_pos=c["mem_pos"][drop:],
            )
        return self.logits(h)

    def detach_cache(self, cache: list[dict]) -> None:
        """Chunk boundary: move the live keys/values into the detached memory, cutting the
        gradient path into earlier tokens."""
        W = self.config.mem_len
        for c in cache:
            c.update(
                mem_k=torch.cat([c["mem_k"], c["k"].detach()], dim=2)[:, :, -W:],
                mem_v=torch.cat([c["mem_v"], c["v"].detach()], dim=2)[:, :, -W:],
                mem_pos=torch.cat([c["mem_pos"], c["pos"]])[-W:],
                k=c["k"][:, :, :0].detach(),
                v=c["v"][:, :, :0].detach(),
                pos=c["pos"][:0],
            )

    def empty_cache(self, batch_size: int, device: torch.device) -> list[dict]:
        """Per layer: live keys/values (k, v, pos; gradients flow) and detached memory."""
        H, D = self.config.n_heads, self.config.d_model // self.config.n_heads
        empty = torch.zeros(batch_size, H, 0, D, device=device, dtype=self.embedding.weight.dtype)
        no_positions = torch.zeros(0, dtype=torch.long, device=device)
        return [
            {
                "k": empty,
                "v": empty,
                "pos": no_positions,
                "mem_k": empty,
                "mem_v": empty,
                "mem_pos": no_positions,
            }  # fmt: skip
            for _ in self.blocks
        ]

    def start_decoding(self, cache: list[dict], num_tokens: int) -> dict:
        """State for decode_step after the prompt went through _forward_cached: per layer a
        ring buffer (B, H, W + 1, D) holding the key of position p in slot p % (W + 1), the
        rotary tables of positions 0..num_tokens-1, the stacked q/k/v weights (eval only:
        the weights must not change while decoding)."""
        ring_size = min(self.config.mem_len + 1, num_tokens)
        rings = []
        for c in cache:
            B, H, _, D = c["k"].shape
            ring = {n: c[n].new_zeros(B, H, ring_size, D) for n in ("k", "v")}
            slots = c["pos"] % (self.config.mem_len + 1)  # < ring_size: positions < num_tokens
            ring["k"].index_copy_(2, slots, c["k"])
            ring["v"].index_copy_(2, slots, c["v"])
            rings.append(ring)
        positions = torch.arange(num_tokens, device=cache[0]["k"].device)
        cos, sin = rotary_tables(
            positions, self.config.d_model // self.config.n_heads, self.config.rope_base
        )
        return {
            "rings": rings,
            "cos": torch.cat([cos, cos], dim=-1),  # (num_tokens, D)
            "sin": torch.cat([-sin, sin], dim=-1),
            "qkv_weights": [
                torch.cat([b.attention.query.weight, b.attention.key_value.weight])
                for b in self.blocks
            ],
        }

    def decode_step(self, tokens: torch.Tensor, position: int, state: dict) -> torch.Tensor:
        """Logits (B, V) after one new token per row, tokens (B,) at `position`."""
        ring_size = state["rings"][0]["k"].shape[2]
        slot, num_keys = position % ring_size, min(position + 1, ring_size)
        cos, sin = state["cos"][position], state["sin"][position]  # (D,)
        h = self.embedding(tokens[:, None])  # (B, 1, C)
        for block, ring, weight in zip(
            self.blocks, state["rings"], state["qkv_weights"], strict=True
        ):
            h = block.decode(h, cos, sin, weight, ring, slot, num_keys)
        return self.logits(h)[:, -1]

    @torch.no_grad()
    def generate(
        self,
        prompt: torch.Tensor,
        num_tokens: int,
        temperature: float = 1.0,
        top_k: int = 0,
        top_p: float = 1.0,
        generator: torch.Generator | None = None,
        prompt_chunk: int | None = None,
        grammar=None,
        pitch_mask: torch.Tensor | None = None,
        pitch_top_p: float = 1.0,
        stop_token: int | None = None,
    ) -> torch.Tensor:
        """Extend prompt (B, P>=1) by num_tokens sampled tokens; returns (B, P + num_tokens).

        The prompt is read segment by segment (seg_len at a time) into the cache; then one
        token per step through decode_step: a fixed ring buffer per layer (no copy of the
        window per token), rotary tables computed once, query/key/value in one matmul.
        grammar (models.grammar.TokenGrammar): tokens it does not allow after the sequence so
        far are masked before temperature / top-k / top-p. pitch_mask (V,) and pitch_top_p:
        a nucleus within the pitch tokens only (models.sampling.filter_logits).
        stop_token (EOS, for callers that cut each row at its first one): once every row has
        drawn it, decoding stops and the rest is filled with it. What comes before each row's
        first stop_token is the same as without it (the same draws, in the same order).
        """
        was_training = self.training
        self.eval()
        cache = self.empty_cache(prompt.shape[0], prompt.device)
        chunk = prompt_chunk or self.config.seg_len
        for start in range(0, prompt.shape[1], chunk):
            logits = self._forward_cached(prompt[:, start : start + chunk], cache, start)[:, -1]
        total = prompt.shape[1] + num_tokens
        state = self.start_decoding(cache, total)
        rules = grammar.start(prompt) if grammar is not None else None
        out = [prompt]
        stopped = None if stop_token is None else torch.zeros_like(prompt[:, 0], dtype=torch.bool)
        for position in range(prompt.shape[1], total):
            if rules is not None:
                logits = grammar.constrain(logits, rules)
            next_token = sample_next(
                logits, temperature, top_k, top_p, generator, pitch_mask, pitch_top_p
            )  # (B,)
            if rules is not None:
                grammar.advance(rules, next_token)
            out.append(next_token[:, None])
            if stopped is not None:
                stopped |= next_token == stop_token
                if bool(stopped.all()):
                    out.append(
                        next_token.new_full((len(next_token), total - 1 - position), stop_token)
                    )
                    break
            if position < total - 1:  # the last token's logits would go unused
                logits = self.decode_step(next_token, position, state)
        self.train(was_training)
        return torch.cat(out, dim=1)

    @torch.no_grad()
    def generate_naive(
        self,
        prompt: torch.Tensor,
        num_tokens: int,
        temperature: float = 1.0,
        top_k: int = 0,
        top_p: float = 1.0,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Reference: recompute the full sequence for every new token (slow; for tests and
        the generation benchmark)."""
        was_training = self.training
        self.eval()
        sequence = prompt
        for _ in range(num_tokens):
            logits, _ = self.forward(sequence)
            next_token = sample_next(logits[:, -1], temperature, top_k, top_p, generator)
            sequence = torch.cat([sequence, next_token[:, None]], dim=1)
        self.train(was_training)
        return sequence


def flops_per_token(config: GeneratorConfig, num_params: int) -> float:
    """Training FLOPs per token: 6N for the weights plus attention scores and values
    (forward + backward) over the attended window (nanoGPT/PaLM accounting)."""
    context = config.mem_len + 1
    return 6 * num_params + 12 * config.n_layers * config.d_model * context
