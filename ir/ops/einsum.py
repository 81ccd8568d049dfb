"""einsum: ONNX Einsum (explicit or implicit output, ellipsis broadcasting)."""
from __future__ import annotations

from typing import Sequence

import sympy
import torch

from ..errors import ShapeError
from ..graph import Attrs
from ..types import Dim, TensorType, dim_str
from .common import broadcast_shapes, prod, require, same_dtype
from .registry import AttrSpec, Cost, defop, io_bytes


def parse_equation(eq: str, ranks: Sequence[int]) -> tuple[list[str], str, int]:
    """(input subscripts, output subscripts, ellipsis rank) with "..." written as '.' and the
    implicit output (sorted letters seen once, ellipsis first) made explicit."""
    eq = eq.replace(" ", "")
    lhs, arrow, rhs = eq.partition("->")
    terms = lhs.split(",")
    if len(terms) != len(ranks):
        raise ShapeError(f"einsum equation '{eq}' has {len(terms)} operands, got {len(ranks)} inputs")
    ell = 0
    subs = []
    for t, r in zip(terms, ranks):
        t2 = t.replace("...", ".")
        if "." in t2.replace(".", "", 1) or not all(c.isalpha() or c == "." for c in t2):
            raise ShapeError(f"einsum term '{t}' is malformed")
        letters = len(t2) - t2.count(".")
        if "." in t2:
            if r < letters:
                raise ShapeError(f"einsum term '{t}' needs rank >= {letters}, got {r}")
            ell = max(ell, r - letters)
        elif letters != r:
            raise ShapeError(f"einsum term '{t}' has {letters} subscripts for an input of rank {r}")
        subs.append(t2)
    if arrow:
        out = rhs.replace("...", ".")
        if not all(c.isalpha() or c == "." for c in out) or len(set(out)) != len(out):
            raise ShapeError(f"einsum output '{rhs}' is malformed")
        seen = set("".join(subs))
        if any(c not in seen for c in out if c != "."):
            raise ShapeError(f"einsum output '{rhs}' uses a subscript no input has")
    else:
        letters = "".join(subs).replace(".", "")
        out = ("." if ell or any("." in s for s in subs) else "") + "".join(
            sorted(c for c in set(letters) if letters.count(c) == 1))
    return subs, out, ell


def _einsum_shape(ins: Sequence[TensorType | None], attrs: Attrs) -> list[TensorType]:
    ts = [require(t, f"x{i}") for i, t in enumerate(ins)]
    same_dtype(ts)
    if ts[0].dtype.name == "bool" or ts[0].dtype.bits < 8:
        raise ShapeError(f"einsum does not support dtype {ts[0].dtype.name}")
    subs, out, _ = parse_equation(attrs["equation"], [t.rank for t in ts])
    size: dict[str, Dim] = {}
    ell_shapes = []
    for s, t in zip(subs, ts):
        letters = s.replace(".", "")
        n_ell = t.rank - len(letters)
        shape = list(t.shape)
        pos = s.find(".")
        if pos >= 0:
            ell_shapes.append(tuple(shape[pos:pos + n_ell]))
            shape = shape[:pos] + shape[pos + n_ell:]
        for c, d in zip(letters, shape):
            if c in size and size[c] != d:
                if size[c] == 1:
                    size[c] = d
                elif d != 1:
                    raise ShapeError(f"einsum subscript '{c}' has sizes {dim_str(size[c])} "
                                     f"and {dim_str(d)}")
            else:
                size.setdefault(c, d)
    ell = broadcast_shapes(*ell_shapes) if ell_shapes else ()
    dims: list[Dim] = []
    for c in out:
        dims.extend(ell if c == "." else [size[c]])
    return [TensorType(ts[0].dtype, tuple(dims))]


def _einsum_ref(xs: Sequence[torch.Tensor | None], attrs: Attrs) -> torch.Tensor:
    d = xs[0].dtype
    up = torch.float32 if d in (torch.float16, torch.bfloat16) else d
    return torch.einsum(attrs["equation"], *[x.to(up) for x in xs]).to(d)


def _einsum_cost(ins: Sequence[TensorType | None], outs: Sequence[TensorType], attrs: Attrs) -> Cost:
    subs, out, _ = parse_equation(attrs["equation"], [t.rank for t in ins])
    size: dict[str, Dim] = {}
    for s, t in zip(subs, ins):
        letters = s.replace(".", "")
        shape = list(t.shape)
        pos = s.find(".")
        if pos >= 0:
            shape = shape[:pos] + shape[pos + t.rank - len(letters):]
        size.update({c: d for c, d in zip(letters, shape) if d != 1 or c not in size})
    ell = outs[0].rank - len(out.replace(".", ""))
    ell_n = prod(list(outs[0].shape[out.find("."):out.find(".") + ell])) if "." in out else 1
    # every point of the full index space costs a multiply and an add per extra operand
    work = sympy.sympify(prod(list(size.values()))) * ell_n * max(len(ins) - 1, 1) * 2
    return Cost(work, io_bytes(ins, outs))


defop("einsum", family="linalg", inputs=(1, -1),
      attrs={"equation": AttrSpec("str")},
      shape=_einsum_shape, reference=_einsum_ref, cost=_einsum_cost,
      doc="einsum(*xs)[equation] (ONNX Einsum-12): Einstein summation. Each comma-separated "
          "term names the axes of one input with letters, '...' standing for broadcast leading "
          "axes; letters repeated across or within terms are multiplied along, letters absent "
          "from the output are summed. Without '->' the output is '...' followed by the letters "
          "that occur exactly once, in alphabetical order. All inputs share one numeric dtype; "
          "f16/bf16 accumulate in f32.")
