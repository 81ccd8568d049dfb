"""Loading rendered Triton kernels and launching them.

Triton's ``@triton.jit`` reads the kernel's source with ``inspect``, so every kernel module is a
real file: ``$SCALEFOLD_CACHE_DIR/triton/<sha256>.py`` (written atomically, once per distinct
source), imported with importlib.

Interpreter mode: Triton decides at *decoration* time whether a ``@triton.jit`` function is
compiled or interpreted (``triton.knobs.runtime.interpret`` reads ``TRITON_INTERPRET`` on each
access in Triton 3.6-3.8), and its lazily imported gluon module asserts at the first launch that
the setting agrees with how ``triton.language`` was decorated. So CPU kernels are imported with
``TRITON_INTERPRET=1`` and the variable stays set for the process; the generated sources use
only core ``tl`` builtins and their own helpers, never the ``tl.standard`` jit functions
(``tl.sum``, ``tl.max``...), which would be compiled-mode objects when triton was imported
before the variable was set. GPU kernels are imported with interpretation off.
"""
from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import sys
import tempfile
import threading
from pathlib import Path
from types import ModuleType
from typing import Callable, Sequence

import torch

from ..codegen.triton import ROW_CHUNK, ROW_MAX, TritonKernel
from ..ir.errors import CompileError, ScalefoldError
from .cache import cache_dir
from .scratch import Scratch

_LOCK = threading.Lock()
_MODULES: dict[str, ModuleType] = {}

Launch = Callable[[Sequence[torch.Tensor]], None]


def default_device() -> torch.device:
    """CUDA when present (and the interpreter is not asked for), else the CPU interpreter."""
    if os.environ.get("TRITON_INTERPRET") == "1" or not torch.cuda.is_available():
        return torch.device("cpu")
    return torch.device("cuda")


def source_path(source: str) -> Path:
    """The cache file holding ``source`` (written if missing, rewritten if damaged from
    outside: its text must be ``source``). CompileError when the cache cannot be written."""
    key = _key(source)
    d = cache_dir() / "triton"
    path = d / f"{key}.py"
    try:
        if _holds(path, source):
            return path
        d.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=d, prefix=key, suffix=".tmp")
        with os.fdopen(fd, "w") as f:
            f.write(source)
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        os.replace(tmp, path)   # atomic: a reader sees no file or the whole file
    except OSError as e:
        raise CompileError(f"kernel cache {cache_dir()} cannot be used: {e}") from None
    return path


def _key(source: str) -> str:
    return hashlib.sha256(source.encode()).hexdigest()[:40]


def _holds(path: Path, source: str) -> bool:
    try:
        return path.is_file() and path.read_text() == source
    except (OSError, UnicodeDecodeError):
        return False


def load_module(source: str, interpret: bool) -> ModuleType:
    """Import the kernel module of ``source`` (cached per source and mode)."""
    name = f"scalefold_triton_{_key(source)}_{'interp' if interpret else 'jit'}"
    with _LOCK:
        mod = _MODULES.get(name)
        if mod is not None:
            return mod
        path = source_path(source)
        old = os.environ.get("TRITON_INTERPRET")
        os.environ["TRITON_INTERPRET"] = "1" if interpret else "0"
        try:
            spec = importlib.util.spec_from_file_location(name, path)
            assert spec is not None and spec.loader is not None
            mod = importlib.util.module_from_spec(spec)
            sys.modules[name] = mod
            try:
                spec.loader.exec_module(mod)
            except Exception as e:
                sys.modules.pop(name, None)
                raise ScalefoldError(f"cannot load generated Triton kernel {path}: {e}") from e
        finally:
            if not interpret:   # interpreted kernels need the variable at launch time too
                if old is None:
                    os.environ.pop("TRITON_INTERPRET", None)
                else:
                    os.environ["TRITON_INTERPRET"] = old
        _MODULES[name] = mod
        return mod


# Block sizes in elements (flat blocks, widest tile row, tile, rows x row block of a row kernel),
# for compiled kernels and for the
# interpreter, which runs one program at a time in Python so that big blocks make it fast.
# Read at bind time (tests shrink them to run grids of many programs). The compiled sizes (and
# the warps below) were tuned on an H200 for fp16 add->layer_norm rows of 384/768 and gelu:
# a row kernel of 151 MB runs at 95% of a device copy of the same bytes.
BLOCKS: dict[str, dict[str, int]] = {
    "jit": {"flat": 2048, "bn": 1024, "tile": 2048, "row": 2048},
    "interp": {"flat": 1 << 16, "bn": 4096, "tile": 1 << 16, "row": 1 << 16},
}


def _pow2(n: int) -> int:
    return 1 << max(int(n) - 1, 0).bit_length()


class TritonLaunch:
    """A loaded kernel; :meth:`bind` prepares its launch for one binding of the sizes (the
    executor's pluggable fused-kernel protocol)."""

    def __init__(self, tk: TritonKernel, interpret: bool, scratch: Scratch | None = None):
        self.tk = tk
        self.scratch = scratch     # the model's dense scratch (large-M weight-only linears)
        self.interpret = interpret
        self.mod = None if tk.launch == "empty" else load_module(tk.source, interpret)
        self.fn = None if self.mod is None else getattr(self.mod, "sf_kernel", None)
        # weight-only qlinear (W4 / other codes): its constants packed once, here, on the launch device
        self.w4 = None
        if tk.launch in ("w4", "wq"):
            dev = torch.device("cpu") if interpret else torch.device("cuda", torch.cuda.current_device())
            # without the [K/8, N] layout: only an explicit KN config (never the executor) reads it
            self.w4 = tk.meta.pack(dev, kn=False)

    def config(self, q: Sequence[int]) -> tuple[tuple[int], dict[str, int]] | None:
        """(grid, constexprs and num_warps) for runtime integers ``q``, or None: nothing to do."""
        def val(d: int | str) -> int:
            return d if isinstance(d, int) else int(q[int(d[1:])])
        tk = self.tk
        if tk.launch == "empty":
            return None
        O, N = val(tk.dims[0]), val(tk.dims[1])
        blocks = BLOCKS["interp" if self.interpret else "jit"]
        if tk.launch == "flat":
            if N == 0:
                return None
            block = min(_pow2(N), blocks["flat"])
            return ((N + block - 1) // block,), {"BLOCK": block, "num_warps": 4 if block >= 512 else 1}
        if tk.launch == "tile":
            if O * N == 0:
                return None
            bn = min(_pow2(N), blocks["bn"])
            bo = min(_pow2(O), max(1, blocks["tile"] // bn))
            grid = (((N + bn - 1) // bn) * ((O + bo - 1) // bo),)
            return grid, {"BO": bo, "BN": bn, "num_warps": 4}
        if O == 0:
            return None
        chunked = N > ROW_MAX
        block = ROW_CHUNK if chunked else _pow2(N)
        rows = 1 if chunked else min(_pow2(O), max(1, blocks["row"] // block))
        warps = min(8, max(1, rows * block // 1024))
        return ((O + rows - 1) // rows,), {"BLOCK": block, "ROWS": rows, "CHUNKED": chunked,
                                          "num_warps": warps}

    def bind(self, q: Sequence[int]) -> Launch:
        if self.tk.launch == "qgemm":
            # qlinear's int8 GEMM (and its quantising kernels): q = [M, N, K]
            from ..codegen.triton_qgemm import make_launch
            M, N, K = (int(v) for v in q)
            return make_launch(self.mod, self.tk.meta, M, N, K, self.interpret)
        if self.tk.launch == "w4":
            from ..codegen.triton_w4 import make_launch as w4_launch
            M, N, K = (int(v) for v in q)
            return w4_launch(self.mod, self.tk.meta, self.w4, M, N, K, self.interpret, scratch=self.scratch)
        if self.tk.launch == "wq":
            from ..codegen.triton_wq import make_launch as wq_launch
            M, N, K = (int(v) for v in q)
            return wq_launch(self.mod, self.tk.meta, self.w4, M, N, K, self.interpret, scratch=self.scratch)
        cfg = self.config(q)
        if cfg is None or self.fn is None:
            return lambda ts: None
        grid, kw = cfg
        launcher = self.fn[grid]
        qs = tuple(int(v) for v in q)
        if self.interpret:
            import numpy as np

            def interpret(ts: Sequence[torch.Tensor]) -> None:
                # masked-off lanes compute on fill values (log(0), 0/0): numpy would warn
                with np.errstate(all="ignore"):
                    launcher(*ts, *qs, **kw)
            return interpret

        def launch(ts: Sequence[torch.Tensor]) -> None:
            launcher(*ts, *qs, **kw)
        return launch


def load_kernels(rendered: Sequence[TritonKernel], device: torch.device) -> dict[str, TritonLaunch]:
    """Launchers of every rendered kernel, by kernel name: compiled for CUDA, interpreted on
    the CPU."""
    interpret = device.type == "cpu"
    if interpret:
        os.environ["TRITON_INTERPRET"] = "1"
    elif device.type != "cuda":
        raise ScalefoldError(f"the Triton target runs on CUDA or on the CPU interpreter, not {device}")
    scratch = Scratch()
    launches = {tk.name: TritonLaunch(tk, interpret, scratch) for tk in rendered}
    if not interpret:
        from ..codegen.triton_dense import DTYPES, dense_chunk
        for tk in rendered:
            if tk.launch in ("w4", "wq"):
                # the dense path's largest chunk, so one buffer serves every linear
                n, k = tk.meta.w.shape
                scratch.reserve(dense_chunk(n, k, tk.meta.xkind) * k, DTYPES[tk.meta.xkind])
    return launches
