"""Dense scratch buffers that the kernels of one compiled model share (the large-M W4 path's
dequantised weight, ``codegen/triton_w4_dq.py``): one buffer per dtype and device, as large as
the largest request so far, so a model holds one dense weight's worth rather than one per linear."""
from __future__ import annotations

import torch


class Scratch:
    """A per-model pool. :meth:`get` returns a buffer of at least ``numel`` elements; a larger
    request allocates a new buffer and later requests share it, while launches bound earlier keep
    the one they were given (a captured CUDA graph may hold its address). Not locked: the
    executor binds under its own lock."""

    def __init__(self) -> None:
        self._bufs: dict[tuple[torch.dtype, torch.device], torch.Tensor] = {}

    def get(self, numel: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        """A flat buffer of ``dtype`` on ``device`` with at least ``numel`` elements."""
        key = (dtype, torch.device(device))
        t = self._bufs.get(key)
        if t is None or t.numel() < numel:
            t = torch.empty(max(numel, 1), dtype=dtype, device=device)
            self._bufs[key] = t
        return t
