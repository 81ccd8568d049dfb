"""The ``scalefold`` command line (DESIGN.md §1). Verbs grow as the issues land."""
from __future__ import annotations

import argparse
import sys
from typing import Sequence

from .ir.errors import ScalefoldError

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


def _demo(args: argparse.Namespace) -> int:
    import torch

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


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="scalefold",
                                description="A compiler for compressed neural networks.")
    sub = p.add_subparsers(dest="verb", required=True)
    d = sub.add_parser("demo", help="print and run the built-in example graph")
    d.add_argument("--batch", type=int, default=4, help="batch size to run the example at")
    d.set_defaults(fn=_demo)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.fn(args)
    except ScalefoldError as e:
        print(f"scalefold: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
