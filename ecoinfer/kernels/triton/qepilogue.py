"""One-pass epilogue for GEMMs done by a library (torch._int_mm, torch._scaled_mm).

Y = act(acc * scale + bias) + residual, rounded once to Y's dtype, where acc is the library's
[M, N] output (int32 from _int_mm, float32 or half from _scaled_mm) and scale a float32
scalar or per-column [N] vector. In torch ops this is three to five passes over [M, N] (cast,
scale, bias, activation, cast, residual); here it is one read of acc (and of the residual)
and one write of Y, with FusedGemm's epilogue (gemm.py's gemm_epilogue) doing the rest.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from ecoinfer.kernels.triton.gemm import _as_2d, act_code, gemm_epilogue
from ecoinfer.kernels.triton.pdl import pdl_args, pdl_enter

Tensor = torch.Tensor


@triton.jit
def _scaled_epilogue_kernel(
    acc_ptr,
    scale_ptr,
    y_ptr,
    bias_ptr,
    res_ptr,
    M,
    N,
    stride_am,
    stride_an,
    stride_s,
    stride_ym,
    stride_yn,
    stride_rm,
    stride_rn,
    p0,
    p1,
    HAS_SCALE: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    ACT: tl.constexpr,
    HAS_RES: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    PDL: tl.constexpr = False,
):
    pdl_enter(PDL)
    offs_m = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_m = offs_m < M
    mask_n = offs_n < N
    ptrs = acc_ptr + offs_m.to(tl.int64)[:, None] * stride_am + offs_n[None, :] * stride_an
    acc = tl.load(ptrs, mask=mask_m[:, None] & mask_n[None, :], other=0).to(tl.float32)
    if HAS_SCALE:  # stride_s 0: one scale for every column
        acc = acc * tl.load(scale_ptr + offs_n * stride_s, mask=mask_n, other=0.0)[None, :]
    gemm_epilogue(
        acc,
        offs_m.to(tl.int64),
        offs_n,
        mask_m,
        mask_n,
        y_ptr,
        bias_ptr,
        res_ptr,
        stride_ym,
        stride_yn,
        stride_rm,
        stride_rn,
        p0,
        p1,
        HAS_BIAS,
        ACT,
        HAS_RES,
    )


def scaled_epilogue(
    acc: Tensor,
    scale: Tensor | None,
    bias: Tensor | None,
    residual: Tensor | None,
    activation: str,
    activation_params: list[float],
    out_dtype: torch.dtype,
    out_shape: tuple[int, ...],
) -> Tensor:
    """act(acc [M, N] * scale + bias) + residual as `out_dtype` in `out_shape` (M = product of
    its leading dims). scale: float32 0-D, [1] or [N]; the residual broadcasts to out_shape."""
    m, n = acc.shape
    assert math.prod(out_shape[:-1]) == m and out_shape[-1] == n
    y = torch.empty(out_shape, dtype=out_dtype, device=acc.device)
    if y.numel() == 0:
        return y
    y2 = y.view(m, n)
    code, p0, p1 = act_code(activation, activation_params)
    r2 = _as_2d(residual.expand(out_shape), m, n) if residual is not None else None
    s = scale.float().reshape(-1) if scale is not None else None
    bm, bn = 32, 128
    grid = (triton.cdiv(m, bm), triton.cdiv(n, bn))
    _scaled_epilogue_kernel[grid](
        acc, s if s is not None else y2, y2,
        bias.contiguous() if bias is not None else y2,
        r2 if r2 is not None else y2,
        m, n, acc.stride(0), acc.stride(1),
        (s.stride(0) if s.numel() > 1 else 0) if s is not None else 0,
        y2.stride(0), y2.stride(1),
        r2.stride(0) if r2 is not None else 0, r2.stride(1) if r2 is not None else 0,
        p0, p1,
        HAS_SCALE=s is not None, HAS_BIAS=bias is not None, ACT=code, HAS_RES=r2 is not None,
        BLOCK_M=bm, BLOCK_N=bn, num_warps=4,
        **pdl_args(acc.device),
    )  # fmt: skip
    return y
