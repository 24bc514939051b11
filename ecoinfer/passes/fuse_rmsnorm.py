"""RMSNormalization (T5/LLaMA RMSNorm) from its decomposed form.

    ms = ReduceMean(x^2, axes)            (Pow(x, 2) or Mul(x, x))
    y  = x / Sqrt(ms + eps)               (or x * Reciprocal(Sqrt(...)), or x * (1 / Sqrt(...)))
    y  = y * gamma                        (optional)

becomes RMSNormalization(x, scale, axis=-k, epsilon=eps) when `axes` are the last k axes of x
and eps is a constant scalar; a constant gamma varying only along the normalised dims is then
folded into the scale. Runs after fuse_layernorm, whose variance tail is this same shape.
"""

from __future__ import annotations

from collections import Counter

import torch

from ecoinfer.ir.dtypes import to_torch
from ecoinfer.ir.graph import Graph, Node
from ecoinfer.ir.pattern import Any_, Const, Match, Op, Rewriter, Rule, apply_rules
from ecoinfer.passes.fuse_layernorm import absorb_scale, inverse_of, norm_axis, squared
from ecoinfer.passes.fusion_util import dtype_of, internal_only, is_float, keeps_shape, scalar
from ecoinfer.passes.registry import register_pass


def _core_patterns() -> list[Op]:
    x = Any_("x")
    out = []
    for sq in squared(x):
        ms = Op("ReduceMean", sq, Const("axes"), name="ms")
        den = Op("Sqrt", Op("Add", ms, Const("eps", where=lambda t: scalar(t) is not None)))
        out += inverse_of(x, den)
    return out


def _fuse_core(m: Match, rw: Rewriter) -> list[Node] | None:
    if (
        not is_float(m.graph, m.values["x"])
        or not keeps_shape(m, m.values["x"])
        or not internal_only(m)
    ):
        return None
    found = norm_axis(m, "ms")
    eps = m.const("eps")
    if found is None or not eps.is_floating_point():
        return None
    k, dims = found
    dt = to_torch(dtype_of(m.graph, m.values["x"]))  # type: ignore[arg-type]
    scale = rw.const(f"{m.root.outputs[0]}_rms_scale", torch.ones(dims, dtype=dt))
    return [
        Node(
            "RMSNormalization",
            [m.values["x"], scale],
            [m.root.outputs[0]],
            {"axis": -k, "epsilon": float(scalar(eps))},  # type: ignore[arg-type]
            name=m.root.name or "RMSNormalization",
        )
    ]


RULES = [
    *[
        # x / sqrt(mean(x^2) + eps) over the last k axes ==> RMSNormalization(x, 1)
        Rule("rmsnorm", p, _fuse_core, "decomposed RMS norm ==> RMSNormalization")
        for p in _core_patterns()
    ],
    # RMSNorm(x, s) * gamma ==> RMSNorm(x, s*gamma)   (gamma along the normalised dims)
    Rule(
        "scale",
        Op("Mul", Op("RMSNormalization", any_inputs=True, name="norm"), Const("c")),
        absorb_scale,
    ),
]


@register_pass(
    "fuse_rmsnorm",
    level=2,
    doc="RMSNormalization from Pow/ReduceMean/Add/Sqrt/Div(or Reciprocal+Mul)/Mul over the trailing axes",
)
def fuse_rmsnorm(graph: Graph) -> Counter[str]:
    return apply_rules(graph, RULES)
