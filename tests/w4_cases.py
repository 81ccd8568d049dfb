"""Group-wise 4-bit qlinear test graphs and the reference check shared by
tests/codegen/test_c_w4.py and tests/codegen/test_c_avx2.py."""
from __future__ import annotations

import torch

from scalefold.ir.graph import Graph
from scalefold.ir.ops.quant import dequant_weight
from scalefold.runtime import interp

BS = [(1, 1), (1, 3), (4, 4), (17, 1), (8, 8)]          # M = 1, 3, 16, 17, 64


def codes(N: int, K: int, group: int, *, sym: bool, bits: int = 4, seed: int = 0,
          fp4: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Random codes (u4 0..2^bits-1, i4 -8..7 or f4e2m1 0..15), scales [N, G] and zero points
    (u4) or None."""
    gen = torch.Generator().manual_seed(seed)
    G = -(-K // group)
    if fp4:
        w = torch.randint(0, 16, (N, K), generator=gen, dtype=torch.uint8)
        z = None
    elif sym:
        w = torch.randint(-8, 8, (N, K), generator=gen, dtype=torch.int8)
        z = None
    else:
        w = torch.randint(0, 1 << bits, (N, K), generator=gen, dtype=torch.uint8)
        z = torch.randint(0, 1 << bits, (N, G), generator=gen, dtype=torch.uint8)
    s = torch.rand(N, G, generator=gen) * 0.02 + 1e-3
    return w, s, z


def w4graph(K: int, N: int, group: int, *, act: str = "none", sym: bool = False,
            bias: bool = True, bits: int = 4, seed: int = 0, fp4: bool = False) -> Graph:
    w, s, z = codes(N, K, group, sym=sym, bits=bits, seed=seed, fp4=fp4)
    g = Graph("w4")
    x = g.add_input(f"f32[B,S,{K}]", "x")
    wd = "f4e2m1" if fp4 else "i4" if sym else "u4"
    zv = g.add_const(z, "u4", "z") if z is not None else None
    b = g.add_const(torch.randn(N, generator=torch.Generator().manual_seed(seed + 1)), "f32",
                    "b") if bias else None
    y = g.add("qlinear", [x, g.add_const(w, wd, "w"), g.add_const(s, "f32", "s"), zv, b],
              {"act": act, "group": min(group, K), **({"wtype": "f4e2m1"} if fp4 else {})})
    g.set_outputs([y])
    return g


def check(g: Graph, cm) -> None:
    n = g.nodes[0]
    K = g.inputs[0].type.shape[-1]
    zero = n.inputs[3].const if n.inputs[3] is not None else None
    wd = dequant_weight(n.inputs[1].const, n.inputs[2].const, zero, n.attrs["group"],
                        n.attrs["wtype"] == "f4e2m1").double()
    for B, S in BS:
        gen = torch.Generator().manual_seed(B * 31 + S)
        x = torch.randn(B, S, K, generator=gen) * (torch.rand(K, generator=gen) * 3 + 0.1)
        got, want = cm(x), interp.run(g, x)[0]
        assert got.shape == want.shape and got.dtype == want.dtype
        scale = x.double().abs().reshape(-1, K) @ wd.abs().T
        err = (got.double() - want.double()).abs().reshape(-1, scale.shape[1])
        assert bool((err <= 1e-5 * scale + 1e-6).all()), f"B={B} S={S}: max err {err.max()}"
