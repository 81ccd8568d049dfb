"""The small-M float32 linear of the C target (codegen/c_f32gemv.py): results against torch
(float64) for odd shapes, rows on both sides of the threshold, bias and epilogues, dynamic
M, one and two OpenMP threads, transposed inputs, that the executor dispatches to it
exactly where it should, and that it reads the graph's weight in place (no packed copy)."""
from __future__ import annotations

import ctypes
import ctypes.util
import re
from typing import Iterator

import pytest
import torch

import scalefold as sf
from scalefold.api import build_c
from scalefold.codegen import c as cgen
from scalefold.codegen import c_f32gemv
from scalefold.codegen.c_f32gemv import GemvConfig, gemv_supported, render_gemv
from scalefold.codegen.schedule import partition
from scalefold.ir import Graph
from scalefold.runtime.interp import run
from linear_cases import count_library_calls, lin_graph

LIMIT = c_f32gemv.GEMV.limit    # the most rows the GEMV takes, by weight [N, K]


def reference(g: Graph, *xs: torch.Tensor) -> torch.Tensor:
    """The graph's output in float64 (the linear by torch; an activation epilogue by the
    reference interpreter on the float64 sums rounded to f32)."""
    lin = next(n for n in g.nodes if n.op == "linear")
    w, b = lin.inputs[1].const.double(), lin.inputs[2].const.double() if len(lin.inputs) > 2 else None
    y = torch.nn.functional.linear(xs[0].double(), w, b)
    epi = [n for n in g.nodes if n is not lin]
    if not epi:
        return y
    e = epi[0]
    if e.op == "add":
        return y + xs[1].double()
    return run(_act_graph(e), y.float())[0].double() if e.op != "relu" else torch.relu(y)


def _act_graph(e) -> Graph:
    """One activation node like ``e`` on f32[-1] (the reference for the epilogue)."""
    g = Graph("act")
    x = g.add_input("f32[T,U]", "x")
    g.set_outputs([g.add(e.op, [x], dict(e.attrs))])
    return g


def close(got: torch.Tensor, want: torch.Tensor, rtol: float = 2e-5) -> None:
    """Max error within ``rtol`` of the largest reference value (f32 dot products in another
    order: about sqrt(K) ulps of the largest partial sum)."""
    assert got.shape == want.shape and got.dtype == torch.float32
    scale = float(want.abs().max()) or 1.0
    err = float((got.double() - want).abs().max())
    assert err <= rtol * scale, (err, scale)


def kinds(cm) -> list[tuple[str, bool]]:
    """(kind, has a compiled alternative) per kernel of a compiled model."""
    return [(k.kind, k.name in cm.sources) for k in cm.schedule.kernels]


@pytest.fixture(autouse=True)
def _cache(kernel_cache_dir: str) -> Iterator[None]:
    yield


@pytest.mark.parametrize("K,N", [(64, 32), (37, 45), (100, 1), (1, 17), (129, 200), (300, 65)])
@pytest.mark.parametrize("bias", [True, False])
def test_matches_torch_dynamic_m(K: int, N: int, bias: bool) -> None:
    """One compiled model (dynamic M) at M = 1 .. its limit and above: small M runs the GEMV,
    larger M the library path; both match torch."""
    g = lin_graph(K, N, bias, seed=K + N)
    cm = build_c(g)
    assert kinds(cm) == [("library", True)]
    gen = torch.Generator().manual_seed(1)
    lim = LIMIT(N, K)
    for m in sorted({1, 2, 3, 4, 5, 8, 9, 16, lim, lim + 1, 2 * lim + 3}):
        x = torch.randn(m, K, generator=gen)
        close(cm(x), reference(g, x))


@pytest.mark.parametrize("epi", ["relu", "gelu", "gelu_tanh", "silu", "sigmoid", "tanh", "add"])
def test_epilogues(epi: str) -> None:
    """The library kernel's epilogue (activation or residual add) runs in the GEMV's store."""
    g = lin_graph(70, 50, True, epi)
    cm = build_c(g)
    assert kinds(cm) == [("library", True)]
    src = next(iter(cm.sources.values()))
    assert "sf_gv1_" in src
    gen = torch.Generator().manual_seed(2)
    for m in (1, 4, 7, LIMIT(50, 70) + 2):
        xs = (torch.randn(m, 70, generator=gen) * 3,) + ((torch.randn(m, 50, generator=gen),) if epi == "add" else ())
        close(cm(*xs), reference(g, *xs))


def test_nan_and_inf_propagate() -> None:
    """A NaN or inf in a row of x reaches that row's outputs as the f32 dot product does;
    the other rows are untouched (zero channels past N do not leak)."""
    g = lin_graph(40, 20, True, "relu")
    cm = build_c(g)
    x = torch.randn(3, 40)
    x[1, 5] = float("nan")
    x[2, 7] = float("inf")
    y = cm(x)
    assert torch.isnan(y[1]).all() and not torch.isnan(y[0]).any()
    want = reference(g, x)
    assert torch.equal(torch.isnan(y[2]), torch.isnan(want[2]))
    close(y[0:1], want[0:1])


@pytest.mark.parametrize("threads", [1, 2])
def test_threads(threads: int) -> None:
    """Big enough for the OpenMP threads (M * N * K > PAR_MACS) at M = 1; the panels split
    over 1 or 2 threads give the same result."""
    lib = ctypes.CDLL(ctypes.util.find_library("gomp") or "libgomp.so.1")
    old = lib.omp_get_max_threads()
    g = lin_graph(1030, 2100, True)
    cm = build_c(g)
    x = torch.randn(4, 1030)
    try:
        lib.omp_set_num_threads(threads)
        y1, y4 = cm(x[:1]), cm(x)
        lib.omp_set_num_threads(3 - threads)
        z1, z4 = cm(x[:1]), cm(x)
    finally:
        lib.omp_set_num_threads(old)
    close(y1, reference(g, x[:1]))
    close(y4, reference(g, x))
    # each output is one f32 sum in a fixed order: independent of the split over threads
    assert torch.equal(y1, z1) and torch.equal(y4, z4)


def test_leading_dims_and_transposed_input() -> None:
    """x [B, S, K] (M = B * S, two symbols) and an x that is a transposed view (the executor
    makes it contiguous before the C call)."""
    g = Graph("t")
    x = g.add_input("f32[B,19,S]", "x")
    xt = g.add("transpose", [x], {"perm": (0, 2, 1)})
    w = g.add_const(torch.randn(33, 19))
    y = g.add("linear", [xt, w, g.add_const(torch.randn(33))])
    g.set_outputs([y])
    cm = build_c(g)
    assert ("library", True) in kinds(cm)
    for b, s in ((1, 1), (2, 3), (3, 20)):
        xs = torch.randn(b, 19, s)
        want = torch.nn.functional.linear(xs.transpose(1, 2).double(), w.const.double(),
                                          y.producer.inputs[2].const.double())
        close(cm(xs), want)


def test_dispatch_and_gating() -> None:
    """Static M at or below the threshold renders the GEMV, above it nothing; non-constant
    weights, f16 / f64 and epilogues outside the table keep the library path only; the source
    is deterministic and carries no M."""
    assert kinds(build_c(lin_graph(20, 24, lead=str(LIMIT(24, 20))))) == [("library", True)]
    assert kinds(build_c(lin_graph(20, 24, lead=str(LIMIT(24, 20) + 1)))) == [("library", False)]
    g = Graph("wx")
    x = g.add_input("f32[M,8]", "x")
    w = g.add_input("f32[4,8]", "w")
    g.set_outputs([g.add("linear", [x, w])])
    assert kinds(build_c(g)) == [("library", False)]
    for dt in ("f64", "f16"):
        g = Graph("d")
        x = g.add_input(f"{dt}[M,8]", "x")
        g.set_outputs([g.add("linear", [x, g.add_const(torch.zeros(4, 8, dtype=torch.float64 if dt == "f64"
                                                                    else torch.float16))])])
        assert not any(gemv_supported(k) for k in partition(g, cgen.CAPS).kernels)
    k = partition(lin_graph(37, 45, True, "gelu"), cgen.CAPS).kernels[0]
    a, b = render_gemv(k), render_gemv(k)
    assert a.source == b.source and "sf_gelu_float" in a.source
    assert [int(p) for p in a.params[1:]] == [LIMIT(45, 37)]
    # the same shape at another static M compiles to the same source
    k2 = partition(lin_graph(37, 45, True, "gelu", lead="3"), cgen.CAPS).kernels[0]
    assert render_gemv(k2).source == a.source
    assert not gemv_supported(k, GemvConfig(max_m=0))


def test_executor_uses_gemv_only_up_to_threshold(monkeypatch: pytest.MonkeyPatch) -> None:
    """At M up to the limit the compiled C function runs, above it the library call (counted)
    where no GEMM alternative was rendered (c_f32gemm.py; test_c_f32_gemm.py covers it)."""
    from scalefold.codegen import c_f32gemm
    monkeypatch.setattr(c_f32gemm, "gemm_supported", lambda k: False)
    g = lin_graph(48, 40, True)
    cm = build_c(g)
    ex = cm._runner
    calls = count_library_calls(monkeypatch)
    ex._libfns.clear()
    ex.forget_bindings()
    lim = LIMIT(40, 48)
    for m in (1, lim):
        cm(torch.randn(m, 48))
    assert calls["lib"] == 0
    cm(torch.randn(lim + 1, 48))
    assert calls["lib"] == 1


def test_limit_by_weight_size() -> None:
    """Smaller weights take the GEMV to more rows (module docstring's figures): 32 up to
    1 MB, 16 up to 3 MB, 8 up to 8 MB, 4 above; max_m = 0 renders nothing at any size."""
    cfg = GemvConfig()
    assert cfg.limit(384, 384) == 32 and cfg.limit(512, 512) == 32          # 0.6 / 1.0 MB
    assert cfg.limit(1536, 384) == 16 and cfg.limit(768, 768) == 16        # 2.4 MB
    assert cfg.limit(1024, 1024) == 8 and cfg.limit(1024, 2048) == 8       # 4 / 8 MB
    assert cfg.limit(2048, 2048) == 4 and cfg.limit(32000, 2048) == 4      # above 8 MB
    assert GemvConfig(max_m=0).limit(8, 8) == 0
    assert GemvConfig(max_m=40).limit(384, 384) == 40                      # never below max_m


def test_scalar_tile_and_other_blockings() -> None:
    """The portable loop (vec=False) and other row blocks / x-row tiles give the same sums;
    the vector tilings agree bit for bit (each output is one fixed f32 sequence)."""
    g = lin_graph(53, 70, True, "silu")
    k = partition(g, cgen.CAPS).kernels[0]
    from scalefold.runtime.cache import build, load_kernel
    x = torch.randn(11, 53)
    want = reference(g, x)
    vec = []
    for cfg in (GemvConfig(vec=False), GemvConfig(rows=1, mr=3), GemvConfig(rows=6, mr=2, runs=1),
                GemvConfig(rows=16, mr=8), GemvConfig(rows=12, mr=8, acc=24), GemvConfig()):
        ck = render_gemv(k, cfg)
        assert "sf_gv_s" in ck.source and ("#define SF_NO_VEC 1" in ck.source) == (not cfg.vec)
        fn = load_kernel(build(ck.source))
        y = torch.empty(11, 70)
        ts = [x if a is ck.args[0] else y if a is ck.args[-1] else a.const for a in ck.args]
        ptrs = (ctypes.c_void_p * len(ts))(*[t.data_ptr() for t in ts])
        fn(ptrs, (ctypes.c_int64 * 2)(11, 11))
        close(y, want)
        if cfg.vec:
            vec.append(y)
    assert all(torch.equal(v, vec[0]) for v in vec[1:])


@pytest.mark.parametrize("epi", [None, "add"])
def test_weight_read_in_place(epi: str | None) -> None:
    """No packed copy: the kernel's args are graph Values only (no tensor of its own), its
    weight argument is the linear's constant Value, and the executor holds no constant
    beyond the graph's (the weight's storage is the graph constant's)."""
    g = lin_graph(40, 24, True, epi)
    k = partition(g, cgen.CAPS).kernels[0]
    ck = render_gemv(k)
    lin = k.nodes[0]
    assert not any(isinstance(a, torch.Tensor) for a in ck.args)
    assert ck.args[1] is lin.inputs[1] and ck.args[1].is_const
    cm = build_c(g)
    ex = cm._runner
    consts = [t for _, t in ex._consts]
    assert len(consts) == len(g.constants())
    w = lin.inputs[1].const
    assert sum(t.numel() for t in consts) == sum(v.const.numel() for v in g.constants())
    assert any(t.data_ptr() == w.data_ptr() for t in consts)
    assert not any(isinstance(a, torch.Tensor) for a in ex._args.get(k.name, []))
    xs = (torch.randn(2, 40),) + ((torch.randn(2, 24),) if epi == "add" else ())
    close(cm(*xs), reference(g, *xs))


def test_saved_model_keeps_the_small_m_path(tmp_path) -> None:
    """A saved and loaded model renders the same GEMV and takes it at small M."""
    torch.manual_seed(3)
    m = torch.nn.Sequential(torch.nn.Linear(40, 24), torch.nn.GELU()).eval()
    x = torch.randn(2, 40)
    cm = sf.compile(m, (x,), dynamic_shapes=({0: torch.export.Dim("M", min=1, max=512)},), target="c")
    cm.save(tmp_path / "m")
    cm2 = sf.load(tmp_path / "m")
    assert sorted(cm2._runner.kernels) == sorted(cm._runner.kernels)
    lib = [k.name for k in cm2.schedule.kernels if k.kind == "library"]
    assert lib and all(n in cm2._runner.kernels for n in lib)     # the compiled alternative
    for rows in (1, 3, 64):
        xi = torch.randn(rows, 40)
        with torch.no_grad():
            torch.testing.assert_close(cm2(xi), m(xi), rtol=1e-5, atol=1e-5)
            assert torch.equal(cm2(xi), cm(xi))


def test_blocking_by_weight_size() -> None:
    """Weights up to 3 MB render 8 x rows x 3 weight rows per tile (blocks of 12 rows), larger
    ones 4 x 4 (blocks of 8); an explicit config without ``small`` keeps its own blocking."""
    cfg = c_f32gemv.GEMV
    s = cfg.for_weight(1536, 384)                      # 2.4 MB
    assert (s.rows, s.mr, s.acc, s.prefetch, s.small) == (12, 8, 24, True, None)
    assert s.limit(1536, 384) == cfg.limit(1536, 384)
    assert cfg.for_weight(1024, 1024) is cfg            # 4 MB
    assert GemvConfig().for_weight(8, 8) == GemvConfig()
    small = render_gemv(partition(lin_graph(64, 48), cgen.CAPS).kernels[0]).source
    large = render_gemv(partition(lin_graph(1024, 1024), cgen.CAPS).kernels[0]).source
    assert "sf_gv8_3(" in small and "sf_gv4_4(" not in small
    assert "sf_gv4_4(" in large and "sf_gv8_3(" not in large
    # several-row tiles of small weights prefetch the next tile's rows; one-row tiles and
    # large weights do not
    tiles = {m.group(1): m.group(0) for m in re.finditer(r"static inline void (sf_gv\d+_\d+)\(.*?\n}", small, re.S)}
    assert "_mm_prefetch" in tiles["sf_gv8_3"] and "_mm_prefetch" not in tiles["sf_gv1_12"]
    assert "_mm_prefetch" not in large
    with pytest.raises(ValueError, match="acc"):
        GemvConfig(acc=29)
