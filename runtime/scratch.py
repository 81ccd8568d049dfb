"""Dense scratch buffers that the kernels of one compiled model share (the dense path's
dequantised weight chunk, ``codegen/triton_dense.py``): one buffer per dtype and device, sized
for the largest request the model will make (:meth:`Scratch.reserve` at load), so a model holds
one dense chunk's worth rather than one per linear."""
from __future__ import annotations

import threading

import torch


class Scratch:
    """A per-model pool. :meth:`get` returns a buffer of at least ``numel`` elements; a larger
    request allocates a new buffer and later requests share it, while launches bound earlier keep
    the one they were given (a captured CUDA graph may hold its address). A user holds
    :attr:`lock` from filling a buffer to the last launch that reads it, so two calls on
    different threads (graphs with data-dependent sizes run without the executor's lock) do
    not interleave their fills and reads; on a GPU that orders them on one stream."""

    def __init__(self) -> None:
        self._bufs: dict[tuple[torch.dtype, torch.device], torch.Tensor] = {}
        self._reserved: dict[torch.dtype, int] = {}
        self.lock = threading.RLock()

    def reserve(self, numel: int, dtype: torch.dtype) -> None:
        """Announce a request the model may make, so the first buffer is already large enough
        (otherwise a larger later request allocates a second one while bindings made earlier
        keep the first)."""
        with self.lock:
            self._reserved[dtype] = max(self._reserved.get(dtype, 0), numel)

    def get(self, numel: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        """A flat buffer of ``dtype`` on ``device`` with at least ``numel`` elements."""
        key = (dtype, torch.device(device))
        with self.lock:
            return self._get(key, numel, dtype, device)

    def _get(self, key: tuple[torch.dtype, torch.device], numel: int, dtype: torch.dtype,
             device: torch.device) -> torch.Tensor:
        t = self._bufs.get(key)
        if t is None or t.numel() < numel:
            t = torch.empty(max(numel, self._reserved.get(dtype, 0), 1), dtype=dtype, device=device)
            self._bufs[key] = t
        return t
