"""Q/DQ pairs around GEMMs and convolutions into ecoinfer.QGemm / ecoinfer.QConv.

quantize_graph() (and QDQ models from other tools) express a quantized layer as

    x -> QuantizeLinear(s, zp=0) -> DequantizeLinear(s, zp=0) -> op(., DequantizeLinear(W_q, w_s))

The rules below replace the op and read x directly, so a kernel can run the GEMM/conv on the
quantized operands (ecoinfer/ir/ops/fused_quant.py gives the exact semantics):

    FusedGemm(DQ(Q(x)), DQ(W_q [N, K], axis 0), b?, r?; trans_b=1)  ==>  QGemm(x, W_q, s, w_s, b?, r?)
    FusedGemm(DQ(Q(x)), DQ(W_q [K, N], axis 1), b?, r?; trans_b=0)  ==>  QGemm(x, W_q^T, ...)
    MatMul(DQ(Q(x)), DQ(W_q [K, N], axis 1))                         ==>  QGemm(x, W_q^T, s, w_s)
    FusedConv(DQ(Q(x)), DQ(W_q, axis 0), B?, Z?)                     ==>  QConv(x, W_q, s, w_s, B?, Z?)
    Conv(DQ(Q(x)), DQ(W_q, axis 0), B?)                              ==>  QConv (pads made explicit)
    MultiHeadAttention(DQ(Q(qkv)), "", "", m?; packed=1)     ==>  MultiHeadAttention(qkv, ..., s)
                                                        (x_scale input 6, x_qtype attribute)

Only symmetric quantization is fused: zero points present and all zero, int8 or float8e4m3fn
(activation and weight of the same kind), a float32 scalar activation scale shared by the Q
and the DQ, float32 weight scales per output channel or per tensor, no blocked quantization.
Anything else (onnxruntime's asymmetric uint8 activations, per-row activation scales) stays
Q/DQ and runs on the reference kernels. The Q/DQ nodes are shared: one fused consumer does
not remove them from the others; they disappear when nothing reads them any more.

Not in the optimize levels: the builder runs it right after quantizing (fuse_for_build).
"""

from __future__ import annotations

from collections import Counter

import torch

from ecoinfer.ir.graph import Graph, Node
from ecoinfer.ir.pattern import Match, Op, Rewriter, Rule, apply_rules
from ecoinfer.passes.registry import register_pass

DOMAIN = "ecoinfer"
# element type of the quantized tensors -> the fused op's qtype
_QTYPE = {torch.int8: "int8", torch.float8_e4m3fn: "fp8e4m3"}
LEVEL = 4  # above every optimize level (0-3): only run when asked for


def _is_onnx(n: Node, op: str) -> bool:
    return n.op_type == op and (n.domain or "") in ("", "ai.onnx")


def _zero(g: Graph, name: str, qdtype: torch.dtype | None = None) -> torch.dtype | None:
    """The zero point's type if it is a constant of zeros (of qdtype when given)."""
    t = g.initializers.get(name) if name else None
    if t is None or t.dtype not in _QTYPE or (qdtype is not None and t.dtype != qdtype):
        return None
    if t.numel() and bool((t.float() != 0).any()):
        return None
    return t.dtype


def _plain_q_attrs(n: Node) -> bool:
    """No blocked quantization, saturating float8, no output/precision type override."""
    a = n.attrs
    return (
        int(a.get("block_size", 0) or 0) == 0
        and int(a.get("saturate", 1)) == 1
        and not a.get("output_dtype")
        and not a.get("precision")
    )


def _same_const(g: Graph, a: str, b: str) -> bool:
    if a == b:
        return True
    ta, tb = g.initializers.get(a), g.initializers.get(b)
    return ta is not None and tb is not None and ta.dtype == tb.dtype and torch.equal(ta, tb)


def _activation(g: Graph, prod: dict[str, Node], value: str) -> tuple[str, str, torch.dtype] | None:
    """(x, scale name, quantized type) when `value` is DQ(Q(x, s, 0), s, 0), symmetric."""
    dq = prod.get(value)
    if dq is None or not _is_onnx(dq, "DequantizeLinear") or len(dq.inputs) < 3:
        return None
    q = prod.get(dq.inputs[0])
    if q is None or not _is_onnx(q, "QuantizeLinear") or len(q.inputs) < 3:
        return None
    if not (_plain_q_attrs(q) and _plain_q_attrs(dq)):
        return None
    x, s = q.inputs[0], q.inputs[1]
    qdtype = _zero(g, q.inputs[2])
    if qdtype is None or _zero(g, dq.inputs[2], qdtype) is None:
        return None
    st = g.initializers.get(s)
    if st is None or st.dtype != torch.float32 or st.numel() != 1 or st.dim() > 1:
        return None  # a per-tensor float32 scale: what the kernels take
    if not _same_const(g, s, dq.inputs[1]) or not float(st.reshape(())) > 0:
        return None
    xv = g.values.get(x)
    if xv is None or xv.dtype != "float32":
        return None  # the Q/DQ arithmetic runs in float32: x must be float32 for exactness
    return x, s, qdtype


def _weight(
    g: Graph, prod: dict[str, Node], value: str, axis_want: int, qdtype: torch.dtype
) -> tuple[str, str] | None:
    """(W_q, w_scale) names when `value` is DQ(W_q const, w_scale const float32, axis) with
    per-output-channel (along axis_want) or per-tensor scales."""
    dq = prod.get(value)
    if dq is None or not _is_onnx(dq, "DequantizeLinear") or not _plain_q_attrs(dq):
        return None
    w = g.initializers.get(dq.inputs[0])
    ws = g.initializers.get(dq.inputs[1])
    if w is None or ws is None or w.dtype != qdtype or w.dim() < 2:
        return None
    if len(dq.inputs) > 2 and dq.inputs[2] and _zero(g, dq.inputs[2], qdtype) is None:
        return None
    if ws.dtype != torch.float32:
        return None  # DQ's output type is the scale's: the op must have been float32
    if ws.numel() == 1 and ws.dim() <= 1:
        return dq.inputs[0], dq.inputs[1]
    axis = int(dq.attrs.get("axis", 1))
    axis = axis + w.dim() if axis < 0 else axis
    if ws.dim() != 1 or axis != axis_want or ws.numel() != w.shape[axis]:
        return None
    return dq.inputs[0], dq.inputs[1]


def _trim(inputs: list[str]) -> list[str]:
    while inputs and inputs[-1] == "":
        inputs.pop()
    return inputs


def _qnode(
    op: str,
    root: Node,
    rw: Rewriter,
    x: str,
    scale: str,
    weight: tuple[str, str],
    transpose: bool,
    rest: list[str],
    attrs: dict,
) -> Node:
    """The fused node; constants already in the op's form are shared, not copied."""
    g = rw.graph
    base = root.name or op
    w_name, ws_name = weight
    w, ws, s = g.initializers[w_name], g.initializers[ws_name], g.initializers[scale]
    qtype = _QTYPE[w.dtype]
    if transpose:  # a [K, N] constant becomes [N, K] once, here
        w_name = rw.const(f"{base}_w_{qtype}", w.t().contiguous())
    if ws.dim() != 1:
        ws_name = rw.const(f"{base}_w_scale", ws.reshape(1).clone())
    if s.dim() != 0:
        scale = rw.const(f"{base}_x_scale", s.reshape(()).clone())
    ins = _trim([x, w_name, scale, ws_name, *rest])
    return Node(op, ins, list(root.outputs), {**attrs, "qtype": qtype}, root.name, DOMAIN)


# ---------------------------------------------------------------------- rewrites
def _gemm(m: Match, rw: Rewriter) -> list[Node] | None:
    """FusedGemm / MatMul on DQ(Q(x)) and a dequantized constant weight ==> QGemm."""
    n, g = m.root, m.graph
    if len(n.inputs) < 2:
        return None
    prod = g.producers()
    act = _activation(g, prod, n.inputs[0])
    if act is None:
        return None
    x, s, qdtype = act
    fused = n.op_type == "FusedGemm"
    trans_b = fused and int(n.attrs.get("trans_b", 0) or 0) == 1
    found = _weight(g, prod, n.inputs[1], 0 if trans_b else 1, qdtype)
    if found is None or g.initializers[found[0]].dim() != 2:
        return None
    attrs = {}
    if fused:
        attrs = {k: v for k, v in n.attrs.items() if k in ("activation", "activation_params")}
    rest = list(n.inputs[2:4]) if fused else []
    return [_qnode("QGemm", n, rw, x, s, found, not trans_b, rest, attrs)]


def _conv(m: Match, rw: Rewriter) -> list[Node] | None:
    """FusedConv / Conv on DQ(Q(x)) and a dequantized constant weight ==> QConv."""
    n, g = m.root, m.graph
    if len(n.inputs) < 2:
        return None
    prod = g.producers()
    act = _activation(g, prod, n.inputs[0])
    if act is None:
        return None
    x, s, qdtype = act
    found = _weight(g, prod, n.inputs[1], 0, qdtype)
    if found is None:
        return None
    if n.op_type == "Conv":
        from ecoinfer.passes.fuse_conv import _to_fused  # noqa: PLC0415 (explicit pads)

        made = _to_fused(Match(g, n), rw)
        if not made:
            return None
        attrs = dict(made[0].attrs)
    else:
        attrs = dict(n.attrs)
    return [_qnode("QConv", n, rw, x, s, found, False, list(n.inputs[2:4]), attrs)]


def _mha(m: Match, rw: Rewriter) -> list[Node] | None:
    """Packed MultiHeadAttention on DQ(Q(qkv)) ==> the same node reading qkv with x_scale."""
    n, g = m.root, m.graph
    if not int(n.attrs.get("packed", 0) or 0) or not n.inputs or len(n.inputs) > 6:
        return None
    if len(n.inputs) > 5 and n.inputs[5]:
        return None  # writes codes already (links come later; keep it simple)
    act = _activation(g, g.producers(), n.inputs[0])
    if act is None:
        return None
    x, s, qdtype = act
    st = g.initializers[s]
    if st.dim() != 0:
        s = rw.const(f"{n.name or 'mha'}_x_scale", st.reshape(()).clone())
    ins = (list(n.inputs) + [""] * 6)[:6]
    ins[0] = x
    attrs = {**n.attrs, "x_qtype": _QTYPE[qdtype]}
    return [Node(n.op_type, [*ins, s], list(n.outputs), attrs, n.name, DOMAIN)]


RULES = [
    # FusedGemm(DQ(Q(x)), DQ(W_q)) ==> QGemm(x, W_q[N,K], s, w_s, bias, residual)
    Rule("qgemm", Op("FusedGemm", any_inputs=True, domain=DOMAIN), _gemm, "QDQ gemm ==> QGemm"),
    # MatMul(DQ(Q(x)), DQ(W_q[K,N], axis=1)) ==> QGemm(x, W_q^T, s, w_s)
    Rule("qgemm", Op("MatMul", any_inputs=True), _gemm, "QDQ matmul ==> QGemm"),
    # FusedConv(DQ(Q(x)), DQ(W_q, axis=0), B, Z) ==> QConv(x, W_q, s, w_s, B, Z)
    Rule("qconv", Op("FusedConv", any_inputs=True, domain=DOMAIN), _conv, "QDQ conv ==> QConv"),
    # Conv(DQ(Q(x)), DQ(W_q, axis=0), B) ==> QConv (auto_pad resolved)
    Rule("qconv", Op("Conv", any_inputs=True), _conv, "QDQ conv ==> QConv"),
    # MultiHeadAttention(DQ(Q(qkv)), ...; packed=1) ==> MultiHeadAttention(qkv, ..., x_scale)
    Rule(
        "qmha",
        Op("MultiHeadAttention", any_inputs=True, domain=DOMAIN),
        _mha,
        "QDQ attention ==> MultiHeadAttention with x_scale",
    ),  # fmt: skip
]


@register_pass(
    "fuse_quantized",
    level=LEVEL,
    doc="symmetric Q/DQ around FusedGemm/MatMul/FusedConv/Conv into ecoinfer.QGemm/QConv "
    "(and before a packed MultiHeadAttention into its x_scale)",
)
def fuse_quantized(graph: Graph) -> Counter[str]:
    return apply_rules(graph, RULES)


def fuse_for_build(graph: Graph) -> tuple[Graph, Counter[str]]:
    """A copy of a quantized graph with its Q/DQ layers fused and dead nodes removed: what
    the builder runs right after quantize_for_build()."""
    from ecoinfer.passes.manager import clone_graph, run_pass  # noqa: PLC0415
    from ecoinfer.passes.registry import all_passes  # noqa: PLC0415

    g = clone_graph(graph)
    passes = all_passes()
    counts = run_pass(g, passes["fuse_quantized"], debug=False).counts
    run_pass(g, passes["dce"], debug=False)
    g.infer_shapes()
    g.verify()
    return g, counts
