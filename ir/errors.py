"""The ScalefoldError hierarchy (DESIGN.md §6).

Every user-facing failure is a subclass of :class:`ScalefoldError` whose message names the
node, op, file or input at fault. Lower layers raise these directly so that callers never see
a raw traceback from deep inside torch, sympy or onnx.
"""
from __future__ import annotations


class ScalefoldError(Exception):
    """Base class of every error scalefold raises on purpose."""


class IRError(ScalefoldError):
    """Malformed IR: bad text, a broken use list, a value used before it is defined."""


class ParseError(IRError):
    """IR text that cannot be parsed; the message carries the line number."""

    def __init__(self, message: str, line: int | None = None):
        self.line = line
        super().__init__(f"line {line}: {message}" if line is not None else message)


class VerifyError(IRError):
    """The verifier rejected a graph; the message names the offending node."""


class ShapeError(ScalefoldError):
    """A shape or dtype does not fit: an op's shape rule, or an input given at run time."""


class UnsupportedOpError(ScalefoldError):
    """One or more ops are unknown. ``ops`` maps each op name to how often it occurs."""

    def __init__(self, ops: dict[str, int] | str, where: str = "", first: dict[str, str] | None = None):
        if isinstance(ops, str):
            ops = {ops: 1}
        self.ops = dict(sorted(ops.items()))
        self.first = dict(first or {})
        listing = ", ".join(f"{k} (x{v})" for k, v in self.ops.items())
        prefix = f"{where}: " if where else ""
        nodes = "; first node of each: " + ", ".join(f"{k} {self.first[k]!r}" for k in self.ops
                                                       if k in self.first) if self.first else ""
        super().__init__(f"{prefix}unsupported op(s): {listing}{nodes}")


class AttributeError_(ScalefoldError):
    """An op attribute is missing, unknown or of the wrong kind."""


class OptionError(ScalefoldError, ValueError):
    """A pass or function option with a bad value (also a ValueError, as such checks were)."""


class CalibrationError(ScalefoldError):
    """Calibration statistics are unusable (NaN/Inf inputs, no batches)."""


class CompileError(ScalefoldError):
    """A generated kernel failed to compile; ``stderr`` holds the compiler's output."""

    def __init__(self, message: str, stderr: str = ""):
        self.stderr = stderr
        super().__init__(message + (f"\n{stderr}" if stderr else ""))


class ArtifactError(ScalefoldError):
    """A saved artifact is missing, truncated, tampered with or of another format version."""


class FrontendError(ScalefoldError):
    """A model could not be imported (bad file, cycle, missing initializer)."""


# Public alias with a friendlier name; the trailing underscore avoids shadowing the builtin.
OpAttributeError = AttributeError_


class ExecutionError(ScalefoldError):
    """A node failed while running; the message names the node and op."""
