"""End-to-end CPU benchmark of convolutional networks: timm models with random weights.

Compares scalefold ``target="c"`` (after ``--passes``, default ``fold_batchnorm``; ``--passes ""``
is plain ``scalefold.compile(model)``, batch norms kept) with torch eager and with
onnxruntime running scalefold's own ONNX export of the same graph, all in this one process on
the same input. Each runner is timed in blocks of back-to-back calls (onnxruntime with its
default thread spinning, which would slow a runner interleaved with it), twice over; prints
the better block median of each and the ratios.

    .venv/bin/python benchmarks/cnn_cpu.py [--models resnet18,mobilenetv3_small_100,...]
        [--batch 1] [--size 224] [--threads 2] [--calls 30] [--passes fold_batchnorm]
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
from typing import Callable

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from scalefold.runtime.timing import median_ms  # noqa: E402

MODELS = (
    "resnet18,resnet50,mobilenetv3_small_100,efficientnet_b0,convnext_atto,regnety_002,"
    "densenet121,inception_v3,vgg11"
)


def blocks(fns: dict[str, Callable[[], object]], calls: int, repeats: int = 2) -> dict[str, float]:
    """Milliseconds per call of each runner: the median over ``calls`` back-to-back calls (after
    a warm-up), in blocks taken runner after runner, ``repeats`` times over; the lowest block
    median counts, so that a passing load on the machine does not decide a ratio."""
    best = {k: float("inf") for k in fns}
    for _ in range(repeats):
        for k, f in fns.items():
            best[k] = min(best[k], median_ms(f, calls))
    return best


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default=MODELS)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--calls", type=int, default=30)
    ap.add_argument("--passes", default="fold_batchnorm", help='scalefold pass pipeline ("": none)')
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)

    import onnxruntime as ort
    import timm

    import scalefold as sf

    print(f"timm models, random weights, fp32, batch {a.batch}, {a.size}x{a.size}, {a.threads} threads, "
          f"best of two block medians of {a.calls} calls; onnxruntime {ort.__version__} (default "
          f"session options, {a.threads} intra-op threads) on scalefold's export; passes {a.passes!r}")
    print(f"{'model':<24}{'torch ms':>10}{'sf ms':>9}{'ort ms':>9}{'sf/torch':>10}{'sf/ort':>8}{'rel err':>10}")
    gen = torch.Generator().manual_seed(0)
    for name in filter(None, a.models.split(",")):
        torch.manual_seed(0)
        model = timm.create_model(name, pretrained=False).eval()
        x = torch.randn(a.batch, 3, a.size, a.size, generator=gen)
        with torch.no_grad():
            ref = model(x)
            cm = sf.compile(model, (x,), passes=a.passes, target="c")
            out = cm(x)
            err = float((out - ref).abs().max() / ref.abs().max().clamp_min(1e-30))
            so = ort.SessionOptions()
            so.intra_op_num_threads = a.threads
            so.inter_op_num_threads = 1
            with tempfile.TemporaryDirectory() as d:
                path = os.path.join(d, "m.onnx")
                sf.to_onnx(cm.graph, path)
                sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
            feed = {sess.get_inputs()[0].name: x.numpy()}
            ms = blocks({"torch": lambda: model(x), "sf": lambda: cm(x),
                         "ort": lambda: sess.run(None, feed)}, a.calls)
        print(f"{name:<24}{ms['torch']:>10.2f}{ms['sf']:>9.2f}{ms['ort']:>9.2f}"
              f"{ms['sf'] / ms['torch']:>10.2f}{ms['sf'] / ms['ort']:>8.2f}{err:>10.1e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
