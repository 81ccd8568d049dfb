"""The op table, split by family. Importing this package registers every op."""
from .registry import (REQUIRED, AttrSpec, Cost, OpDef, all_ops, defop, elementwise_cost, get_op,
                       has_op, io_bytes, memory_cost, register)
from . import elementwise, nn, norm, attention, reduce, shape, quant, lowrank, moe, moe_quant, dims, extra_elementwise, extra_reduce, extra_nn, image, scatter, select, einsum, detection  # noqa: F401,E402  (registration)

__all__ = ["REQUIRED", "AttrSpec", "Cost", "OpDef", "all_ops", "defop", "elementwise_cost", "get_op",
           "has_op", "io_bytes", "memory_cost", "register"]
