"""Torch reference kernels of ecoinfer.QGemm and ecoinfer.QConv (ecoinfer/ir/ops/fused_quant.py).

Each computes exactly what the Q/DQ graph it replaced computes: X is quantized and
dequantized with the QuantizeLinear/DequantizeLinear arithmetic (X / x_scale in float32, round
half to even or float8 cast, saturate; codes * scale in float32, cast to X's dtype), W_q is
dequantized per output channel the same way, and the float FusedGemm/FusedConv reference
kernel runs on the result. Slow (W is dequantized on every call): it is the judge of the
quantized tactics, not a fast path.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from ecoinfer.errors import ExecutionError
from ecoinfer.ir import dtypes
from ecoinfer.ir.graph import optional_input
from ecoinfer.ir.ops.fused_quant import QTYPES
from ecoinfer.kernels.torch_ops.fused_conv import _fused_conv
from ecoinfer.kernels.torch_ops.fused_gemm import _fused_gemm
from ecoinfer.kernels.torch_ops.quant import dequantize, quantize
from ecoinfer.kernels.torch_ops.registry import KernelContext, kernel

Tensor = torch.Tensor


def qtype_dtype(qtype: str, where: str = "") -> torch.dtype:
    """The torch element type of a qtype attribute ("int8" -> torch.int8, ...)."""
    name = QTYPES.get(str(qtype))
    if name is None:
        raise ExecutionError(
            f"{where + ': ' if where else ''}qtype must be one of {', '.join(QTYPES)}, "
            f"got '{qtype}'"
        )
    return dtypes.to_torch(name, where)


def fake_quant(x: Tensor, x_scale: Tensor, qdtype: torch.dtype) -> Tensor:
    """DequantizeLinear(QuantizeLinear(x, s, 0), s, 0) in x's dtype: the value the op sees."""
    s = x_scale.reshape(()).float()
    q = quantize(x.float(), s, None, qdtype)
    return dequantize(q, s, None, x.dtype)


def codes_of(y: Tensor, y_scale: Tensor, qdtype: torch.dtype) -> Tensor:
    """Y's codes for a quantized reader (linked layers): QuantizeLinear(Y, y_scale, 0) from
    Y's own float values, exactly the reader's quantize step."""
    return quantize(y.float(), y_scale.reshape(()).float(), None, qdtype)


def dequant_codes(ctx: KernelContext, x: Tensor, x_scale: Tensor) -> Tensor:
    """Codes a linked producer wrote for this op (engine/link_codes.py), dequantized with its
    x_scale into the float type its out_dtype attribute names: the value the op computes on."""
    fdt = dtypes.to_torch(str(ctx.attr("out_dtype") or ""), ctx.node.label())
    return dequantize(x, x_scale.reshape(()).float(), None, fdt)


def dequant_weight(w_q: Tensor, w_scale: Tensor, dtype: torch.dtype) -> Tensor:
    """W_q * w_scale along axis 0 (output channels), in float32, cast to `dtype`."""
    s = w_scale.float()
    if s.numel() == 1:
        s = s.reshape(())
    else:
        s = s.reshape(-1, *([1] * (w_q.dim() - 1)))
    return dequantize(w_q, s, None, dtype)


def _split(
    xs: list[Tensor | None],
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor | None, Tensor | None]:
    x, w, xs_, ws = xs[0], xs[1], xs[2], xs[3]
    assert x is not None and w is not None and xs_ is not None and ws is not None
    bias = xs[4] if len(xs) > 4 else None
    res = xs[5] if len(xs) > 5 else None
    return x, w, xs_, ws, bias, res


def _check(ctx: KernelContext, x: Tensor, w: Tensor) -> torch.dtype:
    q = qtype_dtype(ctx.attr("qtype", "int8"), ctx.node.label())
    if w.dtype != q:
        raise ExecutionError(
            f"{ctx.node.label()}: W_q is {w.dtype}, qtype '{ctx.attr('qtype')}' wants {q}"
        )
    if not x.is_floating_point():
        raise ExecutionError(f"{ctx.node.label()}: X must be a float tensor, got {x.dtype}")
    return q


def _quantized_x(
    ctx: KernelContext, x: Tensor, x_scale: Tensor, w: Tensor
) -> tuple[torch.dtype, Tensor]:
    """(codes dtype, the value the layer multiplies): X fake-quantized, or X's codes (a
    linked layer) dequantized into out_dtype."""
    q = qtype_dtype(ctx.attr("qtype", "int8"), ctx.node.label())
    if x.dtype == q:  # codes from the previous layer
        a = dequant_codes(ctx, x, x_scale)
        _check(ctx, a, w)
        return q, a
    _check(ctx, x, w)
    return q, fake_quant(x, x_scale, q)


def _quantized_layer(
    ctx: KernelContext, xs: list[Tensor | None], float_kernel: Callable[..., list[Tensor]]
) -> list[Tensor]:
    """QGemm / QConv: the float kernel on X's quantized value (or its codes, dequantized) and
    the dequantized W, then, with a y_scale, the next layer's codes of the result."""
    x, w, x_scale, w_scale, bias, res = _split(xs)
    y_scale = xs[6] if len(xs) > 6 else None
    q, a = _quantized_x(ctx, x, x_scale, w)
    b = dequant_weight(w, w_scale, a.dtype)
    (y,) = float_kernel([a, b, bias, res])
    if y_scale is not None:  # codes for the next layer, as its own quantize step makes them
        y = codes_of(y, y_scale, q)
    return [y]


def norm_from_stats(
    r: Tensor | None,
    mean: Tensor | None,
    inv: Tensor | None,
    scale: Tensor | None,
    bias: Tensor | None,
) -> Tensor:
    """LayerNorm(r) over the last axis from its row statistics, in float32, rounded to r's
    dtype (as a norm kernel stores its Y)."""
    assert r is not None and mean is not None and inv is not None and scale is not None
    y = (r.float() - mean.float()[..., None]) * inv.float()[..., None] * scale.float()
    if bias is not None:
        y = y + bias.float()
    return y.to(r.dtype)


@kernel("QGemm", domain="ecoinfer")
def _qgemm(ctx: KernelContext, xs: list[Tensor | None]) -> list[Tensor]:
    """Also the linked forms: X already codes (dequantized into out_dtype) and y_scale (the
    float result quantized for the next layer), see ecoinfer/ir/ops/fused_quant.py."""
    fctx = KernelContext(
        ctx.node, {**ctx.attrs, "trans_b": 1}, ctx.device, ctx.run_graph, ctx.opset
    )
    if len(xs) > 7 and xs[7] is not None:  # the residual's LayerNorm, rebuilt from its stats
        xs = [
            *xs[:5],
            norm_from_stats(xs[5], xs[7], xs[8], xs[9], optional_input(xs, 10)),
            optional_input(xs, 6),
        ]
    return _quantized_layer(ctx, xs, lambda ins: _fused_gemm(fctx, ins))


@kernel("QConv", domain="ecoinfer")
def _qconv(ctx: KernelContext, xs: list[Tensor | None]) -> list[Tensor]:
    """Also the linked forms, as QGemm's: X as codes, and y_scale."""
    return _quantized_layer(ctx, xs, lambda ins: _fused_conv(ctx, ins))


@kernel("LayerNormCodes", domain="ecoinfer")
def _layer_norm_codes(ctx: KernelContext, xs: list[Tensor | None]) -> list[Tensor]:
    """LayerNormalization's reference Y (with Skip, SkipLayerNorm's), then its codes as
    QGemm's quantize step makes them."""
    from ecoinfer.ir.graph import Node  # noqa: PLC0415
    from ecoinfer.kernels.torch_ops.fused_norm import _skip_layer_norm  # noqa: PLC0415
    from ecoinfer.kernels.torch_ops.nn import _layer_norm  # noqa: PLC0415

    x, scale, bias, y_scale = xs[0], xs[1], xs[2] if len(xs) > 2 else None, xs[3]
    skip = xs[4] if len(xs) > 4 else None
    assert x is not None and scale is not None and y_scale is not None
    attrs = {"axis": ctx.attr("axis", -1), "epsilon": ctx.attr("epsilon", 1e-5), "stash_type": 1}
    if skip is not None:
        ins = [ctx.node.inputs[0], ctx.node.inputs[4], *ctx.node.inputs[1:3]]
        sln = Node("SkipLayerNorm", ins, [ctx.node.outputs[0]], {}, ctx.node.name, "ecoinfer")
        sctx = KernelContext(sln, attrs, ctx.device, ctx.run_graph, ctx.opset)
        (y,) = _skip_layer_norm(sctx, [x, skip, scale, bias])
    else:
        ln = Node("LayerNormalization", list(ctx.node.inputs[:3]), [ctx.node.outputs[0]],
                  {}, ctx.node.name)  # fmt: skip
        lctx = KernelContext(ln, attrs, ctx.device, ctx.run_graph, ctx.opset)
        (y,) = _layer_norm(lctx, [x, scale, bias])[:1]
    q = qtype_dtype(ctx.attr("qtype", "int8"), ctx.node.label())
    outs = [y, codes_of(y, y_scale, q)]
    if len(ctx.node.outputs) > 2 and any(ctx.node.outputs[2:]):  # the row statistics
        xf = x.float()
        eps = float(ctx.attr("epsilon", 1e-5))
        outs += [xf.mean(-1), torch.rsqrt(xf.var(-1, unbiased=False) + eps)]
    return outs
