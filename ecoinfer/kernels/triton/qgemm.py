"""Triton INT8 / FP8 GEMM with in-register activation quantization: ecoinfer.QGemm.

    Xq = quant(X / x_scale)                  int8: round half to even, clamp [-128, 127]
                                             fp8e4m3: clamp [-448, 448], RNE cast
    Y  = act(Xq @ W_q^T * (x_scale * w_scale) + bias) + residual        in X's dtype

X stays float in memory: each program loads float [BLOCK_M, BLOCK_K] tiles and quantizes
them in registers (no int8 copy of X is written), W_q is read as stored, [N, K] with K
contiguous (the K-major operand Hopper's 8-bit wgmma wants; `pack_qweight` makes it so), and
tl.dot runs int8 x int8 -> int32 (fp8e4nv x fp8e4nv -> float32 for fp8). The epilogue
dequantizes (acc * x_scale * w_scale[n]) and hands the float32 tile to gemm.py's FusedGemm
epilogue (bias, activation, residual, one rounding).

Quantizing in the GEMM repeats X's quantization once per column tile; a configuration with
PREQUANT=1 instead quantizes X once in a separate elementwise kernel and the GEMM loads 8-bit
tiles. The tactic layer times both.

Rounding details (quantize_block):
  * int8 rounds with the float32 magic number 1.5 * 2**23: adding it leaves round-half-even(v)
    in the low mantissa bits (|v| <= 128 after the clamp), so the int8 code is the low byte
    of the sum's bits. Exact, compiled and interpreted alike.
  * fp8 uses the hardware RNE conversion when compiled. Triton 3.6's CPU interpreter casts
    float32 -> fp8 wrongly (it rounds up without carrying into the exponent: 7.97 -> 4.0), so
    under the interpreter (SOFT_FP8) the value is first rounded onto the e4m3 grid in float32
    arithmetic, after which the cast is exact.
  * float32 X divides exactly (div_rn), as the reference does; half X multiplies by the
    reciprocal (one instruction instead of a division subroutine; it can move a value that
    sits within an ulp of a rounding boundary by one code, far inside half tolerances).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from ecoinfer.kernels.triton.gemm import (
    _as_2d,
    _pow2_at_least,
    act_code,
    gemm_epilogue,
    interpreting,
    load_k,
    needs_int64,
    tile_ids,
)
from ecoinfer.kernels.triton.kernel_config import KernelConfig
from ecoinfer.kernels.triton.pdl import pdl_args, pdl_enter

Tensor = torch.Tensor

QTYPES = {"int8": torch.int8, "fp8e4m3": torch.float8_e4m3fn}
QCODE = {"int8": 0, "fp8e4m3": 1}  # the QTYPE constexpr of the kernels
# a codes tensor's element type -> that constexpr (kernels that read or write codes)
QCODE_OF = {QTYPES[name]: code for name, code in QCODE.items()}
INT8_MAGIC = 12582912.0  # 1.5 * 2**23
FP8_MAX = 448.0


# ---------------------------------------------------------------------- quantization
@triton.jit
def _round_e4m3(v):
    """float32 v (|v| <= 448) rounded half-even onto the float8 e4m3fn grid, in float32.

    The grid spacing at v is 2**(e - 3) for normal e4m3 (3 mantissa bits) and 2**-9 below
    the smallest normal 2**-6; adding and subtracting 1.5 * 2**(u + 23) rounds to a multiple
    of 2**u in one float32 rounding (RNE)."""
    bits = v.to(tl.int32, bitcast=True)
    e = ((bits >> 23) & 0xFF) - 127
    u = tl.maximum(e, -6) - 3
    magic = (((u + 150) << 23) | 0x400000).to(tl.float32, bitcast=True)
    return (v + magic) - magic


@triton.jit
def quantize_block(
    v,
    inv_scale,
    x_scale,
    QTYPE: tl.constexpr,
    EXACT_DIV: tl.constexpr,
    SOFT_FP8: tl.constexpr,
):
    """A float32 block quantized to int8 (QTYPE 0) or float8e4nv (QTYPE 1)."""
    if EXACT_DIV:
        v = tl.math.div_rn(v, x_scale)
    else:
        v = v * inv_scale
    if QTYPE == 0:
        v = tl.minimum(tl.maximum(v, -128.0), 127.0)
        # the low byte of (v + 1.5 * 2**23) is round-half-even(v) in two's complement
        q = (v + 12582912.0).to(tl.int32, bitcast=True).to(tl.int8)
    else:
        v = tl.minimum(tl.maximum(v, -448.0), 448.0)
        if SOFT_FP8:
            v = _round_e4m3(v)
        q = v.to(tl.float8e4nv)
    return q


@triton.jit
def _quantize_kernel(
    x_ptr,
    q_ptr,
    xs_ptr,
    numel,
    QTYPE: tl.constexpr,
    EXACT_DIV: tl.constexpr,
    SOFT_FP8: tl.constexpr,
    INT64: tl.constexpr,
    BLOCK: tl.constexpr,
    PDL: tl.constexpr = False,
):
    pdl_enter(PDL)
    pid = tl.program_id(0)
    if INT64:
        pid = pid.to(tl.int64)
    offs = pid * BLOCK + tl.arange(0, BLOCK)
    mask = offs < numel
    x_scale = tl.load(xs_ptr).to(tl.float32)
    inv = tl.math.div_rn(1.0, x_scale)
    v = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    tl.store(q_ptr + offs, quantize_block(v, inv, x_scale, QTYPE, EXACT_DIV, SOFT_FP8), mask=mask)


def soft_fp8(x: Tensor) -> bool:
    """The interpreter needs the float32 pre-rounding before its fp8 cast: always on CPU
    tensors, and on CUDA tensors too while TRITON_INTERPRET is set (a test process that
    interprets runs GPU tensors through the interpreter as well)."""
    return x.device.type == "cpu" or interpreting()


def quantize(x: Tensor, x_scale: Tensor, qtype: str, exact: bool = False) -> Tensor:
    """X quantized per tensor (QGemm's rule), dense in X's memory order (contiguous or
    channels-last X keeps its strides; anything else is made contiguous first). exact: divide
    by the scale (the reference's arithmetic) for half X too, not multiply by its inverse."""
    dense = x.is_contiguous() or x.is_contiguous(memory_format=torch.channels_last)
    src = x if dense else x.contiguous()
    q = torch.empty_like(src, dtype=QTYPES[qtype])
    n = src.numel()
    if n == 0:
        return q
    block = 1024
    _quantize_kernel[(triton.cdiv(n, block),)](
        src,
        q,
        x_scale,
        n,
        QTYPE=QCODE[qtype],
        EXACT_DIV=exact or x.dtype == torch.float32,
        SOFT_FP8=soft_fp8(x),
        INT64=n >= 2**31 - block,
        BLOCK=block,
        num_warps=4,
        **pdl_args(src.device),
    )
    return q


def pack_qweight(w_q: Tensor) -> Tensor:
    """W_q [N, K] as the kernels read it fastest: K contiguous (a no-op for the usual layout)."""
    return w_q if w_q.stride(-1) == 1 else w_q.contiguous()


# ---------------------------------------------------------------------- configurations
@dataclass(frozen=True)
class QGemmConfig(KernelConfig):
    BLOCK_M: int = 64
    BLOCK_N: int = 64
    BLOCK_K: int = 64
    GROUP_M: int = 8
    num_warps: int = 4
    num_stages: int = 3
    PREQUANT: int = 0  # 1: quantize X in a separate pass, the GEMM loads 8-bit tiles
    FP8_FAST_ACC: int = 1  # 0: fp8 partial sums promoted to float32 every BLOCK_K (Hopper)


# (BM, BN, BK, warps, stages) for 8-bit dots on Hopper: K steps of 64-128 bytes
_CANDIDATES = (
    (128, 256, 128, 8, 3),
    (128, 256, 64, 8, 4),
    (256, 128, 64, 8, 3),
    (128, 128, 128, 8, 3),
    (128, 128, 64, 4, 4),
    (64, 128, 128, 4, 4),
    (64, 64, 128, 4, 4),
    (32, 64, 128, 4, 4),
    (16, 64, 256, 4, 3),
)
_SMEM_BYTES = 192 * 1024  # of Hopper's 227 KB per block: headroom for Triton's own buffers


def fit_smem(bm: int, bn: int, bk: int, stages: int, xbytes: int) -> tuple[int, int]:
    """(BLOCK_K, num_stages) whose pipelined X (at xbytes per element) and W tiles, plus the
    quantized A tile, fit the shared-memory budget with at least 2 stages; a K step too large
    for that is halved (down to 32, the 8-bit dot minimum)."""
    while bk > 32 and 2 * (bm * bk * xbytes + bk * bn) + bm * bk > _SMEM_BYTES:
        bk //= 2
    stage = bm * bk * xbytes + bk * bn
    return bk, max(2, min(stages, (_SMEM_BYTES - bm * bk) // stage))


# float32 X: K steps of at most 64. With 128 (BLOCK_M 64, 4 warps) the sm_90 build gave wrong
# INT8 results and FP8 sums past the 1e-4 check (bench/gpu_qgemm_selftest.py, Triton 3.6)
F32_MAX_BK = 64


def qgemm_compiled_ok(qtype: str, x_dtype: torch.dtype, prequant: bool, device: object) -> bool:
    """False for INT8 with float32 X quantized inside the kernel, on a GPU: compiled by Triton
    3.6 for sm_90 it gave wrong results (bench/gpu_qgemm_selftest.py; the interpreter is right,
    and so are float16 X and PREQUANT, which quantizes X in its own kernel first)."""
    on_gpu = torch.device(device).type == "cuda"  # type: ignore[arg-type]
    return not (on_gpu and qtype == "int8" and x_dtype == torch.float32 and not prequant)


def ranked_configs(
    candidates: tuple[tuple[int, int, int, int, int], ...],
    m: int,
    n: int,
    k: int,
    x_dtype: torch.dtype,
) -> list[QGemmConfig]:
    """The (BM, BN, BK, warps, stages) candidates sized to an M x N x K problem (tiles no
    larger than the power-of-2 rounded matrix, float32 X K steps capped, stages fitted to
    shared memory), without repeats; grids of at least 128 tiles first, then the rest, most
    tiles first (shared by qgemm_configs and qconv.qconv_configs)."""
    xbytes = torch.empty((), dtype=x_dtype).element_size()
    mcap, ncap, kcap = _pow2_at_least(m, 16), _pow2_at_least(n, 16), _pow2_at_least(k, 32)
    fast = int(x_dtype != torch.float32)  # float32 layers have a 1e-5 tolerance
    out: list[QGemmConfig] = []
    for bm, bn, bk, w, s in candidates:
        bm, bn, bk = min(bm, mcap), min(bn, ncap), min(bk, kcap, F32_MAX_BK if not fast else bk)
        if bm * bn <= 64 * 64:
            w = min(w, 4 if bm * bn >= 2048 else 2)
        bk, s = fit_smem(bm, bn, bk, s, xbytes)  # float X tiles are staged at their width
        cfg = QGemmConfig(bm, bn, bk, 8, w, s, 0, fast)
        if cfg not in out:
            out.append(cfg)

    def tiles(c: QGemmConfig) -> int:
        return triton.cdiv(m, c.BLOCK_M) * triton.cdiv(n, c.BLOCK_N)

    full = [c for c in out if tiles(c) >= 128]
    rest = sorted((c for c in out if tiles(c) < 128), key=lambda c: -tiles(c))
    return full + rest


def qgemm_configs(
    m: int, n: int, k: int, x_dtype: torch.dtype, qtype: str = "int8", limit: int = 8
) -> list[QGemmConfig]:
    """Configurations sized to the problem, large tiles first for large problems; the two
    best-placed ones also as PREQUANT variants when M is large (X is then read once)."""
    ranked = ranked_configs(_CANDIDATES, m, n, k, x_dtype)
    pre: list[QGemmConfig] = []
    if m >= 256 and n > ranked[0].BLOCK_N:  # several column tiles re-quantize each X tile
        for c in ranked[:2]:
            _, st = fit_smem(c.BLOCK_M, c.BLOCK_N, c.BLOCK_K, c.num_stages + 1, 1)
            pre.append(QGemmConfig(**{**c.as_dict(), "PREQUANT": 1, "num_stages": st}))
    keep = max(1, limit - len(pre))
    return ranked[:keep] + pre


# ---------------------------------------------------------------------- kernel
@triton.jit
def _qgemm_kernel(
    x_ptr,
    w_ptr,
    y_ptr,
    xs_ptr,
    ws_ptr,
    bias_ptr,
    res_ptr,
    M,
    N,
    K,
    stride_xm,
    stride_xk,
    stride_wn,
    stride_wk,
    stride_ws,
    stride_ym,
    stride_yn,
    stride_rm,
    stride_rn,
    p0,
    p1,
    QTYPE: tl.constexpr,
    PREQUANT: tl.constexpr,
    EXACT_DIV: tl.constexpr,
    SOFT_FP8: tl.constexpr,
    FP8_FAST_ACC: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    ACT: tl.constexpr,
    HAS_RES: tl.constexpr,
    INT64: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    GROUP_M: tl.constexpr,
    EVEN_K: tl.constexpr = False,
    PDL: tl.constexpr = False,
):
    pdl_enter(PDL)
    pid_m, pid_n = tile_ids(M, N, BLOCK_M, BLOCK_N, GROUP_M)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    if INT64:
        offs_m = offs_m.to(tl.int64)
        offs_n = offs_n.to(tl.int64)
    offs_k = tl.arange(0, BLOCK_K)
    mask_m = offs_m < M
    mask_n = offs_n < N
    # rows/columns past the edge read a wrapped-around one (the store is masked): the loads
    # need no M/N mask, and with EVEN_K (K a multiple of BLOCK_K) no mask at all
    rows = tl.max_contiguous(tl.multiple_of(offs_m % M, BLOCK_M), BLOCK_M)
    cols = tl.max_contiguous(tl.multiple_of(offs_n % N, BLOCK_N), BLOCK_N)
    x_ptrs = x_ptr + rows[:, None] * stride_xm + offs_k[None, :] * stride_xk
    w_ptrs = w_ptr + offs_k[:, None] * stride_wk + cols[None, :] * stride_wn

    x_scale = tl.load(xs_ptr).to(tl.float32)
    inv = tl.math.div_rn(1.0, x_scale)
    if QTYPE == 0:
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.int32)
    else:
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        k_left = K - k0
        # masked (out-of-range) elements read 0, which quantizes to code 0: no contribution
        a = load_k(x_ptrs, offs_k[None, :] < k_left, EVEN_K)
        if not PREQUANT:
            a = quantize_block(a.to(tl.float32), inv, x_scale, QTYPE, EXACT_DIV, SOFT_FP8)
        b = load_k(w_ptrs, offs_k[:, None] < k_left, EVEN_K)
        if QTYPE == 0:
            acc = tl.dot(a, b, acc, out_dtype=tl.int32)
        elif FP8_FAST_ACC:
            acc = tl.dot(a, b, acc)
        else:
            acc = tl.dot(a, b, acc, max_num_imprecise_acc=BLOCK_K)
        x_ptrs += BLOCK_K * stride_xk
        w_ptrs += BLOCK_K * stride_wk

    # dequantize, then FusedGemm's epilogue on the float32 tile
    w_scale = tl.load(ws_ptr + offs_n * stride_ws, mask=mask_n, other=0.0).to(tl.float32)
    out = acc.to(tl.float32) * (x_scale * w_scale)[None, :]
    gemm_epilogue(
        out,
        offs_m,
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


# ---------------------------------------------------------------------- host side
def check_scales(x_scale: Tensor, w_scale: Tensor, n: int, what: str) -> None:
    if x_scale.numel() != 1:
        raise ValueError(f"{what}: x_scale must be a scalar, got shape {list(x_scale.shape)}")
    if w_scale.dim() > 1 or w_scale.numel() not in (1, n):
        raise ValueError(f"{what}: w_scale must be [{n}] or [1], got {list(w_scale.shape)}")


def qgemm(
    x: Tensor,
    w_packed: Tensor,
    x_scale: Tensor,
    w_scale: Tensor,
    bias: Tensor | None = None,
    residual: Tensor | None = None,
    activation: str = "",
    activation_params: list[float] | tuple[float, ...] = (),
    qtype: str = "int8",
    config: QGemmConfig | None = None,
    *,
    act: tuple[int, float, float] | None = None,
) -> Tensor:
    """ecoinfer.QGemm: act(quant(X) @ W_q^T * x_scale * w_scale + bias) + residual, X's dtype.

    w_packed is W_q [N, K] (int8 or float8_e4m3fn per qtype; any strides, fastest as
    pack_qweight leaves it); x_scale a float32 scalar tensor, w_scale float32 [N] or [1], all
    on X's device. The residual must broadcast to Y without growing it."""
    if qtype not in QTYPES:
        raise ValueError(f"QGemm: qtype must be one of {', '.join(QTYPES)}, got '{qtype}'")
    if w_packed.dtype != QTYPES[qtype]:
        raise ValueError(f"QGemm: W_q is {w_packed.dtype}, qtype '{qtype}' wants {QTYPES[qtype]}")
    code, p0, p1 = act if act is not None else act_code(activation, activation_params)
    k = x.shape[-1]
    n = w_packed.shape[0]
    if w_packed.dim() != 2 or w_packed.shape[1] != k:
        raise ValueError(f"QGemm: X has K={k} but W_q is {list(w_packed.shape)}")
    check_scales(x_scale, w_scale, n, "QGemm")
    out_shape = (*x.shape[:-1], n)
    m = math.prod(x.shape[:-1])
    y = torch.empty(out_shape, dtype=x.dtype, device=x.device)
    if y.numel() == 0:
        return y
    y2 = y.view(m, n)
    cfg = config or qgemm_configs(m, n, k, x.dtype, qtype)[0]
    x2 = x.reshape(m, k)
    if cfg.PREQUANT:
        x2 = quantize(x2, x_scale, qtype)
    r2 = _as_2d(residual.expand(out_shape), m, n) if residual is not None else None
    ws = w_scale.reshape(-1)
    grid = (triton.cdiv(m, cfg.BLOCK_M) * triton.cdiv(n, cfg.BLOCK_N),)
    _qgemm_kernel[grid](
        x2,
        w_packed,
        y2,
        x_scale,
        ws,
        bias.contiguous() if bias is not None else y2,
        r2 if r2 is not None else y2,
        m,
        n,
        k,
        x2.stride(0),
        x2.stride(1),
        w_packed.stride(0),
        w_packed.stride(1),
        ws.stride(0) if ws.numel() > 1 else 0,  # [1]: one scale for every column
        y2.stride(0),
        y2.stride(1),
        r2.stride(0) if r2 is not None else 0,
        r2.stride(1) if r2 is not None else 0,
        p0,
        p1,
        QTYPE=QCODE[qtype],
        PREQUANT=bool(cfg.PREQUANT),
        EXACT_DIV=x.dtype == torch.float32,
        SOFT_FP8=soft_fp8(x),
        FP8_FAST_ACC=bool(cfg.FP8_FAST_ACC),
        HAS_BIAS=bias is not None,
        ACT=code,
        HAS_RES=r2 is not None,
        INT64=needs_int64(x2, w_packed, y2, r2),
        BLOCK_M=cfg.BLOCK_M,
        BLOCK_N=cfg.BLOCK_N,
        BLOCK_K=cfg.BLOCK_K,
        GROUP_M=cfg.GROUP_M,
        EVEN_K=k % cfg.BLOCK_K == 0,
        num_warps=cfg.num_warps,
        num_stages=cfg.num_stages,
        **pdl_args(x2.device),
    )
    return y
