"""IR text from elsewhere (a saved artifact's plan) is data: every malformed text is a
ParseError naming its line, never code run, a hang, a crash deep inside sympy / torch, or a
graph that prints differently (from a fuzzing round of ~174k mutated texts)."""
from __future__ import annotations

from pathlib import Path

import pytest

from scalefold.ir import ParseError
from scalefold.ir.parser import parse


def _graph(dim: str = "2", attr: str = "", const: str = "") -> str:
    body = f"  %0: f32[{dim}] = relu(%x)\n" if not attr else f"  %0: f32[2,3] = {attr}(%x)\n"
    shape = dim if not attr else "2,3"
    return (f"graph @g(%x: f32[{shape}]) -> (f32[{shape}]) {{\n{body}  return %0\n}}\n" + const)


def test_a_dimension_is_never_evaluated_as_python(tmp_path: Path) -> None:
    flag = tmp_path / "ran"
    dim = f"B.subs.__globals__['__builtins__']['__import__']('os').system('touch {flag}')"
    with pytest.raises(ParseError, match="line 1: bad dimension"):
        parse(_graph(dim))
    assert not flag.exists()
    for dim in ("B.subs(B, 3)", "eval(B)", "B[0]", "lambda: 1"):
        with pytest.raises(ParseError, match="line 1: bad dimension"):
            parse(_graph(dim))


@pytest.mark.parametrize("dim", ["9**9**9", "2**100000", "2**B", "9" * 5000, "²", "١", "B/0", "-B",
                                 "2*B-2*B-1", "1.5*B"])
def test_dimensions_that_are_not_sizes(dim: str) -> None:
    with pytest.raises(ParseError, match="line 1"):
        parse(_graph(dim))


@pytest.mark.parametrize("dim", ["in", "None", "Max", "2*S + 1", "S**2", "Max(S, 3)", "floor(S/2)"])
def test_dimensions_that_are_sizes_still_parse(dim: str) -> None:
    g = parse(_graph(dim))
    assert parse(str(g)) == g


@pytest.mark.parametrize("attr,msg", [
    ("softmax[axis=none]", "may not be none"), ("gelu[approximate=none]", "may not be none"),
    ("softmax[axis=" + "9" * 40 + "]", "too long"), ("softmax[axis=2**100000]", "bad value"),
    ("reshape[shape=" + "[" * 40 + "]" * 40 + "]", "nested more than 32 deep"),
    ("softmax[axis=99999999999999999999]", "must be int"),
])
def test_attribute_values_out_of_range(attr: str, msg: str) -> None:
    with pytest.raises(ParseError, match=msg):
        parse(_graph(attr=attr))


@pytest.mark.parametrize("init,msg", [
    ("randn(seed=nan)", "finite"), ("randn(seed=1e30)", "seed must"), ("randn(seed=1.5)", "seed must"),
    ("randn(seed=-1)", "seed must"),
    ("randint(seed=0, low=-99999999999999999999, high=1)", "finite"),
    ("full(value=99999999999999999999)", "finite"),
])
def test_generator_arguments_out_of_range(init: str, msg: str) -> None:
    with pytest.raises(ParseError, match=msg):
        parse(_graph(const=f"#c = const f32[2] {init}\n"))


def test_generated_constants_have_a_size_limit() -> None:
    text = ("graph @g(%x: f32[2]) -> (f32[100000,100000]) {\n  return #c\n}\n"
            "#c = const f32[100000,100000] zeros\n")
    with pytest.raises(ParseError, match="more than the"):
        parse(text)
