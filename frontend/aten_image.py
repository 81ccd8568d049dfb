"""ATen -> IR: interpolation (``F.interpolate``'s upsample ops) and adaptive average pooling of
any sizes.

``upsample_*`` become one ``resize`` (ONNX Resize semantics) whose coordinate rule is torch's:

- nearest: source index floor(y * s') with s' = 1 / scale_factor when torch was given scale
  factors, else in / out: ``asymmetric`` coordinates with ``floor`` rounding;
- nearest-exact: floor((y + 0.5) * s'): ``half_pixel`` with ties rounded up;
- (bi/tri)linear and bicubic: ``align_corners`` when asked, else ``half_pixel`` (torch clamps
  a negative source coordinate to 0 for linear, which reads the same edge value as ONNX's
  clamped taps); bicubic with a = -0.75 and edge taps, as torch.

The scales go into the op only when torch used scale factors (and not align_corners, which
maps by the output size), so the coordinate transform divides by the same factor torch
multiplies by; for nearest and linear modes an axis whose size does not change gets scale 1,
a copy, as torch's kernels do.
Antialiased bilinear / bicubic resizing (static sizes) is one ``linear`` per axis by the
filter matrix torch's own kernel gives on the basis vectors.

``adaptive_avg_pool`` whose output sizes do not divide the input: torch averages window i of an
axis over [floor(i * in / out), ceil((i + 1) * in / out)), a rectangle whose mean is the
product of per-axis means; so each spatial axis becomes one ``linear`` by a constant averaging
matrix [out, in] (moved last, multiplied, moved back).
"""
from __future__ import annotations

import torch
import torch.fx as fx

from ..ir import dtypes as dt
from ..ir.errors import FrontendError
from ..ir.graph import Value
from ..ir.types import dims_equal
from .aten_table import Ctx, aten

_UPSAMPLE = [f"{op}.{v}" for op in ("upsample_nearest1d", "upsample_nearest2d", "upsample_nearest3d",
                                     "_upsample_nearest_exact1d", "_upsample_nearest_exact2d",
                                     "_upsample_nearest_exact3d", "upsample_linear1d",
                                     "upsample_bilinear2d", "upsample_trilinear3d", "upsample_bicubic2d")
             for v in ("vec", "default")]


def _scales(a: dict, nsp: int) -> list[float] | None:
    """torch's scale factors per spatial axis, or None where it used the output size."""
    if a.get("scale_factors") is not None:
        sf = [float(s) for s in a["scale_factors"]]
        return sf * nsp if len(sf) == 1 else sf
    keys = {1: ("scales",), 2: ("scales_h", "scales_w"), 3: ("scales_d", "scales_h", "scales_w")}[nsp]
    vals = [a.get(k) for k in keys]
    if all(v is None for v in vals):
        return None
    if any(v is None for v in vals):
        raise FrontendError("upsample with scale factors on some axes only is not supported")
    return [float(v) for v in vals]


@aten(*_UPSAMPLE)
def _upsample(ctx: Ctx, n: fx.Node, a: dict) -> Value:
    name = str(n.target)
    x = ctx.t(a["input"] if "input" in a else a["self"])
    nsp = x.type.rank - 2
    out = ctx.out_type(n).shape
    scales = _scales(a, nsp)
    if scales is not None and "bicubic" not in name and "nearest_exact" not in name:
        # torch's nearest and (bi/tri)linear kernels copy an axis whose size does not change,
        # whatever its factor (bicubic and nearest-exact interpolate by it); align_corners
        # maps by the output size alone
        scales = [1.0 if dims_equal(o, i) else f for o, i, f in zip(out[2:], x.shape[2:], scales)]
    if a.get("align_corners"):
        scales = None
    if "nearest_exact" in name:
        attrs = dict(mode="nearest", coordinate_transformation_mode="half_pixel",
                     nearest_mode="round_prefer_ceil")
    elif "nearest" in name:
        attrs = dict(mode="nearest", coordinate_transformation_mode="asymmetric", nearest_mode="floor")
    else:
        attrs = dict(mode="cubic" if "bicubic" in name else "linear", cubic_coeff_a=-0.75,
                     coordinate_transformation_mode="align_corners" if a.get("align_corners")
                     else "half_pixel")
    return ctx.emit("resize", [x], sizes=tuple(out), scales=(1.0, 1.0, *scales) if scales else (), **attrs)


@aten("_upsample_bilinear2d_aa.vec", "_upsample_bilinear2d_aa.default",
      "_upsample_bicubic2d_aa.vec", "_upsample_bicubic2d_aa.default")
def _upsample_aa(ctx: Ctx, n: fx.Node, a: dict) -> Value:
    """Antialiased bilinear / bicubic resizing: torch's filter is separable with weights that
    depend only on the sizes, the scale factor and align_corners, so each spatial axis becomes
    one ``linear`` by a constant [out, in] matrix (static spatial sizes only)."""
    x = ctx.t(a["input"] if "input" in a else a["self"])
    out = ctx.out_type(n).shape
    ins = x.shape[2:]
    if not all(isinstance(d, int) for d in tuple(ins) + tuple(out[2:])):
        raise FrontendError(f"{ctx.node_name}: antialiased interpolation needs static spatial sizes, "
                            f"got {tuple(ins)} -> {tuple(out[2:])}")
    scales = _scales(a, 2)
    op = n.target.overloadpacket.default  # type: ignore[union-attr]
    mats = {}
    for ax in (2, 3):
        s = None if scales is None else scales[ax - 2]  # torch decides what align_corners keeps
        mats[ax] = aa_matrix(op, int(ins[ax - 2]), int(out[ax]), bool(a.get("align_corners")), s, ax)
    return axis_matrices(ctx, x, mats)


def aa_matrix(op: object, size_in: int, size_out: int, align_corners: bool, scale: float | None,
              axis: int) -> torch.Tensor:
    """[out, in] f64 weights of torch's antialiased filter along one axis, read off torch's own
    kernel applied to the basis vectors (so they are torch's, including edge renormalisation).
    The other axis is 3 wide and kept at 3 (an identity): a 1-wide one misbehaves in torch."""
    basis = torch.eye(size_in, dtype=torch.float64)
    if axis == 2:
        inp = basis[:, None, :, None].expand(size_in, 1, size_in, 3).contiguous()
        y = op(inp, [size_out, 3], align_corners, scale, None)  # type: ignore[operator]
        return y[:, 0, :, 1].T.contiguous()
    inp = basis[:, None, None, :].expand(size_in, 1, 3, size_in).contiguous()
    y = op(inp, [3, size_out], align_corners, None, scale)  # type: ignore[operator]
    return y[:, 0, 1, :].T.contiguous()


def averaging_matrix(size_in: int, size_out: int) -> torch.Tensor:
    """[out, in] f64: row i averages torch's adaptive window i of an axis."""
    m = torch.zeros(size_out, size_in, dtype=torch.float64)
    for i in range(size_out):
        lo, hi = (i * size_in) // size_out, -(-((i + 1) * size_in) // size_out)
        m[i, lo:hi] = 1.0 / (hi - lo)
    return m


def adaptive_avg_pool(ctx: Ctx, x: Value, out: tuple[int, ...]) -> Value:
    """x [N, C, *spatial] (static spatial sizes) averaged to ``out`` per torch's windows."""
    ins = x.shape[2:]
    if not all(isinstance(i, int) for i in ins):
        raise FrontendError(f"{ctx.node_name}: adaptive_avg_pool from {ins} to {out} needs static "
                            f"spatial sizes when the output does not divide them")
    return axis_matrices(ctx, x, {ax: averaging_matrix(i, o)
                                  for ax, (i, o) in enumerate(zip(ins, out), start=2) if i != o})


def axis_matrices(ctx: Ctx, x: Value, mats: dict[int, torch.Tensor]) -> Value:
    """x with each axis ``ax`` in ``mats`` mapped by the matrix [out, in]: y = M @ x along ax."""
    rank = x.type.rank
    # in f32 for half types, rounded once at the end (as torch accumulates)
    y = ctx.cast(x, dt.f32) if x.dtype in (dt.f16, dt.bf16) else x
    for ax, m in sorted(mats.items()):
        w = ctx.const(m.to(y.dtype.container), y.dtype)
        perm = [d for d in range(rank) if d != ax] + [ax]
        inv = [perm.index(d) for d in range(rank)]
        moved = ctx.emit("transpose", [y], perm=tuple(perm)) if ax != rank - 1 else y
        y = ctx.emit("linear", [moved, w])
        if ax != rank - 1:
            y = ctx.emit("transpose", [y], perm=tuple(inv))
    return ctx.cast(y, x.dtype) if y.dtype is not x.dtype else y
