"""Torch reference kernels of fused ops in the "ecoinfer" domain.

FusedConv runs exactly the ops it replaced, in their order (Conv with its bias, activation,
residual add, post-activation), so in FP32 it gives the unfused graph's numbers. With
layout="NHWC" the input is viewed as NCHW through a permute (a channels-last tensor for
4-D), convolved, and the result permuted back; the arithmetic is the same.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ecoinfer.errors import ExecutionError
from ecoinfer.ir.ops.fused_conv import to_first, to_last
from ecoinfer.ir.ops.nn import window_params
from ecoinfer.kernels.torch_ops.activation import apply_activation
from ecoinfer.kernels.torch_ops.nn import _torch_pads, exact_fp32
from ecoinfer.kernels.torch_ops.registry import KernelContext, get_kernel, kernel

Tensor = torch.Tensor
_CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}


@kernel("FusedConv", domain="ecoinfer")
def _fused_conv(ctx: KernelContext, xs: list[Tensor | None]) -> list[Tensor]:
    x, w = xs[0], xs[1]
    b = xs[2] if len(xs) > 2 else None
    z = xs[3] if len(xs) > 3 else None
    assert x is not None and w is not None
    rank = x.dim()
    nd = rank - 2
    fn = _CONV.get(nd)
    if fn is None:
        raise ExecutionError(
            f"{ctx.node.label()}: FusedConv over {nd} spatial dims is not supported (1-3)"
        )
    nhwc = ctx.attr("layout") == "NHWC"
    if nhwc:
        # channels-last views: for 4-D this is torch's channels_last memory format
        x = x.permute(to_first(rank))
        w = w.permute(to_first(rank))
        if z is not None:
            # Z broadcasts against channels-last Y: align ranks before permuting
            z = z.reshape((1,) * (rank - z.dim()) + tuple(z.shape)).permute(to_first(rank))
    kernel_shape = [int(k) for k in w.shape[2:]]
    strides, dil, pads, _ = window_params(ctx.attrs, nd, kernel_shape)
    begins, ends = pads[:nd], pads[nd:]
    if begins != ends:
        x = F.pad(x, _torch_pads(begins, ends))
        begins = [0] * nd
    with exact_fp32(x):
        y = fn(x, w, b, strides, begins, dil, int(ctx.attr("group")))
    y = apply_activation(y, ctx.attr("activation") or "", ctx.attr("activation_params") or [])
    if z is not None:
        y = y + z
    y = apply_activation(
        y, ctx.attr("post_activation") or "", ctx.attr("post_activation_params") or []
    )
    if nhwc:
        y = y.permute(to_last(rank)).contiguous()
    return [y]


def _pool_nhwc(op_type: str):  # noqa: ANN202
    def run(ctx: KernelContext, xs: list[Tensor | None]) -> list[Tensor]:
        x = xs[0]
        assert x is not None
        onnx_kernel = get_kernel(op_type)
        assert onnx_kernel is not None
        if ctx.attr("layout") != "NHWC":
            return onnx_kernel(ctx, xs)[:1]
        rank = x.dim()
        y = onnx_kernel(ctx, [x.permute(to_first(rank))])[0]
        return [y.permute(to_last(rank)).contiguous()]

    return run


kernel("MaxPool", domain="ecoinfer")(_pool_nhwc("MaxPool"))
kernel("AveragePool", domain="ecoinfer")(_pool_nhwc("AveragePool"))
