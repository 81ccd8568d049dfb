"""The ``scalefold`` command line (DESIGN.md §1): compile, inspect, run, bench, demo.

Every failure on bad input ends with exit code 2 and one line ``scalefold: error: ...`` on
stderr, never a traceback (set ``SCALEFOLD_TRACEBACK=1`` to see one for unexpected errors).
"""
from __future__ import annotations

import argparse
import os
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Sequence

from .ir.errors import ScalefoldError
from .runtime.feeds import (gather_inputs, load_calibration, random_inputs, read_inputs, symbols,
                            write_atomically)

# A small pre-LN MLP block, written as IR text with seeded constants, so the demo needs no
# download and no model file.
EXAMPLE_IR = """\
graph @example_mlp(%x: f32[B,64]) -> (f32[B,64]) {
  %0: f32[B,64] = layer_norm[axis=-1, eps=1e-05](%x, #g, #b)
  %1: f32[B,256] = linear(%0, #w1, #b1)
  %2: f32[B,256] = gelu[approximate="none"](%1)
  %3: f32[B,64] = linear(%2, #w2, #b2)
  %4: f32[B,64] = add(%3, %x)
  return %4
}
#g = const f32[64] ones
#b = const f32[64] zeros
#w1 = const f32[256,64] randn(seed=1, std=0.125)
#b1 = const f32[256] randn(seed=2, std=0.02)
#w2 = const f32[64,256] randn(seed=3, std=0.0625)
#b2 = const f32[64] randn(seed=4, std=0.02)
"""

EPILOG = """\
examples:
  scalefold compile model.onnx -o model.sf/                 compile to a C artifact directory
  scalefold compile model.onnx -p 'fold_batchnorm,outliertune(bits=8)' --calibration calib.npz -o model.q.onnx
  scalefold inspect model.onnx --bind B=8,S=128             IR, per-op cost, peak memory
  scalefold run model.sf/ --input x=x.npy -o out.npz        run a saved artifact
  scalefold run model.onnx --random B=2,S=16                run on seeded random inputs
  scalefold bench model.onnx --bind B=1,S=128 --iters 50    compiled C vs onnxruntime
  scalefold demo                                            the built-in example
"""


# ---- helpers ----------------------------------------------------------------------------------


@contextmanager
def progress(desc: str) -> Iterator[None]:
    """A spinner with elapsed time on stderr for an opaque long step; silent when stderr is
    not a terminal (pipes, CI logs, tests)."""
    if not sys.stderr.isatty():
        yield
        return
    from rich.console import Console
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
    with Progress(SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(),
                  console=Console(stderr=True), transient=True) as p:
        p.add_task(desc, total=None)
        yield


def parse_bind(text: str | None) -> dict[str, int]:
    """``"B=8,S=128"`` -> ``{"B": 8, "S": 128}``; ScalefoldError on anything else."""
    out: dict[str, int] = {}
    for item in (text or "").split(","):
        item = item.strip()
        if not item:
            continue
        name, eq, val = item.partition("=")
        name, val = name.strip(), val.strip()
        if not eq or not name.isidentifier() or not val.lstrip("+").isdigit() or int(val) <= 0:
            raise ScalefoldError(f"bad binding {item!r}: expected NAME=POSITIVE_INT, e.g. B=8,S=128")
        if name in out:
            raise ScalefoldError(f"{name} is bound twice in {text!r}")
        out[name] = int(val)
    return out


def positive_int(text: str) -> int:
    """argparse type of a count that must be at least 1; anything else is a usage error (exit
    code 2) before any work starts, rather than a crash deep inside it."""
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer (at least 1), got {n}")
    return n


def check_output(path: str, directory: bool = False) -> None:
    """Fail fast with a ScalefoldError when OUT cannot be written, so that a long compile is
    not thrown away at the very end. A file (``directory=False``) needs an existing, writable
    parent folder and must not be an existing directory; an artifact directory must not be an
    existing file, and its nearest existing ancestor must be a writable folder (saving creates
    the missing ones)."""
    p = Path(path)
    if directory:
        from .runtime.artifact import destination_problem
        why = destination_problem(p)
        if why:
            raise ScalefoldError(f"output {path}: {why}")
        folder = p.resolve().parent
        while not folder.exists() and folder != folder.parent:
            folder = folder.parent
    else:
        if path.endswith(("/", os.sep)) or p.is_dir():
            raise ScalefoldError(f"output {path}: is a directory, expected a file name")
        folder = p.absolute().parent
        if not folder.exists():
            raise ScalefoldError(f"output {path}: folder {p.parent} does not exist")
    if not folder.is_dir():
        raise ScalefoldError(f"output {path}: {folder} is not a directory")
    # Writing needs write and search permission on the folder (a new entry is created there).
    if not os.access(folder, os.W_OK | os.X_OK):
        raise ScalefoldError(f"output {path}: folder {folder} is not writable")


def split_passes(specs: Sequence[str] | None) -> list[str]:
    """Pass specs from repeated ``-p`` options, each a comma list; commas inside parentheses
    belong to a pass's options (``outliertune(bits=8,group=128)``)."""
    from .passes.pipeline import split_pipeline
    return [p for spec in specs or () for p in split_pipeline(spec)]


def _check_binding(g: Any, env: dict[Any, int], text: str) -> None:
    """--bind must bind every symbol of the graph's inputs and name no symbol the graph lacks
    (data-dependent sizes, such as NonZero's count, may be bound too); checked before the IR
    is printed."""
    import sympy
    inputs = {s for v in g.inputs for d in v.type.shape for s in sympy.sympify(d).free_symbols}
    known = set(inputs)
    for n in g.nodes:
        for o in n.outputs:
            for d in o.type.shape:
                known |= sympy.sympify(d).free_symbols
    unknown = sorted(str(s) for s in env if s not in known)
    missing = sorted(str(s) for s in inputs if s not in env)
    if unknown or missing:
        parts = ([f"unknown symbol(s) {', '.join(unknown)}"] if unknown else []) + \
            ([f"missing {', '.join(missing)}"] if missing else [])
        raise ScalefoldError(f"--bind {text}: {'; '.join(parts)} (the inputs' symbols are "
                             f"{', '.join(sorted(map(str, inputs))) or 'none'})")


def load_graph(model: str) -> Any:
    """The Graph of MODEL: an artifact directory or an ONNX file."""
    p = Path(model)
    if not p.exists():
        raise ScalefoldError(f"{model}: no such file or directory")
    if p.is_dir():
        from .runtime.artifact import load_graph as _load
        with progress(f"loading {model}"):
            return _load(p)[0]
    from .frontend.onnx import from_onnx
    with progress(f"importing {model}"):
        return from_onnx(str(p))


def load_model(model: str, target: str | None) -> Any:
    """A CompiledModel of MODEL: an artifact is loaded as saved (or rebuilt for ``target``),
    an ONNX file is compiled for ``target`` (default c)."""
    from . import api
    p = Path(model)
    if p.is_dir() and target is None:
        with progress(f"loading {model}"):
            return api.load(p)
    g = load_graph(model)
    with progress(f"compiling @{g.name} for {target or 'c'}"):
        return api.compile(g, target=target or "c")


# ---- verbs ------------------------------------------------------------------------------------


def _compile(args: argparse.Namespace) -> int:
    from . import api
    passes = split_passes(args.passes)
    out = str(args.output)
    to_onnx_file = out.lower().endswith(".onnx")
    # Before any loading or compiling: a bad OUT must not cost the user a whole compile.
    check_output(out, directory=not to_onnx_file)
    g = load_graph(args.model)
    calibration = load_calibration(args.calibration, g, args.calibration_batch) if args.calibration else None
    # Writing ONNX needs only the rewritten graph, not kernels: the interpreter target is free.
    target = "interp" if to_onnx_file else args.target
    with progress(f"compiling @{g.name} ({', '.join(passes) or 'no passes'}) for {target}"):
        cm = api.compile(g, passes=passes, target=target, calibration=calibration)
    if args.nbits_accuracy and not to_onnx_file:
        print("scalefold: note: --nbits-accuracy applies to .onnx outputs only; the artifact does "
              "not use it", file=sys.stderr)
    if to_onnx_file:
        from .codegen.onnx import to_onnx
        with progress(f"writing {out}"):
            to_onnx(cm.graph, out, nbits_accuracy=args.nbits_accuracy)
    else:
        with progress(f"writing {out}"):
            cm.save(out)
    print(f"wrote {out} (@{cm.graph.name}: {len(cm.graph.nodes)} nodes"
          f"{', ' + str(len(cm.sources)) + ' kernels' if cm.sources else ''})")
    return 0


def _fmt(x: Any) -> str:
    if isinstance(x, int):
        return f"{x:,}"
    return str(x)


def _inspect(args: argparse.Namespace) -> int:
    from .ir.analysis import constant_bytes, cost_table, graph_cost, peak_memory
    env = symbols(parse_bind(args.bind)) if args.bind else None
    g = load_graph(args.model)
    if env is not None:
        _check_binding(g, env, args.bind)
    print(g, end="")
    rows = cost_table(g, env)
    total = graph_cost(g)
    peak_sym = peak_memory(g)
    peak_num = peak_memory(g, env) if env is not None else None
    weights = constant_bytes(g)
    summary = [("total flops", _fmt(total.flops if env is None else _subs(total.flops, env))),
               ("total bytes", _fmt(total.bytes if env is None else _subs(total.bytes, env))),
               ("weights (bytes)", _fmt(weights)),
               ("peak memory (bytes)", _fmt(peak_sym))]
    if peak_num is not None:
        summary.append((f"peak memory at {args.bind}", _fmt(peak_num)))
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:  # rich is a dependency, but the plain table costs nothing
        print(f"\n{'#':>4} {'op':<22} {'type':<28} {'flops':>20} {'bytes':>20}")
        for r in rows:
            print(f"{r['index']:>4} {r['op']:<22} {r['type']:<28} {_fmt(r['flops']):>20} {_fmt(r['bytes']):>20}")
        for k, v in summary:
            print(f"{k}: {v}")
        return 0
    console = Console(width=None if sys.stdout.isatty() else 160)
    t = Table(title=f"cost of @{g.name}" + (f" at {args.bind}" if args.bind else " (symbolic)"))
    for col, just in (("#", "right"), ("op", "left"), ("type", "left"), ("flops", "right"),
                      ("bytes", "right")):
        t.add_column(col, justify=just)  # type: ignore[arg-type]
    for r in rows:
        t.add_row(str(r["index"]), r["op"], r["type"], _fmt(r["flops"]), _fmt(r["bytes"]))
    console.print(t)
    s = Table(show_header=False)
    s.add_column("quantity")
    s.add_column("value", justify="right")
    for k, v in summary:
        s.add_row(k, v)
    console.print(s)
    return 0


def _subs(x: Any, env: dict[Any, int]) -> Any:
    import sympy
    y = sympy.sympify(x).subs(env)
    return int(sympy.ceiling(y)) if y.is_number else y


def _run(args: argparse.Namespace) -> int:
    import numpy as np
    import torch
    if args.output and not args.output.endswith(".npz"):
        args.output += ".npz"          # what numpy's savez writes
    if args.output:
        check_output(args.output)
    given = read_inputs(args.input or [])
    cm = load_model(args.model, args.target)
    xs = gather_inputs(cm.graph, given, None if args.random is None else parse_bind(args.random))
    with torch.no_grad():
        outs = cm(*xs)
    outs = list(outs) if isinstance(outs, tuple) else [outs]
    names = list(cm.graph.output_names) or [f"out{i}" for i in range(len(outs))]
    for name, y in zip(names, outs):
        f = y.float() if y.dtype != torch.bool else y.float()
        print(f"{name}: {str(y.dtype).replace('torch.', '')}{list(y.shape)}  mean {f.mean().item():+.6g}  "
              f"std {f.std().item() if f.numel() > 1 else 0.0:.6g}  min {f.min().item():+.6g}  "
              f"max {f.max().item():+.6g}")
    if args.output:
        arrays = {n: (y.float() if y.dtype == torch.bfloat16 else y).numpy() for n, y in zip(names, outs)}
        write_atomically(args.output, lambda f: np.savez(f, **arrays))
        print(f"wrote {args.output}")
    return 0


def _bench(args: argparse.Namespace) -> int:
    import numpy as np
    import torch
    if not (Path(args.model).is_file() and args.model.lower().endswith(".onnx")):
        if not Path(args.model).exists():
            raise ScalefoldError(f"{args.model}: no such file or directory")
        raise ScalefoldError(f"{args.model}: bench compares against onnxruntime and needs an .onnx file")
    if args.iters < 1:
        raise ScalefoldError("--iters must be at least 1")
    import onnxruntime as ort

    from .runtime.timing import median_ms
    cm = load_model(args.model, "c")
    env = parse_bind(args.bind)
    _check_binding(cm.graph, symbols(env), args.bind or "")
    feeds = random_inputs(cm.graph, env)
    xs = list(feeds.values())
    try:
        sess = ort.InferenceSession(args.model, providers=["CPUExecutionProvider"])
    except Exception as e:  # onnxruntime raises its own exception types
        raise ScalefoldError(f"{args.model}: onnxruntime cannot load it ({str(e).splitlines()[0]})") from None
    ort_feeds = {i.name: x.numpy() for i, x in zip(sess.get_inputs(), xs)}
    with torch.no_grad():
        ours = cm(*xs)
        ours = list(ours) if isinstance(ours, tuple) else [ours]
        ref = sess.run(None, ort_feeds)
        diff = max((float(np.max(np.abs(o.float().numpy() - r.astype(np.float32)))) if o.numel() else 0.0)
                   for o, r in zip(ours, ref))
        with progress(f"timing scalefold ({args.iters} iters)"):
            t_sf = median_ms(lambda: cm(*xs), args.iters, warmup=2)
        with progress(f"timing onnxruntime ({args.iters} iters)"):
            t_ort = median_ms(lambda: sess.run(None, ort_feeds), args.iters, warmup=2)
    print("inputs: " + ", ".join(f"{n}={list(x.shape)}" for n, x in feeds.items()))
    print(f"scalefold (c):  {t_sf:9.3f} ms (median of {args.iters})")
    print(f"onnxruntime:    {t_ort:9.3f} ms (median of {args.iters})")
    print(f"speedup vs onnxruntime: {t_ort / t_sf:.2f}x   max |diff|: {diff:.3g}")
    return 0


def _demo(args: argparse.Namespace) -> int:
    import torch

    if args.example:
        from .ir.parser import parse
        from .ir.verify import verify
        from .runtime.interp import run

        g = parse(EXAMPLE_IR)
        verify(g)
        print(g)
        x = torch.randn(args.batch, 64, generator=torch.Generator().manual_seed(0))
        (y,) = run(g, x)
        print(f"# ran @{g.name} on f32[{args.batch},64] with the reference interpreter: "
              f"output {tuple(y.shape)}, mean {y.mean().item():+.5f}, std {y.std().item():.5f}")
        return 0
    from .api import demo

    torch.set_num_threads(args.threads)
    with progress("compiling and measuring all-MiniLM-L6-v2"):
        rows = demo(batch=args.batch, seq=args.seq, iters=args.iters)
    print(f"all-MiniLM-L6-v2 (real weights), batch {args.batch}, seq {args.seq}, "
          f"{args.threads} threads; cosine = sentence-embedding cosine to fp32 (min over batch)")
    print(f"{'runner':<32}{'cosine':>10}{'weights MB':>12}{'ms':>10}{'speed-up vs eager':>19}")
    for r in rows:
        print(f"{r['runner']:<32}{r['cos_min']:>10.6f}{r['weight_mb']:>12.1f}{r['ms']:>10.1f}"
              f"{r['speedup']:>18.2f}x")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="scalefold", epilog=EPILOG,
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                description="A compiler for compressed neural networks. MODEL is an "
                                            ".onnx file or a saved artifact directory.")
    from . import __version__
    p.add_argument("--version", action="version", version=f"scalefold {__version__}")
    sub = p.add_subparsers(dest="verb", required=True, metavar="VERB")
    raw = argparse.RawDescriptionHelpFormatter

    c = sub.add_parser("compile", help="compile a model to an artifact directory or ONNX",
                       formatter_class=raw, epilog="examples:\n  scalefold compile m.onnx -o m.sf/\n"
                       "  scalefold compile m.onnx -p 'fold_batchnorm,outliertune(bits=8)' --calibration calib.npz "
                       "-o m.q.onnx\n"
                       "  scalefold compile m.onnx -p 'quant_weights(format=int4,method=awq)' "
                       "--calibration calib.npz -o m.w4.onnx")
    c.add_argument("model", metavar="MODEL", help=".onnx file or artifact directory")
    c.add_argument("-p", "--passes", action="append", metavar="PASSES",
                   help="comma-separated pass pipeline, e.g. 'fold_batchnorm,smooth(alpha=0.8)' (quoted for the "
                        "shell; repeatable)")
    c.add_argument("-o", "--output", required=True, metavar="OUT",
                   help="OUT ending in .onnx writes ONNX, anything else an artifact directory")
    c.add_argument("--target", choices=("c", "interp"), default="c", help="artifact target (default c)")
    c.add_argument("--calibration", metavar="FILE",
                   help="calibration inputs for calibrating passes (awq, smooth, outliertune, ...): a "
                        ".npz or .safetensors file with one array per model input, samples along axis 0")
    c.add_argument("--calibration-batch", type=positive_int, default=8, metavar="N",
                   help="samples per calibration batch when the inputs' batch size is symbolic (default 8)")
    c.add_argument("--nbits-accuracy", type=int, choices=range(5), default=0, metavar="L",
                   help="accuracy_level of exported com.microsoft.MatMulNBits nodes: 0 (default) float "
                        "activations, onnxruntime computes the IR's numbers; 4 int8 activations, "
                        "onnxruntime's fast CPU path")
    c.set_defaults(fn=_compile)

    i = sub.add_parser("inspect", help="print the IR, per-op cost and peak memory",
                       formatter_class=raw, epilog="example:\n  scalefold inspect m.onnx --bind B=8,S=128")
    i.add_argument("model", metavar="MODEL")
    i.add_argument("--bind", metavar="B=8,S=128", help="sizes for symbolic dims: numeric cost and peak memory")
    i.set_defaults(fn=_inspect)

    r = sub.add_parser("run", help="run a model and print output shapes and stats",
                       formatter_class=raw, epilog="examples:\n  scalefold run m.sf/ --input x=x.npy -o out.npz\n"
                       "  scalefold run m.onnx --random B=2,S=16")
    r.add_argument("model", metavar="MODEL")
    r.add_argument("--input", action="append", metavar="NAME=FILE.npy", help="an input array (repeatable)")
    r.add_argument("--random", nargs="?", const="", metavar="B=2,S=16",
                   help="seeded random values for inputs not given, with sizes for symbolic dims "
                        "(sizes the given inputs fix are taken from them)")
    r.add_argument("-o", "--output", metavar="OUT.npz", help="write the outputs as .npz")
    r.add_argument("--target", choices=("c", "interp"), default=None,
                   help="compile for this target (default: c, or the artifact's own target)")
    r.set_defaults(fn=_run)

    b = sub.add_parser("bench", help="time the compiled model against onnxruntime",
                       formatter_class=raw, epilog="example:\n  scalefold bench m.onnx --bind B=1,S=128 --iters 50")
    b.add_argument("model", metavar="MODEL", help=".onnx file")
    b.add_argument("--bind", metavar="B=1,S=128", help="sizes for symbolic dims of the random inputs")
    b.add_argument("--iters", type=int, default=20, help="timed iterations (median reported; default 20)")
    b.set_defaults(fn=_bench)

    d = sub.add_parser("demo", help="compile the embedded all-MiniLM-L6-v2 and compare it with "
                       "torch eager and onnxruntime (--example: print and run a small IR graph)")
    d.add_argument("--batch", type=positive_int, default=8, help="batch size (default 8)")
    d.add_argument("--seq", type=positive_int, default=128, help="sequence length (default 128, at most 512)")
    d.add_argument("--iters", type=positive_int, default=10, help="timed iterations (default 10)")
    d.add_argument("--threads", type=positive_int, default=2, help="torch threads (default 2)")
    d.add_argument("--example", action="store_true", help="print and run the built-in example IR")
    d.set_defaults(fn=_demo)
    return p


def _one_line(e: BaseException) -> str:
    text = " ".join(str(e).split("\n")[0].split())
    return text or type(e).__name__


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``scalefold`` console script; returns the exit code."""
    import warnings
    args = build_parser().parse_args(argv)
    # Warnings are for people at a terminal: one line each, without source excerpts.
    saved = warnings.formatwarning
    warnings.formatwarning = lambda msg, cat, *_a, **_k: f"scalefold: warning: {msg}\n"  # type: ignore[assignment]
    try:
        return args.fn(args)
    except ScalefoldError as e:
        print(f"scalefold: error: {_one_line(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("scalefold: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # the reader went away (``scalefold inspect m.onnx | head``): stop quietly, and keep
        # the interpreter's final flush of stdout from raising again
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0
    except Exception as e:  # noqa: BLE001 - a CLI prints one line, never a traceback
        if os.environ.get("SCALEFOLD_TRACEBACK"):
            raise
        print(f"scalefold: error: internal error: {type(e).__name__}: {_one_line(e)} "
              f"(set SCALEFOLD_TRACEBACK=1 for details)", file=sys.stderr)
        return 1
    finally:
        warnings.formatwarning = saved


if __name__ == "__main__":
    sys.exit(main())
