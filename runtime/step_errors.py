"""What a step that raised reports (``failed``: the kernel's nodes and ops named), and which
errors of a reference step on a GPU say it mixed devices (``mixes_devices``), which the
executor cures by running that step on the CPU."""
from __future__ import annotations

import torch

from ..codegen.schedule import Kernel
from ..ir.errors import ExecutionError


def mixes_devices(e: RuntimeError, dev: torch.device) -> bool:
    """Whether a reference's error on ``dev`` says it mixed devices (a CPU tensor it built met
    ours), which running it on the CPU cures. Not a CUDA error (whose text mentions
    "device-side assertions"), and nothing raised while a CUDA graph is being captured: a
    reference that syncs (nonzero, item) fails there, and sending it to the CPU for good
    made every later call slower and its results differ from the first call's."""
    msg = str(e)
    if dev.type == "cuda" and torch.cuda.is_current_stream_capturing():
        return False
    if "CUDA error" in msg or "stream is capturing" in msg:
        return False
    return "same device" in msg or "expected device" in msg or "device as the indexed tensor" in msg


def failed(k: Kernel, e: Exception) -> Exception:
    """The error of a step that raised: names the kernel's nodes and ops, as the reference
    interpreter does for one node (an out-of-range index, a bad reshape of the input's data).
    Running out of memory stays what it is, so callers can catch it (and retry smaller)."""
    if isinstance(e, (torch.OutOfMemoryError, MemoryError)):
        return e
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    # a compiler's error often starts with a location line and ends with the reason
    first = lines[0] if len(lines) <= 1 else f"{lines[0]} ... {lines[-1]}"
    what = ", ".join(f"{n.describe()} ({n.op})" for n in k.nodes[:3]) + (", ..." if len(k.nodes) > 3 else "")
    where = f"node {what}" if len(k.nodes) == 1 else f"kernel {k.name} ({what})"
    return ExecutionError(f"{where} failed: {type(e).__name__}: {first}")
