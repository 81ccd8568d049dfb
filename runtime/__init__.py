"""Running graphs: the reference interpreter, and later the compiled executor."""
from .interp import Interpreter, bind_symbols, run

__all__ = ["Interpreter", "bind_symbols", "run"]
