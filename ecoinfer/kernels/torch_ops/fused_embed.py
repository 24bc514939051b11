"""Torch reference kernel of ecoinfer.EmbedLayerNorm (summed lookups + LayerNormalization)."""

from __future__ import annotations

import torch

from ecoinfer.kernels.torch_ops.registry import KernelContext, kernel
from ecoinfer.kernels.torch_ops.tensor import _check_index, _fix_negative

Tensor = torch.Tensor


@kernel("EmbedLayerNorm", domain="ecoinfer")
def _embed_layer_norm(ctx: KernelContext, xs: list[Tensor | None]) -> list[Tensor]:
    """Gathers checked like ONNX Gather's (IndexOutOfRangeError naming the ids input), the sum
    and the statistics in float32 (float64 tables: float64), one rounding to the tables' dtype.

    Against the unfused graph: float32 tables give the same result up to the order of the
    float32 additions; half tables are more accurate here, since the unfused graph rounds
    every partial sum and the normalized value to half before scale and bias."""
    k = int(ctx.attr("num_lookups"))
    eps = float(ctx.attr("epsilon"))
    scale, bias = xs[2 * k], xs[2 * k + 1] if len(xs) > 2 * k + 1 else None
    assert scale is not None
    out_dt = xs[1].dtype  # type: ignore[union-attr]
    cdt = torch.float64 if out_dt == torch.float64 else torch.float32
    acc: Tensor | None = None
    for i in range(k):
        ids, table = xs[2 * i], xs[2 * i + 1]
        assert ids is not None and table is not None
        n = table.shape[0]
        _check_index(ctx, ids, n, 2 * i, 0)
        rows = table.index_select(0, _fix_negative(ids, n).reshape(-1))
        rows = rows.reshape(tuple(ids.shape) + (table.shape[1],)).to(cdt)
        acc = rows if acc is None else acc + rows  # broadcasts over the leading dims
    assert acc is not None
    mean = acc.mean(-1, keepdim=True)
    d = acc - mean
    y = d * torch.rsqrt((d * d).mean(-1, keepdim=True) + eps) * scale.to(cdt)
    if bias is not None:
        y = y + bias.to(cdt)
    return [y.to(out_dt)]
