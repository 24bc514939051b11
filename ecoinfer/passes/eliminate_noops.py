"""Remove ops that do nothing: Identity, inference Dropout, same-type Cast, same-shape Reshape..."""

from __future__ import annotations

from collections import Counter

import torch

from ecoinfer.ir.graph import Graph, Node
from ecoinfer.ir.pattern import Any_, Const, Match, Op, Rewriter, Rule, apply_rules
from ecoinfer.passes.registry import register_pass


def _same_type(m: Match, src: str) -> bool:
    a = m.graph.values.get(m.values[src])
    b = m.graph.values.get(m.root.outputs[0])
    if m.values[src] in m.graph.initializers or a is None or b is None:
        return False
    if a.dtype is None or a.dtype != b.dtype or a.shape is None or b.shape is None:
        return False
    # equal shapes, dim by dim (ints equal, or the same symbol)
    return len(a.shape) == len(b.shape) and all(
        x == y and x is not None for x, y in zip(a.shape, b.shape)
    )


def _alias(src: str):  # noqa: ANN202
    def rewrite(m: Match, rw: Rewriter) -> str | None:
        return m.values[src] if _same_type(m, src) else None

    return rewrite


def _is_zero(t: torch.Tensor) -> bool:
    return t.numel() <= 1 << 16 and bool((t == 0).all())


def _is_one(t: torch.Tensor) -> bool:
    return t.numel() <= 1 << 16 and bool((t == 1).all())


def _in_order_gather_nd(m: Match, rw: Rewriter) -> list[Node] | None:
    """GatherND(x, I) with constant I that reads every element of x once, in x's own order
    (e.g. a mask built as x[b, s] over an index grid of x's shape) ==> Reshape(x)."""
    n = m.root
    x = m.graph.values.get(n.inputs[0])
    idx = m.graph.initializers.get(n.inputs[1])
    out = m.graph.values.get(n.outputs[0])
    if int(n.attrs.get("batch_dims", 0) or 0) or x is None or idx is None or out is None:
        return None
    shape = x.shape
    if shape is None or not all(isinstance(d, int) for d in shape) or out.shape is None:
        return None
    if (
        idx.dim() < 1
        or idx.shape[-1] != len(shape)
        or not all(isinstance(d, int) for d in out.shape)
    ):
        return None
    total = 1
    for d in shape:
        total *= d
    if idx.numel() // max(len(shape), 1) != total or total > 1 << 22 or len(out.shape) == 0:
        return None
    flat = torch.zeros(idx.shape[:-1], dtype=torch.int64)
    for j, d in enumerate(shape):
        c = idx[..., j].to(torch.int64)
        flat = flat * d + torch.where(c < 0, c + d, c)
    if not torch.equal(flat.reshape(-1), torch.arange(total)):
        return None
    target = rw.const(f"{n.name}_shape", torch.tensor(list(out.shape), dtype=torch.int64))
    return [Node("Reshape", [n.inputs[0], target], list(n.outputs), {}, n.name)]


def _constant_gather(m: Match, rw: Rewriter) -> list[Node] | None:
    """Gather(x, constant i) with i one in-range index (a scalar or [1]) or a run of
    consecutive ones ==> Slice (a view: no copy, no index check at run time), then Squeeze
    the axis for a scalar i (BERT's pooler reading token 0). Out-of-range or negative-step
    indices stay a Gather, whose kernel reports them; so does a lookup in a weight table (the
    embedding fusions look for it, and constant folding owns weights)."""
    n = m.root
    g = m.graph
    idx = g.initializers.get(n.inputs[1])
    x = g.values.get(n.inputs[0])
    if (
        n.inputs[0] in g.initializers
        or idx is None
        or x is None
        or x.shape is None
        or idx.dim() > 1
        or idx.numel() == 0
    ):
        return None
    if idx.dtype not in (torch.int32, torch.int64) or g.opset < 13:
        return None
    axis = int(n.attrs.get("axis", 0) or 0)
    rank = len(x.shape)
    axis = axis + rank if axis < 0 else axis
    if not 0 <= axis < rank or not isinstance(x.shape[axis], int):
        return None
    size = x.shape[axis]
    vals = [int(v) + size if int(v) < 0 else int(v) for v in idx.reshape(-1).tolist()]
    if not all(0 <= v < size for v in vals) or vals != list(range(vals[0], vals[0] + len(vals))):
        return None

    def ints(base: str, v: list[int]) -> str:
        return rw.const(f"{n.name}_{base}", torch.tensor(v, dtype=torch.int64))

    starts, ends, axes = ints("start", [vals[0]]), ints("end", [vals[-1] + 1]), ints("axis", [axis])
    if idx.dim() == 1:
        return [Node("Slice", [n.inputs[0], starts, ends, axes], list(n.outputs), {}, n.name)]
    sliced = rw.value(f"{n.name}_slice")
    return [
        Node("Slice", [n.inputs[0], starts, ends, axes], [sliced], {}, f"{n.name}_slice"),
        Node("Squeeze", [sliced, axes], list(n.outputs), {}, n.name),
    ]


RULES = [
    # Gather(x, constant consecutive in-range indices) ==> Slice (+ Squeeze for a scalar)
    Rule("constant_gather", Op("Gather", Any_("x"), Const("i")), _constant_gather),
    # GatherND(x, constant in-order index grid) ==> Reshape(x)
    Rule("in_order_gather_nd", Op("GatherND", Any_("x"), Const("i")), _in_order_gather_nd),
    # Identity(x) ==> x
    Rule("identity", Op("Identity", Any_("x")), _alias("x")),
    # Dropout(x) in inference (no mask read, training_mode absent) ==> x
    Rule(
        "dropout",
        Op(
            "Dropout",
            Any_("x"),
            any_inputs=True,
            where=lambda m, n: (
                (len(n.inputs) < 3 or n.inputs[2] == "")
                and (len(n.outputs) < 2 or not n.outputs[1])
            ),
        ),
        lambda m, rw: (
            m.root.inputs[0]
            if _same_type(Match(m.graph, m.root, values={"x": m.root.inputs[0]}), "x")
            else None
        ),
    ),
    # Cast(x: T, to=T) ==> x
    Rule("cast_to_same_type", Op("Cast", Any_("x")), _alias("x")),
    # Reshape(x, s) where s gives x's own shape ==> x
    Rule("reshape_to_same_shape", Op("Reshape", Any_("x"), Any_()), _alias("x")),
    # Expand(x, s) where the result has x's shape ==> x
    Rule("expand_to_same_shape", Op("Expand", Any_("x"), Any_()), _alias("x")),
    # Transpose(x, perm=identity) ==> x
    Rule(
        "identity_transpose",
        Op(
            "Transpose",
            Any_("x"),
            where=lambda m, n: list(n.attrs.get("perm", [])) == sorted(n.attrs.get("perm", [-1])),
        ),
        _alias("x"),
    ),
    # Squeeze/Unsqueeze/Flatten that keep the shape ==> x
    Rule(
        "noop_shape_op",
        Op(["Squeeze", "Unsqueeze", "Flatten", "Slice", "Pad", "Tile"], Any_("x"), any_inputs=True),
        lambda m, rw: (
            m.root.inputs[0]
            if _same_type(Match(m.graph, m.root, values={"x": m.root.inputs[0]}), "x")
            else None
        ),
    ),
    # x + 0, x - 0 ==> x ;  x * 1, x / 1 ==> x   (only when the result keeps x's type and shape)
    Rule("add_zero", Op(["Add", "Sub"], Any_("x"), Const("c", where=_is_zero)), _alias("x")),
    Rule("mul_one", Op(["Mul", "Div"], Any_("x"), Const("c", where=_is_one)), _alias("x")),
    # Concat of a single input ==> that input
    Rule("single_concat", Op("Concat", Any_("x")), _alias("x")),
]


@register_pass(
    "eliminate_noops",
    level=1,
    doc="remove Identity, inference Dropout, same-type Cast, same-shape Reshape/Expand/Transpose, x+0, x*1; an in-order GatherND becomes a Reshape, a Gather of constant consecutive indices a Slice",
)
def eliminate_noops(graph: Graph) -> Counter[str]:
    return apply_rules(graph, RULES)
