"""The typed graph IR: dtypes, tensor types, values/nodes/graphs, the op table, text form."""
from . import dtypes
from .errors import (CalibrationError, CompileError, IRError, ParseError, ScalefoldError, ShapeError,
                     UnsupportedOpError, VerifyError)
from .graph import Attrs, Graph, Node, Value
from .types import Dim, TensorType, sym
from . import ops
from .ops import get_op, all_ops
# the function, bound over the submodule of the same name (which importing it makes a package
# attribute: ``from scalefold.ir import verify`` returned the module)
from .verify import verify

__all__ = ["dtypes", "Attrs", "Graph", "Node", "Value", "Dim", "TensorType", "sym", "ops", "get_op",
           "all_ops", "ScalefoldError", "IRError", "ParseError", "VerifyError", "ShapeError",
           "UnsupportedOpError", "CalibrationError", "CompileError", "parse", "print_graph", "verify"]


def __getattr__(name: str):
    # printer and parser are imported lazily so that each can import graph without cycles.
    if name == "parse":
        from .parser import parse
        return parse
    if name == "print_graph":
        from .printer import print_graph
        return print_graph
    raise AttributeError(name)
