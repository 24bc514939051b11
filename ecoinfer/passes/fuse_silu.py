"""Swish/SiLU and HardSwish from their decomposed forms.

    x * Sigmoid(x)               -> Swish(x)             (SiLU; alpha = 1)
    x * Sigmoid(alpha * x)       -> Swish(x, alpha)
    x * HardSigmoid(x, 1/6, 0.5) -> HardSwish(x)
    x * Clip(x + 3, 0, 6) / 6    -> HardSwish(x)         (x * relu6(x + 3) / 6, any association)

Swish and HardSwish are single elementwise ops the fused conv/GEMM epilogues take as their
activation, so these run before fuse_conv and fuse_gemm.
"""

from __future__ import annotations

from collections import Counter

from ecoinfer.ir.graph import Graph, Node
from ecoinfer.ir.pattern import Any_, Const, Match, Op, Rewriter, Rule, apply_rules
from ecoinfer.passes.fusion_util import const_near, is_float, keeps_shape, scalar
from ecoinfer.passes.registry import register_pass


def _unary(op_type: str, alpha: str | None = None):  # noqa: ANN202
    def rewrite(m: Match, rw: Rewriter) -> list[Node] | None:
        if not is_float(m.graph, m.values["x"]) or not keeps_shape(m, m.values["x"]):
            return None
        attrs = {}
        if alpha is not None:
            a = scalar(m.const(alpha))
            if a is None:
                return None
            attrs["alpha"] = a
        return [
            Node(op_type, [m.values["x"]], [m.root.outputs[0]], attrs, name=m.root.name or op_type)
        ]

    return rewrite


def _hard_sigmoid_is_swish_gate(m: Match, n: Node) -> bool:
    # HardSwish(x) = x * HardSigmoid(x; alpha=1/6, beta=1/2) exactly
    alpha, beta = float(n.attrs.get("alpha", 0.2)), float(n.attrs.get("beta", 0.5))
    return abs(alpha - 1.0 / 6.0) <= 1e-6 and abs(beta - 0.5) <= 1e-7


_X = Any_("x")
_RELU6 = Op(
    "Clip",
    Op("Add", _X, Const(where=const_near(3.0))),
    Const(where=const_near(0.0)),
    Const(where=const_near(6.0)),
)
_SIX = Const(where=const_near(6.0))
_SIXTH = Const(where=const_near(1.0 / 6.0))

RULES = [
    # x * sigmoid(x) ==> Swish(x)   (SiLU)
    Rule("silu", Op("Mul", _X, Op("Sigmoid", _X)), _unary("Swish"), "x*sigmoid(x) ==> Swish"),
    # x * sigmoid(a*x) ==> Swish(x, alpha=a)
    Rule(
        "swish",
        Op(
            "Mul",
            _X,
            Op("Sigmoid", Op("Mul", _X, Const("a", where=lambda t: scalar(t) is not None))),
        ),
        _unary("Swish", alpha="a"),
        "x*sigmoid(a*x) ==> Swish(alpha=a)",
    ),
    # x * hardsigmoid(x; 1/6, 1/2) ==> HardSwish(x)
    Rule(
        "hardswish",
        Op("Mul", _X, Op("HardSigmoid", _X, where=_hard_sigmoid_is_swish_gate)),
        _unary("HardSwish"),
        "x*hardsigmoid(x) ==> HardSwish",
    ),
    # x * clip(x+3, 0, 6) / 6 ==> HardSwish(x)   (three associations)
    *[
        Rule("hardswish", p, _unary("HardSwish"), "x*relu6(x+3)/6 ==> HardSwish")
        for p in (
            Op("Div", Op("Mul", _X, _RELU6), _SIX),
            Op("Mul", _X, Op("Div", _RELU6, _SIX)),
            Op("Mul", Op("Mul", _X, _RELU6), _SIXTH),
            Op("Mul", _X, Op("Mul", _RELU6, _SIXTH)),
        )
    ],
]


@register_pass(
    "fuse_silu",
    level=2,
    doc="Swish from x*Sigmoid(x) (SiLU) and HardSwish from x*HardSigmoid(x) or x*relu6(x+3)/6",
)
def fuse_silu(graph: Graph) -> Counter[str]:
    return apply_rules(graph, RULES)
