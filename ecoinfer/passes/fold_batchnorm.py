"""Fold inference BatchNormalization into the Conv / Gemm / MatMul that produces its input.

With s = gamma / sqrt(var + eps) per channel, BN(y) = y * s + (beta - mean * s), so when y is
an affine function of a constant weight, the scale goes into the weight and the shift into the
bias (a bias computed at run time, like the dynamo exporter's zeros, gets a tiny Mul + Add
on the [M] vector). The producer's output must be read by the BN alone (the pattern's
single-use rule): a conv output read elsewhere too keeps its weights. A BN with nothing to
fold into becomes Mul + Add with constants (x * s + t), which the elementwise fusion can
absorb. Arithmetic is done in float64 and rounded once to the weight's dtype.
"""

from __future__ import annotations

from collections import Counter

import torch

from ecoinfer.ir import dtypes
from ecoinfer.ir.graph import Graph, Node
from ecoinfer.ir.pattern import Any_, Const, Match, Op, Rewriter, Rule, apply_rules
from ecoinfer.passes.registry import register_pass

_PARAMS = ("scale", "beta", "mean", "var")


def _inference_bn(m: Match, n: Node) -> bool:
    """BN in inference form: training_mode off and no running-statistics outputs."""
    return not n.attrs.get("training_mode", 0) and not any(o for o in n.outputs[1:])


def _bn(producer: Op) -> Op:
    return Op(
        "BatchNormalization",
        producer,
        *(Const(p) for p in _PARAMS),
        name="bn",
        where=_inference_bn,
    )


def _scale_shift(m: Match, channels: int) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(s, t) in float64 with BN(y) = y * s + t over `channels`, or None if shapes differ."""
    ps = [m.const(p) for p in _PARAMS]
    if any(p.dim() != 1 or p.shape[0] != channels or not p.is_floating_point() for p in ps):
        return None
    scale, beta, mean, var = (p.double() for p in ps)
    eps = float(m.root.attrs.get("epsilon", 1e-5))
    s = scale / torch.sqrt(var + eps)
    return s, beta - mean * s


def _fold_conv(m: Match, rw: Rewriter) -> list[Node] | None:
    conv = m.nodes["conv"]
    ins = list(conv.inputs)
    if conv.domain == "ecoinfer":
        # a FusedConv is affine only without epilogue; fold_batchnorm runs first anyway
        if conv.attrs.get("activation") or (len(ins) > 3 and ins[3]):
            return None
        if conv.attrs.get("layout", "NCHW") != "NCHW":
            return None
    w = m.graph.initializers.get(ins[1])
    if w is None or not w.is_floating_point() or w.dim() < 3:
        return None
    st = _scale_shift(m, w.shape[0])
    if st is None:
        return None
    s, t = st
    w2 = (w.double() * s.reshape(-1, *([1] * (w.dim() - 1)))).to(w.dtype)
    base = m.root.name or conv.name or "conv"
    bias = ins[2] if len(ins) > 2 else ""
    pre: list[Node] = []
    if not bias or bias in m.graph.initializers:
        b = m.graph.initializers[bias].double().reshape(-1) if bias else torch.zeros_like(s)
        if b.shape != s.shape:
            return None
        new_bias = rw.const(f"{base}_bias", (b * s + t).to(w.dtype))
    else:
        # a bias computed at run time (the dynamo exporter's zeros): scale and shift it
        bv = m.graph.values.get(bias)
        if bv is None or bv.shape is None or len(bv.shape) != 1 or bv.shape[0] != s.shape[0]:
            return None
        scaled = rw.value(f"{base}_bias_scaled", bv)
        new_bias = rw.value(f"{base}_bias", bv)
        pre = [
            Node(
                "Mul",
                [bias, rw.const(f"{base}_s", s.to(w.dtype))],
                [scaled],
                {},
                f"{base}_bias_mul",
            ),
            Node(
                "Add",
                [scaled, rw.const(f"{base}_t", t.to(w.dtype))],
                [new_bias],
                {},
                f"{base}_bias_add",
            ),
        ]
    new_ins = [ins[0], rw.const(f"{ins[1]}_bn", w2), new_bias, *ins[3:]]
    out = Node(conv.op_type, new_ins, [m.root.outputs[0]], dict(conv.attrs), conv.name, conv.domain)
    return [*pre, out]


def _fold_gemm(m: Match, rw: Rewriter) -> list[Node] | None:
    gemm = m.nodes["gemm"]
    a, bname = gemm.inputs[0], gemm.inputs[1]
    c = gemm.inputs[2] if len(gemm.inputs) > 2 and gemm.inputs[2] else None
    w = m.graph.initializers.get(bname)
    if w is None or w.dim() != 2 or not w.is_floating_point():
        return None
    if c is not None and c not in m.graph.initializers:
        return None
    trans_b = bool(gemm.attrs.get("transB", 0))
    cols = w.shape[0] if trans_b else w.shape[1]
    st = _scale_shift(m, cols)
    if st is None:
        return None
    s, t = st
    w2 = (w.double() * (s[:, None] if trans_b else s[None, :])).to(w.dtype)
    beta = float(gemm.attrs.get("beta", 1.0))
    c64 = m.graph.initializers[c].double() * beta if c is not None else torch.zeros(())
    try:
        c2 = torch.broadcast_tensors(c64, s)[0] * s + t
    except RuntimeError:
        return None
    if c2.dim() > 2:
        return None
    attrs = dict(gemm.attrs)
    attrs["beta"] = 1.0
    ins = [a, rw.const(f"{bname}_bn", w2), rw.const(f"{gemm.name or 'gemm'}_bias", c2.to(w.dtype))]
    return [Node("Gemm", ins, [m.root.outputs[0]], attrs, gemm.name)]


def _fold_matmul(m: Match, rw: Rewriter) -> list[Node] | None:
    """MatMul(X[N,K], W[K,M]) (+ c) -> BN: only 2-D, where BN's channel axis is the column."""
    x = m.values["x"]
    xv = m.graph.values.get(x)
    w = m.const("w")
    if xv is None or xv.rank != 2 or w.dim() != 2 or not w.is_floating_point():
        return None
    st = _scale_shift(m, w.shape[1])
    if st is None:
        return None
    s, t = st
    c64 = m.const("c").double() if "c" in m.values else torch.zeros(())
    try:
        c2 = torch.broadcast_tensors(c64, s)[0] * s + t
    except RuntimeError:
        return None
    if c2.dim() > 2:
        return None
    w2 = (w.double() * s[None, :]).to(w.dtype)
    name = m.nodes["mm"].name
    ins = [
        x,
        rw.const(f"{m.values['w']}_bn", w2),
        rw.const(f"{name or 'matmul'}_bias", c2.to(w.dtype)),
    ]
    return [Node("Gemm", ins, [m.root.outputs[0]], {}, name)]


def _standalone(m: Match, rw: Rewriter) -> list[Node] | None:
    x = m.values["x"]
    xv = m.graph.values.get(x)
    if xv is None or xv.rank is None or xv.rank < 2 or xv.dtype is None:
        return None
    ch = xv.shape[1]  # type: ignore[index]
    n = m.const("scale").shape[0] if m.const("scale").dim() == 1 else None
    if n is None or (isinstance(ch, int) and ch != n):
        return None
    st = _scale_shift(m, n)
    if st is None:
        return None
    s, t = st
    dt = dtypes.to_torch(xv.dtype)  # Mul/Add need x's own type (BN's stats may be wider)
    if not dt.is_floating_point:
        return None
    shape = (n, *([1] * (xv.rank - 2)))
    mid = rw.value(f"{m.root.outputs[0]}_scaled", xv)
    base = m.root.name or "bn"
    return [
        Node(
            "Mul", [x, rw.const(f"{base}_scale", s.reshape(shape).to(dt))], [mid], {}, f"{base}_mul"
        ),
        Node(
            "Add",
            [mid, rw.const(f"{base}_shift", t.reshape(shape).to(dt))],
            [m.root.outputs[0]],
            {},
            base,
        ),
    ]


RULES = [
    # BN(Conv(x, W, b)) ==> Conv(x, W * s[:, None, ...], (b - mean) * s + beta)
    Rule("conv_bn", _bn(Op("Conv", any_inputs=True, name="conv")), _fold_conv),
    # BN(FusedConv(x, W, b)) without epilogue ==> the same fold
    Rule(
        "fused_conv_bn",
        _bn(Op("FusedConv", any_inputs=True, name="conv", domain="ecoinfer")),
        _fold_conv,
    ),
    # BN(Gemm(a, B, c)) ==> Gemm(a, B * s (per output column), (beta_g * c - mean) * s + beta)
    Rule("gemm_bn", _bn(Op("Gemm", any_inputs=True, name="gemm")), _fold_gemm),
    # BN(MatMul(x[N,K], W)) ==> Gemm(x, W * s[None, :], beta - mean * s)
    Rule("matmul_bn", _bn(Op("MatMul", Any_("x"), Const("w"), name="mm")), _fold_matmul),
    # BN(MatMul(x[N,K], W) + c) ==> Gemm(x, W * s[None, :], (c - mean) * s + beta)
    Rule(
        "matmul_add_bn",
        _bn(Op("Add", Op("MatMul", Any_("x"), Const("w"), name="mm"), Const("c"))),
        _fold_matmul,
    ),
    # BN(x) with nothing to fold into ==> x * s + (beta - mean * s)   (per channel, axis 1)
    Rule(
        "bn_to_mul_add",
        Op("BatchNormalization", Any_("x"), *(Const(p) for p in _PARAMS), where=_inference_bn),
        _standalone,
    ),
]


@register_pass(
    "fold_batchnorm",
    level=2,
    doc="fold inference BatchNormalization into the preceding Conv/Gemm/MatMul; others -> Mul+Add",
)
def fold_batchnorm(graph: Graph) -> Counter[str]:
    return apply_rules(graph, RULES)
