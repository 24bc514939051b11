"""LayerNormalization from its decomposed form.

    mean = ReduceMean(x, axes)          d = x - mean
    var  = ReduceMean(d^2, axes)        (Pow(d, 2) or Mul(d, d))
    y    = d / Sqrt(var + eps)          (or d * Reciprocal(Sqrt(...)), or d * (1 / Sqrt(...)))
    y    = y * gamma + beta             (each optional)

becomes LayerNormalization(x, scale, bias, axis=-k, epsilon=eps) when `axes` are the last k
axes, eps is a constant scalar and gamma/beta are constants varying only along the normalised
dims. The core is matched first (scale = ones), then the affine Mul/Add are folded into the
fused node one at a time, so every exporter's placement of gamma/beta (or their absence, when
a cleanup removed *1 and +0) is covered by the same rules.
"""

from __future__ import annotations

from collections import Counter

import torch

from ecoinfer.ir.dtypes import to_torch
from ecoinfer.ir.graph import Graph, Node
from ecoinfer.ir.pattern import Any_, Const, Match, Op, Pattern, Rewriter, Rule, apply_rules
from ecoinfer.passes.fusion_util import (
    const_axes,
    const_near,
    dtype_of,
    internal_only,
    is_float,
    keeps_shape,
    param_for,
    scalar,
    shape_of,
    trailing_axes,
)
from ecoinfer.passes.registry import register_pass


def squared(d: Pattern) -> list[Pattern]:
    """The ways exporters write d^2."""
    return [Op("Pow", d, Const(where=const_near(2.0))), Op("Mul", d, d)]


def inverse_of(num: Pattern, den: Pattern) -> list[Op]:
    """The ways exporters write num / den."""
    return [
        Op("Div", num, den, name="root"),
        Op("Mul", num, Op("Reciprocal", den), name="root"),
        Op("Mul", num, Op("Div", Const(where=const_near(1.0)), den), name="root"),
    ]


def _core_patterns() -> list[Op]:
    x = Any_("x")
    mean = Op("ReduceMean", x, Const("axes1"), name="mean")
    d = Op("Sub", x, mean, name="d", shared=True)  # read by d^2 and the division
    out = []
    for sq in squared(d):
        var = Op("ReduceMean", sq, Const("axes2"), name="var")
        std = Op("Sqrt", Op("Add", var, Const("eps", where=lambda t: scalar(t) is not None)))
        out += inverse_of(d, std)
    return out


def norm_axis(m: Match, *reductions: str) -> tuple[int, list[int]] | None:
    """(k, normalised dims) when every named reduction is over the same last k axes of x."""
    x = m.values["x"]
    shape = shape_of(m.graph, x)
    rank = None if shape is None else len(shape)
    axes = [const_axes(m, r) for r in reductions]
    if any(a is None for a in axes):
        return None
    first = axes[0]
    k = trailing_axes(first, rank)  # type: ignore[arg-type]
    if k is None:
        return None
    for a in axes[1:]:
        if trailing_axes(a, rank) != k:  # type: ignore[arg-type]
            return None
        if rank is not None:
            if sorted(v % rank for v in a) != sorted(v % rank for v in first):  # type: ignore[union-attr]
                return None
        elif sorted(a) != sorted(first):  # type: ignore[type-var]
            return None
    if shape is None:
        return None
    dims = list(shape[len(shape) - k :])
    if not all(isinstance(v, int) for v in dims):
        return None  # the scale tensor needs the normalised size
    return k, dims  # type: ignore[return-value]


def _fuse_core(m: Match, rw: Rewriter) -> list[Node] | None:
    if (
        not is_float(m.graph, m.values["x"])
        or not keeps_shape(m, m.values["x"])
        or not internal_only(m)
    ):
        return None
    found = norm_axis(m, "mean", "var")
    if found is None:
        return None
    k, dims = found
    eps = m.const("eps")
    if not eps.is_floating_point():
        return None
    dt = to_torch(dtype_of(m.graph, m.values["x"]))  # type: ignore[arg-type]
    scale = rw.const(f"{m.root.outputs[0]}_ln_scale", torch.ones(dims, dtype=dt))
    return [
        Node(
            "LayerNormalization",
            [m.values["x"], scale],
            [m.root.outputs[0]],
            {"axis": -k, "epsilon": float(scalar(eps))},  # type: ignore[arg-type]
            name=m.root.name or "LayerNormalization",
        )
    ]


def _single_output(m: Match, n: Node) -> bool:
    return all(not o for o in n.outputs[1:])


def _norm_dims(graph: Graph, n: Node) -> tuple[list[int], int] | None:
    shape = shape_of(graph, n.inputs[0])
    if shape is None:
        return None
    axis = int(n.attrs.get("axis", -1))
    axis = axis + len(shape) if axis < 0 else axis
    dims = list(shape[axis:])
    if not all(isinstance(v, int) for v in dims):
        return None
    return dims, len(shape)  # type: ignore[return-value]


def absorb_scale(m: Match, rw: Rewriter) -> list[Node] | None:
    """Mul(Norm(x, s, b?), c) -> Norm(x, s*c, b*c) for LayerNormalization and RMSNormalization."""
    n = m.nodes["norm"]
    found = _norm_dims(m.graph, n)
    c = m.const("c")
    if found is None:
        return None
    dims, rank = found
    p = param_for(c, dims, rank)
    s = m.graph.initializers.get(n.inputs[1])
    if p is None or s is None or s.dtype != c.dtype:
        return None
    inputs = [n.inputs[0], rw.const(f"{n.inputs[1]}_scaled", torch.broadcast_to(s, dims) * p)]
    if len(n.inputs) > 2 and n.inputs[2]:
        b = m.graph.initializers.get(n.inputs[2])
        if b is None:
            return None
        inputs.append(rw.const(f"{n.inputs[2]}_scaled", torch.broadcast_to(b, dims) * p))
    return [Node(n.op_type, inputs, [m.root.outputs[0]], dict(n.attrs), n.name)]


def _absorb_bias(m: Match, rw: Rewriter) -> list[Node] | None:
    n = m.nodes["norm"]
    found = _norm_dims(m.graph, n)
    c = m.const("c")
    if found is None:
        return None
    dims, rank = found
    p = param_for(c, dims, rank)
    s = m.graph.initializers.get(n.inputs[1])
    if p is None or s is None or s.dtype != c.dtype:
        return None
    if len(n.inputs) > 2 and n.inputs[2]:
        b = m.graph.initializers.get(n.inputs[2])
        if b is None:
            return None
        p = torch.broadcast_to(b, dims) + p
    bias = rw.const(f"{m.root.outputs[0]}_ln_bias", p)
    return [
        Node(
            n.op_type, [n.inputs[0], n.inputs[1], bias], [m.root.outputs[0]], dict(n.attrs), n.name
        )
    ]


def _norm(op_type: str) -> Op:
    return Op(op_type, any_inputs=True, name="norm", where=_single_output)


RULES = [
    *[
        # d = x - mean(x); d / sqrt(mean(d^2) + eps) over the last k axes ==> LayerNorm(x, 1)
        Rule("layernorm", p, _fuse_core, "decomposed layer norm ==> LayerNormalization")
        for p in _core_patterns()
    ],
    # LayerNorm(x, s, b) * gamma ==> LayerNorm(x, s*gamma, b*gamma)   (gamma along the normalised dims)
    Rule("scale", Op("Mul", _norm("LayerNormalization"), Const("c")), absorb_scale),
    # LayerNorm(x, s, b) + beta ==> LayerNorm(x, s, b + beta)   (beta along the normalised dims)
    Rule("bias", Op("Add", _norm("LayerNormalization"), Const("c")), _absorb_bias),
]


@register_pass(
    "fuse_layernorm",
    level=2,
    doc="LayerNormalization from ReduceMean/Sub/Pow/Sqrt/Div/Mul/Add over the trailing axes",
)
def fuse_layernorm(graph: Graph) -> Counter[str]:
    return apply_rules(graph, RULES)
