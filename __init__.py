"""scalefold: a compiler for compressed neural networks.

Public API only; see README.md and DESIGN.md §1.
"""
from .ir import Graph, TensorType, dtypes
from .ir.errors import (ArtifactError, CalibrationError, CompileError, FrontendError, IRError, ParseError,
                        ScalefoldError, ShapeError, UnsupportedOpError, VerifyError)
from . import ir

__version__ = "0.1.0"

__all__ = ["Graph", "TensorType", "dtypes", "ir", "ScalefoldError", "IRError", "ParseError", "VerifyError",
           "ShapeError", "UnsupportedOpError", "CalibrationError", "CompileError", "ArtifactError",
           "FrontendError", "__version__"]
