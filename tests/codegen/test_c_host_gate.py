"""Replacements of library calls whose vector path the host's compiler cannot build are left
out of compiled models (api._runs_here): the library call runs instead of portable loops."""
from __future__ import annotations

import platform

import pytest
import torch
from harness import assert_close

import scalefold as sf
from scalefold.codegen.c_isa import TILE_MACROS, VEC_MACRO
from scalefold.ir.graph import Graph
from scalefold.runtime import cache
from scalefold.runtime.interp import run


class _Net(torch.nn.Module):
    """A convolution, a float linear over many rows and attention: one of each replacement."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(8, 32, 3, padding=1)
        self.lin = torch.nn.Linear(32, 64)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv(x).flatten(2).transpose(1, 2)          # [B, HW, 32]
        q = self.lin(h).reshape(h.shape[0], h.shape[1], 4, 16).transpose(1, 2)
        return torch.nn.functional.scaled_dot_product_attention(q, q, q)


def _compiled(monkeypatch: pytest.MonkeyPatch, portable: str | None, has_vec: bool):
    if portable is None:
        monkeypatch.delenv("SCALEFOLD_C_PORTABLE", raising=False)
    else:
        monkeypatch.setenv("SCALEFOLD_C_PORTABLE", portable)
    real = cache.compiler_defines
    monkeypatch.setattr(cache, "compiler_defines",
                        lambda m, *a, **k: has_vec if m in VEC_MACRO + TILE_MACROS else real(m, *a, **k))
    net = _Net().eval()
    x = torch.randn(2, 8, 12, 12)
    with torch.no_grad():
        cm = sf.compile(net, (x,), target="c")
        want = net(x)
        assert_close(cm(x), want, rtol=1e-4, atol=1e-5)
    return cm


def _replacements(cm) -> list[str]:
    lib = {k.name for k in cm.schedule.kernels if k.kind == "library"}
    return sorted(n for n in cm.sources if n in lib or n.endswith("_gemm"))


def test_without_the_vector_isa_the_library_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    with_vec = _replacements(_compiled(monkeypatch, None, True))
    assert len(with_vec) >= 3, with_vec          # conv, the linear's GEMM, attention
    assert _replacements(_compiled(monkeypatch, None, False)) == []
    # SCALEFOLD_C_PORTABLE=1 keeps them (their portable loops)
    assert _replacements(_compiled(monkeypatch, "1", False)) == with_vec


def test_fused_kernels_do_not_depend_on_the_gate(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SCALEFOLD_C_PORTABLE", raising=False)
    monkeypatch.setattr(cache, "compiler_defines", lambda m, *a, **k: False)
    g = Graph("ew")
    x = g.add_input("f32[B,7]", "x")
    g.set_outputs([g.add("tanh", [g.add("mul", [x, x])])])
    cm = sf.compile(g, target="c")
    assert len(cm.sources) == 1
    xs = torch.randn(3, 7)
    assert_close(cm(xs), run(g, xs)[0])


def test_compiler_defines_reads_the_compilers_macros() -> None:
    assert not cache.compiler_defines("__SCALEFOLD_NO_SUCH_MACRO__")
    if platform.machine().lower() in ("x86_64", "amd64"):
        assert cache.compiler_defines("__x86_64__")
        try:
            flags = open("/proc/cpuinfo").read().split("flags", 1)[1].split("\n", 1)[0].split()
        except (OSError, IndexError):
            return
        # -march=native: the macro follows the host CPU's feature flag
        assert cache.compiler_defines("__AVX512F__") == ("avx512f" in flags)
