"""Schemas and shape inference of the quantized fused ops (see docs/fused-ops.md).

ecoinfer.QGemm(X, W_q, x_scale, w_scale, bias?, residual?, y_scale?,
              res_mean?, res_inv_std?, res_scale?, res_bias?) -> Y

    Xq = quant(X / x_scale)       division in float32; int8: round half to even, clamp to
                                  [-128, 127]; fp8e4m3: clamp to [-448, 448], cast to
                                  float8_e4m3fn (round to nearest even)
    Y  = (Xq @ W_q^T) * (x_scale * w_scale)      W_q [N, K] int8 / float8e4m3fn (constant)
    Y  = act(Y + bias) + residual                FusedGemm's epilogue, in X's dtype

    x_scale: float32 scalar; w_scale: float32 [N] (per output channel) or [1] (per tensor);
    bias [N] and residual as FusedGemm's (an omitted bias with a residual is ""). Attributes:
    activation / activation_params (FusedGemm's), qtype "int8" | "fp8e4m3". Y has X's dtype.

    Linked layers (engine/link_codes.py: a quantized layer feeding only another one):
      * X may already hold codes (qtype's element type): then Xq = X, the quantize step is
        skipped, and the float result has the dtype named by the attribute out_dtype.
      * y_scale (float32 scalar, the next layer's x_scale): Y is written as codes,
        quant(Y_float / y_scale) with the same rounding, Y_float in X's (or out_dtype's)
        float dtype; the next layer reads them as its X.

      * res_mean, res_inv_std (float32, the residual's shape without its last axis),
        res_scale and res_bias? ([N]): the residual added is LayerNorm(residual) over the
        last axis, (residual - res_mean) * res_inv_std * res_scale + res_bias in float32,
        rounded to the residual's dtype: the Y of a LayerNormCodes that wrote only its codes
        and these statistics (engine/link_norm.py), rebuilt instead of read.

ecoinfer.QConv(X, W_q, x_scale, w_scale, bias?, residual?, y_scale?) -> Y

    FusedConv on (quant(X / x_scale) * x_scale, W_q * w_scale[:, None, ...]), with FusedConv's
    attributes (layout, pads, strides, dilations, group, kernel_shape, activation(s),
    post_activation(s)) plus qtype. W_q is in FusedConv's weight layout; w_scale is [C_out]
    (or [1]). Linked forms as QGemm's: X as codes (with out_dtype), y_scale (Y as codes).

Both compute exactly what the Q/DQ graph they replace computes (the fuse_quantized pass).

ecoinfer.LayerNormCodes(X, Scale, B?, y_scale, Skip?) -> (Y?, Y_codes, Mean?, InvStdDev?)

    LayerNormalization's Y (attributes axis, epsilon), plus Y_codes = quant(Y / y_scale) in
    qtype (QGemm's rounding, from Y in X's dtype): the codes a quantized layer reading Y
    needs (engine/link_codes.py), written by the same kernel that writes Y. Mean and
    InvStdDev (float32, X's shape without the last axis; the last axis normalized only) are
    the row statistics from which a QGemm rebuilds Y as its residual; Y may then be omitted.
    Skip (X's shape and dtype): the norm is of X + Skip, summed in float32 as SkipLayerNorm
    does (engine/link_skip_codes.py: the residual add of the QGemm before it, moved here);
    not with Mean and InvStdDev (they would describe the sum, which no one keeps).
"""

from __future__ import annotations

import dataclasses

from ecoinfer.ir.graph import Node, Shape
from ecoinfer.ir.ops.fused_conv import FUSED_CONV_ATTRS, _fused_conv, _fused_conv_flops
from ecoinfer.ir.ops.fused_gemm import _fused_gemm, _fused_gemm_flops
from ecoinfer.ir.ops.registry import InferContext, OutType, op

# qtype attribute -> the element type of W_q (and of the quantized activation)
QTYPES = {"int8": "int8", "fp8e4m3": "float8e4m3fn"}
_FLOATS = ("float32", "float16", "bfloat16")
# ops that can write a quantized reader's codes (engine/link_codes.py): their y_scale input
CODES_Y_SCALE = {"QGemm": 6, "QConv": 6, "MultiHeadAttention": 5, "LayerNormCodes": 3}


def writes_codes(node: Node) -> bool:
    """Whether `node` writes int8/FP8 codes for a quantized reader (its y_scale is given)."""
    k = CODES_Y_SCALE.get(node.op_type, -1) if node.domain == "ecoinfer" else -1
    return 0 <= k < len(node.inputs) and bool(node.inputs[k])


def qtype_of(ctx: InferContext) -> str:
    q = str(ctx.attr("qtype") or "")
    if q not in QTYPES:
        raise ctx.fail(f"qtype must be one of {', '.join(QTYPES)}, got '{q}'")
    return q


def _check_common(ctx: InferContext, n_out: object, codes_ok: bool = False) -> None:
    """W_q's element type, X float (or codes where allowed), scales float32 of the right
    sizes."""
    q = qtype_of(ctx)
    wdt, xdt = ctx.dtype(1), ctx.dtype(0)
    if wdt is not None and wdt != QTYPES[q]:
        raise ctx.fail(f"W_q is {wdt}, qtype '{q}' wants {QTYPES[q]}")
    if xdt is not None and xdt not in _FLOATS and not (codes_ok and xdt == QTYPES[q]):
        raise ctx.fail(f"X must be float32, float16 or bfloat16, got {xdt}")
    for i, what in ((2, "x_scale"), (3, "w_scale")):
        dt = ctx.dtype(i)
        if dt is not None and dt != "float32":
            raise ctx.fail(f"{what} must be float32, got {dt}")
    xs = ctx.shape(2)
    if xs is not None and not (len(xs) == 0 or tuple(xs) == (1,)):
        raise ctx.fail(f"x_scale must be a scalar (per-tensor), got shape {list(xs)}")
    ws = ctx.shape(3)
    if ws is not None:
        if len(ws) != 1:
            raise ctx.fail(f"w_scale must be 1-D [N] or [1], got shape {list(ws)}")
        if isinstance(ws[0], int) and isinstance(n_out, int) and ws[0] not in (1, n_out):
            raise ctx.fail(f"w_scale has {ws[0]} elements for {n_out} output channels")


def _as_float_op(ctx: InferContext, extra: dict | None = None) -> InferContext:
    """The context of the equivalent float node: (X, W, bias, residual), W_q's shape."""
    ins = list(ctx.node.inputs) + [""] * (6 - len(ctx.node.inputs))
    inputs = [ins[0], ins[1], ins[4], ins[5]]
    while inputs and inputs[-1] == "":
        inputs.pop()
    attrs = {**ctx.node.attrs, **(extra or {})}
    node = dataclasses.replace(ctx.node, inputs=inputs, attrs=attrs)
    return InferContext(ctx.graph, node, ctx.schema)


def float_out_dtype(x_dtype: str | None, out_dtype: str) -> str | None:
    """The float dtype QGemm computes Y in: X's, or out_dtype's when X holds codes."""
    if x_dtype in QTYPES.values():
        return out_dtype or None
    return x_dtype


@op(
    "QGemm",
    inputs=(4, 11),
    attrs={"activation": "", "activation_params": [], "qtype": "int8", "out_dtype": ""},
    domain="ecoinfer",
    flops=lambda ctx, outs: _fused_gemm_flops(_as_float_op(ctx, {"trans_b": 1}), outs),
    doc="Y = act(quant(X) @ W_q^T * x_scale * w_scale + bias) + residual (int8 / fp8e4m3)",
)
def _qgemm(ctx: InferContext) -> list[OutType | None]:
    w: Shape | None = ctx.shape(1)
    if w is not None and len(w) != 2:
        raise ctx.fail(f"W_q must be 2-D [N, K], got shape {list(w)}")
    _check_common(ctx, w[0] if w is not None else None, codes_ok=True)
    (out,) = _fused_gemm(_as_float_op(ctx, {"trans_b": 1}))
    _check_residual_norm(ctx, out)
    return [_linked_out(ctx, out)]


RES_NORM = 7  # QGemm's first residual-norm input (res_mean)


def has_residual_norm(inputs: list) -> bool:
    """Whether a QGemm's inputs (values or infos) rebuild its residual from norm statistics."""
    return len(inputs) > RES_NORM and inputs[RES_NORM] is not None


def _check_residual_norm(ctx: InferContext, out: OutType | None) -> None:
    """res_mean / res_inv_std / res_scale come together, with a residual of Y's shape."""
    given = [ctx.has(i) for i in range(RES_NORM, RES_NORM + 4)]
    if not any(given):
        return
    if not all(given[:3]) or not ctx.has(5):
        raise ctx.fail("res_mean, res_inv_std and res_scale need each other and a residual")
    r = ctx.shape(5)
    if out is not None and r is not None and out.shape is not None and tuple(r) != tuple(out.shape):
        raise ctx.fail(
            f"a normalized residual must have Y's shape {list(out.shape)}, got {list(r)}"
        )
    for i, what in ((RES_NORM, "res_mean"), (RES_NORM + 1, "res_inv_std")):
        if ctx.dtype(i) not in (None, "float32"):
            raise ctx.fail(f"{what} must be float32, got {ctx.dtype(i)}")
        st = ctx.shape(i)
        if st is not None and r is not None and tuple(st) != tuple(r[:-1]):
            raise ctx.fail(f"{what} must have shape {list(r[:-1])}, got {list(st)}")


def _linked_out(ctx: InferContext, out: OutType | None) -> OutType | None:
    """Y's type with the linked forms' checks: X as codes needs out_dtype, a y_scale makes Y
    codes (QGemm and QConv alike)."""
    q = qtype_of(ctx)
    out_dtype = str(ctx.attr("out_dtype") or "")
    if out_dtype and out_dtype not in _FLOATS:
        raise ctx.fail(f"out_dtype must be float32, float16 or bfloat16, got '{out_dtype}'")
    xdt = ctx.dtype(0)
    if xdt == QTYPES[q] and not out_dtype:
        raise ctx.fail("X holds codes: the attribute out_dtype must name Y's float dtype")
    if ctx.has(6):
        ys, ydt = ctx.shape(6), ctx.dtype(6)
        if ys is not None and not (len(ys) == 0 or tuple(ys) == (1,)):
            raise ctx.fail(f"y_scale must be a scalar (per-tensor), got shape {list(ys)}")
        if ydt is not None and ydt != "float32":
            raise ctx.fail(f"y_scale must be float32, got {ydt}")
    if out is None:
        return None
    dt = QTYPES[q] if ctx.has(6) else float_out_dtype(xdt, out_dtype)
    return dataclasses.replace(out, dtype=dt)


@op(
    "QConv",
    inputs=(4, 7),
    attrs={**FUSED_CONV_ATTRS, "qtype": "int8", "out_dtype": ""},
    domain="ecoinfer",
    flops=lambda ctx, outs: _fused_conv_flops(_as_float_op(ctx), outs),
    doc="FusedConv on quantized X and W_q, rescaled by x_scale * w_scale (int8 / fp8e4m3)",
)
def _qconv(ctx: InferContext) -> list[OutType | None]:
    w = ctx.shape(1)
    _check_common(ctx, w[0] if w else None, codes_ok=True)
    (out,) = _fused_conv(_as_float_op(ctx))
    return [_linked_out(ctx, out)]


@op(
    "LayerNormCodes",
    inputs=(4, 5),
    outputs=(2, 4),
    attrs={"axis": -1, "epsilon": 1e-5, "qtype": "int8"},
    domain="ecoinfer",
    doc="LayerNormalization's Y and its codes for a quantized reader (int8 / fp8e4m3)",
)
def _layer_norm_codes(ctx: InferContext) -> list[OutType | None]:
    q = qtype_of(ctx)
    ys, ydt = ctx.shape(3), ctx.dtype(3)
    if ys is not None and not (len(ys) == 0 or tuple(ys) == (1,)):
        raise ctx.fail(f"y_scale must be a scalar (per-tensor), got shape {list(ys)}")
    if ydt is not None and ydt != "float32":
        raise ctx.fail(f"y_scale must be float32, got {ydt}")
    xdt = ctx.dtype(0)
    if xdt is not None and xdt not in _FLOATS:
        raise ctx.fail(f"X must be float32, float16 or bfloat16, got {xdt}")
    x = ctx.shape(0)
    stats = len(ctx.node.outputs) > 2 and any(ctx.node.outputs[2:])
    if ctx.has(4):
        s, sdt = ctx.shape(4), ctx.dtype(4)
        if xdt is not None and sdt is not None and xdt != sdt:
            raise ctx.fail(f"Skip is {sdt} but X is {xdt}; they must match")
        if x is not None and s is not None and tuple(x) != tuple(s):
            raise ctx.fail(f"Skip has shape {list(s)}, X has {list(x)}; they must match")
        if stats:
            raise ctx.fail("Mean and InvStdDev cannot come with Skip")
    outs = [OutType(xdt, x), OutType(QTYPES[q], x)]
    if stats:
        if x is not None and int(ctx.attr("axis")) not in (-1, len(x) - 1):
            raise ctx.fail("Mean and InvStdDev need the last axis normalized")
        row = tuple(x[:-1]) if x is not None else None
        outs += [OutType("float32", row), OutType("float32", row)]
    return outs
