"""Fuse Conv + bias + activation + residual Add (+ activation) into one ecoinfer.FusedConv.

Every Conv becomes a FusedConv with explicit pads (auto_pad resolved from known shapes);
then, while the conv's output is read by that op alone, the ops after it are absorbed in
the order the epilogue runs them (see ecoinfer/ir/ops/fused_conv.py):

    y = Conv(X, W, B);  y = activation(y);  y = y + Z;  y = post_activation(y)

so ResNet's Conv -> Add(residual) -> Relu, MobileNetV2's Conv -> Clip(0, 6) and projection
Conv -> Add(residual), and MobileNetV3's Conv -> HardSwish each become one node. A value read
twice, a Clip whose bounds are computed at run time, or a residual that would broadcast the
output to a bigger shape all leave the graph alone.
"""

from __future__ import annotations

import math
from collections import Counter

import torch

from ecoinfer.ir import dtypes
from ecoinfer.ir.graph import Graph, Node, Shape
from ecoinfer.ir.ops.nn import resolve_pads
from ecoinfer.ir.pattern import Any_, Const, Match, Op, Rewriter, Rule, apply_rules
from ecoinfer.kernels.torch_ops.activation import activation_of
from ecoinfer.passes.registry import register_pass

DOMAIN = "ecoinfer"
# ONNX activations a FusedConv absorbs as they are (Clip is separate: its bounds are inputs)
UNARY_ACTIVATIONS = [
    "Relu",
    "Sigmoid",
    "HardSigmoid",
    "HardSwish",
    "Tanh",
    "LeakyRelu",
    "Elu",
    "Gelu",
    "Swish",
]


# ---------------------------------------------------------------------- helpers
def _has_z(n: Node) -> bool:
    return len(n.inputs) > 3 and n.inputs[3] != ""


def _slot(n: Node) -> str | None:
    """The attribute a new activation goes to: `activation` before the residual add,
    `post_activation` after it; None when that place is taken."""
    key = "post_activation" if _has_z(n) else "activation"
    return None if n.attrs.get(key) else key


def _slot_free(m: Match, n: Node) -> bool:
    return _slot(n) is not None


def _bare(m: Match, n: Node) -> bool:
    """No epilogue yet: the output is still Conv(X, W, B)."""
    return not n.attrs.get("activation") and not _has_z(n)


def _shape(g: Graph, name: str) -> Shape | None:
    if name in g.initializers:
        return tuple(g.initializers[name].shape)
    v = g.values.get(name)
    return v.shape if v else None


def _with(conv: Node, out: str, **changes: object) -> Node:
    """A copy of a FusedConv node writing `out`, with attributes/inputs changed."""
    attrs = dict(conv.attrs)
    inputs = list(conv.inputs)
    for k, v in changes.items():
        if k == "inputs":
            inputs = list(v)  # type: ignore[call-overload]
        elif v is None or v == [] or v == "":
            attrs.pop(k, None)  # defaults stay implicit (empty lists are untyped in ONNX)
        else:
            attrs[k] = v
    while inputs and inputs[-1] == "":
        inputs.pop()
    return Node("FusedConv", inputs, [out], attrs, conv.name, DOMAIN)


# ---------------------------------------------------------------------- Conv -> FusedConv
def _to_fused(m: Match, rw: Rewriter) -> list[Node] | None:
    conv = m.root
    g = m.graph
    x_shape, w_shape = _shape(g, conv.inputs[0]), _shape(g, conv.inputs[1])
    kernel = conv.attrs.get("kernel_shape")
    if not kernel:
        if w_shape is None or not all(isinstance(d, int) for d in w_shape[2:]):
            return None
        kernel = list(w_shape[2:])
    kernel = [int(k) for k in kernel]
    nd = len(kernel)
    if nd < 1 or nd > 3:
        return None
    strides = [int(v) for v in conv.attrs.get("strides") or [1] * nd]
    dil = [int(v) for v in conv.attrs.get("dilations") or [1] * nd]
    pads = [int(v) for v in conv.attrs.get("pads") or [0] * (2 * nd)]
    if len(strides) != nd or len(dil) != nd or len(pads) != 2 * nd:
        return None
    auto_pad = conv.attrs.get("auto_pad") or "NOTSET"
    if auto_pad == "VALID":
        pads = [0] * (2 * nd)
    elif auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        # explicit pads need the spatial sizes; unknown sizes keep the plain Conv
        if x_shape is None or len(x_shape) != nd + 2:
            return None
        sizes = x_shape[2:]
        if not all(isinstance(s, int) for s in sizes):
            return None
        both = [
            resolve_pads(int(sizes[i]), kernel[i], strides[i], dil[i], 0, 0, auto_pad)  # type: ignore[arg-type]
            for i in range(nd)
        ]
        pads = [b for b, _ in both] + [e for _, e in both]
    elif auto_pad != "NOTSET":
        return None
    attrs = {
        "dilations": dil,
        "group": int(conv.attrs.get("group", 1)),
        "kernel_shape": kernel,
        "pads": pads,
        "strides": strides,
    }
    return [Node("FusedConv", list(conv.inputs), list(conv.outputs), attrs, conv.name, DOMAIN)]


# ---------------------------------------------------------------------- bias
def _per_channel(c: torch.Tensor, rank: int, m_out: object) -> bool:
    if c.dim() > rank or not c.is_floating_point():
        return False
    shape = (1,) * (rank - c.dim()) + tuple(c.shape)
    return (
        shape[0] == 1
        and all(d == 1 for d in shape[2:])
        and (shape[1] == 1 or (isinstance(m_out, int) and shape[1] == m_out))
    )


def _bias(sign: float):  # noqa: ANN202
    def rewrite(m: Match, rw: Rewriter) -> list[Node] | None:
        conv = m.nodes["conv"]
        if conv.attrs.get("layout", "NCHW") != "NCHW":
            return None  # the per-channel test below reads axis 1
        out = _shape(m.graph, conv.outputs[0])
        c = m.const("c")
        if out is None or not _per_channel(c, len(out), out[1]) or not isinstance(out[1], int):
            return None
        n_out = int(out[1])
        old = (
            m.graph.initializers.get(conv.inputs[2])
            if len(conv.inputs) > 2 and conv.inputs[2]
            else None
        )
        if len(conv.inputs) > 2 and conv.inputs[2] and old is None:
            return None  # run-time bias: keep the Add
        dt = old.dtype if old is not None else c.dtype
        b = old.double() if old is not None else torch.zeros(n_out, dtype=torch.float64)
        b = b + sign * c.double().reshape(-1).expand(n_out)
        name = rw.const(f"{conv.name or 'conv'}_bias", b.to(dt))
        ins = list(conv.inputs[:2]) + [name]
        return [_with(conv, m.root.outputs[0], inputs=ins)]

    return rewrite


# ---------------------------------------------------------------------- activations
def _activation(m: Match, rw: Rewriter) -> list[Node] | None:
    conv, act = m.nodes["conv"], m.root
    consts: list[torch.Tensor | None] = []
    for name in act.inputs[1:]:
        if not name:
            consts.append(None)
        elif name in m.graph.initializers:
            consts.append(m.graph.initializers[name])
        else:
            return None  # a Clip bound computed at run time
    found = activation_of(act.op_type, act.attrs, consts)
    slot = _slot(conv)
    if found is None or slot is None:
        return None
    kind, params = found
    return [_with(conv, act.outputs[0], **{slot: kind, f"{slot}_params": params})]


def _gated(kind: str, params: list[float]):  # noqa: ANN202
    """x * gate(x) where x is the conv output read by exactly the Mul and the gate."""

    def rewrite(m: Match, rw: Rewriter) -> list[Node] | None:
        conv = m.nodes["conv"]
        out = conv.outputs[0]
        readers = m.graph.consumers().get(out, [])
        if out in m.graph.output_names or len(readers) != 2:
            return None
        if {id(n) for n in readers} != {id(m.root), id(m.nodes["gate"])}:
            return None
        slot = _slot(conv)
        if slot is None:
            return None
        return [_with(conv, m.root.outputs[0], **{slot: kind, f"{slot}_params": params})]

    return rewrite


def _is_hardswish_gate(m: Match, n: Node) -> bool:
    alpha, beta = float(n.attrs.get("alpha", 0.2)), float(n.attrs.get("beta", 0.5))
    return math.isclose(alpha, 1 / 6, rel_tol=1e-6) and beta == 0.5


# ---------------------------------------------------------------------- residual
def _residual(m: Match, rw: Rewriter) -> list[Node] | None:
    conv = m.nodes["conv"]
    g = m.graph
    z = m.values["z"]
    y_shape, z_shape = _shape(g, conv.outputs[0]), _shape(g, z)
    if y_shape is None or z_shape is None or len(z_shape) > len(y_shape):
        return None
    # Z broadcasts into Y without growing it: each dim is 1 or Y's own (same int or symbol)
    for zd, yd in zip(z_shape[::-1], y_shape[::-1]):
        if zd != 1 and (zd is None or zd != yd):
            return None
    ydt = g.values[conv.outputs[0]].dtype if conv.outputs[0] in g.values else None
    zdt = (
        dtypes.from_torch(g.initializers[z].dtype)
        if z in g.initializers
        else (g.values[z].dtype if z in g.values else None)
    )
    if ydt is None or ydt != zdt:
        return None
    ins = list(conv.inputs) + [""] * (3 - len(conv.inputs)) + [z]
    return [_with(conv, m.root.outputs[0], inputs=ins)]


# ---------------------------------------------------------------------- rules
def _conv(where=_slot_free, shared: bool = False) -> Op:  # noqa: ANN001
    return Op("FusedConv", any_inputs=True, name="conv", domain=DOMAIN, where=where, shared=shared)


RULES = [
    # Conv(x, W, b; auto_pad) ==> FusedConv(x, W, b; explicit pads)
    Rule("conv", Op("Conv", any_inputs=True), _to_fused),
    # FusedConv(x, W, b) + c, c per output channel ==> FusedConv(x, W, b + c)
    Rule("bias_add", Op("Add", _conv(_bare), Const("c")), _bias(1.0)),
    # FusedConv(x, W, b) - c, c per output channel ==> FusedConv(x, W, b - c)
    Rule("bias_sub", Op("Sub", _conv(_bare), Const("c")), _bias(-1.0)),
    # act(FusedConv(..)) ==> FusedConv(.., activation=act) (post_activation after a residual)
    Rule("activation", Op(UNARY_ACTIVATIONS, _conv(), name="act"), _activation),
    # Clip(FusedConv(..), lo, hi), lo/hi constant or absent ==> FusedConv(.., activation=Clip)
    Rule("clip", Op("Clip", _conv(), name="act"), _activation),
    Rule("clip", Op("Clip", _conv(), Any_("lo"), name="act"), _activation),
    Rule("clip", Op("Clip", _conv(), Any_("lo"), Any_("hi"), name="act"), _activation),
    # y * Sigmoid(y), y = FusedConv(..) ==> FusedConv(.., activation=Swish(alpha=1))  (SiLU)
    Rule(
        "silu",
        Op("Mul", _conv(shared=True), Op("Sigmoid", _conv(shared=True), name="gate")),
        _gated("Swish", [1.0]),
    ),
    # y * HardSigmoid(y; 1/6, 0.5), y = FusedConv(..) ==> FusedConv(.., activation=HardSwish)
    Rule(
        "hardswish",
        Op(
            "Mul",
            _conv(shared=True),
            Op("HardSigmoid", _conv(shared=True), name="gate", where=_is_hardswish_gate),
        ),
        _gated("HardSwish", []),
    ),
    # FusedConv(x, W, b; act) + z ==> FusedConv(x, W, b, z; act)   (residual)
    Rule(
        "residual",
        Op("Add", _conv(lambda m, n: not _has_z(n)), Any_("z")),
        _residual,
    ),
]


@register_pass(
    "fuse_conv",
    level=2,
    doc="Conv + bias + activation + residual Add + activation -> ecoinfer.FusedConv",
)
def fuse_conv(graph: Graph) -> Counter[str]:
    return apply_rules(graph, RULES)
