"""A critic that reads intervals: what the evaluation's music probe finds first in samples.

The SpanBERT critic of a 64-token chunk is weak on the cpu preset (held-out accuracy ~0.6-0.8)
and the generator fools it within a few updates without getting any closer to Bach: its
samples still have 3x the real rate of harmonic seconds and sevenths among notes that sound
together (docs/EXPERIMENTS.md). This critic reads exactly that kind of statistic, and reads it
from the straight-through one-hot samples, so the generator gets a gradient through it:

    pc       = x @ pitch_class_map                   # (B, c, 12): pitch class of each token
    co[lag]  = sum_t pc[t] (x) pc[t + lag]           # (B, 12, 12): notes `lag` tokens apart
    ic[lag]  = fold co by (b - a) mod 12, normalized # (B, 12): their interval classes

With numbered voices a note is ~4 tokens (Program, Pitch, Velocity, Duration), so lag 4 pairs
neighbouring voices of one onset (vertical intervals) and lag 8 the voice after; interval
classes are the same in every key, so the critic needs no key. With `key_profile` it also reads
how the chunk's notes spread over the pitch classes, in no particular key:

    h        = sum_t pc[t], normalized               # (B, 12): pitch-class histogram
    profile  = sort(h, descending)                   # (B, 12): how many classes, how unevenly
    spectrum = |DFT_k(h)|, k = 1..6                  # (B, 6): |DFT_5| is high for diatonic sets

both unchanged by transposition; a chunk that wanders out of key spreads over more classes.
With `absolute_profile` it also reads h itself, in the key it is written in: a critic of key
profiles alone lets the generator settle into one favourite key (every sample in C looks as
real as any one chorale in C), which only the absolute classes can tell.
The features are standardized by a reference (real) batch, then a small MLP scores them;
higher means "looks real".
Pure torch.
"""

from __future__ import annotations

import torch
from torch import nn


class IntervalCritic(nn.Module):
    def __init__(
        self, pitch_classes: list[int], lags: tuple[int, ...] = (4, 8), hidden: int = 32,
        key_profile: bool = False, absolute_profile: bool = False,
    ):  # fmt: skip
        """pitch_classes: (V,) the pitch class 0-11 of each token id, -1 for non-pitch ids;
        key_profile: also read the chunk's sorted pitch-class profile and its DFT magnitudes;
        absolute_profile: also read the pitch-class histogram as written (12 features)."""
        super().__init__()
        classes = torch.as_tensor(pitch_classes, dtype=torch.long)
        if not (classes >= 0).any():
            raise ValueError("IntervalCritic: the vocabulary has no Pitch tokens")
        self.vocab_size = len(classes)
        self.lags = tuple(int(lag) for lag in lags)
        pc_map = torch.zeros(len(classes), 12)
        pitched = classes >= 0
        pc_map[pitched, classes[pitched]] = 1.0
        self.register_buffer("pc_map", pc_map)
        # fold[a, k] = (a + k) % 12: the class b with interval b - a = k
        fold = (torch.arange(12)[:, None] + torch.arange(12)[None, :]) % 12
        self.register_buffer("fold", fold)
        self.key_profile = bool(key_profile)
        self.absolute_profile = bool(absolute_profile)
        # (12, 6) real and imaginary DFT bases for k = 1..6 (a plain matmul: |z| of a complex
        # tensor has no gradient at 0, which an empty chunk's histogram is)
        angle = 2 * torch.pi * torch.arange(12)[:, None] * torch.arange(1, 7)[None, :] / 12
        self.register_buffer("dft_cos", torch.cos(angle))
        self.register_buffer("dft_sin", torch.sin(angle))
        num_features = (
            12 * len(self.lags) + (18 if self.key_profile else 0) + (12 if absolute_profile else 0)
        )
        self.register_buffer("mean", torch.zeros(num_features))
        self.register_buffer("std", torch.ones(num_features))
        self.head = nn.Sequential(nn.Linear(num_features, hidden), nn.GELU(), nn.Linear(hidden, 1))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 12 * len(lags) [+ 18] [+ 12]) interval-class distributions [, the pitch-class
        profile] [, the pitch-class histogram] of ids (B, c) or one-hot (B, c, V)."""
        pc = self.pc_map[x] if x.dtype == torch.long else x @ self.pc_map  # (B, c, 12)
        out = []
        for lag in self.lags:
            co = torch.einsum("bta,btc->bac", pc[:, :-lag], pc[:, lag:])  # (B, 12, 12)
            index = self.fold.expand(len(co), 12, 12)
            ic = torch.gather(co, 2, index).sum(dim=1)  # (B, 12): sum_a co[a, (a + k) % 12]
            out.append(ic / ic.sum(dim=-1, keepdim=True).clamp_min(1.0))
        h = pc.sum(dim=1)  # (B, 12)
        h = h / h.sum(dim=-1, keepdim=True).clamp_min(1.0)
        if self.key_profile:
            out.append(h.sort(dim=-1, descending=True).values)
            real, imag = h @ self.dft_cos, h @ self.dft_sin  # (B, 6) each
            out.append(torch.sqrt(real.square() + imag.square() + 1e-8))
        if self.absolute_profile:
            out.append(h)
        return torch.cat(out, dim=-1)

    @torch.no_grad()
    def standardize(self, reference: torch.Tensor) -> None:
        """Centre and scale the features by a reference batch of (real) token ids (N, c)."""
        f = self.features(reference)
        self.mean.copy_(f.mean(0))
        self.std.copy_(f.std(0).clamp_min(1e-3))

    def score(self, x: torch.Tensor) -> torch.Tensor:
        """(B,) real/fake score; higher means 'looks real'."""
        return self.head((self.features(x) - self.mean) / self.std).squeeze(-1)
