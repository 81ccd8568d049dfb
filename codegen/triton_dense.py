"""The large-M launch of the weight-only linears on the Triton target: dequantise, then cuBLAS.

From a few hundred rows a linear is compute-bound, and cuBLAS's GEMM on a dense weight beats
every tile of ours that decodes codes inside its loop. On an H200 (bf16 x, 8192², M = 256):
the W4 nibble-block GEMM 120.6 µs, the int8 weight-only GEMM 191.1 µs, cuBLAS on the bf16
weight 53.4 µs, and dequantise + cuBLAS 101.2 µs (M = 1024: 444.6 / 231.0, cuBLAS 191.7).

:func:`dense_launch` asks a code-specific ``fill(w, n0, ne)`` (``triton_w4_dq.py``,
``triton_wq.py``) to write the dense weight of channels n0 .. ne - 1 into ``w`` [ne - n0, K] in
x's dtype, then runs ``torch.mm`` / ``torch.addmm`` into those columns of y (f32 accumulation,
one rounding; f32 x follows torch's TF32 setting, off by default). The dense weight lives in
the compiled model's :class:`Scratch`, shared by its linears: at most :data:`DENSE_CAP` bytes,
so a wider weight goes in chunks of channels.
Numerics: the dense weight is the reference's f32 ``dequant_weight`` rounded once to x's dtype
(f32 x: exact); the in-loop kernels keep u - zero exact and scale in f32, so this path adds
that one rounding of each weight (bf16: 2^-9 relative; measured relerr 2.3e-3 against 1.7e-3
on 8192² int4 g128, both dominated by bf16).
"""
from __future__ import annotations

import threading
from typing import Callable, Sequence

import torch

from ..runtime.scratch import Scratch
from .triton_template import Launch, quiet

DTYPES = {"f32": torch.float32, "f16": torch.float16, "bf16": torch.bfloat16}
DENSE_CAP = 128 << 20      # bytes of dense weight per chunk (16384² bf16 goes in 4 chunks)
DENSE_MIN_M = 256          # rows from which the dense path runs by default

Fill = Callable[[torch.Tensor, int, int], None]


def dense_chunk(N: int, K: int, xkind: str, cap: int = DENSE_CAP) -> int:
    """Channels per chunk: all N when N x K values fit ``cap`` bytes, else the most that do
    (a multiple of 64, at least 64)."""
    elt = DTYPES[xkind].itemsize
    if N * K * elt <= cap:
        return N
    return max(64, cap // (K * elt) // 64 * 64)


def dense_launch(slots: tuple[int, int, int], xkind: str, N: int, K: int, device: torch.device,
                 interpret: bool, scratch: Scratch | None, fill: Fill, chunk: int = 0) -> Launch:
    """The launch over tensors ``ts`` (x, bias or -1, y at ``slots``): per chunk of ``chunk``
    channels (0: :func:`dense_chunk`), ``fill`` then one cuBLAS GEMM into y's columns.
    ``scratch`` (the model's pool) holds the dense chunk; without it the launch owns one. Each
    call holds the scratch's lock from its first fill to its last GEMM, so calls from several
    threads do not interleave; on a GPU that orders them only within one stream (as for the
    split-K workspaces, a model's launches in flight on two streams at once are not safe)."""
    xi, bi, yi = slots
    chunk = dense_chunk(N, K, xkind) if chunk <= 0 else min(chunk, N)
    dtype = DTYPES[xkind]
    numel = chunk * K
    if scratch is not None:
        buf = scratch.get(numel, dtype, device)
    else:
        buf = torch.empty(numel, dtype=dtype, device=device)
    wbuf = buf[:numel].view(chunk, K)
    parts = [(n0, min(N, n0 + chunk)) for n0 in range(0, N, chunk)]
    lock = scratch.lock if scratch is not None else threading.Lock()

    def launch(ts: Sequence[torch.Tensor]) -> None:
        with lock:      # fill and GEMM back to back: another call may share the buffer
            _run(ts)

    def _run(ts: Sequence[torch.Tensor]) -> None:
        # the slots may be [B, S, K]-shaped (contiguous): the GEMM takes them as matrices
        x, y = ts[xi].view(-1, K), ts[yi].view(-1, N)
        for n0, ne in parts:
            w = wbuf[:ne - n0]
            fill(w, n0, ne)
            out = y if len(parts) == 1 else y[:, n0:ne]
            if bi < 0:
                torch.mm(x, w.t(), out=out)
            elif ts[bi].dtype == y.dtype:
                torch.addmm(ts[bi][n0:ne], x, w.t(), out=out)
            else:
                # a bias of another dtype: added in f32 to the rounded product
                torch.mm(x, w.t(), out=out)
                out.copy_(out.float() + ts[bi][n0:ne].float())

    return quiet(launch, interpret)
