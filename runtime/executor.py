"""Runs a scheduled, compiled graph: binds symbols, allocates the planned arena, calls kernels.

Per binding of the symbols (cached, LRU) the executor evaluates each kernel's runtime sizes,
plans one arena by liveness (``codegen.schedule.plan_buffers``) and pre-builds one step per
kernel. A call then only fills pointer arrays and calls: no per-element Python. A step depends
on the binding only through the symbols in its kernel's shapes, attributes and runtime
integers, so a new binding reuses the steps of every kernel whose symbols kept their values:
a decode loop, whose KV cache grows by one each token, rebuilds only its attention and cache
steps (the buffer liveness is also planned once, only the sizes and offsets per binding).
Graph outputs never live in the arena (it is reused by the next call), so they are returned
as fresh tensors.

Template kernels (the C backend's int8 GEMM) run like fused ones; their pointer array may also
hold prepacked constant tensors (``args``), which live in the executor like graph constants.

Fused kernels are either callables ``fn(pointers, ints)`` (the C backend: the ctypes function,
or for a kernel that divides integers a wrapper that raises on a zero divisor, see
``runtime/cache.load_kernel``) or objects with ``bind(ints) -> launch(tensors)`` (the Triton
backend). Runs compute no gradients: a grad-requiring input under grad mode is an error.

With ``device="cuda"`` constants, the arena and inputs live on the GPU and outputs are returned on the inputs' device; with
``cuda_graphs=True`` the second call of a binding captures all its steps into one CUDA graph
that later calls replay (static input buffers; outputs copied out), removing the per-kernel
launch cost. A binding whose steps cannot be captured (a reference op that syncs with the
host) keeps running step by step.
"""
from __future__ import annotations

import os
import threading
import weakref
from collections import OrderedDict
from typing import Any, Callable, Collection, Iterable, Mapping, Sequence

import sympy
import torch

from ..codegen.schedule import (BufferPlan, Kernel, Liveness, Schedule, first_fit, liveness, plan_buffers,
                                value_bytes)
from ..ir.dim_eval import eval_dim
from ..ir.errors import ExecutionError, ScalefoldError, ShapeError
from ..ir.graph import Graph, Node, Value
from ..ir.ops import get_op
from ..ir.ops.common import bind_dims
from .binding import Bound, KStep, Step, Typed, contiguous_strides, kernel_symbols
from .alternatives import NHWC_C_OPS, alt_params, cl_alternative, compiled_alt, conv_kernel_step
from .csdpa import sdpa_step
from . import cseg
from .cstep import c_step, view_step
from .interp import bind_symbols, check_shape, declared_shapes
from .layout import KEEPS_LAYOUT, channels_last_values, is_channels_last, slice_index, torch_kernel
from .library import library_fn, qlinear_fallback
from .step_errors import failed as _failed, mixes_devices

ENV_CACHE = 8


def refuse_grad(inputs: Sequence[Any]) -> None:
    """The ExecutionError of a call that would need gradients (an input requires grad under
    grad mode): generated kernels write through raw pointers, so autograd would see only the
    library steps, a partial graph and silently wrong gradients. Every target refuses alike."""
    if torch.is_grad_enabled() and any(isinstance(x, torch.Tensor) and x.requires_grad for x in inputs):
        raise ExecutionError("compiled models compute no gradients: call them under torch.no_grad() "
                             "or pass inputs that do not require grad (torch.compile(backend="
                             "'scalefold') falls back to eager for training)")


class Executor:
    """Callable runner of ``schedule`` with ``kernels`` (name -> ctypes function, or an object
    with ``bind``) for its fused kernels and ``params`` (name -> sympy expressions of their
    runtime integers), on ``device``. ``args`` (name -> Values and tensors) overrides a
    kernel's pointer order (default: its inputs then outputs); tensors in it are prepacked
    constants. ``host_only`` (ids of constant Values) are left off the device: every kernel
    that reads them uses its own packed copy and receives None in their place."""

    def __init__(self, graph: Graph, schedule: Schedule, kernels: Mapping[str, Callable],
                 params: Mapping[str, Sequence[sympy.Expr]], device: str | torch.device = "cpu",
                 args: Mapping[str, Sequence[Value | torch.Tensor]] | None = None,
                 cuda_graphs: bool = False, host_only: Collection[int] = ()):
        self.graph = graph
        self.device = torch.device(device)
        if self.device.type == "cuda" and self.device.index is None:
            self.device = torch.device("cuda", torch.cuda.current_device())
        self.cuda_graphs = cuda_graphs and self.device.type == "cuda"
        self.schedule = schedule
        self.kernels = dict(kernels)
        self.params = {k: list(v) for k, v in params.items()}
        self._slot: dict[int | tuple, int] = {}   # tuples: prepacked constants
        for v in graph.inputs:
            self._slot.setdefault(id(v), len(self._slot))
        for k in schedule.kernels:
            for v in k.inputs:
                self._slot.setdefault(id(v), len(self._slot))
            for n in k.nodes:
                for o in n.outputs:
                    self._slot.setdefault(id(o), len(self._slot))
        for v in graph.outputs:
            self._slot.setdefault(id(v), len(self._slot))
        # Constants only ever read through a kernel's own packed copy get no device tensor, nor
        # do constants no kernel reads (those of dead nodes, which the schedule leaves out).
        self._consts = [(self._slot[id(v)], v.const.to(self.device)) for v in _consts(graph)
                        if id(v) not in host_only and id(v) in self._slot]
        # an output that is a view of a constant (reshape of a weight) is copied like an input
        self._const_storages = _storages([t for _, t in self._consts])
        self._args: dict[str, list[int]] = {}
        for name, items in (args or {}).items():
            order = []
            for it in items:
                if isinstance(it, torch.Tensor):
                    s = len(self._slot)
                    self._slot[("packed", name, s)] = s  # type: ignore[index]
                    self._consts.append((s, it.to(self.device).contiguous()))
                    order.append(s)
                else:
                    order.append(self._slot[id(it)])
            self._args[name] = order
        self._bound: OrderedDict[tuple, Bound] = OrderedDict()
        self._cl_values = channels_last_values(schedule)
        self._libfns: dict[str, tuple[Callable, bool]] = {}
        self._lock = threading.Lock()
        # runs of C steps called as one (runtime/cseg.py); off to time steps one by one
        self.segments = os.environ.get("SCALEFOLD_SEGMENTS", "1") != "0"
        self._last_run: Bound | None = None
        self._arenas: weakref.WeakValueDictionary[int, torch.Tensor] = weakref.WeakValueDictionary()
        # per kernel: the symbols its step depends on, and its steps by their values (LRU)
        ksyms = [kernel_symbols(k, alt_params(k, self.params)) for k in schedule.kernels]
        self._symsets = list(dict.fromkeys(ksyms))   # most kernels share a few: evaluate each once
        where = {t: j for j, t in enumerate(self._symsets)}
        self._ksym = [where[t] for t in ksyms]
        self._group = [[i for i, j in enumerate(self._ksym) if j == jj] for jj in range(len(self._symsets))]
        self._prev: Bound | None = None       # the binding used last: new ones start from it
        self._out_ids = {id(v) for v in graph.outputs}
        self._kstep: list[OrderedDict[tuple, KStep]] = [OrderedDict() for _ in schedule.kernels]
        self._liveness: Liveness | None = None
        self._last_arena: tuple[BufferPlan, torch.Tensor, Typed] | None = None
        # Ops like nonzero bind new symbols from their data: such graphs cannot be planned
        # before the call, so they run step by step with fresh buffers (see _run_dynamic).
        self._dynamic = any(get_op(n.op).binds for n in graph.nodes)

    # ---- binding ------------------------------------------------------------------------
    def forget_bindings(self) -> None:
        """Drop every binding, step and arena made so far: the next call builds them anew."""
        with self._lock:
            self._bound.clear()
            for c in self._kstep:
                c.clear()
            self._last_arena = None
            self._prev = None

    def _bind(self, env: dict[sympy.Symbol, int]) -> Bound:
        key = tuple(sorted((s.name, v) for s, v in env.items()))
        b = self._bound.get(key)
        if b is not None:
            self._bound.move_to_end(key)
            self._prev = b
            return b
        if self._liveness is None:
            self._liveness = liveness(self.schedule, exclude=self.graph.outputs)
        keys = [tuple(env.get(s) for s in t) for t in self._symsets]
        b = self._bind_from(self._prev, env, keys) or self._bind_all(env, keys)
        self._bound[key] = self._prev = b
        if len(self._bound) > ENV_CACHE:
            self._bound.popitem(last=False)
        return b

    def _bind_from(self, prev: Bound | None, env: dict[sympy.Symbol, int], keys: list[tuple]) -> Bound | None:
        """The binding ``env`` made from ``prev`` by redoing only the kernels whose symbols
        changed value (the rest keep their steps and arena views), or None where that cannot
        be done: no ``prev`` on the current arena, or a changed buffer outgrowing its room."""
        last = self._last_arena
        if prev is None or last is None or prev.plan is not last[0]:
            return None
        plan, arena, typed = last
        live = self._liveness
        assert live is not None
        made = {}
        for j, (now, was) in enumerate(zip(keys, prev.keys)):
            if now != was:
                for i in self._group[j]:
                    made[i] = m = self._cached_step(i, self.schedule.kernels[i], env, now)
                    for vid, _, _, _, _, nbytes in m.outs:
                        if vid in live.value and nbytes > plan.sizes[vid]:
                            return None
        vals, steps, fresh = list(prev.base_vals), list(prev.steps), dict(prev.fresh)
        for i, m in made.items():
            steps[i] = m.step
        self._place(made.values(), plan, typed, vals, fresh)
        return Bound(env, keys, plan, arena, vals, steps, fresh)

    def _bind_all(self, env: dict[sympy.Symbol, int], keys: list[tuple]) -> Bound:
        """The binding ``env`` made kernel by kernel (steps still come from the per-kernel
        caches), on the last arena if every buffer fits it, else on a new plan and arena."""
        live = self._liveness
        assert live is not None
        made = [self._cached_step(i, k, env, keys[j]) for i, (k, j) in enumerate(zip(self.schedule.kernels, self._ksym))]
        size = {vid: nbytes for m in made for vid, _, _, _, _, nbytes in m.outs if vid in live.value}
        plan, arena, typed = self._arena_for(size)
        vals: list = [None] * len(self._slot)
        for s, t in self._consts:
            vals[s] = t
        fresh: dict[int, tuple[tuple[int, ...], torch.dtype]] = {}
        self._place(made, plan, typed, vals, fresh)
        return Bound(env, keys, plan, arena, vals, [m.step for m in made], fresh)

    def _place(self, made: Iterable[KStep], plan: BufferPlan, typed: Typed, vals: list,
               fresh: dict[int, tuple[tuple[int, ...], torch.dtype]]) -> None:
        """Point the slots of ``made``'s outputs at their arena views (``vals``), or list the
        graph outputs among them, which each call allocates, in ``fresh``."""
        for m in made:
            for vid, s, shape, strides, dtype, _ in m.outs:
                if vid in plan.offsets:
                    vals[s] = typed[dtype].as_strided(shape, strides, plan.offsets[vid] // dtype.itemsize)
                elif vid in self._out_ids:
                    fresh[s] = (shape, dtype)

    def _in_arena(self, t: torch.Tensor) -> bool:
        """Whether ``t`` lives in one of this executor's live arenas or constants (which it
        holds anyway, so a step may keep a view of it)."""
        at = t.untyped_storage().data_ptr()
        return at in self._const_storages or self._arenas.get(at) is not None

    def _arena_for(self, size: Mapping[int, int]) -> tuple[BufferPlan, torch.Tensor, Typed]:
        """A buffer plan and arena that hold buffers of ``size`` bytes (by value id), and the
        arena's view per dtype. The last ones made are reused while every buffer fits in the
        room they planned for it (room to spare only shrinks buffers, never adds overlap):
        sizes that depend on the binding are planned with an eighth to spare, so a growing KV
        cache re-plans every few tokens, not at every one."""
        live = self._liveness
        assert live is not None
        last = self._last_arena
        if last is not None and all(n <= last[0].sizes[v] for v, n in size.items()):
            return last
        room = {v: (n + n // 8 if v in live.symbolic else n) for v, n in size.items()}
        plan = first_fit(live, room)
        arena = torch.empty(max(plan.arena_bytes, 1), dtype=torch.uint8, device=self.device)
        self._arenas[arena.untyped_storage().data_ptr()] = arena
        typed = Typed(arena)
        self._last_arena = (plan, arena, typed)
        return self._last_arena

    def _cached_step(self, i: int, k: Kernel, env: Mapping[sympy.Symbol, int], key: tuple) -> KStep:
        """Kernel ``i``'s step and output sizes under ``env``: those made for the same values
        of its symbols if there are any (steps hold slots, not addresses, so any binding can
        run them); ``key`` is the values of its symbols."""
        cache = self._kstep[i]
        m = cache.get(key)
        if m is None:
            outs = []
            if k.kind != "view":
                for o in k.outputs:
                    shape = o.type.concrete(env)
                    dtype = o.dtype.container
                    outs.append((id(o), self._slot[id(o)], shape, contiguous_strides(shape), dtype,
                                 value_bytes(shape, dtype)))
            m = cache[key] = KStep(self._step(k, env), outs)
            if len(cache) > ENV_CACHE:
                cache.popitem(last=False)
        else:
            cache.move_to_end(key)
        return m

    def _step(self, k: Kernel, env: Mapping[sympy.Symbol, int]) -> Step:
        slot = self._slot
        name = k.name if k.kind in ("fused", "template") else self._compiled_alt(k, env)
        if name is not None:
            fn = self.kernels[name]
            ins = [slot[id(v)] for v in k.inputs]
            outs = [slot[id(v)] for v in k.outputs]
            order = self._args.get(name) or ins + outs
            q = [int(eval_dim(e, env)) for e in self.params.get(name, [])]
            if k.kind == "library" and k.nodes[0].op == "sdpa" and not hasattr(fn, "bind"):
                # q, k and v as they come (strided head views), y in the rendered layout
                at = 5 + 4 * (len(k.nodes[0].inputs) > 3 and k.nodes[0].inputs[3] is not None)
                return sdpa_step(fn, order, q, at, k.nodes[0].outputs[0].type.concrete(env))
            if hasattr(fn, "bind"):
                launch = fn.bind(q)

                def run_launch(vals: list) -> None:
                    ts = []
                    for s in order:
                        t = vals[s]
                        if t is not None and not t.is_contiguous():   # None: host_only
                            t = vals[s] = t.contiguous()
                        ts.append(t)
                    launch(ts)
                return run_launch
            alt = torch_kernel(k, slot, env, self._cl_values) if self.device.type == "cpu" else None
            cl = cl_alternative(k, self.kernels, self.params, slot, env) if self.device.type == "cpu" else None
            return c_step(fn, order, ins, q, alt, cl)
        node = k.nodes[0]
        ins = [slot[id(v)] if v is not None else -1 for v in node.inputs]
        out_slots = [slot[id(o)] for o in node.outputs]
        if k.kind == "view":
            src, dst = ins[0], out_slots[0]
            if node.op == "transpose":
                perm = node.attrs["perm"]
                if perm is None:
                    perm = tuple(reversed(range(node.inputs[0].type.rank)))
                return view_step(src, dst, lambda t: t.permute(perm), self._in_arena)
            if node.op == "slice":
                index = slice_index(node, env)
                want_sl = declared_shapes(node, env)

                def sliced(t: torch.Tensor) -> torch.Tensor:
                    t = t[index]
                    # a dim simplified on a wrong premise (Min(1, S) as 1) must not reach a
                    # kernel that reads the declared extent
                    check_shape(node, 0, t, want_sl)
                    return t
                return view_step(src, dst, sliced, self._in_arena)
            shape = node.outputs[0].type.concrete(env)
            # a view unless the source is strided
            return view_step(src, dst, lambda t: t.reshape(shape), self._in_arena)
        if k.kind == "library" and k.name in self.kernels and node.op in NHWC_C_OPS:
            return conv_kernel_step(k, slot, self.kernels, self._args, self.params, env)
        if k.kind == "library":
            # one per kernel for every binding: a convolution keeps its prepacked weights
            if k.name not in self._libfns:
                self._libfns[k.name] = library_fn(k.nodes, self.device.type)
            fn_lib, writes_out = self._libfns[k.name]
            # epilogue nodes: their operands from outside the kernel follow the op's inputs
            inner = {id(o) for m in k.nodes for o in m.outputs}
            ins = ins + [slot[id(v)] for m in k.nodes[1:] for v in m.inputs if id(v) not in inner]
            dst = slot[id(k.nodes[-1].outputs[0])]

            last = k.nodes[-1]
            want_lib = declared_shapes(last, env)

            def run_lib(vals: list) -> None:
                xs = [vals[s] if s >= 0 else None for s in ins]
                if writes_out:
                    xs = [x.contiguous() if x is not None else None for x in xs]
                res = fn_lib(xs, vals[dst] if writes_out else None)
                check_shape(last, 0, res, want_lib)
                # a channels-last result (oneDNN convolutions, pools of them) stays so: the
                # next convolution reads it as it is, a small fused kernel runs as torch ops
                # on it (runtime/layout.py), other steps make it contiguous
                vals[dst] = res if res.is_contiguous() or is_channels_last(res) else res.contiguous()
            return run_lib
        want = declared_shapes(node, env)
        if node.op == "qlinear":
            fast = self._qlinear_fallback(node)
            if fast is not None:
                dst_q = out_slots[0]

                def run_q(vals: list) -> None:
                    res = fast([vals[s] if s >= 0 else None for s in ins], None)
                    check_shape(node, 0, res, want)
                    vals[dst_q] = res
                return run_q
        ref = get_op(node.op).reference
        attrs = bind_dims(node.attrs, env)
        dev = self.device
        on_cpu = [dev.type == "cpu"]
        if all(s < 0 for s in ins):
            # A generator (arange, full, dim_values): its output depends only on the bound
            # sizes, so it is made once per binding and copied at each call. Made on the host
            # and moved at each call, it synced, and the binding never became a CUDA graph
            # (ONNX attention masks: arange over a symbolic sequence length); on the CPU the
            # copy skips the reference's per-call Python (decode steps run dozens of them).
            made = ref([None] * len(ins), attrs)
            made = [t.to(dev) for t in (made if isinstance(made, (tuple, list)) else [made])]
            for i, t in enumerate(made):
                check_shape(node, i, t, want)

            def run_gen(vals: list) -> None:
                for s, t in zip(out_slots, made):
                    vals[s] = t.clone()
            return run_gen

        keeps = node.op in KEEPS_LAYOUT and dev.type == "cpu"

        def run_ref(vals: list) -> None:
            xs = [vals[s].contiguous() if s >= 0 and not (keeps and i == 0 and is_channels_last(vals[s]))
                  else vals[s] if s >= 0 else None for i, s in enumerate(ins)]
            if on_cpu[0]:
                res = ref([x.cpu() if x is not None else None for x in xs], attrs)
            else:
                try:
                    res = ref(xs, attrs)
                except RuntimeError as e:
                    # A reference that builds CPU tensors of its own mixes devices: run it on
                    # the CPU from now on (slow on a GPU: two copies per call and no CUDA
                    # graph, so references build their tensors on their inputs' device).
                    # Not under ``with torch.device``: 0-d host scalars, which mix freely,
                    # would become device tensors, each a synchronous copy that CUDA graphs
                    # cannot capture.
                    if not mixes_devices(e, dev):
                        raise
                    on_cpu[0] = True
                    res = ref([x.cpu() if x is not None else None for x in xs], attrs)
            res = list(res) if isinstance(res, (tuple, list)) else [res]
            bases = {x.untyped_storage().data_ptr() for x in xs if x is not None}
            for i, (s, t) in enumerate(zip(out_slots, res)):
                check_shape(node, i, t, want)
                if t.device != dev:   # generators (arange, full) make CPU tensors
                    t = t.to(dev)
                # A reference may return a view of an input (expand / reshape to the same
                # shape): the buffer plan frees that input after this kernel, and a later
                # kernel would overwrite the "output"; such results are copied
                if t.untyped_storage().data_ptr() in bases:
                    t = t.clone(memory_format=torch.contiguous_format)
                vals[s] = t if t.is_contiguous() or (keeps and is_channels_last(t)) else t.contiguous()
        return run_ref

    def _runs_compiled(self, k: Kernel, env: Mapping[sympy.Symbol, int]) -> bool:
        """Whether library kernel ``k`` runs a compiled alternative at this binding instead
        of the library call (``_compiled_alt``)."""
        return self._compiled_alt(k, env) is not None

    def _compiled_alt(self, k: Kernel, env: Mapping[sympy.Symbol, int]) -> str | None:
        """The compiled alternative library kernel ``k`` runs at this binding, or None
        (runtime/alternatives.py)."""
        return compiled_alt(k, self.kernels, self.params, env)

    def _qlinear_fallback(self, node: Node) -> Callable | None:
        """The dequantise-once GEMM of a reference ``qlinear`` (``library.qlinear_fallback``),
        built once per node and shared by every binding of the sizes."""
        cache = self.__dict__.setdefault("_qfast", {})
        if id(node) not in cache:
            cache[id(node)] = qlinear_fallback(node, self.device)
        return cache[id(node)]

    # ---- running -----------------------------------------------------------------------
    def __call__(self, *inputs: torch.Tensor) -> list[torch.Tensor]:
        return self.run(inputs)

    def run(self, inputs: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        refuse_grad(inputs)
        with torch.no_grad():
            return self._run(inputs)

    def _run(self, inputs: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        g = self.graph
        home = next((x.device for x in inputs if isinstance(x, torch.Tensor)), self.device)
        inputs = [_to_device(x, i, g, self.device) for i, x in enumerate(inputs)]
        env = bind_symbols(g, inputs)
        if self._dynamic:
            return [t.to(home) for t in self._run_dynamic(inputs, env)]
        with self._lock:
            b = self._bind(env)
            if self.cuda_graphs and not b.no_graph:
                b.calls += 1
                if b.cuda_graph is None and b.calls >= 2:   # the first call warmed up
                    self._capture(b, inputs)
                if b.cuda_graph is not None:
                    cg, static_in, outs = b.cuda_graph
                    for buf, x in zip(static_in, inputs):
                        buf.copy_(x)
                    cg.replay()
                    return [t.clone() if t.device == home else t.to(home) for t in outs]
            vals = list(b.base_vals)
            for v, x in zip(g.inputs, inputs):
                vals[self._slot[id(v)]] = x
            for s, (shape, dtype) in b.fresh.items():
                vals[s] = torch.empty(shape, dtype=dtype, device=self.device)
            # the previous run of this executor was of this binding: the steps it shares with
            # other bindings still hold this binding's pointers (runtime/cseg.py)
            fast = self._last_run is b
            self._last_run = b
            if self.segments and self.device.type == "cpu":
                if b.seg_plan is None:
                    b.seg_plan = cseg.plan(b.steps)
                items = b.seg_plan
            else:
                items = list(enumerate(b.steps))
            cut = False
            for i, step in items:
                try:
                    if step.__class__ is cseg.Segment:
                        step(vals, fast)
                        cut = cut or bool(step.bad)
                    else:
                        step(vals)
                except ScalefoldError:
                    raise
                except Exception as e:  # torch / kernel errors name the kernel and its nodes
                    if step.__class__ is cseg.Segment:
                        i += max(step.current, 0)
                    err = _failed(self.schedule.kernels[i], e)
                    if err is e:
                        raise
                    raise err from e
            if cut:
                b.seg_plan = cseg.split(b.seg_plan)
            res = []
            arena = b.arena.untyped_storage().data_ptr()
            given = _storages(inputs)
            taken: set[int] = set()
            for v in g.outputs:
                t = vals[self._slot[id(v)]]
                at = t.untyped_storage().data_ptr()
                if v.is_const or at == arena or at in given or at in self._const_storages or \
                        (at in taken and t.numel()):
                    # never hand out the arena, a constant, the caller's own input (an output
                    # may be an input passed through: x.clone() became identity), or memory
                    # another output holds (a slice or reshape of an output is a view)
                    t = t.clone(memory_format=torch.contiguous_format)
                elif not t.is_contiguous():
                    t = t.contiguous()
                taken.add(at)
                res.append(t.to(home))
            return res

    def _capture(self, b: Bound, inputs: Sequence[torch.Tensor]) -> None:
        """Record every step of binding ``b`` into one CUDA graph (see the module doc)."""
        g = self.graph
        try:
            static_in = [x.clone() for x in inputs]
            vals = list(b.base_vals)
            for v, x in zip(g.inputs, static_in):
                vals[self._slot[id(v)]] = x
            cg = torch.cuda.CUDAGraph()
            with torch.cuda.graph(cg):
                for s, (shape, dtype) in b.fresh.items():
                    vals[s] = torch.empty(shape, dtype=dtype, device=self.device)
                for step in b.steps:
                    step(vals)
                outs = [vals[self._slot[id(v)]] for v in g.outputs]
                outs = [t if t.is_contiguous() else t.contiguous() for t in outs]
            b.cuda_graph = (cg, static_in, outs)
        except Exception:  # noqa: BLE001  (any capture failure: run step by step)
            b.no_graph = True
            torch.cuda.synchronize(self.device)

    def _run_dynamic(self, inputs: Sequence[torch.Tensor], env: dict[sympy.Symbol, int]
                     ) -> list[torch.Tensor]:
        """Run a graph with data-dependent sizes: each step is prepared once the symbols it
        needs are bound, and symbols a node binds are read off its outputs."""
        g = self.graph
        vals: list = [None] * len(self._slot)
        for s, t in self._consts:
            vals[s] = t
        for v, x in zip(g.inputs, inputs):
            vals[self._slot[id(v)]] = x
        for k in self.schedule.kernels:
            if k.kind in ("fused", "template") or self._runs_compiled(k, env):
                for o in k.outputs:
                    vals[self._slot[id(o)]] = torch.empty(o.type.concrete(env), dtype=o.dtype.container,
                                                          device=self.device)
            try:
                self._step(k, env)(vals)
            except ScalefoldError:
                raise
            except Exception as e:
                err = _failed(k, e)
                if err is e:
                    raise
                raise err from e
            for n in k.nodes:
                if not get_op(n.op).binds:
                    continue
                for o in n.outputs:
                    t = vals[self._slot[id(o)]]
                    for d, size in zip(o.type.shape, t.shape):
                        if isinstance(d, sympy.Symbol) and d not in env:
                            env[d] = int(size)
        res = []
        given = _storages(inputs)
        taken: set[int] = set()
        for v in g.outputs:
            t = vals[self._slot[id(v)]]
            at = t.untyped_storage().data_ptr()
            shared = v.is_const or at in given or at in self._const_storages or (at in taken and t.numel())
            res.append(t.clone(memory_format=torch.contiguous_format) if shared else t.contiguous())
            taken.add(at)
        return res

    def memory_report(self, env: Mapping[sympy.Symbol, int]) -> BufferPlan:
        """The buffer plan for one binding: arena bytes (peak of planned intermediates) and
        what one buffer per value would take."""
        return plan_buffers(self.schedule, env, exclude=self.graph.outputs)


def _storages(xs: Sequence[Any]) -> set[int]:
    """The storage addresses of the tensors among ``xs``."""
    return {x.untyped_storage().data_ptr() for x in xs if isinstance(x, torch.Tensor) and x.numel()}


def _to_device(x: Any, i: int, g: Graph, device: torch.device) -> Any:
    """Input ``i`` on the executor's device (contiguous); a tensor that cannot move there (a
    meta tensor) is a ShapeError naming the input."""
    if not isinstance(x, torch.Tensor):
        return x
    try:
        return x.to(device).contiguous()
    except (torch.OutOfMemoryError, MemoryError):
        raise
    except Exception as e:  # noqa: BLE001
        name = g.inputs[i].name if i < len(g.inputs) else f"#{i}"
        raise ShapeError(f"input {name!r} (#{i}): cannot be moved to {device}: {type(e).__name__}: "
                         f"{str(e).splitlines()[0] if str(e) else ''}") from e


def _consts(graph: Graph) -> list[Value]:
    return graph.constants()
