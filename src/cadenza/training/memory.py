"""Activation memory that autograd holds for backward, measured on any device.

Every tensor saved for backward is wrapped on save; the wrapper's lifetime is the graph's,
so live bytes rise on save and fall when the graph is freed. Storages are counted once
however often they are saved, and parameters (leaf tensors that require grad, alive anyway)
are not counted. The peak is a device-independent measure of what a training step keeps
alive (CUDA's max_memory_allocated needs a GPU).
"""

from __future__ import annotations

import torch


class _Saved:
    __slots__ = ("key", "meter", "tensor")

    def __init__(self, meter: SavedTensorMeter, tensor: torch.Tensor) -> None:
        self.meter, self.tensor, self.key = meter, tensor, None
        if tensor.is_leaf and tensor.requires_grad:
            return  # a parameter: not activation memory
        storage = tensor.untyped_storage()
        self.key = storage.data_ptr()
        nbytes, count = meter.storages.get(self.key, (storage.nbytes(), 0))
        if count == 0:
            meter.live += nbytes
            meter.peak = max(meter.peak, meter.live)
        meter.storages[self.key] = (nbytes, count + 1)

    def __del__(self) -> None:
        if self.key is None:
            return
        nbytes, count = self.meter.storages[self.key]
        if count == 1:
            del self.meter.storages[self.key]
            self.meter.live -= nbytes
        else:
            self.meter.storages[self.key] = (nbytes, count - 1)


class SavedTensorMeter:
    """with SavedTensorMeter() as meter: ...; meter.peak is the high-water mark in bytes."""

    def __init__(self) -> None:
        self.live = 0
        self.peak = 0
        self.storages: dict[int, tuple[int, int]] = {}
        self._hooks = torch.autograd.graph.saved_tensors_hooks(
            lambda tensor: _Saved(self, tensor), lambda saved: saved.tensor
        )

    def __enter__(self) -> SavedTensorMeter:
        self._hooks.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._hooks.__exit__(*exc)
