"""Every registered op has a way to run on the C target: rendered (elementwise table, row
kernels), a view, a library kernel, or explicitly left to its reference with a reason."""
from __future__ import annotations

from scalefold.codegen import c as cgen
from scalefold.codegen.c_expr import EXPR
from scalefold.codegen.schedule import LIBRARY_OPS, ROW_OPS, VIEW_OPS
from scalefold.ir.ops import all_ops


def test_no_op_is_missing() -> None:
    cov = cgen.op_coverage()
    assert set(cov) == set(all_ops())
    missing = sorted(op for op, how in cov.items() if how == "missing")
    assert not missing, (
        "ops with no C kernel and no entry in codegen/c.py REFERENCE_OPS:\n  " + "\n  ".join(
            f"{op} (family {all_ops()[op].family})" for op in missing)
        + "\nrender them (c_expr.EXPR / row kernels) or add them to REFERENCE_OPS with a reason")


def test_tables_name_only_registered_ops() -> None:
    """Stale entries would hide a renamed op."""
    ops = set(all_ops())
    for name, table in (("EXPR", set(EXPR)), ("REFERENCE_OPS", set(cgen.REFERENCE_OPS)),
                        ("ROW_OPS", set(ROW_OPS)), ("VIEW_OPS", set(VIEW_OPS)),
                        ("LIBRARY_OPS", set(LIBRARY_OPS))):
        assert table <= ops, f"{name} names unregistered ops: {sorted(table - ops)}"
    assert all(r.strip() for r in cgen.REFERENCE_OPS.values()), "every reference op needs a reason"


def test_elementwise_ops_are_rendered() -> None:
    """An elementwise op of the registry is rendered by the C table unless it is a view or
    explicitly left to its reference."""
    cov = cgen.op_coverage()
    for op, od in all_ops().items():
        if od.elementwise and op not in VIEW_OPS:
            assert cov[op] == "c" or cov[op].startswith("reference: "), f"{op}: {cov[op]}"
        if op in EXPR:
            assert od.elementwise, f"{op} is in the elementwise C table but is not elementwise"
