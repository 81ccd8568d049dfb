"""scalefold: a compiler for compressed neural networks.

Public API only; see README.md and DESIGN.md §1::

    cm = scalefold.compile(model, example_inputs, passes=[...], target="c")
    cm.save("out/"); cm2 = scalefold.load("out/")
    g = scalefold.from_torch(model, example_inputs); g = scalefold.from_onnx("m.onnx")
    scalefold.to_onnx(cm.graph, "m.q.onnx")
"""
from typing import Any

from .ir import Graph, TensorType, dtypes
from .ir.errors import (ArtifactError, CalibrationError, CompileError, ExecutionError, FrontendError, IRError,
                        ParseError, ScalefoldError, ShapeError, UnsupportedOpError, VerifyError)
from . import ir
from .api import CompiledModel, compile, load

__version__ = "0.1.0"

__all__ = ["compile", "load", "CompiledModel", "from_torch", "from_onnx", "to_onnx", "parse",
           "Graph", "TensorType", "dtypes", "ir", "ScalefoldError", "IRError", "ParseError", "VerifyError",
           "ShapeError", "UnsupportedOpError", "CalibrationError", "CompileError", "ArtifactError",
           "FrontendError", "ExecutionError", "__version__"]


def __getattr__(name: str) -> Any:
    # The frontends and the ONNX exporter pull in torch.export / onnx machinery; importing
    # them on first use keeps `import scalefold` (and the CLI's --help) fast.
    if name == "from_torch":
        from .frontend.torch import from_torch
        return from_torch
    if name == "from_onnx":
        from .frontend.onnx import from_onnx
        return from_onnx
    if name == "to_onnx":
        from .codegen.onnx import to_onnx
        return to_onnx
    if name == "parse":
        from .ir.parser import parse
        return parse
    raise AttributeError(f"module 'scalefold' has no attribute {name!r}")
