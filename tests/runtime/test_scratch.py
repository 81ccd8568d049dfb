"""The per-model dense scratch (runtime/scratch.py) and the dense launch's use of it
(codegen/triton_dense.py): buffers grow and are shared, and concurrent calls that share a
buffer do not read each other's weights."""
from __future__ import annotations

import threading
import time

import torch

from scalefold.codegen.triton_dense import dense_chunk, dense_launch
from scalefold.runtime.scratch import Scratch


def test_buffers_grow_and_are_shared_per_dtype() -> None:
    sc = Scratch()
    a = sc.get(10, torch.float32, torch.device("cpu"))
    assert sc.get(8, torch.float32, torch.device("cpu")) is a
    b = sc.get(20, torch.float32, torch.device("cpu"))
    assert b is not a and b.numel() == 20 and sc.get(15, torch.float32, torch.device("cpu")) is b
    assert sc.get(5, torch.bfloat16, torch.device("cpu")).dtype == torch.bfloat16


def test_chunks_stay_under_the_cap() -> None:
    assert dense_chunk(8192, 8192, "bf16") == 8192                 # 128 MB: one chunk
    assert dense_chunk(16384, 16384, "bf16") == 4096
    assert dense_chunk(11008, 4096, "f32") == 8192                 # f32: 4 bytes a weight
    assert dense_chunk(100, 1 << 30, "f32") == 64                  # at least 64 channels


def test_concurrent_calls_sharing_the_scratch_do_not_interleave() -> None:
    """Two linears of one model fill the same buffer; a call holds it from its fill to its
    GEMM, so a second thread's fill cannot slip in between (it did without the lock)."""
    K, N, M = 8, 4, 3
    sc = Scratch()

    def make(val: float):
        def fill(w: torch.Tensor, n0: int, ne: int) -> None:
            w.fill_(val)
            time.sleep(0.05)          # the other thread runs meanwhile
        return dense_launch((0, -1, 1), "f32", N, K, torch.device("cpu"), True, sc, fill)

    la, lb = make(1.0), make(2.0)
    x = torch.ones(M, K)
    ya, yb = torch.empty(M, N), torch.empty(M, N)
    ts = [threading.Thread(target=la, args=([x, ya],)), threading.Thread(target=lb, args=([x, yb],))]
    for t in ts:
        t.start()
        time.sleep(0.01)
    for t in ts:
        t.join()
    assert torch.all(ya == K) and torch.all(yb == 2 * K)


def test_chunked_launch_with_a_bias_of_another_dtype() -> None:
    K, N, M = 6, 10, 5
    w = torch.randn(N, K)
    bias = torch.randn(N, dtype=torch.float64)

    def fill(buf: torch.Tensor, n0: int, ne: int) -> None:
        buf.copy_(w[n0:ne])
    launch = dense_launch((0, 1, 2), "f32", N, K, torch.device("cpu"), True, None, fill, chunk=4)
    x, y = torch.randn(M, K), torch.empty(M, N)
    launch([x, bias, y])
    assert torch.allclose(y, x @ w.T + bias.float(), atol=1e-6)


def test_a_reserved_size_is_allocated_at_the_first_request() -> None:
    sc = Scratch()
    sc.reserve(100, torch.float16)
    sc.reserve(40, torch.float16)
    a = sc.get(10, torch.float16, torch.device("cpu"))
    assert a.numel() == 100 and sc.get(90, torch.float16, torch.device("cpu")) is a
    assert sc.get(10, torch.float32, torch.device("cpu")).numel() == 10   # other dtypes: as asked
