"""Torch reference kernel of ecoinfer.MultiHeadAttention: split heads, Attention, merge heads.

The reshapes and transposes are views, and the attention itself is ecoinfer.Attention's
kernel, so the numbers are exactly those of the unfused graph."""

from __future__ import annotations

import torch

from ecoinfer.kernels.torch_ops.fused_attention import _attention
from ecoinfer.kernels.torch_ops.registry import KernelContext, kernel

Tensor = torch.Tensor


def _heads(x: Tensor, h: int) -> Tensor:
    b, s, _ = x.shape
    return x.reshape(b, s, h, -1).transpose(1, 2)


def _quantized_qkv(ctx: KernelContext, qkv: Tensor, x_scale: Tensor) -> Tensor:
    """QKV as the quantized attention sees it: fake-quantized float, or codes (a linked QKV
    projection wrote them) dequantized into out_dtype, as QGemm treats its X."""
    from ecoinfer.errors import ExecutionError  # noqa: PLC0415
    from ecoinfer.kernels.torch_ops.fused_quant import (  # noqa: PLC0415
        dequant_codes,
        fake_quant,
        qtype_dtype,
    )

    q = qtype_dtype(ctx.attr("x_qtype", ""), ctx.node.label())
    if qkv.dtype == q:
        return dequant_codes(ctx, qkv, x_scale)
    if not qkv.is_floating_point():
        raise ExecutionError(f"{ctx.node.label()}: QKV must be float or {q} codes, got {qkv.dtype}")
    return fake_quant(qkv, x_scale, q)


@kernel("MultiHeadAttention", domain="ecoinfer")
def _mha(ctx: KernelContext, xs: list[Tensor | None]) -> list[Tensor]:
    h, d = int(ctx.attr("num_heads")), int(ctx.attr("head_size"))
    if ctx.attr("packed", 0):
        qkv = xs[0]
        assert qkv is not None
        x_scale = xs[6] if len(xs) > 6 else None
        if x_scale is not None:  # attention on QKV's quantized value (or on its codes)
            qkv = _quantized_qkv(ctx, qkv, x_scale)
        q, k, v = qkv[..., : h * d], qkv[..., h * d : 2 * h * d], qkv[..., 2 * h * d :]
    else:
        q, k, v = xs[0], xs[1], xs[2]
    assert q is not None and k is not None and v is not None
    masks = list(xs[3:5]) + [None] * (2 - len(xs[3:5]))
    attn_ctx = KernelContext(
        ctx.node, {**ctx.attrs, "k_transposed": 0}, ctx.device, ctx.run_graph, ctx.opset
    )
    (y,) = _attention(attn_ctx, [_heads(q, h), _heads(k, h), _heads(v, h), *masks])
    b, _, s, dv = y.shape
    y = y.transpose(1, 2).reshape(b, s, h * dv)
    y_scale = xs[5] if len(xs) > 5 else None
    if y_scale is not None:  # codes for the quantized projection that reads Y (link_codes)
        from ecoinfer.kernels.torch_ops.fused_quant import codes_of, qtype_dtype  # noqa: PLC0415

        y = codes_of(y, y_scale, qtype_dtype(ctx.attr("y_qtype", ""), ctx.node.label()))
    return [y]
