"""Torch reference kernel of ecoinfer.SkipLayerNorm (LayerNormalization of X + Skip)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ecoinfer.kernels.torch_ops.registry import KernelContext, kernel

Tensor = torch.Tensor


@kernel("SkipLayerNorm", domain="ecoinfer")
def _skip_layer_norm(ctx: KernelContext, xs: list[Tensor | None]) -> list[Tensor]:
    """The sum and the statistics in float32 (float64 inputs: float64), one rounding to X's
    dtype at the end, as the Triton kernel does."""
    x, skip, scale = xs[0], xs[1], xs[2]
    bias = xs[3] if len(xs) > 3 else None
    assert x is not None and skip is not None and scale is not None
    cdt = torch.float64 if x.dtype == torch.float64 else torch.float32
    axis = int(ctx.attr("axis", -1))
    axis = axis + x.dim() if axis < 0 else axis
    norm_shape = list(x.shape[axis:])
    s = x.to(cdt) + skip.to(cdt)
    w = scale.to(cdt).expand(norm_shape)
    b = bias.to(cdt).expand(norm_shape) if bias is not None else None
    y = F.layer_norm(s, norm_shape, w, b, float(ctx.attr("epsilon", 1e-5)))
    return [y.to(x.dtype)]
