"""ONNX backend node-test conformance: every case of ``collect_testcases()`` through
``from_onnx`` + the reference interpreter, compared with the shipped expected outputs.

Run as a script to print a per-op table (``--update`` rewrites the expectation file next to
this one); import ``run_all()`` from tests.

Compile-time inputs: each model is first imported with *all* graph inputs live. If the import
fails with a FrontendError saying an input must be known at compile time (a constant, a shape,
axes, pads, repeats, k, ...), it is retried with every integer-typed input frozen to the data
set's value (``from_onnx(input_values=...)``); float inputs always stay live. This mirrors how
a real model passes such tensors (as initializers or shape computations).

Comparison follows the ONNX backend test: ``|got - want| <= atol + rtol * |want|`` with the
case's rtol/atol (defaults 1e-3 / 1e-7) for floats, exact equality for ints and bools, equal
NaN positions, output dtype and shape must match too.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import re
import signal
import sys
import time
import warnings
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

EXPECTED = Path(__file__).with_name("onnx_conformance_expected.json")
TARGET = "interp"            # or "c": compile each case with the C backend
CASE_TIMEOUT_S = 20          # per case; no shipped case comes close
MAX_MODEL_BYTES = 64 << 20   # guard against huge models (none ship)
_FREEZE_HINTS = ("known at compile time", "must be a constant")

_CASES: list[Any] | None = None


def _cases() -> list[Any]:
    global _CASES
    if _CASES is None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import onnx.backend.test.case.node as node_cases
            _CASES = sorted(node_cases.collect_testcases(), key=lambda c: c.name)
    return _CASES


def case_op(case: Any, by_name: dict[str, Any] | None = None) -> str:
    """The op a case tests: its single node's op type; for function-expanded variants
    (``*_expanded*``) the op of the unexpanded sibling case."""
    nodes = case.model.graph.node
    if by_name is not None and "_expanded" in case.name:
        sib = by_name.get(re.sub(r"_expanded.*$", "", case.name))
        if sib is not None and len(sib.model.graph.node) == 1:
            return sib.model.graph.node[0].op_type
    if len(nodes) == 1:
        return nodes[0].op_type
    return nodes[-1].op_type if nodes else "?"


class _Timeout(Exception):
    pass


def _alarm(signum: int, frame: Any) -> None:
    raise _Timeout(f"timed out after {CASE_TIMEOUT_S} s")


def _compare(got: Any, want: Any, out_type: Any, rtol: float, atol: float,
             defined: Any = None) -> str | None:
    """None if ``got`` (torch container) matches ``want`` (numpy), else the reason; only the
    elements where ``defined`` (a bool tensor of the output's shape) holds, when given."""
    import numpy as np
    import torch

    from scalefold.frontend.onnx_tensors import numpy_to_torch
    from scalefold.ir import dtypes as dt

    from onnx import TensorProto, numpy_helper
    if isinstance(want, TensorProto):
        want = numpy_helper.to_array(want)
    if not isinstance(want, np.ndarray):
        want = np.asarray(want)
    w = numpy_to_torch(want, out_type).reshape(want.shape)
    if tuple(got.shape) != tuple(w.shape):
        return f"shape {tuple(got.shape)} != expected {tuple(w.shape)}"
    if got.dtype != w.dtype:
        return f"container dtype {got.dtype} != expected {w.dtype}"
    if defined is not None:
        got, w = got[defined], w[defined]
    if not out_type.is_float:
        if not torch.equal(got, w):
            n = int((got != w).sum())
            return f"{n} of {w.numel()} integer/bool elements differ"
        return None
    g64 = dt.to_real(got, out_type, torch.float64)
    w64 = dt.to_real(w, out_type, torch.float64)
    gn, wn = torch.isnan(g64), torch.isnan(w64)
    if not torch.equal(gn, wn):
        return "NaN positions differ"
    g64, w64 = g64[~wn], w64[~wn]
    same_inf = torch.isinf(w64) & (g64 == w64)
    err = (g64 - w64).abs()
    bad = ~same_inf & ~(err <= atol + rtol * w64.abs())
    if bool(bad.any()):
        i = int(bad.nonzero()[0, 0])
        return (f"{int(bad.sum())} of {w.numel()} values off (first: got {g64[i].item():.6g}, "
                f"want {w64[i].item():.6g}; rtol={rtol}, atol={atol})")
    return None


def _defined_cast(gp: Any, live: list[Any], out: Any) -> Any:
    """For a float -> 4-bit integer Cast / CastLike: the elements whose truncated input lies in
    the target's range. ONNX leaves the others undefined, and its expected data follows
    ml_dtypes there (0.6 wraps them, 0.7 gives 0). None (compare all) for any other case."""
    import torch
    if out.name not in ("i4", "u4") or not live or not live[0].is_floating_point() or \
            not any(n.op_type in ("Cast", "CastLike") for n in gp.node):
        return None
    lo, hi = out.int_range()
    t = live[0].double().trunc()
    return torch.isfinite(t) & (t >= lo) & (t <= hi)


def _run_dataset(case: Any, inputs: list[Any], outputs: list[Any]) -> str | None:
    """None on success, else a one-line reason."""
    import numpy as np
    import onnx
    import torch
    from onnx import numpy_helper

    from scalefold.frontend.onnx import from_onnx
    from scalefold.frontend.onnx_tensors import numpy_to_torch, onnx_dtype
    from scalefold.ir.errors import FrontendError
    from scalefold.runtime.interp import run

    gp = case.model.graph
    inits = {t.name for t in gp.initializer}
    ins = [v for v in gp.input if v.name not in inits]
    if len(inputs) != len(ins):
        return f"data set has {len(inputs)} inputs, model {len(ins)}"
    tensors = {}
    for v, a in zip(ins, inputs):
        if isinstance(a, onnx.TensorProto):
            a = numpy_helper.to_array(a)
        if isinstance(a, np.generic):
            a = np.asarray(a)
        if not isinstance(a, np.ndarray):
            return f"input '{v.name}' is a {type(a).__name__} (sequence/optional), not a tensor"
        # reshape: numpy_to_torch goes through ascontiguousarray, which makes 0-d arrays 1-d.
        tensors[v.name] = numpy_to_torch(a, onnx_dtype(v.type.tensor_type.elem_type, v.name)
                                         ).reshape(a.shape)
    frozen: dict[str, Any] = {}
    for _ in range(4):
        try:
            g = from_onnx(case.model, input_values=frozen)
            break
        except FrontendError as e:
            if not any(h in str(e) for h in _FREEZE_HINTS):
                raise
            more = {n: t for n, t in tensors.items()
                    if not t.is_floating_point() and t.dtype != torch.bool}
            named = _named_input(gp, str(e))
            if named in tensors:
                more[named] = tensors[named]
            if set(more) <= set(frozen):
                raise
            frozen.update(more)
    else:
        raise FrontendError("could not import with compile-time inputs frozen")
    live = [tensors[v.name] for v in ins if v.name not in frozen]
    if TARGET == "c":
        from scalefold.api import build_c
        got = build_c(g)._runner(*live)
    else:
        got = run(g, *live)
    if len(got) != len(outputs):
        return f"{len(got)} outputs, expected {len(outputs)}"
    for o, t, want in zip(gp.output, got, outputs):
        d = onnx_dtype(o.type.tensor_type.elem_type, o.name)
        why = _compare(t, want, d, case.rtol, case.atol, _defined_cast(gp, live, d))
        if why:
            return f"output '{o.name}': {why}"
    return None


def _named_input(gp: Any, msg: str) -> str | None:
    """The graph tensor an error like "node X (OneHot): input 1 (depth) must be ..." names."""
    t = re.search(r"tensor '([^']+)'", msg)
    if t:  # the message names the tensor (e.g. a node of an upgraded model, renamed op)
        return t.group(1)
    m = re.search(r"node (?:'([^']*)' \((\w+)\)|(\w+)): input (\d+)", msg)
    if not m:
        return None
    name, op = m.group(1), m.group(2) or m.group(3)
    for n in gp.node:
        if (name and n.name == name) or (not name and n.op_type == op):
            i = int(m.group(4))
            return n.input[i] if i < len(n.input) else None
    return None


def run_case(idx: int) -> tuple[str, str, str | None, float]:
    """(name, op, reason-or-None, seconds) of case ``idx``; never raises."""
    cases = _cases()
    case = cases[idx]
    by_name = {c.name: c for c in cases}
    op = case_op(case, by_name)
    t0 = time.perf_counter()
    why: str | None = None
    old = signal.signal(signal.SIGALRM, _alarm) if hasattr(signal, "SIGALRM") else None
    try:
        if hasattr(signal, "SIGALRM"):
            signal.alarm(CASE_TIMEOUT_S)
        if case.model.ByteSize() > MAX_MODEL_BYTES:
            why = "model too large for the conformance run"
        elif not case.data_sets:
            why = "no data sets"
        else:
            for inputs, outputs in case.data_sets:
                why = _run_dataset(case, list(inputs), list(outputs))
                if why:
                    break
    except BaseException as e:  # noqa: BLE001  (one case may never stop the run)
        if isinstance(e, KeyboardInterrupt):
            raise
        msg = str(e).strip().splitlines()
        why = f"{type(e).__name__}: {msg[0] if msg else ''}"[:300]
    finally:
        if hasattr(signal, "SIGALRM"):
            signal.alarm(0)
            signal.signal(signal.SIGALRM, old)
    return case.name, op, why, time.perf_counter() - t0


def _init_worker(target: str = "interp") -> None:
    global TARGET
    TARGET = target
    import torch
    torch.set_num_threads(1)
    warnings.simplefilter("ignore")
    _cases()


def run_all(processes: int | None = None, target: str = "interp",
            only: set[str] | None = None) -> dict[str, tuple[str, str | None]]:
    """Run every case (or the cases named in ``only``) on ``target`` ("interp": the
    reference interpreter, "c": compiled C kernels); {name: (op, reason or None)}."""
    names = [c.name for c in _cases()]
    idxs = [i for i, n in enumerate(names) if only is None or n in only]
    processes = processes or min(4, os.cpu_count() or 1)
    out: dict[str, tuple[str, str | None]] = {}
    if processes <= 1:
        _init_worker(target)
        results = map(run_case, idxs)
        for name, op, why, _ in results:
            out[name] = (op, why)
        return out
    ctx = mp.get_context("fork") if sys.platform != "win32" else mp.get_context()
    with ctx.Pool(processes, initializer=_init_worker, initargs=(target,)) as pool:
        for name, op, why, _ in pool.imap_unordered(run_case, idxs, chunksize=8):
            out[name] = (op, why)
    return out


def summarize(results: dict[str, tuple[str, str | None]]) -> dict[str, list[int]]:
    """{op: [passed, total]} sorted by op."""
    per: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for op, why in results.values():
        per[op][1] += 1
        if why is None:
            per[op][0] += 1
    return dict(sorted(per.items()))


def load_expected() -> dict[str, Any]:
    if not EXPECTED.exists():
        return {"passing": [], "per_op": {}}
    return json.loads(EXPECTED.read_text())


def write_expected(results: dict[str, tuple[str, str | None]]) -> None:
    passing = sorted(n for n, (_, why) in results.items() if why is None)
    per = summarize(results)
    data = {"total_cases": len(results), "passed": len(passing),
            "per_op": {op: f"{p}/{t}" for op, (p, t) in per.items()}, "passing": passing}
    tmp = EXPECTED.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=1) + "\n")
    tmp.replace(EXPECTED)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--update", action="store_true", help="rewrite the expectation file")
    ap.add_argument("--failures", action="store_true", help="list failing cases with reasons")
    ap.add_argument("--op", help="only show rows/failures of this op")
    ap.add_argument("-j", type=int, default=None, help="worker processes")
    ap.add_argument("--target", choices=("interp", "c"), default="interp",
                    help="c: compile every case the interpreter passes with the C backend and "
                         "report those that fail there (the full sweep; CI runs a subset)")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    if args.target == "c":
        passing = set(load_expected()["passing"])
        res = run_all(args.j, target="c", only=passing)
        bad = sorted(n for n, (_, why) in res.items() if why is not None)
        for n in bad:
            print(f"FAIL(c) {n} [{res[n][0]}]: {res[n][1]}")
        print(f"C backend: {len(res) - len(bad)}/{len(res)} interpreter-passing cases pass; "
              f"{time.perf_counter() - t0:.1f} s")
        return 0
    res = run_all(args.j)
    dt_s = time.perf_counter() - t0
    per = summarize(res)
    for op, (p, t) in per.items():
        if args.op and op != args.op:
            continue
        print(f"{op:32s} {p:4d}/{t:<4d}{'  ok' if p == t else ''}")
    if args.failures:
        reasons = Counter()
        for name, (op, why) in sorted(res.items()):
            if why is not None and (not args.op or op == args.op):
                print(f"FAIL {name} [{op}]: {why}")
                reasons[why.split(":")[0]] += 1
    npass = sum(p for p, _ in per.values())
    full = sum(1 for p, t in per.values() if p == t)
    print(f"passed {npass}/{len(res)} cases; {full}/{len(per)} op types fully passing; {dt_s:.1f} s")
    if args.update and args.target == "interp":
        write_expected(res)
        print(f"wrote {EXPECTED}")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[3]))
    raise SystemExit(main())
