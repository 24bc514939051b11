"""Shape/dtype inference for quantization ops: QuantizeLinear, DequantizeLinear,
DynamicQuantizeLinear, MatMulInteger, ConvInteger, QLinearMatMul and QLinearConv.

Quantized element types: the zero point's type when it is given, else the `output_dtype`
attribute (ONNX element type number), else uint8. The quantization parameters (scale and
zero point) are per tensor (scalar or one element), per axis (1-D along `axis`) or blocked
(`block_size`, same rank as the input).
"""

from __future__ import annotations

import dataclasses

from ecoinfer.errors import UnsupportedDTypeError
from ecoinfer.ir import dtypes
from ecoinfer.ir.graph import Shape
from ecoinfer.ir.ops.nn import _conv, _conv_flops, _matmul_flops, matmul_shape
from ecoinfer.ir.ops.registry import InferContext, OutType, op

# quantized types with a torch dtype, and their integer range where they are integers
INT_RANGES = {
    "uint8": (0, 255),
    "int8": (-128, 127),
    "uint16": (0, 65535),
    "int16": (-32768, 32767),
}
FLOAT8 = ("float8e4m3fn", "float8e4m3fnuz", "float8e5m2", "float8e5m2fnuz")


def _dtype_attr(ctx: InferContext, name: str) -> str | None:
    v = ctx.attr(name)
    if not v:
        return None
    return v if isinstance(v, str) else dtypes.from_onnx(int(v), ctx.node.label())


def _runnable(ctx: InferContext, name: str | None) -> str | None:
    if name is not None and name not in dtypes.SUPPORTED:
        raise UnsupportedDTypeError(
            f"{ctx.node.label()}: quantizes to {name}, which ecoinfer cannot run; "
            f"supported: {', '.join(sorted(dtypes.SUPPORTED))}"
        )
    return name


def _check_params(ctx: InferContext, x: Shape | None, i: int) -> None:
    """Scale / zero point i against input shape x: per tensor, per axis or blocked."""
    s = ctx.shape(i)
    block = int(ctx.attr("block_size") or 0)
    if x is None or s is None or len(s) == 0 or (block <= 0 and s == (1,)):
        return  # per tensor: axis does not matter
    axis = ctx.norm_axis(int(ctx.attr("axis")), len(x))
    if block > 0:
        if len(s) != len(x):
            raise ctx.fail(f"blocked quantization wants input {i} of rank {len(x)}, got {list(s)}")
        for k, (dx, ds) in enumerate(zip(x, s)):
            if not (isinstance(dx, int) and isinstance(ds, int)):
                continue
            want = -(-dx // block) if k == axis else dx
            if ds != want:
                raise ctx.fail(
                    f"input {i} of shape {list(s)} does not block input {list(x)} with "
                    f"block_size={block} along axis {axis}"
                )
        return
    if len(s) != 1:
        raise ctx.fail(f"input {i} must be a scalar or 1-D (per axis), got shape {list(s)}")
    n, d = s[0], x[axis]
    if isinstance(n, int) and isinstance(d, int) and n not in (1, d):
        raise ctx.fail(f"input {i} has {n} elements, axis {axis} of input {list(x)} has {d}")


def quantized_dtype(ctx: InferContext) -> str:
    """QuantizeLinear's output type: zero point's, else output_dtype, else uint8."""
    zp = ctx.dtype(2)
    out = _dtype_attr(ctx, "output_dtype")
    if zp is not None:
        if out is not None and out != zp:
            raise ctx.fail(f"output_dtype {out} differs from the zero point's type {zp}")
        return zp
    return out or "uint8"


_Q_ATTRS = {"axis": 1, "saturate": 1, "block_size": 0, "output_dtype": 0, "precision": 0}


def _elem_flops(ctx: InferContext, outs: list[OutType | None]) -> int | None:
    s = ctx.shape(0)
    if s is None or not all(isinstance(d, int) for d in s):
        return None
    n = 1
    for d in s:
        n *= int(d)
    return 2 * n


@op("QuantizeLinear", inputs=(2, 3), attrs=_Q_ATTRS, flops=_elem_flops)
def _quantize(ctx: InferContext) -> list[OutType | None]:
    out = _runnable(ctx, quantized_dtype(ctx))
    if out not in INT_RANGES and out not in FLOAT8:
        raise ctx.fail(f"cannot quantize to {out}")
    x = ctx.shape(0)
    _check_params(ctx, x, 1)
    _check_params(ctx, x, 2)
    return [OutType(out, x)]


@op(
    "DequantizeLinear",
    inputs=(2, 3),
    attrs={"axis": 1, "block_size": 0, "output_dtype": 0},
    flops=_elem_flops,
)
def _dequantize(ctx: InferContext) -> list[OutType | None]:
    x = ctx.shape(0)
    _check_params(ctx, x, 1)
    _check_params(ctx, x, 2)
    zp = ctx.dtype(2)
    if zp is not None and ctx.dtype(0) is not None and zp != ctx.dtype(0):
        raise ctx.fail(f"zero point type {zp} differs from the input type {ctx.dtype(0)}")
    out = _runnable(ctx, _dtype_attr(ctx, "output_dtype")) or ctx.dtype(1)
    return [OutType(out, x)]


@op("DynamicQuantizeLinear", outputs=(3, 3), flops=_elem_flops)
def _dynamic_quantize(ctx: InferContext) -> list[OutType | None]:
    return [OutType("uint8", ctx.shape(0)), OutType("float32", ()), OutType("uint8", ())]


@op("MatMulInteger", inputs=(2, 4), flops=_matmul_flops)
def _matmul_integer(ctx: InferContext) -> list[OutType | None]:
    return [OutType("int32", matmul_shape(ctx, ctx.shape(0), ctx.shape(1)))]


def _qlinear_out_dtype(ctx: InferContext, zp: int, x: int) -> str | None:
    return ctx.dtype(zp) if ctx.has(zp) else ctx.dtype(x)


@op("QLinearMatMul", inputs=(8, 8), flops=_matmul_flops)
def _qlinear_matmul(ctx: InferContext) -> list[OutType | None]:
    return [OutType(_qlinear_out_dtype(ctx, 7, 0), matmul_shape(ctx, ctx.shape(0), ctx.shape(3)))]


_CONV_ATTRS = {
    "auto_pad": "NOTSET",
    "dilations": None,
    "group": 1,
    "kernel_shape": None,
    "pads": None,
    "strides": None,
}


def _as_conv(ctx: InferContext, x: int, w: int) -> InferContext:
    """The context of an equivalent Conv(x, w) node, for its shape arithmetic."""
    node = dataclasses.replace(ctx.node, inputs=[ctx.node.inputs[x], ctx.node.inputs[w]])
    return InferContext(ctx.graph, node, ctx.schema)


@op(
    "ConvInteger",
    inputs=(2, 4),
    attrs=_CONV_ATTRS,
    flops=lambda ctx, outs: _conv_flops(_as_conv(ctx, 0, 1), outs),
)
def _conv_integer(ctx: InferContext) -> list[OutType | None]:
    (y,) = _conv(_as_conv(ctx, 0, 1))
    return [OutType("int32", y.shape if y else None)]


@op(
    "QLinearConv",
    inputs=(8, 9),
    attrs=_CONV_ATTRS,
    flops=lambda ctx, outs: _conv_flops(_as_conv(ctx, 0, 3), outs),
)
def _qlinear_conv(ctx: InferContext) -> list[OutType | None]:
    (y,) = _conv(_as_conv(ctx, 0, 3))
    return [OutType(_qlinear_out_dtype(ctx, 7, 0), y.shape if y else None)]
