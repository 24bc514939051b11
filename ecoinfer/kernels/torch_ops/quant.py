"""Torch kernels for quantization ops: QuantizeLinear, DequantizeLinear, DynamicQuantizeLinear,
MatMulInteger, ConvInteger, QLinearMatMul and QLinearConv.

Integer products are exact: matmuls run in int64 on CPU (wrapped to int32 like an int32
accumulator) and in float64 on CUDA (exact below 2**53); convolutions run in float64 on both.
Rounding is half to even (torch.round), as ONNX says.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ecoinfer.errors import ExecutionError
from ecoinfer.ir import dtypes
from ecoinfer.ir.graph import optional_input
from ecoinfer.ir.ops.nn import resolve_pads, window_params
from ecoinfer.ir.ops.quant import INT_RANGES
from ecoinfer.kernels.torch_ops.elementwise import cast
from ecoinfer.kernels.torch_ops.nn import matmul
from ecoinfer.kernels.torch_ops.registry import KernelContext, kernel

Tensor = torch.Tensor
_INT_RANGES = {dtypes.to_torch(n): r for n, r in INT_RANGES.items()}
_FLOAT8 = {
    getattr(torch, n)
    for n in ("float8_e4m3fn", "float8_e4m3fnuz", "float8_e5m2", "float8_e5m2fnuz")
    if hasattr(torch, n)
}


def _dtype_attr(ctx: KernelContext, name: str) -> torch.dtype | None:
    v = ctx.attr(name)
    if not v:
        return None
    n = v if isinstance(v, str) else dtypes.from_onnx(int(v), ctx.node.label())
    return dtypes.to_torch(n, ctx.node.label())


def _to_int64(t: Tensor) -> Tensor:
    return t.float().long() if t.dtype in _FLOAT8 else t.long()


def _layout(p: Tensor, x: Tensor, axis: int, block: int) -> Tensor:
    """Scale / zero point laid out to broadcast against x: per tensor, per axis or blocked."""
    if p.dim() == 0 or (p.numel() == 1 and block <= 0):
        return p.reshape(())
    axis = axis + x.dim() if axis < 0 else axis
    if block > 0:
        p = p.repeat_interleave(block, dim=axis)
        return p.narrow(axis, 0, x.shape[axis])
    shape = [1] * x.dim()
    shape[axis] = p.numel()
    return p.reshape(shape)


def quantize(
    x: Tensor,
    scale: Tensor,
    zp: Tensor | None,
    out: torch.dtype,
    saturate: bool = True,
) -> Tensor:
    """round(x / scale) + zp, saturated to `out` (scale and zp already laid out)."""
    q = x / scale
    if out in _FLOAT8:
        return cast(q, out, saturate)  # a float8 zero point is 0 by definition
    lo, hi = _INT_RANGES[out]
    q = torch.round(q).double()
    if zp is not None:
        q = q + zp.double()
    return q.clamp(lo, hi).long().to(out)


def dequantize(x: Tensor, scale: Tensor, zp: Tensor | None, out: torch.dtype) -> Tensor:
    """(x - zp) * scale, computed in float32 (float64 for int32 inputs) and cast to `out`."""
    acc = torch.float64 if x.dtype == torch.int32 else torch.float32
    d = x.to(acc)
    if zp is not None and x.dtype not in _FLOAT8:
        d = d - zp.to(acc)
    return (d * scale.to(acc)).to(out)


@kernel("QuantizeLinear")
def _quantize(ctx: KernelContext, xs: list[Tensor | None]) -> list[Tensor]:
    x, scale, zp = xs[0], xs[1], optional_input(xs, 2)
    assert x is not None and scale is not None
    axis, block = int(ctx.attr("axis", 1)), int(ctx.attr("block_size", 0) or 0)
    out = zp.dtype if zp is not None else (_dtype_attr(ctx, "output_dtype") or torch.uint8)
    if out not in _INT_RANGES and out not in _FLOAT8:
        raise ExecutionError(f"{ctx.node.label()}: cannot quantize to {out}")
    precision = _dtype_attr(ctx, "precision")
    if precision is not None:
        x, scale = x.to(precision), scale.to(precision)
    elif not x.is_floating_point():
        x = x.double()  # int32 input: divided in float64, as numpy promotes it
    s = _layout(scale, x, axis, block)
    z = None if zp is None or out in _FLOAT8 else _layout(zp, x, axis, block)
    return [quantize(x, s, z, out, bool(ctx.attr("saturate", 1)))]


@kernel("DequantizeLinear")
def _dequantize(ctx: KernelContext, xs: list[Tensor | None]) -> list[Tensor]:
    x, scale, zp = xs[0], xs[1], optional_input(xs, 2)
    assert x is not None and scale is not None
    axis, block = int(ctx.attr("axis", 1)), int(ctx.attr("block_size", 0) or 0)
    out = _dtype_attr(ctx, "output_dtype") or scale.dtype
    s = _layout(scale, x, axis, block)
    z = None if zp is None else _layout(_to_int64(zp), x, axis, block)
    return [dequantize(x, s, z, out)]


@kernel("DynamicQuantizeLinear")
def _dynamic_quantize(ctx: KernelContext, xs: list[Tensor | None]) -> list[Tensor]:
    x = xs[0]
    assert x is not None
    xf = x.float()
    hi = torch.clamp(xf.max(), min=0.0)
    lo = torch.clamp(xf.min(), max=0.0)
    rng = hi - lo
    scale = torch.where(rng == 0, torch.ones_like(rng), rng) / 255.0
    zp = torch.round(torch.clamp(0.0 - lo / scale, 0.0, 255.0))
    y = torch.clamp(torch.round(xf / scale) + zp, 0.0, 255.0)
    return [y.to(torch.uint8), scale.to(x.dtype), zp.to(torch.uint8)]


# ---------------------------------------------------------------------- integer matmul / conv
def _rowwise(zp: Tensor, a: Tensor) -> Tensor:
    """A 1-D zero point of A's rows (per row) laid out against A [..., M, K]."""
    if zp.dim() == 1 and a.dim() >= 2 and zp.numel() > 1:
        return zp.reshape(-1, 1)
    return zp


def _imatmul(a: Tensor, b: Tensor) -> Tensor:
    """Exact int64 matmul of int64 operands (float64 on CUDA, exact below 2**53)."""
    if a.is_cuda:
        return matmul(a.double(), b.double()).round().long()
    return matmul(a, b)


def _centered_a(a: Tensor, zp: Tensor | None) -> Tensor:
    a = a.long()
    return a if zp is None else a - _rowwise(zp.long(), a)


def _centered_b(b: Tensor, zp: Tensor | None) -> Tensor:
    b = b.long()
    return b if zp is None else b - zp.long()


@kernel("MatMulInteger")
def _matmul_integer(ctx: KernelContext, xs: list[Tensor | None]) -> list[Tensor]:
    a, b = xs[0], xs[1]
    assert a is not None and b is not None
    a64, b64 = _centered_a(a, optional_input(xs, 2)), _centered_b(b, optional_input(xs, 3))
    return [_imatmul(a64, b64).to(torch.int32)]


_CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}


def _iconv(ctx: KernelContext, x: Tensor, w: Tensor) -> Tensor:
    """Exact integer convolution of centered operands: float64, rounded back to int64."""
    nd = x.dim() - 2
    fn = _CONV.get(nd)
    if fn is None:
        raise ExecutionError(f"{ctx.node.label()}: convolution over {nd} spatial dims (1-3)")
    kernel_shape = [int(k) for k in w.shape[2:]]
    strides, dil, pads, auto_pad = window_params(ctx.attrs, nd, kernel_shape)
    begins, ends = [], []
    for i in range(nd):
        pb, pe = resolve_pads(
            x.shape[2 + i], kernel_shape[i], strides[i], dil[i], pads[i], pads[nd + i], auto_pad
        )
        begins.append(pb)
        ends.append(pe)
    xd = x.double()
    if begins != ends:
        # pad the centered input with zeros, i.e. with the zero point of the raw input
        pad: list[int] = []
        for b, e in zip(reversed(begins), reversed(ends)):
            pad += [b, e]
        xd = F.pad(xd, pad)
        begins = [0] * nd
    y = fn(xd, w.double(), None, strides, begins, dil, int(ctx.attr("group", 1)))
    return y.round().long()


def _w_centered(w: Tensor, zp: Tensor | None) -> Tensor:
    w = w.long()
    if zp is None:
        return w
    zp = zp.long()
    if zp.dim() == 1 and zp.numel() > 1:  # per output channel
        zp = zp.reshape(-1, *([1] * (w.dim() - 1)))
    return w - zp.reshape(()) if zp.numel() == 1 else w - zp


@kernel("ConvInteger")
def _conv_integer(ctx: KernelContext, xs: list[Tensor | None]) -> list[Tensor]:
    x, w = xs[0], xs[1]
    assert x is not None and w is not None
    xzp = optional_input(xs, 2)
    xc = x.long() if xzp is None else x.long() - xzp.long().reshape(())
    return [_iconv(ctx, xc, _w_centered(w, optional_input(xs, 3))).to(torch.int32)]


def _requantize(acc: Tensor, mult: Tensor, yzp: Tensor | None, out: torch.dtype) -> Tensor:
    """round(acc * mult) + y_zero_point saturated to `out`, in float64."""
    lo, hi = _INT_RANGES[out]
    r = acc.double() * mult.double()
    if yzp is not None:
        r = r + yzp.double()
    return torch.round(r.clamp(lo, hi)).long().to(out)


@kernel("QLinearMatMul")
def _qlinear_matmul(ctx: KernelContext, xs: list[Tensor | None]) -> list[Tensor]:
    a, a_s, a_zp, b, b_s, b_zp, y_s, y_zp = (list(xs) + [None] * 8)[:8]
    assert a is not None and b is not None and a_s is not None and b_s is not None
    assert y_s is not None
    acc = _imatmul(_centered_a(a, a_zp), _centered_b(b, b_zp))
    # the multiplier in the scales' own type, as the ONNX reference computes it
    mult = _rowwise(a_s, a) * b_s / y_s
    out = y_zp.dtype if y_zp is not None else a.dtype
    return [_requantize(acc, mult, y_zp, out)]


@kernel("QLinearConv")
def _qlinear_conv(ctx: KernelContext, xs: list[Tensor | None]) -> list[Tensor]:
    x, x_s, x_zp, w, w_s, w_zp, y_s, y_zp = (list(xs) + [None] * 8)[:8]
    bias = optional_input(xs, 8)
    assert x is not None and w is not None and x_s is not None and w_s is not None
    assert y_s is not None
    xc = x.long() if x_zp is None else x.long() - x_zp.long().reshape(())
    acc = _iconv(ctx, xc, _w_centered(w, w_zp))
    if bias is not None:
        acc = acc + bias.long().reshape(1, -1, *([1] * (acc.dim() - 2)))
    acc = acc.to(torch.int32).long()  # int32 accumulator
    if w_s.numel() > 1:
        w_s = w_s.reshape(1, -1, *([1] * (acc.dim() - 2)))
    mult = x_s * w_s / y_s
    out = y_zp.dtype if y_zp is not None else x.dtype
    return [_requantize(acc, mult, y_zp, out)]
