"""The ONNX op table, one module per family; importing this package registers every converter."""
from . import basic  # noqa: F401
