"""Feeds for a graph outside Python: inputs read from .npy files or drawn at random (seeded, with
sizes for the symbols taken from the given inputs or from NAME=SIZE bindings), calibration
batches from .npz / .safetensors files, and output files written whole or not at all. The CLI's
``run``, ``bench`` and ``compile --calibrate`` use them."""
from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any, Callable, Sequence

from ..ir.errors import ScalefoldError


def symbols(env: dict[str, int]) -> dict[Any, int]:
    """``{"B": 8}`` -> ``{sym("B"): 8}``."""
    from ..ir.types import sym
    return {sym(k): v for k, v in env.items()}


def random_inputs(graph: Any, env: dict[str, int], seed: int = 0) -> dict[str, Any]:
    """Seeded random tensors for every graph input, symbols bound by ``env``."""
    import torch

    from ..ir import dtypes as dt
    from ..ir.printer import input_names
    gen = torch.Generator().manual_seed(seed)
    senv = symbols(env)
    out = {}
    for name, v in zip(input_names(graph), graph.inputs):
        missing = sorted(s.name for s in v.type.symbols - set(senv))
        if missing:
            raise ScalefoldError(f"input {name}: {v.type} needs a size for {', '.join(missing)} "
                                 f"(e.g. --random {','.join(m + '=2' for m in missing)})")
        shape = v.type.concrete(senv)
        if v.dtype.is_float:
            x = torch.randn(shape, generator=gen)
        elif v.dtype.name == "bool":
            x = torch.randint(0, 2, shape, generator=gen).bool()
        else:
            # Small non-negative integers are valid token ids and indices for most models.
            x = torch.randint(0, 4, shape, generator=gen)
        out[name] = dt.to_container(x, v.dtype)
    return out


def load_calibration(path: str, graph: Any, batch: int) -> list[tuple[Any, ...]]:
    """Calibration batches from a .npz or .safetensors file holding one array per graph input
    (by input name), samples along axis 0, cut into batches of ``batch`` samples (the input's
    static leading size when it has one). A missing input, mismatched sample counts or an
    unreadable file is a ScalefoldError naming it."""
    import numpy as np
    import torch

    from ..ir import dtypes as dt
    from ..ir.printer import input_names
    if batch < 1:
        raise ScalefoldError(f"calibration batch size must be at least 1, got {batch}")
    p = Path(path)
    if not p.is_file():
        raise ScalefoldError(f"calibration file {path}: no such file")
    try:
        if p.suffix == ".npz":
            with np.load(p) as z:
                arrays = {k: torch.from_numpy(z[k]) for k in z.files}
        elif p.suffix == ".safetensors":
            from safetensors.torch import load_file
            arrays = load_file(str(p))
        else:
            raise ScalefoldError(f"calibration file {path}: want .npz or .safetensors")
    except ScalefoldError:
        raise
    except Exception as e:
        raise ScalefoldError(f"calibration file {path}: cannot read it ({type(e).__name__}: {e})") from None
    names = input_names(graph)
    missing = [n for n in names if n not in arrays]
    if missing:
        raise ScalefoldError(f"calibration file {path}: no array for input(s) {', '.join(missing)} "
                             f"(it has {', '.join(sorted(arrays)) or 'none'})")
    counts = {n: int(arrays[n].shape[0]) if arrays[n].dim() else 0 for n in names}
    if len(set(counts.values())) != 1 or not next(iter(counts.values())):
        raise ScalefoldError(f"calibration file {path}: inputs must hold the same (non-zero) number of "
                             f"samples along axis 0, got {counts}")
    for n, v in zip(names, graph.inputs):
        a = arrays[n]
        # float data for an integer input (token ids saved as float) would be truncated
        # silently: only exactly integral values are taken
        if not v.dtype.is_float and a.is_floating_point() and not bool(torch.all(a == a.round())):
            raise ScalefoldError(f"calibration file {path}: input {n} is {v.dtype.name}, but its array holds "
                                 f"non-integral {str(a.dtype).replace('torch.', '')} values")
    lead = {v.type.shape[0] for v in graph.inputs if v.type.rank and isinstance(v.type.shape[0], int)}
    step = lead.pop() if len(lead) == 1 else batch
    total = next(iter(counts.values()))
    out = []
    for lo in range(0, total - step + 1, step):
        out.append(tuple(dt.to_container(arrays[n][lo:lo + step], v.dtype) for n, v in zip(names, graph.inputs)))
    if not out:
        raise ScalefoldError(f"calibration file {path}: {total} samples, fewer than one batch of {step}")
    if total % step:
        print(f"scalefold: note: calibration file {path}: {total} samples in batches of {step}; the last "
              f"{total % step} are left out", file=sys.stderr)
    return out


def read_inputs(specs: Sequence[str]) -> dict[str, Any]:
    """``NAME=FILE.npy`` specs -> tensors by input name (no pickles); ScalefoldError naming the
    spec or file on anything else."""
    import numpy as np
    import torch
    out = {}
    for spec in specs:
        name, eq, file = spec.partition("=")
        if not eq or not name or not file:
            raise ScalefoldError(f"bad --input {spec!r}: expected NAME=FILE.npy")
        if name in out:
            raise ScalefoldError(f"input {name!r} is given twice (--input {spec})")
        try:
            # allow_pickle=False: an input file must never run code.
            arr = np.load(file, allow_pickle=False)
        except FileNotFoundError:
            raise ScalefoldError(f"{file}: no such file") from None
        except (OSError, ValueError) as e:
            raise ScalefoldError(f"{file}: not a readable .npy array ({' '.join(str(e).split())})") from None
        if not isinstance(arr, np.ndarray):
            raise ScalefoldError(f"{file}: expected one array (.npy), got an archive")
        out[name] = torch.from_numpy(np.ascontiguousarray(arr))
    return out


def write_atomically(path: str, write: Callable[[Any], None]) -> None:
    """``write(file)`` into a temporary file beside ``path``, moved into place only once whole:
    a failure (disk full, Ctrl-C) leaves the old file or none, never a truncated one."""
    import tempfile
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".sf-", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def sizes_from(graph: Any, given: dict[str, Any]) -> dict[str, int]:
    """Sizes of the symbols that stand alone as a dimension of a given input, from its shape."""
    import sympy

    from ..ir.printer import input_names
    env: dict[str, int] = {}
    for name, v in zip(input_names(graph), graph.inputs):
        t = given.get(name)
        if t is None or t.dim() != v.type.rank:
            continue                   # the model's own binding check names a wrong rank
        for d, n in zip(v.type.shape, t.shape):
            if isinstance(d, sympy.Symbol):
                env.setdefault(d.name, int(n))
    return env


def gather_inputs(graph: Any, given: dict[str, Any], random_env: dict[str, int] | None) -> list[Any]:
    """The graph's inputs in order: ``given`` ones, the rest seeded random (``random_env`` None:
    none may be missing). Symbols the given inputs fix need no binding; one bound otherwise is a
    ScalefoldError naming it."""
    from ..ir.printer import input_names
    names = input_names(graph)
    unknown = sorted(set(given) - set(names))
    if unknown:
        raise ScalefoldError(f"unknown input(s) {', '.join(unknown)}; the model takes {', '.join(names)}")
    missing = [n for n in names if n not in given]
    if missing and random_env is None:
        raise ScalefoldError(f"missing input(s) {', '.join(missing)}: give --input NAME=FILE.npy "
                             f"or --random with sizes for the symbols")
    if not missing:
        return [given[n] for n in names]
    env = sizes_from(graph, given)
    for k, n in (random_env or {}).items():
        if env.get(k, n) != n:
            raise ScalefoldError(f"--random binds {k}={n}, but the given inputs have {k}={env[k]}")
        env[k] = n
    rand = random_inputs(graph, env)
    return [given[n] if n in given else rand[n] for n in names]
