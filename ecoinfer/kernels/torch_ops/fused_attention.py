"""Torch reference kernels of fused ops in the "ecoinfer" domain.

ecoinfer.Attention is computed step by step in the inputs' dtype (explicit matmul, softmax),
exactly as the unfused ONNX graph would be, so it stays bit-close to onnxruntime; semantics in
ecoinfer/ir/ops/fused_attention.py.
"""

from __future__ import annotations

import torch

from ecoinfer.kernels.torch_ops.nn import matmul
from ecoinfer.kernels.torch_ops.registry import KernelContext, kernel

Tensor = torch.Tensor
_HALF = (torch.float16, torch.bfloat16)


def _softmax_last(s: Tensor) -> Tensor:
    if s.dtype in _HALF:
        # round after each step in the half dtype, as the ONNX Softmax kernel does
        e = torch.exp(s - s.amax(-1, keepdim=True))
        return e / e.sum(-1, keepdim=True)
    return torch.softmax(s, -1)


@kernel("Attention", domain="ecoinfer")
def _attention(ctx: KernelContext, xs: list[Tensor | None]) -> list[Tensor]:
    q, k, v = xs[0], xs[1], xs[2]
    assert q is not None and k is not None and v is not None
    add = xs[3] if len(xs) > 3 else None
    keep = xs[4] if len(xs) > 4 else None
    kt = k if ctx.attr("k_transposed") else k.transpose(-1, -2)
    s = matmul(q, kt)
    scale = float(ctx.attr("scale", 1.0))
    if scale != 1.0:
        # a 0-d tensor in s's dtype: the same rounding as Mul by the graph's scalar constant
        s = s * torch.full((), scale, dtype=s.dtype, device=s.device)
    fill = torch.full(
        (), float(ctx.attr("mask_fill", float("-inf"))), dtype=s.dtype, device=s.device
    )
    if keep is not None:
        s = torch.where(keep, s, fill)
    if ctx.attr("is_causal"):
        sq, sk = s.shape[-2], s.shape[-1]
        tril = torch.ones(sq, sk, dtype=torch.bool, device=s.device).tril()
        s = torch.where(tril, s, fill)
    if add is not None:
        s = s + add
    p = _softmax_last(s)
    if ctx.attr("nan_to_zero"):
        p = torch.where(torch.isnan(p), torch.zeros((), dtype=p.dtype, device=p.device), p)
    return [matmul(p, v)]
