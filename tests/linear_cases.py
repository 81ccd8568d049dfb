"""Linear graphs shared by the C target's GEMV and GEMM tests."""
from __future__ import annotations

from typing import Any

import torch

from scalefold.ir import Graph


def lin_graph(K: int, N: int, bias: bool = True, epi: str | None = None, lead: str = "M",
              seed: int = 0) -> Graph:
    """x f32[lead, K] -> linear (constant w [N, K], bias [N]) -> optional epilogue ``epi``
    (an activation name, "gelu_tanh", or "add" of a second input r of y's shape)."""
    gen = torch.Generator().manual_seed(seed)
    g = Graph("lin")
    x = g.add_input(f"f32[{lead},{K}]", "x")
    r = g.add_input(f"f32[{lead},{N}]", "r") if epi == "add" else None
    ins = [x, g.add_const(torch.randn(N, K, generator=gen) * K ** -0.5)]
    if bias:
        ins.append(g.add_const(torch.randn(N, generator=gen)))
    y = g.add("linear", ins)
    if epi == "add":
        y = g.add("add", [r, y])
    elif epi == "gelu_tanh":
        y = g.add("gelu", [y], {"approximate": "tanh"})
    elif epi is not None:
        y = g.add(epi, [y])
    g.set_outputs([y])
    return g


def count_library_calls(monkeypatch: Any) -> dict[str, int]:
    """Count, in the returned dict's "lib", the calls of library functions the executor
    builds from now on (runtime/executor.py ``library_fn``)."""
    from scalefold.runtime import executor
    calls = {"lib": 0}
    real = executor.library_fn

    def counting(nodes, device="cpu"):  # type: ignore[no-untyped-def]
        fn, wo = real(nodes, device)

        def run_(xs, out):  # type: ignore[no-untyped-def]
            calls["lib"] += 1
            return fn(xs, out)
        return run_, wo
    monkeypatch.setattr(executor, "library_fn", counting)
    return calls
