"""PyTorch frontend: nn.Module / fx.GraphModule / ExportedProgram -> IR Graph.

Route: ``torch.export.export`` (non-strict) gives a functional ATen graph in which the
high-level composite ops are still intact; ``run_decompositions`` with torch's default table
*minus* the ops in :data:`KEEP` then lowers everything else to core ATen. So ``linear``,
``layer_norm``, ``rms_norm``, ``conv*``, ``scaled_dot_product_attention``, ``silu``,
``softmax``, ``matmul`` (and a few more) survive as single nodes and map one-to-one onto IR ops
the compression passes look for, while the long tail of ATen is reduced to a small core set.

Conversion walks the fx graph once: parameters, buffers and lifted constants become IR
constants named by their FQN, user inputs become graph inputs named after the forward's
arguments, SymInt nodes become sympy expressions over the user's ``Dim`` names, and each ATen
call goes through the table in ``aten_table`` / ``aten_shape`` / ``aten_nn``. Nodes whose inputs
are all constant are folded with the IR op's reference implementation.
"""
from __future__ import annotations

import inspect
import operator
import os
import threading
import warnings
from collections import Counter
from contextlib import nullcontext
from typing import Any, Mapping

import sympy
import torch
import torch.fx as fx
import torch.utils._pytree as pytree
from torch.export import ExportedProgram

from ..ir import dtypes as dt
from ..ir.errors import FrontendError, ScalefoldError, ShapeError, UnsupportedOpError
from ..ir.graph import Graph, Value
from ..ir.types import Dim, TensorType, canon_dim, dims_equal, sym
from . import aten_elementwise, aten_image, aten_nn, aten_reduce, aten_shape  # noqa: F401  (registration)
from . import aten_embedding_bag, aten_scan, aten_scatter, aten_scatter_elems  # noqa: F401  (registration)
from .aten_table import ATEN, Ctx, bind_args, op_name
from .aten_fuse import cleanup
from .dim_ranges import Range, finite_int, tighten
from .export_guards import fixed_dims, pinned
from .hf_moe import moe_blocks_swapped, recognise

__all__ = ["from_torch", "KEEP", "supported_ops"]

_EXPORT_LOCK = threading.RLock()

_A = torch.ops.aten
# Composite ops kept whole through run_decompositions (removed from torch's default table).
KEEP = (
    _A.linear.default, _A.matmul.default, _A.layer_norm.default, _A.rms_norm.default,
    _A.group_norm.default, _A.instance_norm.default,
    _A.conv1d.default, _A.conv2d.default, _A.conv3d.default,
    _A.conv1d.padding, _A.conv2d.padding, _A.conv3d.padding,
    _A.conv_transpose1d.default, _A.conv_transpose2d.input, _A.conv_transpose3d.input,
    _A.scaled_dot_product_attention.default, _A.silu.default, _A.softmax.int,
    _A.log_softmax.int, _A.hardswish.default, _A.hardsigmoid.default, _A.mish.default,
    _A.softplus.default, _A.logsumexp.default, _A.tril.default, _A.triu.default,
    _A.adaptive_avg_pool1d.default, _A.adaptive_avg_pool2d.default, _A.adaptive_avg_pool3d.default,
    # F.normalize / torch.norm: one reduce_l2 (aten_reduce.py), the same on every torch
    # version (older ones keep it whole, newer ones decompose it)
    _A.linalg_vector_norm.default,
    # F.pad: torch decomposes the circular mode into writes into an empty tensor; one concat
    # per axis instead (aten_scatter.py), and the IR pad op for the other modes
    _A.pad.default,
) + tuple(  # F.interpolate: one resize each (aten_image.py) rather than index arithmetic
    getattr(getattr(_A, op), v)
    for op in ("upsample_nearest1d", "upsample_nearest2d", "upsample_nearest3d", "_upsample_nearest_exact1d",
               "_upsample_nearest_exact2d", "_upsample_nearest_exact3d", "upsample_linear1d",
               "upsample_bilinear2d", "upsample_trilinear3d", "upsample_bicubic2d")
    for v in ("vec", "default") if hasattr(getattr(_A, op, None), v))

# Calls with no tensor result that carry no meaning for inference.
_SKIP = {"aten._assert_tensor_metadata.default", "aten._assert_scalar.default",
         "aten.sym_constrain_range_for_size.default", "aten.sym_constrain_range.default",
         "aten._assert_async.msg", "aten._assert_async.default"}


def supported_ops() -> list[str]:
    """Names of the ATen overloads the frontend converts."""
    return sorted(ATEN)


def from_torch(model: torch.nn.Module | ExportedProgram, example_inputs: Any,
               dynamic_shapes: Any = None, name: str | None = None, moe_blocks: bool = True) -> Graph:
    """Import a PyTorch model as an IR Graph.

    ``model`` is an nn.Module (including an fx.GraphModule) or an ExportedProgram.
    ``example_inputs`` is a tuple of positional arguments, a dict of keyword arguments, a
    ``(args, kwargs)`` pair or a single tensor. ``dynamic_shapes`` is passed to torch.export
    (``Dim("B")`` becomes the IR symbol ``B``). The module is exported in eval mode (each
    submodule's mode is restored afterwards). With ``moe_blocks`` (the default) each recognised mixture-of-experts
    block (Mixtral, Qwen2/3-MoE, OLMoE and look-alikes, see ``hf_moe``) becomes one IR ``moe``
    node instead of its traced dispatch loop; the model is left as it was. Raises
    UnsupportedOpError listing every ATen op without a conversion (with counts) and
    FrontendError when torch cannot export the model.
    """
    if not isinstance(model, (torch.nn.Module, ExportedProgram)):
        raise FrontendError(f"from_torch takes an nn.Module or an ExportedProgram, got {type(model).__name__}")
    args, kwargs = _split_inputs(example_inputs)
    gname = name or (type(model).__name__ if not isinstance(model, ExportedProgram) else "main")
    # torch.export and its decompositions keep process-wide state (dispatch mode stacks, python
    # op overrides): concurrent imports from several threads failed with errors that blamed
    # the model, so imports take turns
    with _EXPORT_LOCK:
        ep = model if isinstance(model, ExportedProgram) \
            else _export(model, args, kwargs, dynamic_shapes, moe_blocks)
        try:
            ep = ep.run_decompositions(_decomp_table())
            ep = _decompose_unsupported(ep)
        except Exception as e:  # torch raises many kinds
            raise FrontendError(f"decomposing {gname} failed: {_one_line(e)}") from e
        dim_names = _dim_names(model, ep, args, kwargs, dynamic_shapes)
        return _convert_or_pin(ep, gname, dim_names)


# ---- export -----------------------------------------------------------------------------------


def _split_inputs(example_inputs: Any) -> tuple[tuple, dict]:
    if isinstance(example_inputs, torch.Tensor):
        return (example_inputs,), {}
    if isinstance(example_inputs, Mapping):
        return (), dict(example_inputs)
    if isinstance(example_inputs, (tuple, list)) and len(example_inputs) == 2 \
            and isinstance(example_inputs[0], (tuple, list)) and isinstance(example_inputs[1], Mapping):
        return tuple(example_inputs[0]), dict(example_inputs[1])
    if isinstance(example_inputs, (tuple, list)):
        return tuple(example_inputs), {}
    return (example_inputs,), {}


def _one_line(e: BaseException) -> str:
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    return f"{type(e).__name__}: {lines[0] if lines else ''}"


def _export(model: torch.nn.Module, args: tuple, kwargs: dict, dynamic_shapes: Any,
            moe_blocks: bool) -> ExportedProgram:
    # each module's own flag: train(flag) on the root would set every submodule to the root's
    # (a frozen Dropout / BatchNorm inside a training model came back in training mode)
    modes = [(m, m.training) for m in model.modules()]
    try:
        model.eval()
    except NotImplementedError:  # ExportedProgram.module() refuses eval(); it is already traced
        pass
    # a transformers model returns its KV cache (a Cache object, not tensors) unless told not
    # to; the IR has no such value, so the export runs without it, as if use_cache=False
    config = getattr(model, "config", None)
    cache = getattr(config, "use_cache", None) if config is not None and "use_cache" not in kwargs else None
    if cache:
        config.use_cache = False
    try:
        # MoE blocks are swapped after eval() so that they are recognised in inference mode.
        with torch.no_grad(), (moe_blocks_swapped(model) if moe_blocks else nullcontext()):
            # an MoE block passed as the model itself: its stand-in is the model
            root = (recognise(model) or model) if moe_blocks else model
            return torch.export.export(root, args, kwargs, dynamic_shapes=dynamic_shapes,
                                       strict=False)
    except Exception as e:  # torch raises many kinds
        hint = ""
        if "DataDependent" in type(e).__name__ or "data-dependent" in str(e).lower() or \
                "DataDependent" in str(e):
            # torch names the guard, not the model code: say what kind of model this is
            hint = (" (the model branches on or sizes a tensor by its values, as detection "
                    "post-processing does with NMS or nonzero; scalefold compiles graphs whose "
                    "shapes follow from the input shapes, so compile the part before it, such "
                    "as the backbone)")
        raise FrontendError(f"torch.export failed for {type(model).__name__}{hint}: {_one_line(e)}") from e
    finally:
        for m, flag in modes:
            m.training = flag
        if cache:
            config.use_cache = cache


def _decomp_table() -> Any:
    table = torch.export.default_decompositions()
    for op in KEEP:
        if op in table:
            del table[op]
    return table


FALLBACK_ROUNDS = 3   # a decomposition may itself call ops that need one


def _decompose_unsupported(ep: ExportedProgram) -> ExportedProgram:
    """``ep`` with each ATen op that has no conversion here but has a decomposition in
    torch's wider table (``torch._decomp.decomposition_table``: grid_sampler_2d, bucketize,
    ...) decomposed, so that it arrives as ops the frontend converts; the core ATen set the
    default export table lowers to leaves these whole. A decomposition is kept only if
    everything it leads to converts (it may take ``FALLBACK_ROUNDS`` rounds: a decomposition
    may call ops that need one), so an op whose decomposition ends in prims the frontend does
    not know (var_mean, hypot) stays whole for ``_scan`` to name."""
    from torch._decomp import decomposition_table as wide

    def unsupported(e: ExportedProgram) -> dict[str, Any]:
        return {op_name(n.target): n.target for n in e.graph_module.graph.nodes
                if n.op == "call_function" and isinstance(n.target, torch._ops.OpOverload)
                and not _converts(n)}

    bad = unsupported(ep)
    for name, op in sorted(bad.items()):
        if op not in wide:
            continue
        trial, todo = ep, {name: op}
        try:
            for _ in range(FALLBACK_ROUNDS):
                table = _decomp_table()
                table.update({o: wide[o] for o in todo.values()})
                trial = trial.run_decompositions(table)
                # ops the decomposition brought in, with a decomposition of their own
                todo = {k: o for k, o in unsupported(trial).items() if k not in bad and o in wide}
                if not todo:
                    break
        except Exception:  # torch raises many kinds; the op then stays whole and is named
            continue
        left = unsupported(trial)
        if name not in left and set(left) <= set(bad):
            ep, bad = trial, left
    return ep


# ---- symbols ----------------------------------------------------------------------------------


def _dim_names(model: Any, ep: ExportedProgram, args: tuple, kwargs: dict,
               dynamic_shapes: Any) -> dict[int, dict[int, str]]:
    """{id(example tensor): {axis: Dim name}} from the user's dynamic_shapes spec."""
    out: dict[int, dict[int, str]] = {}

    def record(t: torch.Tensor, axis: int, d: Any) -> None:
        if d is None or isinstance(d, int):
            return
        root = getattr(d, "root", None)  # a derived dim (2*B): name its root
        nm = getattr(root if root is not None else d, "__name__", None)
        if isinstance(nm, str) and nm.isidentifier():
            out.setdefault(id(t), {})[axis] = ("=" if root is not None else "") + nm

    def walk(v: Any, spec: Any) -> None:
        if spec is None:
            return
        if isinstance(v, torch.Tensor):
            items = spec.items() if isinstance(spec, Mapping) else enumerate(spec) \
                if isinstance(spec, (list, tuple)) else ()
            for ax, d in items:
                record(v, int(ax), d)
        elif isinstance(v, Mapping) and isinstance(spec, Mapping):
            for k in spec:
                if k in v:
                    walk(v[k], spec[k])
        elif isinstance(v, (list, tuple)) and isinstance(spec, (list, tuple)):
            for x, s in zip(v, spec):
                walk(x, s)

    if dynamic_shapes is None or isinstance(model, ExportedProgram):
        return out
    try:
        bound = inspect.signature(model.forward).bind(*args, **kwargs)
        combined = dict(bound.arguments)
    except (TypeError, ValueError):
        combined = {f"arg{i}": a for i, a in enumerate(args)} | dict(kwargs)
    if isinstance(dynamic_shapes, Mapping):
        walk(combined, dynamic_shapes)
    else:
        walk(list(combined.values()), list(dynamic_shapes))
    return out


class _Symbols:
    """Maps torch's shape symbols (s0, s77, ...) to IR symbols named after the user's Dims."""

    def __init__(self, ranges: Mapping[sympy.Symbol, Any] | None = None,
                 pins: Mapping[sympy.Symbol, int] | None = None) -> None:
        # pinned torch symbols stand for their example value (export_guards.pinned)
        self.map: dict[sympy.Symbol, sympy.Expr] = {s: sympy.Integer(v) for s, v in (pins or {}).items()}
        self._torch_ranges = dict(ranges or {})     # torch symbol -> ValueRanges (the Dims')
        self._ranges: tuple[int, dict[sympy.Symbol, Range]] = (-1, {})
        self.relied: set[sympy.Symbol] = set()     # IR symbols whose ranges simplified a size

    def ranges(self) -> dict[sympy.Symbol, Range]:
        """The declared inclusive range of each IR symbol that stands for a torch symbol."""
        if self._ranges[0] != len(self.map):
            out: dict[sympy.Symbol, Range] = {}
            for ts, ir in self.map.items():
                vr = self._torch_ranges.get(ts)
                if vr is None or not isinstance(ir, sympy.Symbol):
                    continue
                out[ir] = (finite_int(vr.lower), finite_int(vr.upper))
            self._ranges = (len(self.map), out)
        return self._ranges[1]

    def _tight(self, e: sympy.Expr) -> sympy.Expr:
        t = tighten(e, self.ranges())
        if t != e:   # the graph now holds only inside these symbols' ranges
            self.relied |= {s for s in e.free_symbols if s in self.ranges()}
        return t

    def bind(self, expr: sympy.Expr, name: str | None, fallback: str) -> None:
        free = list(expr.free_symbols)
        if isinstance(expr, sympy.Symbol):
            if expr not in self.map:
                self.map[expr] = sym(name.lstrip("=") if name else fallback)
        elif len(free) == 1 and free[0] not in self.map and name and name.startswith("="):
            self.map[free[0]] = sym(name[1:])  # derived dim: its root gets the Dim's name

    def expr(self, e: Any) -> Dim:
        if isinstance(e, (int, bool)) or (isinstance(e, sympy.Basic) and e.is_Integer):
            return int(e)
        if isinstance(e, sympy.Basic) and e.is_Number:
            return float(e)  # type: ignore[return-value]
        from torch.utils._sympy import functions as F
        unknown = [s for s in e.free_symbols if s not in self.map]
        if unknown:
            raise FrontendError(f"data-dependent or unnamed shape symbol(s) "
                                f"{', '.join(sorted(map(str, unknown)))} in {e}")
        r = e.xreplace(self.map)
        repl = {F.FloorDiv: lambda x, y: sympy.floor(x / y), F.CeilDiv: lambda x, y: sympy.ceiling(x / y),
                F.CleanDiv: lambda x, y: x / y, F.IntTrueDiv: lambda x, y: x / y,
                F.PythonMod: sympy.Mod, F.Mod: sympy.Mod, F.Max: sympy.Max, F.Min: sympy.Min}
        for cls, fn in repl.items():
            r = r.replace(lambda x, c=cls: isinstance(x, c), lambda x, f=fn: f(*x.args))
        r = self._tight(r)
        # a provably negative integer (a slice start from the end, -(P + 1)) is an index,
        # not a size: kept as it is, like a negative int; ops that take one normalise it
        return canon_dim(r) if r.is_integer is not False and not r.is_negative else r


# ---- conversion -------------------------------------------------------------------------------


def _is_symbolic(val: Any) -> bool:
    return isinstance(val, (torch.SymInt, torch.SymFloat, torch.SymBool))


def _converts(n: fx.Node) -> bool:
    """Whether call_function node ``n`` has a conversion (or needs none: skipped asserts,
    getitem, size arithmetic)."""
    key = op_name(n.target)
    return key in ATEN or key in _SKIP or n.target is operator.getitem \
        or _is_symbolic(n.meta.get("val")) or isinstance(n.meta.get("val"), (int, float))


def _scan(gm: fx.GraphModule, gname: str) -> None:
    """Raise UnsupportedOpError naming every op without a conversion, with counts."""
    bad: Counter[str] = Counter()
    for n in gm.graph.nodes:
        if n.op == "call_function":
            if not _converts(n):
                bad[op_name(n.target)] += 1
        elif n.op in ("call_module", "call_method", "get_attr"):
            bad[f"{n.op}:{n.target}"] += 1
    if bad:
        raise UnsupportedOpError(dict(bad), where=f"model {gname}")


def _convert_or_pin(ep: ExportedProgram, gname: str, dim_names: dict[int, dict[int, str]]) -> Graph:
    """``_convert``; where that fails on shapes and torch.export kept equality guards on the
    dynamic dims (``export_guards.pinned``), convert again with the sizes those guards constrain fixed at
    the example's (then with every size they mention), with a warning naming the inputs'
    fixed dims. torch's own exported program holds only where its guards do: DINOv2's patch
    grid ((H // 8) * (W // 8) == 16) or Swin's window arithmetic tie the "dynamic" sizes to
    the example, and the graph's sizes otherwise never unify."""
    try:
        return _convert(ep, gname, dim_names)
    except (ShapeError, FrontendError) as e:
        first = e
    tight, loose = pinned(ep)
    for pins in dict.fromkeys((tuple(sorted(tight.items(), key=str)), tuple(sorted(loose.items(), key=str)))):
        if not pins:
            continue
        try:
            g = _convert(ep, gname, dim_names, dict(pins))
        except ScalefoldError:
            continue
        fixed = fixed_dims(ep, g)
        warnings.warn(f"{gname}: torch.export kept guards that tie dynamic sizes to the example, so "
                      f"{fixed} are compiled fixed at the example's sizes (torch's exported program only "
                      f"holds there; other sizes are refused)", stacklevel=3)
        return g
    raise first


def _convert(ep: ExportedProgram, gname: str, dim_names: dict[int, dict[int, str]],
             pins: Mapping[sympy.Symbol, int] | None = None) -> Graph:
    gm = ep.graph_module
    _scan(gm, gname)
    sig = ep.graph_signature
    syms = _Symbols(ep.range_constraints, pins)
    g = Graph(gname)
    ctx = Ctx(g, syms.expr)

    from torch.export.graph_signature import InputKind, OutputKind
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    user_leaves = pytree.tree_leaves(ep.example_inputs) if ep.example_inputs else []
    user_i = 0
    # Bind symbols first (every user input), so that input types can use any of them.
    specs = list(zip(sig.input_specs, placeholders))
    for spec, ph in specs:
        if spec.kind == InputKind.USER_INPUT:
            val = ph.meta.get("val")
            leaf = user_leaves[user_i] if user_i < len(user_leaves) else None
            user_i += 1
            if isinstance(val, torch.Tensor):
                names = dim_names.get(id(leaf), {})
                for ax, d in enumerate(val.shape):
                    if isinstance(d, torch.SymInt):
                        syms.bind(d.node.expr, names.get(ax), f"{ph.name}_dim{ax}")
    for spec, ph in specs:
        val = ph.meta.get("val")
        if spec.kind == InputKind.USER_INPUT:
            if isinstance(val, torch.Tensor):
                try:
                    dtype = dt.from_torch(val.dtype)
                except ScalefoldError as e:
                    raise FrontendError(f"input {ph.name!r}: {e}") from None
                ctx.env[ph] = g.add_input(TensorType(dtype, ctx.shape_of(val)), ph.name)
            else:
                ctx.env[ph] = val  # a specialised python value (flag, int)
        elif spec.kind in (InputKind.PARAMETER, InputKind.BUFFER, InputKind.CONSTANT_TENSOR):
            t = ep.state_dict.get(spec.target) if spec.kind != InputKind.CONSTANT_TENSOR else None
            if t is None:
                t = ep.constants.get(spec.target)
            if t is None:
                raise FrontendError(f"no tensor for {spec.kind.name.lower()} {spec.target!r}")
            ctx.env[ph] = ctx.const(t.detach(), name=spec.target)
        else:
            raise FrontendError(f"input {ph.name!r} of kind {spec.kind.name} is not supported")

    out_node = None
    for n in gm.graph.nodes:
        if n.op == "call_function":
            ctx.node_name = n.name
            ctx.env[n] = _convert_node(ctx, n, syms)
        elif n.op == "output":
            out_node = n
    assert out_node is not None
    flat = list(out_node.args[0])
    outs: list[Value] = []
    for spec, a in zip(sig.output_specs, flat):
        if spec.kind != OutputKind.USER_OUTPUT:
            if spec.kind == OutputKind.BUFFER_MUTATION:
                raise FrontendError(f"the model mutates buffer {spec.target!r}; not supported")
            if spec.kind.name in ("USER_INPUT_MUTATION", "PARAMETER_MUTATION"):
                # dropping the write would give silently wrong results (a torch.compile graph
                # sees a module's buffers as inputs: a counter's add_ arrives here)
                what = "input" if spec.kind.name == "USER_INPUT_MUTATION" else "parameter"
                raise FrontendError(f"the model writes into its {what} {spec.target!r} in place; compiled "
                                    f"models do not write into their inputs (return the new value instead)")
            continue
        v = ctx.env.get(a) if isinstance(a, fx.Node) else a
        if not isinstance(v, Value):
            if not isinstance(v, (bool, int, float)):
                raise FrontendError(f"output #{len(outs)} of the model is {v!r}, not a tensor or a "
                                    f"number; return only tensors (e.g. drop attention weights that are None)")
            v = ctx.scalar(v, dt.from_torch(torch.tensor(v).dtype))
        outs.append(v)
    g.set_outputs(outs, _output_names(ep, len(outs)))
    ranges = syms.ranges()
    g.dim_ranges = {s.name: ranges[s] for s in sorted(syms.relied, key=lambda s: s.name)}
    g.dim_guards = list(dict.fromkeys(ctx.guards))
    cleanup(g)
    return g


def _convert_node(ctx: Ctx, n: fx.Node, syms: _Symbols) -> Any:
    val = n.meta.get("val")
    if n.target is operator.getitem:
        src = ctx.env[n.args[0]]
        return src[n.args[1]]
    if _is_symbolic(val):
        try:
            return syms.expr(val.node.expr)
        except FrontendError as e:
            # a size read from tensor data (.item(), .tolist()): say which op and source line
            raise FrontendError(f"{n.name} ({op_name(n.target) if callable(n.target) else n.target}"
                                f"{_source_line(n)}): {e}; the model reads a tensor's values to "
                                f"form a size, which a compiled graph cannot follow") from None
    if isinstance(val, (int, float)) and not isinstance(n.target, torch._ops.OpOverload):
        return val
    key = op_name(n.target)
    if key in _SKIP:
        return None
    a = bind_args(n.target, n.args, n.kwargs)
    try:
        res = ATEN[key](ctx, n, a)
    except FrontendError as e:
        if n.name in str(e):
            raise
        raise FrontendError(f"{n.name} ({key}): {e}") from None
    except ScalefoldError:
        raise  # shape errors already name the op and the fx node
    except Exception as e:  # a case the handler does not cover: name the node, not a traceback
        raise FrontendError(f"{n.name} ({key}): cannot convert: {_one_line(e)}") from e
    _check(ctx, n, res)
    return res


def _source_line(n: fx.Node) -> str:
    """`` at FILE:LINE`` of the model code that made ``n`` (torch.export's stack trace), or ""."""
    import re
    found = re.findall(r'File "([^"]+)", line (\d+)', n.meta.get("stack_trace") or "")
    return f" at {os.path.basename(found[-1][0])}:{found[-1][1]}" if found else ""


def _check(ctx: Ctx, n: fx.Node, res: Any) -> None:
    """The IR type of each result must be what torch inferred (catches table bugs early)."""
    val = n.meta.get("val")
    pairs = zip(res, val) if isinstance(res, tuple) else [(res, val)]
    for v, m in pairs:
        if not isinstance(v, Value) or not isinstance(m, torch.Tensor):
            continue
        want = TensorType(dt.from_torch(m.dtype), ctx.shape_of(m))
        if v.dtype is not want.dtype or v.type.rank != want.rank or \
                not all(dims_equal(x, y) for x, y in zip(v.shape, want.shape)):
            raise FrontendError(f"{n.name} ({op_name(n.target)}): converted to {v.type}, "
                                f"but torch infers {want}")


def _output_names(ep: ExportedProgram, count: int) -> list[str]:
    try:
        spec = ep.call_spec.out_spec
        tree = pytree.tree_unflatten(list(range(spec.num_leaves)), spec)
        paths = [p for p, _ in pytree.tree_flatten_with_path(tree)[0]]
    except Exception:  # an exotic output container: fall back to positions
        paths = []
    if len(paths) != count:
        return [f"out{i}" for i in range(count)]
    names = []
    for p in paths:
        parts = []
        for k in p:
            if isinstance(k, pytree.MappingKey):
                parts.append(str(k.key))
            elif isinstance(k, pytree.GetAttrKey):
                parts.append(k.name)
            elif isinstance(k, pytree.SequenceKey):
                parts.append(str(k.idx))
            else:
                parts.append(str(k))
        nm = ".".join(parts) or "output"
        names.append(nm if not nm[0].isdigit() else "out" + nm)
    return names

