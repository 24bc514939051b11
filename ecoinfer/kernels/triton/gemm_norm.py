"""A GEMM that ends in the LayerNorm of its rows, in one kernel (Hopper TMA loads):

    Y = LayerNorm(X @ W^T [* x_scale * w_scale[n]] + bias + residual)    over all N columns
    Y_codes = quant(Y / y_scale)                                          with y_scale

Transformer blocks end in `LayerNorm(A @ W + b + skip)` with N the hidden size (768 for
BERT-base). Run as two kernels, the GEMM writes its Y to memory and a row kernel reads it back
with the skip (SkipLayerNorm, LayerNormCodes): 25-38 MB of traffic at BERT-base b64 and a
launch, 10-13% of the engine's time on an H200. Here each program owns BLOCK_M whole rows:
  1. for each BLOCK_N-wide slice of the N columns, the K loop (TMA tiles, as tma_gemm) and the
     epilogue (scales, bias, residual), whose sum is stored, rounded to Y's dtype, into Y;
  2. after a barrier, the same program reads its rows back (from L2: it has just written
     them), ROWS at a time, and normalizes them in place with the row kernel's formula
     (norms.layernorm_rows), writing the codes beside them.
The rounding is that of a TMA GEMM with its residual followed by a LayerNorm: the sum is
rounded once to Y's dtype before the statistics.

Each program holds one slice's accumulator at a time, so any N fits; X's tile rows are loaded
once per slice (from L2 after the first). A grid of ceil(M / BLOCK_M) programs: it needs
M of a few thousand rows to fill the GPU, and the builder keeps it only where it times faster
than the GEMM and the norm apart (engine/link_gemm_norm.py).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from ecoinfer.kernels.triton.gemm import _as_2d, upcast_dot
from ecoinfer.kernels.triton.kernel_config import KernelConfig
from ecoinfer.kernels.triton.norms import layernorm_rows, next_pow2
from ecoinfer.kernels.triton.pdl import pdl_args, pdl_enter
from ecoinfer.kernels.triton.qgemm import QCODE, QCODE_OF, QTYPES, quantize_block, soft_fp8
from ecoinfer.kernels.triton.tma_gemm import TensorDescriptor, _aligned

Tensor = torch.Tensor
_HALF = (torch.float16, torch.bfloat16)
_SMEM_BYTES = 200 * 1024  # for the K loop's stages (Hopper: 227 KB per block)


@dataclass(frozen=True)
class GemmNormConfig(KernelConfig):
    BLOCK_M: int = 64
    BLOCK_N: int = 256
    BLOCK_K: int = 64
    num_warps: int = 8
    num_stages: int = 3
    ROWS: int = 4  # rows per step of the norm phase


# (BM, BN, warps): wgmma tiles of 64 rows (one warpgroup's M) so that BERT-base b64's 8192
# rows make 128 programs, about one per SM of an H100/H200
_CANDIDATES = ((64, 256, 8), (64, 128, 4), (64, 256, 4), (64, 128, 8))


def gemm_norm_configs(m: int, n: int, k: int, in_bytes: int) -> list[GemmNormConfig]:
    """Configurations for an M x N x K problem with in_bytes-wide operands: K steps of 128
    bytes, as many stages as the shared memory holds (at most 4), and norm steps of about
    8K elements."""
    kmin = 16 if in_bytes == 2 else 32
    bk = max(kmin, min(128 // in_bytes, next_pow2(max(k, 1))))
    npad = next_pow2(max(n, 1))
    rows = max(1, min(16, 8192 // npad))
    out: list[GemmNormConfig] = []
    for bm, bn, w in _CANDIDATES:
        bn = min(bn, max(16, next_pow2(n)))
        stage = (bm + bn) * bk * in_bytes
        s = max(2, min(4, _SMEM_BYTES // stage))
        cfg = GemmNormConfig(bm, bn, bk, w, s, rows)
        if cfg not in out:
            out.append(cfg)
    return out


@triton.jit
def _gemm_norm_kernel(
    x_desc,
    w_desc,
    y_ptr,
    c_ptr,
    xs_ptr,
    ws_ptr,
    bias_ptr,
    res_ptr,
    lnw_ptr,
    lnb_ptr,
    ys_ptr,
    M,
    N,
    K,
    stride_ws,
    stride_rm,
    eps,
    QIN: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    HAS_RES: tl.constexpr,
    HAS_LNB: tl.constexpr,
    QOUT: tl.constexpr,
    SOFT_FP8: tl.constexpr,
    UPCAST: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    ROWS: tl.constexpr,
    NPAD: tl.constexpr,
    PDL: tl.constexpr = False,
):
    pdl_enter(PDL)
    off_m = tl.program_id(0) * BLOCK_M
    offs_m = off_m + tl.arange(0, BLOCK_M)
    mask_m = offs_m < M
    rows64 = offs_m.to(tl.int64)
    if QIN >= 0:
        x_scale = tl.load(xs_ptr).to(tl.float32)
    k_tiles = tl.cdiv(K, BLOCK_K)
    # 1. the GEMM, one BLOCK_N slice of the columns at a time; each slice's sum goes to Y
    for off_n in range(0, N, BLOCK_N):
        if QIN == 0:
            acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.int32)
        else:
            acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        for ki in range(k_tiles):
            a = x_desc.load([off_m, ki * BLOCK_K])
            b = w_desc.load([off_n, ki * BLOCK_K]).T  # W [N, K]: the K-major operand
            if UPCAST:  # the interpreter's bfloat16 dot is wrong (gemm.upcast_dot)
                a = a.to(tl.float32)
                b = b.to(tl.float32)
            if QIN == 0:
                acc = tl.dot(a, b, acc, out_dtype=tl.int32)
            else:
                acc = tl.dot(a, b, acc)
        offs_n = off_n + tl.arange(0, BLOCK_N)
        mask_n = offs_n < N
        mask = mask_m[:, None] & mask_n[None, :]
        out = acc.to(tl.float32)
        if QIN >= 0:
            w_scale = tl.load(ws_ptr + offs_n * stride_ws, mask=mask_n, other=0.0)
            out = out * (x_scale * w_scale.to(tl.float32))[None, :]
        if HAS_BIAS:
            out += tl.load(bias_ptr + offs_n, mask=mask_n, other=0.0).to(tl.float32)[None, :]
        if HAS_RES:
            r_ptrs = res_ptr + rows64[:, None] * stride_rm + offs_n[None, :]
            out += tl.load(r_ptrs, mask=mask, other=0.0).to(tl.float32)
        y_ptrs = y_ptr + rows64[:, None] * N + offs_n[None, :]
        tl.store(y_ptrs, out.to(y_ptr.dtype.element_ty), mask=mask)
    # 2. the norm of this program's rows, read back from what its own threads just stored
    tl.debug_barrier()
    cols = tl.arange(0, NPAD)
    cmask = cols < N
    if QOUT >= 0:
        y_scale = tl.load(ys_ptr).to(tl.float32)
        y_inv = 1.0 / y_scale
    for r0 in range(0, BLOCK_M, ROWS):
        r = off_m + r0 + tl.arange(0, ROWS)
        r64 = r.to(tl.int64)
        mask = (r < M)[:, None] & cmask[None, :]
        ptrs = y_ptr + r64[:, None] * N + cols[None, :]
        x = tl.load(ptrs, mask=mask, other=0.0, cache_modifier=".cg").to(tl.float32)
        y, mean, inv = layernorm_rows(x, mask, cols, cmask, N, eps, lnw_ptr, lnb_ptr, HAS_LNB)
        yr = y.to(y_ptr.dtype.element_ty)
        tl.store(ptrs, yr, mask=mask)
        if QOUT >= 0:  # the codes of the stored Y, as LayerNormCodes writes them
            q = quantize_block(yr.to(tl.float32), y_inv, y_scale, QOUT, False, SOFT_FP8)
            tl.store(c_ptr + r64[:, None] * N + cols[None, :], q, mask=mask)


def gemm_norm(
    x: Tensor,
    w: Tensor,
    bias: Tensor | None,
    residual: Tensor | None,
    ln_scale: Tensor,
    ln_bias: Tensor | None,
    eps: float,
    *,
    x_scale: Tensor | None = None,
    w_scale: Tensor | None = None,
    y_scale: Tensor | None = None,
    codes_qtype: str = "fp8e4m3",
    out_dtype: torch.dtype | None = None,
    config: GemmNormConfig | None = None,
) -> tuple[Tensor, Tensor | None]:
    """(Y, codes): Y = LayerNorm(X @ W^T [* x_scale * w_scale] + bias + residual) over its last
    axis (N), and with y_scale (float32 scalar) also Y's codes_qtype codes of Y / y_scale
    (multiplied by 1 / y_scale, as the GEMM epilogues quantize), else None.

    X [..., K] float16/bfloat16 with W [N, K] of its dtype, or 8-bit codes (int8 /
    float8_e4m3fn) with x_scale (float32 scalar), W codes of the same dtype and w_scale
    (float32 [N] or [1]). Y has X's dtype (half X), else out_dtype (float16 by default).
    residual: Y's shape; ln_scale / ln_bias: [N]."""
    k = x.shape[-1]
    coded = w.dtype in QCODE_OF
    if coded:
        if w.dtype != x.dtype or x_scale is None or w_scale is None:
            raise ValueError("gemm_norm: 8-bit W needs X codes of its dtype, x_scale and w_scale")
    elif x.dtype not in _HALF or w.dtype != x.dtype:
        raise ValueError(f"gemm_norm: X {x.dtype} and W {w.dtype}: want float16/bfloat16 pairs")
    if w.dim() != 2 or w.shape[1] != k or k == 0:
        raise ValueError(f"gemm_norm: X has K={k} but W is {list(w.shape)}")
    n = w.shape[0]
    out_shape = (*x.shape[:-1], n)
    m = math.prod(x.shape[:-1])
    ydt = (out_dtype or torch.float16) if coded else x.dtype
    y = torch.empty(out_shape, dtype=ydt, device=x.device)
    codes = None
    if y_scale is not None:
        codes = torch.empty(out_shape, dtype=QTYPES[codes_qtype], device=x.device)
    if y.numel() == 0:
        return y, codes
    x2 = _aligned(x.reshape(m, k))
    w2 = _aligned(w)
    cfg = config or gemm_norm_configs(m, n, k, w2.element_size())[0]
    x_desc = TensorDescriptor.from_tensor(x2, [cfg.BLOCK_M, cfg.BLOCK_K])
    w_desc = TensorDescriptor.from_tensor(w2, [cfg.BLOCK_N, cfg.BLOCK_K])
    r2 = _as_2d(residual.expand(out_shape), m, n) if residual is not None else None
    if r2 is not None and r2.stride(1) != 1:
        r2 = r2.contiguous()
    lw = ln_scale.reshape(n).contiguous()
    lb = ln_bias.reshape(n).contiguous() if ln_bias is not None else lw
    ws = w_scale.reshape(-1) if w_scale is not None else None
    y2 = y.view(m, n)
    _gemm_norm_kernel[(triton.cdiv(m, cfg.BLOCK_M),)](
        x_desc,
        w_desc,
        y2,
        codes.view(m, n) if codes is not None else y2,
        x_scale if x_scale is not None else y2,
        ws if ws is not None else y2,
        bias.contiguous() if bias is not None else y2,
        r2 if r2 is not None else y2,
        lw,
        lb,
        y_scale if y_scale is not None else lw,
        m,
        n,
        k,
        ws.stride(0) if ws is not None and ws.numel() > 1 else 0,
        r2.stride(0) if r2 is not None else 0,
        float(eps),
        QIN=QCODE_OF[w.dtype] if coded else -1,
        HAS_BIAS=bias is not None,
        HAS_RES=r2 is not None,
        HAS_LNB=ln_bias is not None,
        QOUT=QCODE[codes_qtype] if y_scale is not None else -1,
        SOFT_FP8=soft_fp8(x),
        UPCAST=upcast_dot(x) and not coded,
        BLOCK_M=cfg.BLOCK_M,
        BLOCK_N=cfg.BLOCK_N,
        BLOCK_K=cfg.BLOCK_K,
        ROWS=cfg.ROWS,
        NPAD=next_pow2(n),
        num_warps=cfg.num_warps,
        num_stages=cfg.num_stages,
        **pdl_args(x.device),
    )
    return y, codes
