"""Torch reference kernels of fused ops in the "ecoinfer" domain."""

from __future__ import annotations

import torch

from ecoinfer.kernels.broadcast import broadcast_shape
from ecoinfer.kernels.torch_ops.activation import apply_activation
from ecoinfer.kernels.torch_ops.nn import exact_fp32, matmul
from ecoinfer.kernels.torch_ops.registry import KernelContext, kernel

Tensor = torch.Tensor


@kernel("FusedGemm", domain="ecoinfer")
def _fused_gemm(ctx: KernelContext, xs: list[Tensor | None]) -> list[Tensor]:
    """Y = act(A @ op(B) + bias) + residual, in that order (see ecoinfer/ir/ops/fused_gemm.py)."""
    a, b = xs[0], xs[1]
    bias = xs[2] if len(xs) > 2 else None
    res = xs[3] if len(xs) > 3 else None
    assert a is not None and b is not None
    if int(ctx.attr("trans_b", 0)):
        b = b.t()  # a view: BLAS reads it transposed, no copy
    if bias is not None and a.dim() >= 2 and a.is_floating_point():
        # A@B + bias as one GEMM whose accumulator starts from the bias (what nn.Linear does)
        lead = a.shape[:-1]
        with exact_fp32(a):
            y = torch.addmm(bias, a.reshape(-1, a.shape[-1]), b)
        y = y.reshape(*lead, b.shape[1])
    else:
        y = matmul(a, b)
        if bias is not None:
            y = y + bias
    y = apply_activation(y, str(ctx.attr("activation") or ""), ctx.attr("activation_params") or [])
    if res is not None:
        if res.dim() <= y.dim() and broadcast_shape(res.shape, y.shape) == y.shape:
            y = y.add_(res) if y.is_floating_point() else y + res  # y is ours: add in place
        else:
            y = y + res
    return [y]
