"""ecoinfer.MultiHeadAttention: Attention with the head split and merge inside the node.

ecoinfer.MultiHeadAttention(Q, K, V, add_mask?, keep_mask?, y_scale?, x_scale?) -> Y  (packed=0)
ecoinfer.MultiHeadAttention(QKV, "", "", add_mask?, keep_mask?, y_scale?, x_scale?) -> Y (packed=1)

    Q, K: [B, S, H*D]   V: [B, S, H*Dv]   QKV: [B, S, 2*H*D + H*Dv] = concat(Q, K, V, axis=-1)
    Y: [B, Sq, H*Dv]
    Y = merge_heads(Attention(split_heads(Q), split_heads(K), split_heads(V), masks))
    split_heads(X) = X.reshape(B, S, H, -1).transpose(1, 2);  merge_heads is its inverse.

Attributes: num_heads (H), head_size (D), and Attention's scale, is_causal, mask_fill,
nan_to_zero (see fused_attention.py); masks broadcast to [B, H, Sq, Sk] as for Attention.
With y_scale (float32 scalar; engine/link_codes.py) Y is written as y_qtype codes
("int8" | "fp8e4m3"), quant(Y / y_scale) as ecoinfer.QGemm quantizes its X, for a quantized
projection that reads them. With x_scale (float32 scalar, packed=1 only; from a Q/DQ pair
before the node, passes/fuse_quantized.py) the attention runs on QKV's quantized value
dequant(quant(QKV / x_scale)) with x_qtype codes; QKV may then also arrive as those codes
(written by the QKV projection, engine/link_codes.py), Y being computed in out_dtype.
This is the layout transformer projections produce, so the GEMM before it and after it read
and write [B, S, hidden] directly, and a GPU kernel can read Q/K/V from one packed buffer.
"""

from __future__ import annotations

from ecoinfer.ir.ops.registry import InferContext, OutType, dim_mul, op


def _infer(ctx: InferContext) -> list[OutType]:
    h = int(ctx.attr("num_heads"))
    d = int(ctx.attr("head_size"))
    q = ctx.shape(0)
    if q is None:
        return [OutType(_out_dtype(ctx), None)]
    if len(q) != 3:
        raise ctx.fail(f"Q (or packed QKV) must be [batch, seq, hidden], got {list(q)}")
    if ctx.attr("packed", 0):
        width = q[-1]
        dv = (width - 2 * h * d) // h if isinstance(width, int) else None
        sq = q[1]
    else:
        v = ctx.shape(2)
        dv = (v[-1] // h) if v is not None and isinstance(v[-1], int) else None
        sq = q[1]
    hidden = dim_mul(h, dv) if dv is not None else None
    return [OutType(_out_dtype(ctx), (q[0], sq, hidden))]


def _float_dtype(ctx: InferContext) -> str | None:
    """The dtype attention computes in: Q's, or out_dtype when QKV arrives as codes."""
    from ecoinfer.ir.ops.fused_quant import QTYPES  # noqa: PLC0415

    if ctx.has(6):
        if not ctx.attr("packed", 0):
            raise ctx.fail("x_scale needs packed=1 (one QKV buffer, one scale)")
        xq = str(ctx.attr("x_qtype") or "")
        if xq not in QTYPES:
            raise ctx.fail(f"x_scale needs x_qtype int8 or fp8e4m3, got '{xq}'")
        if ctx.dtype(0) in QTYPES.values():  # codes a linked QKV projection wrote
            if ctx.dtype(0) != QTYPES[xq]:
                raise ctx.fail(f"QKV is {ctx.dtype(0)} codes but x_qtype is '{xq}'")
            out = str(ctx.attr("out_dtype") or "")
            if out not in ("float16", "bfloat16", "float32"):
                raise ctx.fail(f"QKV codes need out_dtype float16/bfloat16/float32, got '{out}'")
            return out
    return ctx.dtype(0)


def _out_dtype(ctx: InferContext) -> str | None:
    fdt = _float_dtype(ctx)
    if not ctx.has(5):
        return fdt
    from ecoinfer.ir.ops.fused_quant import QTYPES  # noqa: PLC0415

    q = str(ctx.attr("y_qtype") or "")
    if q not in QTYPES:
        raise ctx.fail(f"y_scale needs y_qtype int8 or fp8e4m3, got '{q}'")
    return QTYPES[q]


def _flops(ctx: InferContext, outs: list[OutType | None]) -> int | None:
    q = ctx.shape(0)
    out = outs[0].shape if outs and outs[0] is not None else None
    if q is None or out is None or not all(isinstance(x, int) for x in (*q, *out)):
        return None
    h, d = int(ctx.attr("num_heads")), int(ctx.attr("head_size"))
    b, s = int(q[0]), int(q[1])
    dv = int(out[2]) // h
    sk = s if ctx.attr("packed", 0) else (int(ctx.shape(1)[1]) if ctx.shape(1) else s)
    return b * h * s * sk * (2 * d + 2 * dv + 5)


op(
    "MultiHeadAttention",
    inputs=(1, 7),
    attrs={
        "packed": 0,
        "scale": 1.0,
        "is_causal": 0,
        "mask_fill": float("-inf"),
        "nan_to_zero": 0,
        "y_qtype": "",
        "x_qtype": "",
        "out_dtype": "",
    },
    domain="ecoinfer",
    flops=_flops,
)(_infer)
