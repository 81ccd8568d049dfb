"""Float32 linear at small M (the GEMV shape of LLM decoding) on the CPU: torch ``F.linear``,
onnxruntime and scalefold's compiled single ``Linear``, side by side in one process.

``y = x @ W^T`` with x [M, K] and a constant W [N, K], for the linears of a TinyLlama-1.1B
shaped decoder (K x N: 2048 x 2048 attention, 2048 x 5632 MLP up/gate, 5632 x 2048 MLP down,
2048 x 32000 LM head) at M = 1, 2, 4, 8. Runners, all with ``--threads`` threads:

- ``torch F.linear``: torch eager (oneDNN / MKL sgemm).
- ``ort Gemm``: one ``Gemm(transB=1)`` node, W [N, K] as its initializer; ``ort MatMul``: one
  ``MatMul`` node with W^T [K, N] as its initializer (what ``torch.onnx`` and scalefold's
  ONNX export write for a linear). onnxruntime prepacks constant B at session start for both.
  Intra-op spinning is off (``session.intra_op.allow_spinning`` 0), as in llm_decode_cpu.py.
- ``sf default``: ``scalefold`` compiled for ``target="c"`` (dynamic M, one compiled model for
  every M), with whatever the C target picks for the shape.
- ``sf onednn``: the same with the small-M float GEMV kernel off (``codegen/c_f32gemv.py``,
  ``GEMV.max_m = 0``): the library path (oneDNN ``_linear_pointwise``), what it ran before.

Printed per (shape, M): each runner's best of ``--repeat`` medians of ``--iters`` calls (the
runners taken in turn each round), ms and the weight stream's bandwidth (4 N K bytes / time,
GB/s), and the max relative error of scalefold's output against torch.

``OMP_WAIT_POLICY=PASSIVE`` is set before torch loads (a shared 2-core machine: spinning
barriers stall kernels for a scheduler tick) unless ``--omp-spin`` is given.

    PYTHONPATH=/tmp/pkg .venv/bin/python benchmarks/f32_gemv_cpu.py [--m 1,2,4,8]
        [--shapes 2048x2048,2048x5632,5632x2048,2048x32000] [--threads 2] [--iters 20]
        [--repeat 3] [--no-onednn]
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from typing import Callable

if "--omp-spin" not in sys.argv:
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import torch  # noqa: E402

from w4_cpu import best_medians  # noqa: E402


def ort_session(w: torch.Tensor, gemm: bool, threads: int):
    """An onnxruntime session of one ``Gemm(transB=1)`` (``gemm``) or ``MatMul`` node with the
    weight ``w`` [N, K] as its initializer; input ``A`` [M, K], output ``Y`` [M, N]."""
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    n, k = w.shape
    if gemm:
        init = numpy_helper.from_array(w.contiguous().numpy(), "B")
        node = helper.make_node("Gemm", ["A", "B"], ["Y"], transB=1)
    else:
        init = numpy_helper.from_array(w.t().contiguous().numpy(), "B")
        node = helper.make_node("MatMul", ["A", "B"], ["Y"])
    graph = helper.make_graph([node], "lin", [helper.make_tensor_value_info("A", TensorProto.FLOAT, ["M", k])],
                              [helper.make_tensor_value_info("Y", TensorProto.FLOAT, ["M", n])], [init])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])


def compile_linear(lin: torch.nn.Linear, gemv: bool, max_m: int | None = None):
    """scalefold's C build of ``lin`` with a dynamic batch ``M`` (the GEMV kernel on, up to
    ``max_m`` rows where given, or off)."""
    from torch.export import Dim

    from scalefold import api
    from scalefold.codegen import c_f32gemv
    from scalefold.frontend.torch import from_torch

    g = from_torch(lin, (torch.randn(2, lin.in_features),), dynamic_shapes=({0: Dim("M")},))
    old = c_f32gemv.GEMV
    if not gemv or max_m is not None:
        m = max_m if gemv and max_m is not None else 0
        # one threshold for every weight size (GemvConfig.limit would raise it for small ones)
        c_f32gemv.GEMV = dataclasses.replace(old, max_m=m, tiers=())
    try:
        return api.build_c(g)
    finally:
        c_f32gemv.GEMV = old


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--m", default="1,2,4,8")
    ap.add_argument("--shapes", default="2048x2048,2048x5632,5632x2048,2048x32000",
                    help="K x N per linear")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--cold-mb", type=int, default=128,
                    help="cycle copies of each linear holding at least this many MB of weights "
                         "(L3 is 32 MB here), so that they stream from memory; 0: one copy, hot")
    ap.add_argument("--max-m", type=int, default=None,
                    help="'sf default' with the GEMV kernel up to this M for every weight "
                         "(default: GEMV.limit of each weight)")
    ap.add_argument("--no-onednn", action="store_true", help="leave out the 'sf onednn' runner")
    ap.add_argument("--omp-spin", action="store_true")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    os.environ["OMP_NUM_THREADS"] = str(a.threads)
    gen = torch.Generator().manual_seed(0)
    print(f"torch {torch.__version__}, {a.threads} threads, OMP_WAIT_POLICY="
          f"{os.environ.get('OMP_WAIT_POLICY', '(default)')}; best of {a.repeat} medians of {a.iters}; "
          + (f"weights cycled over >= {a.cold_mb} MB" if a.cold_mb else "weights hot (one copy)"))
    print(f"{'K x N':>12s} {'M':>2s} " + " ".join(f"{nm:>18s}" for nm in
          ["torch F.linear", "ort Gemm", "ort MatMul", "sf default"] + ([] if a.no_onednn else ["sf onednn"]))
          + "   err")
    for shp in a.shapes.split(","):
        k, n = (int(v) for v in shp.split("x"))
        # copies of the linear cycled call by call, so that the weights stream from memory
        copies = max(1, -(-a.cold_mb * 2 ** 20 // (4 * n * k)))
        lins, ws, bs, sess, sf = [], [], [], {"ort Gemm": [], "ort MatMul": []}, {"sf default": []}
        if not a.no_onednn:
            sf["sf onednn"] = []
        for _ in range(copies):
            lin = torch.nn.Linear(k, n, bias=True)
            with torch.no_grad():
                lin.weight.copy_(torch.randn(n, k, generator=gen) * k ** -0.5)
                lin.bias.copy_(torch.randn(n, generator=gen) * 0.1)
            lins.append(lin)
            ws.append(lin.weight.detach())
            bs.append(lin.bias.detach())
            sess["ort Gemm"].append(ort_session(ws[-1], True, a.threads))
            sess["ort MatMul"].append(ort_session(ws[-1], False, a.threads))
            for nm in sf:
                sf[nm].append(compile_linear(lin, nm == "sf default", a.max_m))
        for m in (int(v) for v in a.m.split(",")):
            x = torch.randn(m, k, generator=gen)
            feed = {"A": x.numpy()}
            turn = {"i": 0}

            def cyc(f: Callable[[int], object]) -> Callable[[], object]:
                def g() -> object:
                    turn["i"] += 1
                    return f(turn["i"] % copies)
                return g
            fns: dict[str, Callable[[], object]] = {
                "torch F.linear": cyc(lambda i: torch.nn.functional.linear(x, ws[i], bs[i]))}
            # the ONNX runners have no bias: adding it costs them an extra pass over y, which
            # is N floats, nothing next to the weights; left out so they run their best case
            for nm, ss in sess.items():
                fns[nm] = cyc(lambda i, ss=ss: ss[i].run(None, feed))
            for nm, cms in sf.items():
                fns[nm] = cyc(lambda i, cms=cms: cms[i](x))
            best = best_medians(fns, a.repeat, a.iters)
            with torch.no_grad():
                ref = torch.nn.functional.linear(x.double(), ws[0].double(), bs[0].double())
                err = max(float((cms[0](x).double() - ref).abs().max() / ref.abs().max()) for cms in sf.values())
                ort_y = torch.from_numpy(sess["ort Gemm"][0].run(None, feed)[0]).double() + bs[0].double()
                err_ort = float((ort_y - ref).abs().max() / ref.abs().max())
            cells = []
            for nm in fns:
                t = best[nm]
                cells.append(f"{t:7.3f}ms {4 * n * k / t / 1e6:5.1f}GB/s")
            print(f"{k:>5d}x{n:<6d} {m:2d} " + " ".join(f"{c:>18s}" for c in cells)
                  + f"   sf {err:.1e} ort {err_ort:.1e}")
            sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
