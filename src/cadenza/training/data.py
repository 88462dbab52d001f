"""Transformer-XL batching over a flat token array with document offsets.

The documents are shuffled once per epoch (seeded by (seed, epoch), so any step can be
rebuilt on resume), concatenated, and cut into batch_size * world_size contiguous streams.
The concatenation is never built: each batch reads its windows from the token array (a
memory map from the tokenize stage) through the epoch's document order.
Batch i of an epoch is the i-th segment of every stream, so the memory a model carries from
batch i to batch i+1 holds exactly the tokens that precede the new segment.
"""

from __future__ import annotations

import numpy as np
import torch


def epoch_stream(tokens: np.ndarray, offsets: np.ndarray, seed: int, epoch: int) -> np.ndarray:
    """All documents in a seeded random order, concatenated (int64). The reference that
    `EpochView` reads from piece by piece without building it."""
    order = np.random.default_rng([seed, epoch]).permutation(len(offsets) - 1)
    return np.concatenate([tokens[offsets[i] : offsets[i + 1]] for i in order]).astype(np.int64)


class EpochView:
    """Slices of the shuffled concatenation of an epoch, read straight from `tokens` (which
    may be a memory-mapped .npy): memory is O(documents), not O(tokens), so a corpus larger
    than RAM trains."""

    def __init__(self, tokens: np.ndarray, offsets: np.ndarray, seed: int, epoch: int) -> None:
        self.tokens = tokens
        self.order = np.random.default_rng([seed, epoch]).permutation(len(offsets) - 1)
        self.starts = np.asarray(offsets[:-1])[self.order]  # (D,) where each doc begins
        lengths = np.asarray(offsets[1:])[self.order] - self.starts
        self.ends = np.cumsum(lengths)  # (D,) end of each doc in the virtual stream

    def slice(self, lo: int, hi: int) -> np.ndarray:
        """virtual_stream[lo:hi] as int64."""
        out = np.empty(hi - lo, dtype=np.int64)
        doc = int(np.searchsorted(self.ends, lo, side="right"))
        filled = 0
        while filled < hi - lo:
            doc_begin = int(self.ends[doc - 1]) if doc else 0
            inside = lo + filled - doc_begin  # offset within this document
            take = min(int(self.ends[doc] - (lo + filled)), hi - lo - filled)
            start = int(self.starts[doc] + inside)
            out[filled : filled + take] = self.tokens[start : start + take]
            filled += take
            doc += 1
        return out


class _PlainView:
    def __init__(self, tokens: np.ndarray) -> None:
        self.tokens = tokens

    def slice(self, lo: int, hi: int) -> np.ndarray:
        return np.asarray(self.tokens[lo:hi], dtype=np.int64)


class SegmentBatches:
    """(inputs, targets) batches of shape (batch_size, seg_len) for one rank."""

    def __init__(
        self,
        tokens: np.ndarray,
        offsets: np.ndarray,
        batch_size: int,
        seg_len: int,
        seed: int = 0,
        shuffle: bool = True,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        self.tokens, self.offsets = tokens, offsets
        self.batch_size, self.seg_len = batch_size, seg_len
        self.seed, self.shuffle = seed, shuffle
        self.rank, self.world_size = rank, world_size
        num_streams = batch_size * world_size
        self.stream_len = (len(tokens) - 1) // num_streams
        self.batches_per_epoch = self.stream_len // seg_len
        if self.batches_per_epoch < 1:
            raise ValueError(
                f"{len(tokens)} tokens are too few for {num_streams} streams of segments of "
                f"{seg_len}; lower batch_size or seg_len"
            )
        self._epoch, self._view = -1, None

    def _view_for(self, epoch: int):
        if epoch != self._epoch:
            self._view = (
                EpochView(self.tokens, self.offsets, self.seed, epoch)
                if self.shuffle
                else _PlainView(self.tokens)
            )
            self._epoch = epoch
        return self._view

    def batch(self, step: int) -> tuple[torch.Tensor, torch.Tensor, bool]:
        """Batch for a global step: (inputs, targets, starts_epoch). A new epoch means the
        memory must be reset (the streams changed)."""
        epoch, index = divmod(step, self.batches_per_epoch)
        view = self._view_for(epoch)
        lo = index * self.seg_len
        first = self.rank * self.batch_size
        starts = (first + np.arange(self.batch_size)) * self.stream_len + lo
        window = torch.from_numpy(
            np.stack([view.slice(int(s), int(s) + self.seg_len + 1) for s in starts])
        )
        return window[:, :-1], window[:, 1:], index == 0
