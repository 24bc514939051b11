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


def _same_dims(a, b) -> bool:  # noqa: ANN001
    return (
        a is not None
        and b is not None
        and len(a) == len(b)
        and all(x is not None and x == y for x, y in zip(a, b))
    )


def _merged_transpose(m: Match, rw: Rewriter) -> list[Node] | None:
    """Reshape(Transpose(Reshape(x))) that merges x's leading dims, permutes the rest and
    splits the leading dims back is one Transpose of x (the K^T form exporters emit)."""
    g = m.graph
    xs = g.value(m.values["x"]).shape
    a = g.value(m.nodes["r1"].outputs[0]).shape
    c = g.value(m.root.outputs[0]).shape
    perm = m.nodes["t"].attrs.get("perm")
    if xs is None or a is None or c is None or perm is None or perm[0] != 0:
        return None
    k = len(xs) - len(a) + 1  # leading dims of x merged into a[0]
    if k < 1 or not _same_dims(a[1:], xs[k:]):
        return None
    permuted = [a[p] for p in perm[1:]]
    if not _same_dims(c[:k], xs[:k]) or not _same_dims(c[k:], permuted):
        return None
    full = list(range(k)) + [k - 1 + p for p in perm[1:]]
    return [Node("Transpose", [m.values["x"]], list(m.root.outputs), {"perm": full}, m.root.name)]


RULES = [
    # Transpose(Transpose(x, p1), p2) ==> Transpose(x, p1[p2]), or x when that is the identity
    Rule(
        "transpose_transpose", Op("Transpose", Op("Transpose", Any_("x"), name="t1")), _transposes
    ),
    # Reshape(Reshape(x, s1), s2) ==> Reshape(x, s2)   (s2 has no 0 entries)
    Rule(
        "reshape_reshape", Op("Reshape", Op("Reshape", Any_("x"), Any_()), Const("s2")), _reshapes
    ),
    # Reshape(Transpose(Reshape(x, [d0*d1, ...]), [0, p...]), [d0, d1, ...]) ==> Transpose(x, [0, 1, 1+p...])
    Rule(
        "reshape_transpose_reshape",
        Op(
            "Reshape",
            Op("Transpose", Op("Reshape", Any_("x"), Any_(), name="r1"), name="t"),
            Any_(),
        ),
        _merged_transpose,
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
