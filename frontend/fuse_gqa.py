"""Import-time fusion of written-out grouped-query attention into ``sdpa[gqa=true]``.

transformers' ``repeat_kv`` (Llama, Mistral, Qwen2, Gemma, ...) copies each k/v head to the
query heads it serves before calling attention::

    k' = reshape(expand(unsqueeze(k, heads + 1), rep on that axis), heads * rep)
    y  = sdpa(q, k', v')

so q head h reads kv head h // rep, which is exactly ``sdpa``'s ``gqa`` semantics (torch
``enable_gqa``). Run as written, the expand materialises rep copies of the whole KV cache at
every call and the attention kernel then streams rep times the bytes. The rewrite feeds the
un-repeated k / v to ``sdpa`` with ``gqa`` set; the repeat chains are dropped when nothing else
reads them.

Pre: a graph whose ``sdpa`` nodes may read such chains on both k and v.
Post: each such ``sdpa`` reads the chains' sources with ``gqa=true``; results are unchanged
(the same keys and values reach every query head).
"""
from __future__ import annotations

from ..ir.graph import Graph, Node, Value
from ..ir.types import dims_equal


def _producer(v: Value | None, op: str) -> Node | None:
    if v is None or v.producer is None or v.producer.op != op:
        return None
    return v.producer


def _repeat_source(v: Value | None) -> tuple[Value, int] | None:
    """(x, rep) when ``v`` is x [..., H, S, d] with each head repeated ``rep`` times in place
    (head h of v is head h // rep of x), written as reshape(expand(unsqueeze(x)))."""
    rs = _producer(v, "reshape")
    ex = _producer(rs.inputs[0] if rs else None, "expand")
    un = _producer(ex.inputs[0] if ex else None, "unsqueeze")
    if un is None or rs is None or ex is None:
        return None
    x = un.inputs[0]
    assert x is not None
    r = x.type.rank
    axes = tuple(int(a) % (r + 1) for a in un.attrs["axes"])
    if r < 3 or axes != (r - 2,):
        return None                       # the new axis must sit right after the heads axis
    e = ex.output.shape
    rep = e[r - 2]
    if not isinstance(rep, int) or rep < 1:
        return None
    # the expand may only widen the new axis: every other dim keeps x's size
    if len(e) != r + 1 or not all(dims_equal(e[i], x.shape[i]) for i in range(r - 2)) \
            or not all(dims_equal(e[i + 1], x.shape[i]) for i in range(r - 2, r)):
        return None
    want = x.shape[:r - 3] + (x.shape[r - 3] * rep,) + x.shape[r - 2:] \
        if isinstance(x.shape[r - 3], int) else None
    out = rs.output.shape
    if want is None or len(out) != r or not all(dims_equal(a, b) for a, b in zip(out, want)):
        return None
    return x, rep


def fuse_repeat_kv(g: Graph) -> int:
    """Rewrite ``sdpa`` over repeated k / v heads into ``sdpa[gqa=true]``; return the count."""
    done = 0
    for node in list(g.nodes):
        if node.op != "sdpa" or node.graph is not g or node.attrs["gqa"]:
            continue
        ks, vs = _repeat_source(node.inputs[1]), _repeat_source(node.inputs[2])
        if ks is None or vs is None or ks[1] != vs[1] or ks[1] == 1:
            continue
        q = node.inputs[0]
        assert q is not None
        new = g.create_node("sdpa", [q, ks[0], vs[0], *node.inputs[3:]],
                            {**dict(node.attrs), "gqa": True}, name=node.name)
        g.insert_before(node, new)
        g.replace_all_uses(node.output, new.output)
        old_k, old_v = node.inputs[1], node.inputs[2]
        g.remove(node)
        for chain in (old_k, old_v):
            _drop_unused_chain(g, chain)
        done += 1
    return done


def _drop_unused_chain(g: Graph, v: Value | None) -> None:
    """Remove reshape <- expand <- unsqueeze nodes left without readers."""
    while v is not None and v.producer is not None and v.producer.op in ("reshape", "expand", "unsqueeze") \
            and not v.uses and all(o is not v for o in g.outputs):
        p = v.producer
        v = p.inputs[0]
        g.remove(p)
