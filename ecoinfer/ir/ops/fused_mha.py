"""ecoinfer.MultiHeadAttention: Attention with the head split and merge inside the node.

ecoinfer.MultiHeadAttention(Q, K, V, add_mask?, keep_mask?, y_scale?) -> Y          (packed=0)
ecoinfer.MultiHeadAttention(QKV, "", "", add_mask?, keep_mask?, y_scale?) -> Y      (packed=1)

    Q, K: [B, S, H*D]   V: [B, S, H*Dv]   QKV: [B, S, 2*H*D + H*Dv] = concat(Q, K, V, axis=-1)
    Y: [B, Sq, H*Dv]
    Y = merge_heads(Attention(split_heads(Q), split_heads(K), split_heads(V), masks))
    split_heads(X) = X.reshape(B, S, H, -1).transpose(1, 2);  merge_heads is its inverse.

Attributes: num_heads (H), head_size (D), and Attention's scale, is_causal, mask_fill,
nan_to_zero (see fused_attention.py); masks broadcast to [B, H, Sq, Sk] as for Attention.
With y_scale (float32 scalar; engine/link_codes.py) Y is written as y_qtype codes
("int8" | "fp8e4m3"), quant(Y / y_scale) as ecoinfer.QGemm quantizes its X, for a quantized
projection that reads them. This is the layout transformer projections produce, so the GEMM before it and after it read
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


def _out_dtype(ctx: InferContext) -> str | None:
    if not ctx.has(5):
        return ctx.dtype(0)
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
    inputs=(1, 6),
    attrs={
        "packed": 0,
        "scale": 1.0,
        "is_causal": 0,
        "mask_fill": float("-inf"),
        "nan_to_zero": 0,
        "y_qtype": "",
    },
    domain="ecoinfer",
    flops=_flops,
)(_infer)
