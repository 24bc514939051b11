"""Transpose/Reshape cancellation: merge back-to-back layout ops, drop pairs that cancel."""

from __future__ import annotations

from collections import Counter

from ecoinfer.ir.graph import Graph, Node
from ecoinfer.ir.pattern import Any_, Const, Match, Op, Rewriter, Rule, apply_rules
from ecoinfer.passes.registry import register_pass


def _transposes(m: Match, rw: Rewriter) -> list[Node] | str:
    inner = m.nodes["t1"].attrs.get("perm")
    outer = m.root.attrs.get("perm")
    x = m.values["x"]
    rank = m.graph.value(x).rank
    if inner is None or outer is None:
        if rank is None:
            return None  # type: ignore[return-value]
        inner = inner or list(range(rank))[::-1]
        outer = outer or list(range(rank))[::-1]
    perm = [inner[p] for p in outer]
    if perm == sorted(perm):
        return x
    return [Node("Transpose", [x], list(m.root.outputs), {"perm": perm}, m.root.name)]


def _reshapes(m: Match, rw: Rewriter) -> list[Node] | None:
    shape = m.const("s2")
    if bool((shape == 0).any()) and not m.root.attrs.get("allowzero", 0):
        return None  # a 0 copies a dim of the (changed) input: not safe to skip the inner
    return [
        Node(
            "Reshape",
            [m.values["x"], m.values["s2"]],
            list(m.root.outputs),
            dict(m.root.attrs),
            m.root.name,
        )
    ]


def _squeeze_unsqueeze(m: Match, rw: Rewriter) -> str | None:
    a, b = m.const("a1"), m.const("a2")
    rank = m.graph.value(m.values["x"]).rank
    if rank is None:
        return None
    out_rank = rank + a.numel()
    na = sorted(int(v) % out_rank for v in a.tolist())
    nb = sorted(int(v) % out_rank for v in b.tolist())
    return m.values["x"] if na == nb else None


RULES = [
    # Transpose(Transpose(x, p1), p2) ==> Transpose(x, p1[p2]), or x when that is the identity
    Rule(
        "transpose_transpose", Op("Transpose", Op("Transpose", Any_("x"), name="t1")), _transposes
    ),
    # Reshape(Reshape(x, s1), s2) ==> Reshape(x, s2)   (s2 has no 0 entries)
    Rule(
        "reshape_reshape", Op("Reshape", Op("Reshape", Any_("x"), Any_()), Const("s2")), _reshapes
    ),
    # Squeeze(Unsqueeze(x, axes), axes) ==> x
    Rule(
        "unsqueeze_squeeze",
        Op("Squeeze", Op("Unsqueeze", Any_("x"), Const("a1")), Const("a2")),
        _squeeze_unsqueeze,
    ),
]


@register_pass(
    "cancel_transpose_reshape",
    level=1,
    doc="merge Transpose/Transpose and Reshape/Reshape chains; drop pairs that cancel",
)
def cancel_transpose_reshape(graph: Graph) -> Counter[str]:
    return apply_rules(graph, RULES)
