"""Gelu from its erf and tanh forms.

    erf:  0.5 * x * (1 + erf(x / sqrt(2)))                                  -> Gelu(x)
    tanh: 0.5 * x * (1 + tanh(sqrt(2/pi) * (x + 0.044715 * x^3)))           -> Gelu(x, approximate="tanh")

Exporters differ in where the 0.5 goes (first, last, or on the (1 + ...) factor), in x/sqrt(2)
versus x*(1/sqrt(2)), and in x^3 as Pow(x, 3) or x*x*x; every association of the three-factor
product is matched. Irrational constants are accepted within 1e-4 (some exporters print
1.4142); 0.5, 1 and 3 must be exact up to float rounding.
"""

from __future__ import annotations

import math
from collections import Counter

from ecoinfer.ir.graph import Graph, Node
from ecoinfer.ir.pattern import Any_, Const, Match, Op, Pattern, Rewriter, Rule, apply_rules
from ecoinfer.passes.fusion_util import const_near, internal_only, is_float, keeps_shape
from ecoinfer.passes.registry import register_pass

_LOOSE = 1e-4


def _c(value: float, rtol: float = 1e-6) -> Const:
    return Const(where=const_near(value, rtol))


def _erf_factor(x: Pattern) -> list[Pattern]:
    """(1 + erf(x / sqrt 2)) in its exported spellings."""
    scaled = [
        Op("Div", x, _c(math.sqrt(2.0), _LOOSE)),
        Op("Mul", x, _c(1.0 / math.sqrt(2.0), _LOOSE)),
    ]
    return [Op("Add", Op("Erf", s), _c(1.0)) for s in scaled]


def _tanh_factor(x: Pattern) -> list[Pattern]:
    """(1 + tanh(sqrt(2/pi) * (x + 0.044715 * x^3))) in its exported spellings."""
    cubes = [Op("Pow", x, _c(3.0)), Op("Mul", x, Op("Mul", x, x))]
    out: list[Pattern] = []
    for cube in cubes:
        inner = Op("Add", x, Op("Mul", cube, _c(0.044715, _LOOSE)))
        arg = Op("Mul", inner, _c(math.sqrt(2.0 / math.pi), _LOOSE))
        out.append(Op("Add", Op("Tanh", arg), _c(1.0)))
    return out


def _products(x: Pattern, factor: Pattern) -> list[Op]:
    """0.5 * x * factor, every way of associating it (Mul is matched in both input orders)."""
    half = _c(0.5)
    return [
        Op("Mul", Op("Mul", x, factor), half),
        Op("Mul", x, Op("Mul", factor, half)),
        Op("Mul", Op("Mul", x, half), factor),
        Op("Div", Op("Mul", x, factor), _c(2.0)),
    ]


def _gelu(approximate: str):  # noqa: ANN202
    def rewrite(m: Match, rw: Rewriter) -> list[Node] | None:
        if (
            not is_float(m.graph, m.values["x"])
            or not keeps_shape(m, m.values["x"])
            or not internal_only(m)
        ):
            return None
        attrs = {"approximate": approximate} if approximate != "none" else {}
        return [
            Node(
                "Gelu",
                [m.values["x"]],
                [m.root.outputs[0]],
                attrs,
                name=m.root.name or "Gelu",
            )
        ]

    return rewrite


_X = Any_("x")
RULES = [
    *[
        # 0.5 * x * (1 + erf(x / sqrt2)) ==> Gelu(x)
        Rule("gelu_erf", p, _gelu("none"), "erf GELU ==> Gelu")
        for f in _erf_factor(_X)
        for p in _products(_X, f)
    ],
    *[
        # 0.5 * x * (1 + tanh(sqrt(2/pi) * (x + 0.044715 x^3))) ==> Gelu(x, approximate=tanh)
        Rule("gelu_tanh", p, _gelu("tanh"), "tanh GELU ==> Gelu(approximate='tanh')")
        for f in _tanh_factor(_X)
        for p in _products(_X, f)
    ],
]


@register_pass(
    "fuse_gelu",
    level=2,
    doc="Gelu from 0.5*x*(1+erf(x/sqrt2)) and 0.5*x*(1+tanh(sqrt(2/pi)*(x+0.044715x^3)))",
)
def fuse_gelu(graph: Graph) -> Counter[str]:
    return apply_rules(graph, RULES)
