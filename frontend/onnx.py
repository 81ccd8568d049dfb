"""ONNX -> IR: ``from_onnx(path | ModelProto | bytes)``.

The driver here loads and checks the model (garbage, truncation, cycles, missing tensors,
external data that escapes the model's folder), makes graph inputs with ``dim_param`` names as
symbols, turns initializers into constants, and converts nodes in topological order through
the op table (``frontend/onnx_ops/*.py``, registered with ``onnx_ctx.onnx_op``). Every
unsupported op of the model is reported at once. onnxruntime's ``com.microsoft`` contrib ops
are read where its tools write them: ``MatMulNBits`` (``onnx_ops/matmulnbits.py``, into
``qlinear``), the transformer optimizer's fusions (``onnx_ops/contrib*.py``: FusedMatMul, the
GELU family, the fused norms, Attention, MultiHeadAttention, RotaryEmbedding) and the
quantizer's QOperator / dynamic ops (``onnx_ops/contrib_quant.py``); QDQ weights
(DequantizeLinear of constant integer codes into MatMul / Gemm) also become ``qlinear``
(``onnx_ops/qdq_weight.py``). Each ONNX
node's name goes to the main IR node it becomes (``MAIN_OPS``), so that per-layer overrides
can name imported layers.
"""
from __future__ import annotations

import os
import warnings
import re
from collections import Counter
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import networkx as nx
import onnx
import sympy
import torch
from google.protobuf.message import DecodeError

from ..ir.errors import FrontendError, ScalefoldError, ShapeError, UnsupportedOpError
from ..ir.graph import Graph, Node, Value
from ..ir.types import TensorType, sym
from . import onnx_ops  # noqa: F401  (registers the converters)
from .onnx_ctx import Ctx, converter, node_attrs
from .onnx_fuse import fuse_linear_bias, share_equal_constants
from .onnx_tensors import numpy_to_torch, onnx_dtype, resolve_external_data, tensor_to_torch

MIN_OPSET = 13

# When one ONNX node becomes several IR nodes, the first of these ops among them carries the
# ONNX node's name (overrides in the compression passes select linears by node name); without
# one, the node producing the ONNX node's first output does.
MAIN_OPS = frozenset({"linear", "matmul", "conv", "conv_transpose", "sdpa", "qlinear", "lowrank_linear",
                      "bcq_linear", "moe", "qmoe"})


def load_model(model: str | os.PathLike | bytes | onnx.ModelProto) -> tuple[onnx.ModelProto, Path | None]:
    """Parse a model from a path, bytes or a ModelProto; external data is read and checked."""
    base: Path | None = None
    if isinstance(model, onnx.ModelProto):
        proto = onnx.ModelProto()
        proto.CopyFrom(model)
        where = "ModelProto"
    else:
        if isinstance(model, (bytes, bytearray)):
            data, where = bytes(model), "ONNX bytes"
        else:
            p = Path(model)
            where = f"file {p}"
            if p.is_dir():
                raise FrontendError(f"{where}: is a directory, not an ONNX file")
            if not p.is_file():
                raise FrontendError(f"{where}: no such file")
            data = p.read_bytes()
            base = p.resolve().parent
        proto = onnx.ModelProto()
        try:
            proto.ParseFromString(data)
        except (DecodeError, ValueError, RuntimeError) as e:
            raise FrontendError(f"{where} is not a valid ONNX model (truncated or not protobuf): "
                                f"{str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
        if not proto.HasField("graph") or (not proto.graph.node and not proto.graph.output):
            raise FrontendError(f"{where} is not a valid ONNX model: it has no graph")
    resolve_external_data(proto, base)
    return proto, base


def _opsets(proto: onnx.ModelProto) -> dict[str, int]:
    out = {}
    for o in proto.opset_import:
        out[o.domain if o.domain != "ai.onnx" else ""] = o.version
    return out


def _sanitize(name: str, fallback: str) -> str:
    s = re.sub(r"[^A-Za-z0-9_]", "_", name)
    if not s or s[0].isdigit():
        s = f"{fallback}_{s}" if s else fallback
    return s


def _check_structure(g: onnx.GraphProto, where: str) -> list[onnx.NodeProto]:
    """Reject cycles and reads of undefined tensors; return the nodes in topological order."""
    produced: dict[str, int] = {}
    for i, n in enumerate(g.node):
        for o in n.output:
            if o:
                if o in produced:
                    raise FrontendError(f"{where}: tensor '{o}' is produced twice (nodes "
                                        f"{_label(g.node[produced[o]])} and {_label(n)})")
                produced[o] = i
    defined = {v.name for v in g.input} | {t.name for t in g.initializer} | \
        {t.name for t in g.sparse_initializer}
    for name, i in produced.items():
        if name in defined:
            # SSA: a node may not write a graph input or initializer (it read as a cycle)
            raise FrontendError(f"{where}: {_label(g.node[i])} writes '{name}', which is already a "
                                f"graph input or initializer")
    dag = nx.DiGraph()
    dag.add_nodes_from(range(len(g.node)))
    for i, n in enumerate(g.node):
        for name in n.input:
            if not name:
                continue
            if name in produced:
                dag.add_edge(produced[name], i)
            elif name not in defined:
                raise FrontendError(f"{where}: {_label(n)} reads '{name}', which no node, graph "
                                    f"input or initializer defines (missing initializer?)")
    try:
        cycle = nx.find_cycle(dag)
    except nx.NetworkXNoCycle:
        cycle = None
    if cycle:
        names = " -> ".join(_label(g.node[a]) for a, _ in cycle)
        raise FrontendError(f"{where}: the graph has a cycle: {names}")
    for o in g.output:
        if o.name not in produced and o.name not in defined:
            raise FrontendError(f"{where}: graph output '{o.name}' is not defined")
    order = list(nx.lexicographical_topological_sort(dag))
    return [g.node[i] for i in order]


def _label(n: onnx.NodeProto) -> str:
    return f"node '{n.name}' ({n.op_type})" if n.name else f"node {n.op_type}"


def _name_main(new: list[Node], outs: list[Value | None], name: str) -> None:
    """Give ONNX node name ``name`` to the main one of the IR nodes ``new`` converted from it
    (see ``MAIN_OPS``); the others stay unnamed, so that a name selects one node."""
    main = next((m for m in new if m.op in MAIN_OPS), None)
    if main is None:
        # The producer of the first output, if this conversion made it: a value passed
        # through from an earlier node (Identity) or folded to a constant names nothing.
        ids = {id(m) for m in new}
        first = next((v.producer for v in outs if v is not None), None)
        main = first if first is not None and id(first) in ids else None
    if main is not None and main.name is None:
        main.name = name


def _check_supported(nodes: list[onnx.NodeProto], opsets: Mapping[str, int], where: str) -> None:
    missing: Counter[str] = Counter()
    first: dict[str, str] = {}
    for i, n in enumerate(nodes):
        dom = n.domain if n.domain != "ai.onnx" else ""
        if converter(dom, n.op_type) is None:
            key = f"{dom + '::' if dom else ''}{n.op_type}"
            missing[key] += 1
            first.setdefault(key, n.name or f"#{i}")
    if missing:
        raise UnsupportedOpError(dict(missing), where=where, first=first)


class _DimNames:
    """Symbol names of the graph inputs' dims, one per distinct ``dim_param`` (sanitised, made
    unique: "batch size" and "batch_size" are different dims) and a fresh one per unnamed or
    negative dim (some exporters write -1 for a dynamic dim), never one a dim_param took."""

    def __init__(self, inputs: Sequence[onnx.ValueInfoProto]) -> None:
        self.by_param: dict[str, str] = {}
        self.taken: set[str] = set()
        for v in inputs:
            for dim in v.type.tensor_type.shape.dim:
                if dim.HasField("dim_param") and dim.dim_param and dim.dim_param not in self.by_param:
                    self.by_param[dim.dim_param] = self._unique(_sanitize(dim.dim_param, "d"))

    def _unique(self, base: str) -> str:
        name, k = base, 1
        while name in self.taken:
            k += 1
            name = f"{base}_{k}"
        self.taken.add(name)
        return name

    def param(self, p: str) -> str:
        """The symbol name of dim_param ``p`` (one of the inputs')."""
        return self.by_param[p]

    def fresh(self, base: str) -> str:
        """A new symbol name from ``base``, unused so far (``base_2``, ``base_3``... if taken)."""
        return self._unique(base)


def _input_type(v: onnx.ValueInfoProto, fallback: str, names: _DimNames,
                merge: Mapping[str, str] | None = None) -> TensorType:
    tt = v.type.tensor_type
    if not v.type.HasField("tensor_type"):
        raise FrontendError(f"graph input '{v.name}': only tensor inputs are supported")
    d = onnx_dtype(tt.elem_type, f"graph input '{v.name}'")
    if not tt.HasField("shape"):
        raise FrontendError(f"graph input '{v.name}' has no shape (its rank must be known)")
    dims = []
    for i, dim in enumerate(tt.shape.dim):
        if dim.HasField("dim_value") and dim.dim_value >= 0:
            dims.append(int(dim.dim_value))
        elif dim.HasField("dim_param") and dim.dim_param:
            dims.append(sym(names.param(dim.dim_param)))
        else:
            dims.append(sym(names.fresh(f"{fallback}_{i}")))
    if merge:
        dims = [sym(_merged(x.name, merge)) if isinstance(x, sympy.Symbol) else x for x in dims]
    return TensorType(d, dims)


def _merged(name: str, merge: Mapping[str, str]) -> str:
    """The symbol ``name`` becomes under ``merge``, followed to its end (b -> a -> c)."""
    seen = {name}
    while name in merge and merge[name] not in seen:
        name = merge[name]
        seen.add(name)
    return name


def _drop_dead_dequantize(g: Graph) -> None:
    """Remove the DequantizeLinear nodes that nothing reads any more: their codes went into a
    ``qlinear`` (``onnx_ops/qdq_weight.py``)."""
    outs = {id(v) for v in g.outputs}
    for n in reversed(list(g.nodes)):
        if n.op == "dequantize" and all(not v.users() and id(v) not in outs for v in n.outputs):
            g.remove(n)


def _legacy_hardmax(proto: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of an opset < 13 model whose Hardmax nodes are written in opset-13 terms.

    Before opset 13 Hardmax coerced its input to 2-D at ``axis`` (default 1) and took the
    maximum over the flattened trailing dims; from 13 it works along ``axis`` alone. onnx's
    version converter has no adapter for it and leaves the node unchanged, which then meant
    the new semantics. Each becomes Flatten(axis) -> Hardmax(axis=1) -> Reshape to the input's
    shape, the same in every opset."""
    def rewrite(graph: onnx.GraphProto) -> None:
        out: list[onnx.NodeProto] = []
        for i, n in enumerate(graph.node):
            for at in n.attribute:
                if at.type == onnx.AttributeProto.GRAPH:
                    rewrite(at.g)
                for sub in at.graphs:
                    rewrite(sub)
            if n.op_type != "Hardmax" or n.domain not in ("", "ai.onnx"):
                out.append(n)
                continue
            axis = next((at.i for at in n.attribute if at.name == "axis"), 1)
            tag = f"{n.output[0]}__sf_hardmax{i}"
            out += [onnx.helper.make_node("Flatten", [n.input[0]], [tag + "_2d"], axis=axis),
                    onnx.helper.make_node("Hardmax", [tag + "_2d"], [tag + "_hot"], axis=1),
                    onnx.helper.make_node("Shape", [n.input[0]], [tag + "_shape"]),
                    onnx.helper.make_node("Reshape", [tag + "_hot", tag + "_shape"], [n.output[0]],
                                          name=n.name)]
        del graph.node[:]
        graph.node.extend(out)

    if not any(n.op_type == "Hardmax" for n in proto.graph.node) and \
            not any(at.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS)
                    for n in proto.graph.node for at in n.attribute):
        return proto
    copy = onnx.ModelProto()
    copy.CopyFrom(proto)
    rewrite(copy.graph)
    return copy


def _subgraphs(graph: onnx.GraphProto) -> Iterator[onnx.GraphProto]:
    """``graph`` and every graph nested in its nodes' attributes (If / Loop / Scan bodies)."""
    yield graph
    for n in graph.node:
        for at in n.attribute:
            if at.type == onnx.AttributeProto.GRAPH:
                yield from _subgraphs(at.g)
            for sub in at.graphs:
                yield from _subgraphs(sub)


def _legacy_resizes(proto: onnx.ModelProto) -> set[str]:
    """The outputs of Upsample and Resize-10 nodes of an opset < 11 model: their coordinates
    are asymmetric and nearest rounds down, which onnx's version converter does not write into
    the Resize-11+ it makes of them (so the default half_pixel would apply)."""
    return {n.output[0] for g in _subgraphs(proto.graph) for n in g.node
            if n.op_type in ("Upsample", "Resize") and n.domain in ("", "ai.onnx") and n.output}


def _mark_legacy_resizes(proto: onnx.ModelProto, outputs: set[str], where: str) -> None:
    """Write the legacy coordinate rules into the upgraded Resize nodes that produce ``outputs``:
    asymmetric coordinates; nearest rounds down when upsampling and up when downsampling (as
    onnxruntime runs Upsample / Resize-10)."""
    for g in _subgraphs(proto.graph):
        inits = {t.name: t for t in g.initializer}
        consts = {n.output[0]: at.t for n in g.node if n.op_type == "Constant" for at in n.attribute
                  if at.name == "value"}
        for n in g.node:
            if n.op_type != "Resize" or not n.output or n.output[0] not in outputs:
                continue
            scales = inits.get(n.input[2]) or consts.get(n.input[2]) if len(n.input) > 2 else None
            sv = onnx.numpy_helper.to_array(scales).reshape(-1).tolist() if scales is not None else []
            mode = next((at.s.decode() for at in n.attribute if at.name == "mode"), "nearest")
            if mode == "nearest" and any(v < 1 for v in sv) and any(v > 1 for v in sv):
                raise FrontendError(f"{where}: legacy nearest {n.op_type or 'Resize'} '{n.name}' scales some "
                                    f"axes up and some down ({sv}); onnxruntime rounds those two "
                                    f"kinds of axes differently, which one Resize cannot say")
            keep = [at for at in n.attribute if at.name not in ("coordinate_transformation_mode", "nearest_mode")]
            del n.attribute[:]
            n.attribute.extend(keep + [onnx.helper.make_attribute("coordinate_transformation_mode", "asymmetric"),
                                       onnx.helper.make_attribute("nearest_mode",
                                                                  "ceil" if any(v < 1 for v in sv) else "floor")])


def from_onnx(model: str | os.PathLike | bytes | onnx.ModelProto, *,
              input_values: Mapping[str, torch.Tensor] | None = None,
              name: str | None = None) -> Graph:
    """Import an ONNX model (opset >= 13; older ones are upgraded with onnx's converter).

    ``input_values`` freezes graph inputs to constants (e.g. a shape input), which lets shape
    computations fold. Raises FrontendError / UnsupportedOpError / ShapeError naming the file,
    node or tensor at fault; the result passes ``verify``.
    """
    proto, base = load_model(model)
    where = f"file {model}" if isinstance(model, (str, os.PathLike)) else "ONNX model"
    opsets = _opsets(proto)
    opset = opsets.get("", 0)
    newest = onnx.defs.onnx_opset_version()
    if opset > newest:
        # an opset past the installed onnx's is one whose operators may have changed meaning
        raise FrontendError(f"{where}: opset {opset} is newer than the newest this onnx package "
                            f"({onnx.__version__}) knows, {newest}")
    if opset < MIN_OPSET:
        legacy = _legacy_resizes(proto) if opset < 11 else set()
        try:
            if opset < 11:
                # the rewrite's Reshape takes its shape as an input (opset >= 5)
                proto = onnx.version_converter.convert_version(proto, 11)
            proto = onnx.version_converter.convert_version(_legacy_hardmax(proto), MIN_OPSET)
        except Exception as e:
            raise FrontendError(f"{where}: opset {opset} is older than {MIN_OPSET} and could not "
                                f"be upgraded: {str(e).splitlines()[0] if str(e) else e}") from None
        if legacy:
            _mark_legacy_resizes(proto, legacy, where)
        opsets = _opsets(proto)
        opset = opsets.get("", MIN_OPSET)
    merge: dict[str, str] = {}
    for _ in range(MAX_MERGES + 1):
        try:
            g = _import_graph(proto, base, where, opset, opsets, input_values, name, merge)
        except _Unify as u:
            new = {k: v for k, v in u.pairs.items() if k not in merge}
            if not new or len(merge) >= MAX_MERGES:
                raise u.error from None
            merge.update(new)
            continue
        if merge:
            warnings.warn(f"{where}: graph input dims {', '.join(f'{t} and {s}' for t, s in sorted(merge.items()))} "
                          f"are taken to be equal (an op needs them equal, as onnxruntime checks when it runs); "
                          f"the compiled model refuses inputs where they differ", stacklevel=2)
        return g
    raise AssertionError("unreachable")  # pragma: no cover - every pass merges or returns


MAX_MERGES = 8     # pairs of graph-input dims one import may take to be equal


class _Unify(Exception):
    """Raised inside an import when a node's shapes fail only because two graph-input dims
    with different symbols must be equal (``pairs``: symbol name -> the name it becomes)."""

    def __init__(self, pairs: dict[str, str], error: ScalefoldError) -> None:
        super().__init__(str(error))
        self.pairs, self.error = pairs, error


def _unifiable(node: onnx.NodeProto, ctx: Ctx, input_syms: set[str]) -> dict[str, str]:
    """Pairs of distinct graph-input symbols the failing ``node`` meets at the same place:
    aligned from the right across its inputs (broadcasting, Concat's other axes), and a
    MatMul / Gemm's contraction dims."""
    types = []
    for nm in node.input:
        v = ctx.env.get(nm) if nm else None
        types.append(v.type.shape if v is not None and hasattr(v, "type") else None)
    pairs: dict[str, str] = {}

    def meet(a: Any, b: Any) -> None:
        if isinstance(a, sympy.Symbol) and isinstance(b, sympy.Symbol) and a != b \
                and a.name in input_syms and b.name in input_syms:
            keep, drop = sorted((a.name, b.name))
            pairs.setdefault(drop, keep)

    shapes = [t for t in types if t is not None]
    matmul = node.op_type in ("MatMul", "Gemm")
    for x in range(len(shapes)):
        for y in range(x + 1, len(shapes)):
            # a product's matrix dims do not broadcast: only its batch dims line up
            sx, sy = (shapes[x][:-2], shapes[y][:-2]) if matmul else (shapes[x], shapes[y])
            for a, b in zip(reversed(sx), reversed(sy)):
                meet(a, b)
    if matmul and len(shapes) >= 2 and len(shapes[0]) >= 1 and len(shapes[1]) >= 1:
        ta = dict(node_attrs(node)).get("transA", 0) if node.op_type == "Gemm" else 0
        tb = dict(node_attrs(node)).get("transB", 0) if node.op_type == "Gemm" else 0
        ka = shapes[0][-2] if ta and len(shapes[0]) >= 2 else shapes[0][-1]
        kb = shapes[1][-1] if tb else (shapes[1][-2] if len(shapes[1]) >= 2 else shapes[1][-1])
        meet(ka, kb)
    return pairs


def _import_graph(proto: onnx.ModelProto, base: Any, where: str, opset: int, opsets: dict[str, int],
                  input_values: Mapping[str, torch.Tensor] | None, name: str | None,
                  merge: Mapping[str, str]) -> Graph:
    """The body of :func:`from_onnx` once the opset is settled; graph-input dims named in
    ``merge`` take the symbol it maps them to."""
    gp = proto.graph
    nodes = _check_structure(gp, where)
    _check_supported(nodes, opsets, where)

    g = Graph(_sanitize(name or gp.name or "main", "g"))
    ctx = Ctx(g, opset, opsets)
    frozen = dict(input_values or {})
    inits = {t.name for t in gp.initializer}
    for t in gp.initializer:
        data, d = tensor_to_torch(t, base, f"initializer '{t.name}'")
        ctx.set(t.name, g.add_const(data, d, t.name))
    names = _DimNames([v for v in gp.input if v.name not in inits])
    ctx.taken = names.taken
    for i, v in enumerate(gp.input):
        if v.name in inits:
            continue  # an input with an initializer default is treated as a constant
        t = _input_type(v, _sanitize(v.name, f"in{i}"), names, merge)
        if v.name in frozen:
            x = frozen.pop(v.name)
            if not isinstance(x, torch.Tensor):
                x = numpy_to_torch(x, t.dtype)
            if x.dim() != t.rank:
                raise ShapeError(f"input '{v.name}': expected rank {t.rank} ({t}), got shape "
                                 f"{tuple(x.shape)}")
            ctx.set(v.name, g.add_const(x.to(t.dtype.container), t.dtype, v.name))
            continue
        ctx.set(v.name, g.add_input(t, v.name))
    if frozen:
        raise FrontendError(f"{where}: input_values names unknown input(s): {', '.join(frozen)}")
    input_syms = {d.name for v in g.inputs for d in v.type.shape if isinstance(d, sympy.Symbol)}

    for n in nodes:
        ctx.node = n
        fn = converter(n.domain if n.domain != "ai.onnx" else "", n.op_type)
        assert fn is not None
        start = len(g.nodes)
        try:
            outs = list(fn(ctx, n, node_attrs(n)))
        except UnsupportedOpError as e:
            # An unsupported form of a known op (MatMulNBits with bits=2) is reported like an
            # unknown op, so that callers can tell "not supported" from "malformed model".
            label = ctx.where()
            raise (e if label in str(e) else UnsupportedOpError(e.ops, where=label)) from None
        except ScalefoldError as e:
            msg = str(e)
            label = ctx.where()
            if label not in msg:
                msg = f"{label}: {msg}"
            err = type(e)(msg) if type(e) in (FrontendError, ShapeError) else FrontendError(msg)
            pairs = _unifiable(n, ctx, input_syms) if isinstance(e, ShapeError) else {}
            if pairs:
                raise _Unify(pairs, err) from None
            raise err from None
        if n.name:
            _name_main(g.nodes[start:], outs, n.name)
        if len(outs) < len(n.output):
            outs += [None] * (len(n.output) - len(outs))
        for name, v in zip(n.output, outs):
            if name and v is not None:
                ctx.set(name, v)
    ctx.node = None
    outs, names = [], []
    for o in gp.output:
        if not ctx.has(o.name):
            raise FrontendError(f"{where}: graph output '{o.name}' was not produced")
        outs.append(ctx.value(o.name))
        names.append(o.name)
    g.set_outputs(outs, names)
    _drop_dead_dequantize(g)
    fuse_linear_bias(g)
    share_equal_constants(g)
    from ..ir.verify import verify
    try:
        verify(g)
    except ScalefoldError as e:
        raise FrontendError(f"{where}: the imported graph does not verify: {e}") from None
    return g
