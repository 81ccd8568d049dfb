"""RNN, GRU and LSTM converters, unrolled over a static sequence length onto linear,
elementwise and shape IR ops (no recurrent IR op is needed).

The input projection of all time steps is one ``linear`` over [T, B, I]; each step adds the
recurrent projection and applies the gate equations of the ONNX spec. ``sequence_lens`` is
honoured for forward directions by holding the state and zeroing Y past each batch entry's
length; a reverse direction needs every length equal to T.
"""
from __future__ import annotations

from typing import Any, Callable

import onnx
import torch

from ...ir import dtypes as dt
from ...ir.errors import FrontendError
from ...ir.graph import Value
from ..onnx_ctx import Ctx, onnx_op
from .quant import cast, scalar

_GATES = {"RNN": 1, "GRU": 3, "LSTM": 4}
_DEFAULT_ACTS = {"RNN": ["Tanh"], "GRU": ["Sigmoid", "Tanh"], "LSTM": ["Sigmoid", "Tanh", "Tanh"]}


def _activation(ctx: Ctx, name: str, alpha: float | None, beta: float | None
                ) -> Callable[[Value], Value]:
    """The ONNX RNN activation ``name`` as a function building IR nodes."""
    def s(v: Value, c: float) -> Value:
        return scalar(ctx, c, v.type.dtype)
    n = name.lower()
    if n == "sigmoid":
        return lambda v: ctx.add("sigmoid", [v])
    if n == "tanh":
        return lambda v: ctx.add("tanh", [v])
    if n == "relu":
        return lambda v: ctx.add("relu", [v])
    if n == "hardsigmoid":
        a, b = 0.2 if alpha is None else alpha, 0.5 if beta is None else beta
        return lambda v: ctx.add("hardsigmoid", [v], {"alpha": a, "beta": b})
    if n == "leakyrelu":
        return lambda v: ctx.add("leaky_relu", [v], {"alpha": 0.01 if alpha is None else alpha})
    if n == "elu":
        return lambda v: ctx.add("elu", [v], {"alpha": 1.0 if alpha is None else alpha})
    if n == "softplus":
        return lambda v: ctx.add("softplus", [v])
    if n == "softsign":
        return lambda v: ctx.add("div", [v, ctx.add("add", [ctx.add("abs", [v]), s(v, 1.0)])])
    if n == "affine":
        a, b = 1.0 if alpha is None else alpha, 0.0 if beta is None else beta
        return lambda v: ctx.add("add", [ctx.add("mul", [v, s(v, a)]), s(v, b)])
    if n == "scaledtanh":
        a, b = 1.0 if alpha is None else alpha, 1.0 if beta is None else beta
        return lambda v: ctx.add("mul", [ctx.add("tanh", [ctx.add("mul", [v, s(v, b)])]), s(v, a)])
    if n == "thresholdedrelu":
        a = 1.0 if alpha is None else alpha
        return lambda v: ctx.add("where", [ctx.add("gt", [v, s(v, a)]), v, s(v, 0.0)])
    raise FrontendError(f"{ctx.where()}: unsupported activation {name}")


def _pick(ctx: Ctx, v: Value | None, d: int) -> Value | None:
    """v[d] (drops the leading direction axis)."""
    if v is None:
        return None
    return ctx.add("gather", [v, ctx.graph.add_const(torch.tensor(d), dt.i64)], {"axis": 0})


@onnx_op("RNN", "GRU", "LSTM")
def _rnn(ctx: Ctx, node: onnx.NodeProto, a: dict[str, Any]):
    kind = node.op_type
    g = _GATES[kind]
    x, w, r, b = ctx.input(0), ctx.input(1), ctx.input(2), ctx.input(3)
    h0 = ctx.input(5)
    c0 = ctx.input(6) if kind == "LSTM" else None
    peep = ctx.input(7) if kind == "LSTM" else None
    layout = int(a.get("layout", 0))
    if layout:
        x = ctx.add("transpose", [x], {"perm": (1, 0, 2)})
        h0 = ctx.add("transpose", [h0], {"perm": (1, 0, 2)}) if h0 is not None else None
        c0 = ctx.add("transpose", [c0], {"perm": (1, 0, 2)}) if c0 is not None else None
    steps, batch = x.type.shape[0], x.type.shape[1]
    if not isinstance(steps, int):
        raise FrontendError(f"{ctx.where()}: the sequence length must be static to unroll, "
                            f"got {steps}")
    hidden = int(a.get("hidden_size", 0)) or w.type.shape[1] // g
    direction = a.get("direction", "forward")
    dirs = {"forward": [False], "reverse": [True], "bidirectional": [False, True]}[direction]
    if a.get("clip") is not None:
        clip = float(a["clip"])
    else:
        clip = None
    if kind == "LSTM" and int(a.get("input_forget", 0)):
        raise FrontendError(f"{ctx.where()}: input_forget=1 is not supported")
    names = list(a.get("activations", [])) or _DEFAULT_ACTS[kind] * len(dirs)
    per = len(_DEFAULT_ACTS[kind])
    alphas, betas = list(a.get("activation_alpha", [])), list(a.get("activation_beta", []))
    acts = [_activation(ctx, n, alphas[i] if i < len(alphas) else None,
                        betas[i] if i < len(betas) else None) for i, n in enumerate(names)]
    dtype = x.type.dtype
    mask_lens: Value | None = None
    if len(node.input) > 4 and node.input[4]:
        lc = ctx.const(4)
        if lc is None or bool((lc != steps).any()):
            if any(dirs):
                raise FrontendError(f"{ctx.where()}: input 4 (sequence_lens) must be a constant "
                                    f"equal to the sequence length for a reverse direction")
            lens = ctx.input(4)
            mask_lens = ctx.add("unsqueeze", [cast(ctx, lens, dt.i64)], {"axes": (1,)})  # [B, 1]
    zero_state = ctx.add("full", [], {"shape": (batch, hidden), "value": 0.0, "dtype": dtype.name})
    ys, hs, cs = [], [], []
    for di, rev in enumerate(dirs):
        f_act, g_act, h_act = (acts[di * per:(di + 1) * per] + [None, None])[:3]
        wd, rd = _pick(ctx, w, di), _pick(ctx, r, di)
        bias = rbh = None
        if b is not None:
            bd = _pick(ctx, b, di)
            wb, rb = ctx.add("split", [bd], {"axis": 0, "sizes": (g * hidden, g * hidden)})
            if kind == "GRU" and int(a.get("linear_before_reset", 0)):
                # Rb_h is applied inside the reset gate's product: keep it apart
                rb_zr, rbh = ctx.add("split", [rb], {"axis": 0, "sizes": (2 * hidden, hidden)})
                rb = ctx.add("concat", [rb_zr, ctx.add("full", [], {"shape": (hidden,), "value": 0.0,
                                                                    "dtype": dtype.name})], {"axis": 0})
            bias = ctx.add("add", [wb, rb])
        xw = ctx.add("linear", [x, wd, bias])  # [T, B, g*H]
        h = _pick(ctx, h0, di) if h0 is not None else zero_state
        c = _pick(ctx, c0, di) if c0 is not None else zero_state
        pi = po = pf = None
        if peep is not None:
            pi, po, pf = ctx.add("split", [_pick(ctx, peep, di)], {"axis": 0, "sizes": (hidden,) * 3})
        out: list[Value | None] = [None] * steps
        order = range(steps - 1, -1, -1) if rev else range(steps)

        def clipped(v: Value) -> Value:
            return v if clip is None else ctx.add("clip", [v], {"min": -clip, "max": clip})

        for t in order:
            xt = _pick(ctx, xw, t)  # [B, g*H]
            if kind == "RNN":
                h_new = f_act(clipped(ctx.add("add", [xt, ctx.add("linear", [h, rd, None])])))
                c_new = None
            elif kind == "GRU":
                xz, xr, xh = ctx.add("split", [xt], {"axis": 1, "sizes": (hidden,) * 3})
                rz, rr, rh = ctx.add("split", [rd], {"axis": 0, "sizes": (hidden,) * 3})
                z = f_act(clipped(ctx.add("add", [xz, ctx.add("linear", [h, rz, None])])))
                rg = f_act(clipped(ctx.add("add", [xr, ctx.add("linear", [h, rr, None])])))
                if int(a.get("linear_before_reset", 0)):
                    hr = ctx.add("linear", [h, rh, rbh])
                    hh = g_act(clipped(ctx.add("add", [xh, ctx.add("mul", [rg, hr])])))
                else:
                    hr = ctx.add("linear", [ctx.add("mul", [rg, h]), rh, None])
                    hh = g_act(clipped(ctx.add("add", [xh, hr])))
                one = scalar(ctx, 1.0, dtype)
                h_new = ctx.add("add", [ctx.add("mul", [ctx.add("sub", [one, z]), hh]),
                                        ctx.add("mul", [z, h])])
                c_new = None
            else:
                gates = ctx.add("add", [xt, ctx.add("linear", [h, rd, None])])
                gi, go, gf, gc = ctx.add("split", [gates], {"axis": 1, "sizes": (hidden,) * 4})
                if pi is not None:
                    gi = ctx.add("add", [gi, ctx.add("mul", [pi, c])])
                    gf = ctx.add("add", [gf, ctx.add("mul", [pf, c])])
                i_g, f_g = f_act(clipped(gi)), f_act(clipped(gf))
                c_new = ctx.add("add", [ctx.add("mul", [f_g, c]),
                                        ctx.add("mul", [i_g, g_act(clipped(gc))])])
                if po is not None:
                    go = ctx.add("add", [go, ctx.add("mul", [po, c_new])])
                h_new = ctx.add("mul", [f_act(clipped(go)), h_act(c_new)])
            if mask_lens is not None:
                live = ctx.add("lt", [ctx.graph.add_const(torch.tensor(t), dt.i64), mask_lens])
                out[t] = ctx.add("where", [live, h_new, zero_state])
                h = ctx.add("where", [live, h_new, h])
                c = ctx.add("where", [live, c_new, c]) if c_new is not None else c
            else:
                out[t], h = h_new, h_new
                c = c_new if c_new is not None else c
        y = ctx.add("concat", [ctx.add("unsqueeze", [o], {"axes": (0,)}) for o in out], {"axis": 0})
        ys.append(ctx.add("unsqueeze", [y], {"axes": (1,)}))  # [T, 1, B, H]
        hs.append(ctx.add("unsqueeze", [h], {"axes": (0,)}))
        cs.append(ctx.add("unsqueeze", [c], {"axes": (0,)}))
    y = ys[0] if len(ys) == 1 else ctx.add("concat", ys, {"axis": 1})
    yh = hs[0] if len(hs) == 1 else ctx.add("concat", hs, {"axis": 0})
    yc = cs[0] if len(cs) == 1 else ctx.add("concat", cs, {"axis": 0})
    if layout:
        y = ctx.add("transpose", [y], {"perm": (2, 0, 1, 3)})
        yh = ctx.add("transpose", [yh], {"perm": (1, 0, 2)})
        yc = ctx.add("transpose", [yc], {"perm": (1, 0, 2)})
    outs = [y, yh] + ([yc] if kind == "LSTM" else [])
    return outs[:len(node.output)]
