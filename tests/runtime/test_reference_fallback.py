"""When the executor sends a reference step to the CPU (``mixes_devices``): only for an error
that says the reference mixed devices, never for a CUDA error or during CUDA-graph capture.
On an H200 a Mixtral block's ``moe`` reference (it syncs on ``nonzero``) failed inside the
capture of the second call; the error text's "device-side assertions" read as a device mix,
so the step ran on the CPU from then on: every later call slower, and 1 ulp off the first."""
from __future__ import annotations

import pytest
import torch

from scalefold.runtime.step_errors import mixes_devices


def _error(f) -> RuntimeError:
    try:
        f()
    except RuntimeError as e:
        return e
    raise AssertionError("no error")


def test_a_real_device_mix_falls_back() -> None:
    e = _error(lambda: torch.zeros(3, device="meta") + torch.zeros(3))
    assert mixes_devices(e, torch.device("meta"))
    e = RuntimeError("Expected all tensors to be on the same device, but found at least two devices, "
                     "cuda:0 and cpu! (when checking argument for argument index in method "
                     "wrapper_CUDA__index_select)")
    assert mixes_devices(e, torch.device("meta"))


@pytest.mark.parametrize("msg", [
    "CUDA error: operation not permitted when stream is capturing\nCUDA kernel errors might be "
    "asynchronously reported at some other API call.\nCompile with `TORCH_USE_CUDA_DSA` to enable "
    "device-side assertions.",
    "operation not permitted when stream is capturing",
    "CUDA out of memory. Tried to allocate 2.00 GiB (GPU 0; 79.11 GiB total capacity) on device",
    "shape '[2, 3]' is invalid for input of size 7",
])
def test_other_errors_do_not(msg: str) -> None:
    assert not mixes_devices(RuntimeError(msg), torch.device("meta"))
