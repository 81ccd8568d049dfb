"""IR -> ONNX export (DESIGN.md §5, "ONNX out"): :func:`to_onnx`.

The model is standard ONNX (default opset 21, any opset >= 17 where the graph's ops and
dtypes allow) that passes ``onnx.checker.check_model(full_check=True)`` and runs in
onnxruntime. The op table ``RENDER`` lives in ``onnx_ops.py`` (elementwise, shape), filled also
by ``onnx_nn.py`` (nn, norms, attention, reductions), ``onnx_quant.py`` (compression ops) and
``onnx_extra.py`` (less common ops); ``onnx_build.py`` holds the graph under construction.

Conventions:
- Graph inputs and outputs keep their names (``graph.inputs[i].name``, ``graph.output_names``).
  Input and output shapes use ``dim_param`` for symbolic dims: a bare symbol becomes its name
  (``B``, ``S``); a compound dim becomes its canonical expression text (``2*S``), which ONNX
  treats as an opaque name (onnxruntime does not check it), so the relation is documented in
  the model without being enforced.
- Constants become initializers named from ``Value.name`` when that is a valid, unused name,
  else ``c0``, ``c1``...; export-time layouts of a constant (W^T, packed 4-bit blocks) get
  derived names (``w_T``).
- Symbolic attributes (reshape/expand targets, arange bounds, slice bounds, split sizes, pads,
  topk k) become shape computations: each symbol is bound to (input, axis) where it first
  appears among the graph inputs and read with ``Shape(start, end)``; arithmetic follows the
  sympy expression (floor/ceiling division exact for either sign).
- Element types need their opset where a tensor of them exists: float8 19, int4/uint4 21 (a
  4-bit weight packed into MatMulNBits needs none). f4e2m1 values travel *inside* the graph as
  their uint8 codes, decoded by a 16-entry table lookup and encoded by comparisons with the
  grid midpoints (exact, any opset), because onnxruntime has no FLOAT4E2M1 kernels; only f4e2m1
  graph inputs/outputs carry the FLOAT4E2M1 type, which needs opset 23. An op or type that
  cannot be expressed at the requested opset raises :class:`ExportError` naming the node.
- Symbols first seen in a node's result (data-dependent sizes: NonZero, Unique, Compress) are
  bound to that result's shape for later shape computations.
- Custom domains: ``com.microsoft`` (MatMulNBits) only, where onnxruntime runs it natively. No
  op needs the reserved ``ai.scalefold`` domain at present (``onnx_ops.REFUSED`` is empty).
- Writing is atomic: the model (and with external data the sidecar ``<file name>.data``, e.g.
  ``model.onnx.data`` next to ``model.onnx``) is written into a temporary folder inside the
  target folder, checked there by path, then moved into place with ``os.replace`` (sidecar
  first). On any failure, including the checker, nothing is left at ``path`` and no temporary
  file remains; an existing file at ``path`` is untouched. External data is used when
  ``external_data=True`` or when the initializers would push the proto past 2 GB; the
  returned ModelProto then references the sidecar instead of holding the tensors.
"""
from __future__ import annotations

import copy
import os
import shutil
import tempfile
import warnings
from typing import Any

import onnx
import sympy
from onnx import helper

from ..ir import dtypes as dt
from ..ir.errors import ScalefoldError, UnsupportedOpError
from ..ir.graph import Graph, Node, Value
from ..ir.types import TensorType, dim_str
from . import onnx_extra, onnx_nn, onnx_qmoe, onnx_quant  # noqa: F401  (register their ops)
from .onnx_build import DTYPE_MIN_OPSET, ONNX_DTYPE, Emitter, ExportError
from .onnx_ops import RENDER

__all__ = ["to_onnx", "ExportError", "MIN_OPSET", "EXTERNAL_THRESHOLD"]

MIN_OPSET = 17
# Past this many bytes of tensor data the proto cannot be serialised (protobuf's 2 GB limit);
# the margin leaves room for the graph itself.
EXTERNAL_THRESHOLD = 2 ** 31 - 2 ** 26
# tensors under about 1 KB stay inside the model file (onnx compares sys.getsizeof of the raw
# bytes, 33 more than their length)
EXTERNAL_MIN_BYTES = 1024
_DOMAIN_VERSIONS = {"com.microsoft": 1, "ai.scalefold": 1}


def to_onnx(graph: Graph | Any, path: str | os.PathLike | None = None, opset: int = 21,
            external_data: bool | None = None, nbits_accuracy: int = 0) -> onnx.ModelProto:
    """Export ``graph`` (or a compiled model's graph) as an ONNX model, checked with
    ``onnx.checker`` (full_check).

    ``nbits_accuracy`` is the ``accuracy_level`` written on ``com.microsoft.MatMulNBits``
    nodes: 0 (default) keeps float32 activations, so onnxruntime computes the IR's numbers; 4
    lets onnxruntime quantise the activations to int8 per block (its fast CPU path: 8x at
    M = 1 on an 11008 x 4096 linear in benchmarks/w4_cpu.py, outputs about 1e-2 off).

    With ``path`` the model is written atomically (see the module docstring); with
    ``external_data=True``, or automatically past 2 GB, initializers go to a sidecar file
    ``<file name>.data``. Raises :class:`ExportError` (a ScalefoldError) naming the node when
    an op cannot be expressed at ``opset``, or naming ``path`` when it cannot be written there,
    and UnsupportedOpError listing every op the table lacks.
    """
    # a compiled model exports its graph (compile() returns one; an easy slip to pass it)
    if not isinstance(graph, Graph) and isinstance(getattr(graph, "graph", None), Graph):
        graph = graph.graph
    if not isinstance(graph, Graph):
        raise ExportError(f"ONNX export: expected a scalefold Graph or compiled model, got {type(graph).__name__}")
    if not isinstance(opset, int) or isinstance(opset, bool):
        raise ExportError(f"ONNX export: opset must be an int, got {opset!r}")
    if path is not None and (isinstance(path, bytes) or not isinstance(path, (str, os.PathLike))):
        raise ExportError(f"ONNX export: path must be a str or os.PathLike, got {type(path).__name__}")
    if not MIN_OPSET <= opset <= onnx.defs.onnx_opset_version():
        raise ExportError(f"ONNX export: opset {opset} is outside {MIN_OPSET}.."
                          f"{onnx.defs.onnx_opset_version()}")
    if not isinstance(nbits_accuracy, int) or isinstance(nbits_accuracy, bool) or \
            nbits_accuracy not in (0, 1, 2, 3, 4):
        raise ExportError(f"ONNX export: nbits_accuracy must be 0..4 (MatMulNBits accuracy_level), "
                          f"got {nbits_accuracy!r}")
    model = build_model(graph, opset, nbits_accuracy)
    _warn_no_cpu_kernels(graph)
    big = _data_bytes(model) > EXTERNAL_THRESHOLD
    if path is None:
        if external_data:
            raise ExportError("ONNX export: external_data=True needs a path to write the sidecar next to")
        if big:  # the checker can only read a >2 GB model from disk
            with tempfile.TemporaryDirectory(prefix="scalefold-onnx-") as d:
                _write_checked(copy.deepcopy(model), os.path.join(d, "model.onnx"), True)
        else:
            _check(model)
        return model
    _write_checked(model, os.fspath(path), bool(external_data) or big)
    return model


# ops that only move, reinterpret or convert values: bfloat16 through them runs anywhere
_MOVES = {"cast", "reshape", "transpose", "squeeze", "unsqueeze", "flatten", "slice", "concat", "identity",
          "gather", "shape", "expand"}


def _warn_no_cpu_kernels(graph: Graph) -> None:
    """Warn when ``graph`` computes in bfloat16 or convolves in float64: onnxruntime's CPU provider has no bfloat16
    kernels for MatMul, Gemm, Expand and most arithmetic, so such a file fails to load there
    (NOT_IMPLEMENTED) although it is valid ONNX that GPU providers run. Ops exported in
    float32 between casts (``_NO_BF16``) do not count."""
    ops = sorted({n.op for n in graph.nodes if n.op not in _MOVES and n.op not in _NO_BF16
                  and any(v is not None and v.dtype is dt.bf16 for v in (*n.inputs, *n.outputs))})
    if ops:
        warnings.warn(f"ONNX export of graph @{graph.name}: it computes in bfloat16 ({', '.join(ops[:6])}"
                      f"{', ...' if len(ops) > 6 else ''}); onnxruntime's CPU provider has no bfloat16 kernels "
                      f"for most of these, so the file runs on providers that have them (CUDA), not on the "
                      f"CPU; compile the model in float32 or float16 for a CPU file", stacklevel=3)
    if any(n.op in ("conv", "conv_transpose") and n.inputs[0].dtype is dt.f64 for n in graph.nodes):
        # an imported ConvInteger / QLinearConv: the IR convolves the integer codes exactly in f64
        warnings.warn(f"ONNX export of graph @{graph.name}: it holds float64 convolutions (integer "
                      f"convolutions, ConvInteger / QLinearConv, are computed exactly in float64), which "
                      f"onnxruntime's CPU provider cannot run (no double Conv kernel)", stacklevel=3)


def build_model(graph: Graph, opset: int, nbits_accuracy: int = 0) -> onnx.ModelProto:
    """The unchecked ModelProto for ``graph`` at ``opset`` (``nbits_accuracy``: see
    :func:`to_onnx`)."""
    missing: dict[str, int] = {}
    for n in graph.nodes:
        if n.op not in RENDER:
            missing[n.op] = missing.get(n.op, 0) + 1
    if missing:
        raise UnsupportedOpError(missing, where=f"ONNX export of graph @{graph.name}")
    cx = Emitter(graph, opset)
    cx.nbits_accuracy = nbits_accuracy
    out_names = list(graph.output_names) or [f"out{i}" for i in range(len(graph.outputs))]
    if len(out_names) != len(graph.outputs):
        raise ExportError(f"ONNX export: graph @{graph.name} has {len(graph.outputs)} outputs but "
                          f"{len(out_names)} output names")
    in_names = [v.name or f"in{i}" for i, v in enumerate(graph.inputs)]
    for nm in in_names + out_names:
        if not nm:
            raise ExportError(f"ONNX export: graph @{graph.name} has an empty input/output name")
    # an output may be listed twice under one name (ONNX allows it), not two values under one
    named = {nm: v for v, nm in zip(graph.outputs, out_names)}
    if len(set(in_names)) != len(in_names) or \
            any(named[nm] is not v for v, nm in zip(graph.outputs, out_names)):
        raise ExportError(f"ONNX export: graph @{graph.name} repeats an input or output name")
    for i, nm in enumerate(out_names):
        if nm in in_names and graph.outputs[i] is not graph.inputs[in_names.index(nm)]:
            raise ExportError(f"ONNX export: output name {nm!r} is also the name of another input")
    for nm in in_names + out_names:
        cx.reserve(nm)
    cx.name_constants()
    for v, nm in zip(graph.inputs, in_names):
        _need_dtype(cx, v, nm)
        cx.names[id(v)] = nm
        if v.dtype is dt.f4e2m1:  # FLOAT4E2M1 at the boundary, uint8 codes inside
            cx.names[id(v)] = cx.f4_encode(cx.op("Cast", [nm], to=onnx.TensorProto.FLOAT))
    cx.bind_symbols([(nm, v.shape) for v, nm in zip(graph.inputs, in_names)])

    want: dict[int, str] = {}
    for v, nm in zip(graph.outputs, out_names):
        _need_dtype(cx, v, nm)
        if v.producer is not None and id(v) not in want and v.dtype is not dt.f4e2m1:
            want[id(v)] = nm
    for node in graph.nodes:
        cx.current = node
        start = len(cx.nodes)
        try:
            outs = _render_lifted(cx, node) if _needs_lift(node) else RENDER[node.op](cx, node)
        except ScalefoldError:
            raise
        except Exception as e:  # a renderer bug or an unforeseen attribute combination
            raise ExportError(f"ONNX export of node {node.describe()} failed: "
                              f"{type(e).__name__}: {e}") from e
        for v, name in zip(node.outputs, outs):
            # Types are checked where a tensor of them exists: constants when they become
            # initializers, results here (a 4-bit weight packed into MatMulNBits needs no INT4).
            cx.need_dtype(v.dtype, f"result {v!r}")
            cx.bind_result(name, v.shape)
            if id(v) in want:
                name = _rename(cx, start, name, want[id(v)])
            cx.names[id(v)] = name
    cx.current = None
    for v, nm in zip(graph.outputs, out_names):
        if v.dtype is dt.f4e2m1:
            cx.nodes.append(helper.make_node("Cast", [cx.f4_decode(cx.value(v))], [nm],
                                             to=onnx.TensorProto.FLOAT4E2M1, name=cx.fresh("n_out")))
        elif cx.value(v) != nm:
            cx.nodes.append(helper.make_node("Identity", [cx.value(v)], [nm], name=cx.fresh("n_out")))

    g = helper.make_graph(cx.nodes, graph.name or "main",
                          [_value_info(nm, v) for v, nm in zip(graph.inputs, in_names)],
                          [_value_info(nm, v) for v, nm in zip(graph.outputs, out_names)],
                          cx.initializers)
    imports = [helper.make_opsetid("", opset)] + \
        [helper.make_opsetid(d, _DOMAIN_VERSIONS[d]) for d in sorted(cx.domains)]
    model = helper.make_model(g, opset_imports=imports, producer_name="scalefold",
                              producer_version=_version())
    model.ir_version = helper.find_min_ir_version_for([helper.make_opsetid("", opset)])
    return model


def _version() -> str:
    try:
        from .. import __version__
        return __version__
    except Exception:  # pragma: no cover - partial installs
        return "0"


# ops whose ONNX form takes no bfloat16 (Conv, pools, InstanceNormalization, TopK, LRN)
_NO_BF16 = {"conv", "conv_transpose", "max_pool", "avg_pool", "global_avg_pool", "global_max_pool",
            "lp_pool", "instance_norm", "lrn", "topk"}


def _needs_lift(node: Node) -> bool:
    return node.op in _NO_BF16 and any(v is not None and v.dtype is dt.bf16 for v in node.inputs)


def _render_lifted(cx: Emitter, node: Node) -> list[str]:
    """``node`` rendered in float32 on inputs cast from bfloat16, its bfloat16 results cast
    back: the ONNX op takes no bfloat16 (``_NO_BF16``), and float32 arithmetic rounded once to
    bfloat16 is what the IR's reference computes for these ops. The float32 stand-in lives in
    a scratch graph; ``node``'s own graph is not touched."""
    scratch = Graph("lift")
    ins: list[Value | None] = []
    for v in node.inputs:
        if v is None or v.dtype is not dt.bf16:
            ins.append(v)
        elif v.is_const:
            ins.append(scratch.add_const(v.const.float(), dt.f32))
        else:
            w = scratch.add_input(TensorType(dt.f32, v.shape), "x")
            cx.names[id(w)] = cx.cast(cx.value(v), dt.bf16, dt.f32)
            ins.append(w)
    stand_in = scratch.create_node(node.op, ins, dict(node.attrs))
    cx.keep_alive(stand_in)     # its inputs and outputs: their ids key the emitter's caches
    outs = RENDER[node.op](cx, stand_in)
    return [cx.cast(name, s.dtype, v.dtype) for name, s, v in zip(outs, stand_in.outputs, node.outputs)]


def _need_dtype(cx: Emitter, v: Value, name: str) -> None:
    """Graph inputs/outputs carry their own element type, FLOAT4E2M1 included (opset 23)."""
    need = DTYPE_MIN_OPSET.get(v.dtype.name)
    if need is not None:
        cx.need_opset(need, f"element type {v.dtype.name} of graph input/output {name!r}")


def _rename(cx: Emitter, start: int, name: str, target: str) -> str:
    """Make the node that produced ``name`` (emitted for the current IR node, and not a shared
    cached value) write ``target`` instead; otherwise leave it for an Identity."""
    if name == target or name in cx._dims.values() or name in cx._small.values():
        return name
    for n in cx.nodes[start:]:
        if name in n.output:
            for m in cx.nodes[start:]:
                for seq in (m.input, m.output):
                    for i, x in enumerate(seq):
                        if x == name:
                            seq[i] = target
            return target
    return name


def _value_info(name: str, v: Value) -> onnx.ValueInfoProto:
    shape: list[Any] = []
    for d in v.shape:
        if isinstance(d, int):
            shape.append(d)
        else:
            shape.append(d.name if isinstance(d, sympy.Symbol) else dim_str(d))
    return helper.make_tensor_value_info(name, ONNX_DTYPE[v.dtype.name], shape)


def _data_bytes(model: onnx.ModelProto) -> int:
    return sum(len(t.raw_data) for t in model.graph.initializer)


def _check(model: onnx.ModelProto | str) -> None:
    try:
        onnx.checker.check_model(model, full_check=True)
    except Exception as e:
        raise ExportError(f"ONNX export: the model fails onnx.checker: {type(e).__name__}: {e}") from e


def _write_checked(model: onnx.ModelProto, path: str, external: bool) -> None:
    """Write into a temporary folder beside ``path``, check from disk, then move into place.

    An unusable ``path`` (missing or unwritable folder, an existing directory, a full disk)
    raises :class:`ExportError` naming ``path`` and the reason, never the hidden temporary
    name; nothing is left behind either way."""
    folder = os.path.dirname(os.path.abspath(path))
    base = os.path.basename(path)
    if not base:
        raise ExportError(f"ONNX export: {path!r} names no file")
    if "\0" in path:
        raise ExportError(f"ONNX export: cannot write {path!r}: the path holds a NUL byte")
    # Checked up front: os.replace would otherwise fail only after the whole model was written
    # and checked, with an OSError about the temporary folder rather than ``path``.
    if os.path.isdir(path):
        raise ExportError(f"ONNX export: cannot write {path}: it is an existing directory")
    if not os.path.exists(folder):
        raise ExportError(f"ONNX export: cannot write {path}: folder {folder} does not exist")
    if not os.path.isdir(folder):
        raise ExportError(f"ONNX export: cannot write {path}: {folder} is not a directory")
    try:
        # a short name: one derived from ``base`` refused legal names near the 255-byte limit
        tmp = tempfile.mkdtemp(prefix=".sf-export-", dir=folder)
    except OSError as e:
        raise ExportError(f"ONNX export: cannot write {path}: {e.strerror or e}") from e
    try:
        staged = os.path.join(tmp, base)
        location = base + ".data"
        if external:
            # small tensors (Reshape shapes, axes, scalars) stay inline: shape inference, the
            # checker and onnxruntime read those from the model itself
            onnx.save_model(model, staged, save_as_external_data=True, all_tensors_to_one_file=True,
                            location=location, size_threshold=EXTERNAL_MIN_BYTES)
        else:
            with open(staged, "wb") as f:
                f.write(model.SerializeToString())
        _check(staged)
        if external and os.path.exists(os.path.join(tmp, location)):
            os.replace(os.path.join(tmp, location), os.path.join(folder, location))
        os.replace(staged, os.path.abspath(path))
    except OSError as e:
        # e.filename is the temporary path; the user asked for ``path``.
        raise ExportError(f"ONNX export: cannot write {path}: {e.strerror or e}") from e
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

