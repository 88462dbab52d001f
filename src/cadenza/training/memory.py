"""Activation memory that autograd holds for backward, measured on any device.

Every tensor saved for backward is wrapped on save; the wrapper's lifetime is the graph's,
so live bytes rise on save and fall when the graph is freed. The peak is a device-independent
measure of what a training step keeps alive (CUDA's max_memory_allocated needs a GPU).
"""

from __future__ import annotations

import torch


class _Saved:
    __slots__ = ("meter", "nbytes", "tensor")

    def __init__(self, meter: SavedTensorMeter, tensor: torch.Tensor) -> None:
        self.meter, self.tensor = meter, tensor
        self.nbytes = tensor.numel() * tensor.element_size()
        meter.live += self.nbytes
        meter.peak = max(meter.peak, meter.live)

    def __del__(self) -> None:
        self.meter.live -= self.nbytes


class SavedTensorMeter:
    """with SavedTensorMeter() as meter: ...; meter.peak is the high-water mark in bytes."""

    def __init__(self) -> None:
        self.live = 0
        self.peak = 0
        self._hooks = torch.autograd.graph.saved_tensors_hooks(
            lambda tensor: _Saved(self, tensor), lambda saved: saved.tensor
        )

    def __enter__(self) -> SavedTensorMeter:
        self._hooks.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._hooks.__exit__(*exc)
