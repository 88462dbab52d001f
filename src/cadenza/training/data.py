"""Transformer-XL batching over a flat token array with document offsets.

The documents are shuffled once per epoch (seeded by (seed, epoch), so any step can be
rebuilt on resume), concatenated, and cut into batch_size * world_size contiguous streams.
Batch i of an epoch is the i-th segment of every stream, so the memory a model carries from
batch i to batch i+1 holds exactly the tokens that precede the new segment.
"""

from __future__ import annotations

import numpy as np
import torch


def epoch_stream(tokens: np.ndarray, offsets: np.ndarray, seed: int, epoch: int) -> np.ndarray:
    """All documents in a seeded random order, concatenated (int64)."""
    order = np.random.default_rng([seed, epoch]).permutation(len(offsets) - 1)
    return np.concatenate([tokens[offsets[i] : offsets[i + 1]] for i in order]).astype(np.int64)


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
        self._epoch, self._stream = -1, None

    def _streams_for(self, epoch: int) -> np.ndarray:
        if epoch != self._epoch:
            flat = (
                epoch_stream(self.tokens, self.offsets, self.seed, epoch)
                if self.shuffle
                else np.asarray(self.tokens, dtype=np.int64)
            )
            first = self.rank * self.batch_size
            starts = (first + np.arange(self.batch_size)) * self.stream_len
            self._stream = np.stack([flat[s : s + self.stream_len + 1] for s in starts])
            self._epoch = epoch
        return self._stream

    def batch(self, step: int) -> tuple[torch.Tensor, torch.Tensor, bool]:
        """Batch for a global step: (inputs, targets, starts_epoch). A new epoch means the
        memory must be reset (the streams changed)."""
        epoch, index = divmod(step, self.batches_per_epoch)
        streams = self._streams_for(epoch)
        lo = index * self.seg_len
        window = torch.from_numpy(streams[:, lo : lo + self.seg_len + 1])
        return window[:, :-1], window[:, 1:], index == 0
