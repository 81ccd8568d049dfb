"""Test helpers: golden files, numeric comparison with per-dtype tolerances, counter checks."""
from __future__ import annotations

import difflib
import os
import re
import tempfile
from pathlib import Path

import torch

from scalefold.passes import Counters

TESTS_ROOT = Path(__file__).resolve().parent
_GOLDEN_LOG_ENV = "SCALEFOLD_GOLDEN_LOG"


def _record_golden_use(path: Path) -> None:
    log_dir = os.environ.get(_GOLDEN_LOG_ENV)
    if log_dir:
        with open(Path(log_dir) / f"used-{os.getpid()}.txt", "a") as f:
            f.write(str(path.resolve()) + "\n")


# An inline constant's values come from float sums whose order BLAS picks per CPU (the bias
# correction of quant_weights, folded scales): equal up to this relative error they match.
_INLINE_CONST = re.compile(r"^(#\S+ = const \S+) (\[.*\])$")
_NUMBER = re.compile(r"-?(?:\d+\.?\d*(?:[eE][-+]?\d+)?|inf|nan)")
_INLINE_RTOL = 1e-5


def _inline_consts_close(want: str, got: str) -> bool:
    a, b = _INLINE_CONST.match(want), _INLINE_CONST.match(got)
    if not (a and b) or a.group(1) != b.group(1) \
            or _NUMBER.sub("#", a.group(2)) != _NUMBER.sub("#", b.group(2)):
        return False
    x = [float(v) for v in _NUMBER.findall(a.group(2))]
    y = [float(v) for v in _NUMBER.findall(b.group(2))]
    scale = max((abs(v) for v in x if v == v), default=0.0)
    return all(u == v or (u != u and v != v) or abs(u - v) <= _INLINE_RTOL * scale
               for u, v in zip(x, y))


def _same_golden(want: str, got: str) -> bool:
    """Equal texts, or equal but for inline float constants within ``_INLINE_RTOL``."""
    wl, gl = want.splitlines(), got.splitlines()
    return len(wl) == len(gl) and all(u == v or _inline_consts_close(u, v) for u, v in zip(wl, gl))


def assert_golden(text: str, path: str | os.PathLike) -> None:
    """Compare ``text`` with the golden file at ``path``.

    With ``UPDATE_GOLDEN=1`` the file is (re)written atomically instead. A missing golden fails
    with a hint. Every golden used is logged so the session can report orphans.
    """
    p = Path(path)
    if not p.is_absolute():
        p = TESTS_ROOT / p
    _record_golden_use(p)
    if not text.endswith("\n"):
        text += "\n"
    if os.environ.get("UPDATE_GOLDEN") == "1":
        p.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=p.parent, prefix=p.name, suffix=".tmp")
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, p)
        return
    if not p.exists():
        raise AssertionError(f"golden {p} does not exist; run with UPDATE_GOLDEN=1 to create it")
    want = p.read_text()
    if not _same_golden(want, text):
        diff = "".join(difflib.unified_diff(want.splitlines(True), text.splitlines(True),
                                            fromfile=f"{p} (golden)", tofile="actual"))
        raise AssertionError(f"stale golden {p} (UPDATE_GOLDEN=1 rewrites it):\n{diff}")


def find_orphan_goldens(root: Path, used: set[str]) -> list[str]:
    """Golden files under ``root`` that no test compared against (``used`` holds resolved paths)."""
    present = {str(p.resolve()) for p in Path(root).rglob("*.golden")}
    return sorted(present - used)


# (rtol, atol) relative to the output's scale for floats; integers and bools are exact.
TOLERANCES: dict[torch.dtype, tuple[float, float]] = {
    torch.float64: (1e-10, 1e-12),
    torch.float32: (1e-5, 1e-6),
    torch.float16: (2e-3, 1e-4),
    torch.bfloat16: (1.6e-2, 1e-3),
    torch.float8_e4m3fn: (1.25e-1, 1e-2),
    torch.float8_e5m2: (2.5e-1, 1e-2),
}


def assert_close(actual: torch.Tensor, expected: torch.Tensor, *, rtol: float | None = None,
                 atol: float | None = None, rel_to_scale: bool = False, what: str = "output") -> None:
    """Assert two tensors agree within the tolerance of the *less precise* dtype.

    ``rel_to_scale=True`` measures the error against max|expected| (for whole-model outputs
    where elementwise relative error is meaningless near zero).
    """
    assert isinstance(actual, torch.Tensor), f"{what}: expected a tensor, got {type(actual)}"
    assert tuple(actual.shape) == tuple(expected.shape), \
        f"{what}: shape {tuple(actual.shape)} != expected {tuple(expected.shape)}"
    if not (actual.is_floating_point() or expected.is_floating_point()):
        assert actual.dtype == expected.dtype, f"{what}: dtype {actual.dtype} != {expected.dtype}"
        bad = (actual != expected)
        assert not bad.any(), (f"{what}: {int(bad.sum())} of {bad.numel()} elements differ; "
                               f"first at {tuple(bad.nonzero()[0].tolist())}")
        return
    tol_a = TOLERANCES.get(actual.dtype, (1e-5, 1e-6))
    tol_e = TOLERANCES.get(expected.dtype, (1e-5, 1e-6))
    rt = rtol if rtol is not None else max(tol_a[0], tol_e[0])
    at = atol if atol is not None else max(tol_a[1], tol_e[1])
    a = actual.detach().to(torch.float64)
    e = expected.detach().to(torch.float64)
    nan_a, nan_e = torch.isnan(a), torch.isnan(e)
    assert torch.equal(nan_a, nan_e), f"{what}: NaN positions differ"
    a, e = a.masked_fill(nan_a, 0), e.masked_fill(nan_e, 0)
    err = (a - e).abs()
    if rel_to_scale:
        scale = e.abs().max().item() if e.numel() else 0.0
        rel = err.max().item() / max(scale, 1e-30) if err.numel() else 0.0
        assert rel <= rt or err.max().item() <= at, \
            f"{what}: max error {err.max().item():.3e} is {rel:.3e} of output scale {scale:.3e} (rtol {rt:g})"
        return
    bound = at + rt * e.abs()
    bad = err > bound
    if bad.any():
        idx = tuple(bad.nonzero()[0].tolist())
        raise AssertionError(f"{what}: {int(bad.sum())} of {bad.numel()} elements out of tolerance "
                             f"(rtol {rt:g}, atol {at:g}); max abs err {err.max().item():.3e}; "
                             f"first at {idx}: {a[idx].item()!r} vs {e[idx].item()!r}")


def assert_fired(counters: Counters, pass_name: str, rule: str, times: int | None = None) -> None:
    """Assert a rule fired (exactly ``times`` times when given)."""
    n = counters.get(pass_name, rule)
    if times is None:
        assert n > 0, f"rule {pass_name}.{rule} never fired; counters: {counters.as_dict()}"
    else:
        assert n == times, f"rule {pass_name}.{rule} fired {n} times, expected {times}; " \
                           f"counters: {counters.as_dict()}"


def at_threads(fn, threads: int):  # type: ignore[no-untyped-def]
    """``fn()`` run with torch (and the kernels' shared OpenMP pool) at ``threads`` threads."""
    old = torch.get_num_threads()
    try:
        torch.set_num_threads(threads)
        return fn()
    finally:
        torch.set_num_threads(old)


_U8S8_SATURATES: list[bool] = []


def ort_u8s8_saturates() -> bool:
    """Whether this host's onnxruntime sums uint8 x int8 products in saturating int16 pairs.

    On x86 CPUs without VNNI, onnxruntime's u8s8 kernels use ``vpmaddubsw``, which adds two
    products into an int16 and saturates: 255 * -128 twice gives -32768, not -65280
    (onnxruntime's quantisation docs recommend ``reduce_range`` or uint8 weights there). Its
    results are then not the exact integer sums that scalefold computes, so tests that compare
    bit for bit keep int8 weights within 7 bits on such hosts. Probed once, with a MatMulInteger
    whose exact sum needs the full range."""
    if not _U8S8_SATURATES:
        import numpy as np
        import onnxruntime as ort
        from onnx import TensorProto, helper
        g = helper.make_graph([helper.make_node("MatMulInteger", ["a", "b"], ["y"])], "probe",
                              [helper.make_tensor_value_info("a", TensorProto.UINT8, [1, 64]),
                               helper.make_tensor_value_info("b", TensorProto.INT8, [64, 16])],
                              [helper.make_tensor_value_info("y", TensorProto.INT32, [1, 16])])
        m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
        sess = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
        y = sess.run(None, {"a": np.full((1, 64), 255, np.uint8), "b": np.full((64, 16), -128, np.int8)})[0]
        _U8S8_SATURATES.append(bool((y != 64 * 255 * -128).any()))
    return _U8S8_SATURATES[0]
