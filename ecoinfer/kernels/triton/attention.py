"""Triton flash-attention forward: ecoinfer.Attention and ecoinfer.MultiHeadAttention.

One program computes BLOCK_M query rows of one (batch, head) against every key, a BLOCK_N
tile at a time, with the online softmax (running max and sum in float32, the output
accumulated in float32 and divided once at the end), so the [Sq, Sk] scores never reach
memory. Every tensor is read through its strides, which is what lets

  * K come as [B, H, Sk, D] or [B, H, D, Sk] (k_transposed) at no cost;
  * batch/head dims (and masks) broadcast: an expanded view has stride 0;
  * MultiHeadAttention read Q, K and V straight out of [B, S, H*D] projections or one packed
    [B, S, 2*H*D + H*Dv] buffer, and write Y as [B, Sq, H*Dv]: no split/merge copies.

Semantics (docs/fused-ops.md, in this order): S = scale * Q Kᵀ; keep_mask -> mask_fill;
causal (j <= i, top-left aligned) -> mask_fill; S += add_mask; P = softmax(S); with
nan_to_zero a row whose scores are all -inf gives 0, without it NaN (like the ONNX graph).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from ecoinfer.kernels.broadcast import broadcast_shape
from ecoinfer.kernels.triton.gemm import dot_precision, needs_int64, upcast_dot
from ecoinfer.kernels.triton.kernel_config import KernelConfig
from ecoinfer.kernels.triton.pdl import pdl_args, pdl_enter
from ecoinfer.kernels.triton.qgemm import QCODE, QCODE_OF, QTYPES, quantize_block, soft_fp8
from ecoinfer.kernels.triton.tma_gemm import TensorDescriptor, num_sms, tma_ok, tma_supported

Tensor = torch.Tensor

MAX_HEAD_SIZE = 256


@dataclass(frozen=True)
class FlashConfig(KernelConfig):
    BLOCK_M: int = 64
    BLOCK_N: int = 64
    num_warps: int = 4
    num_stages: int = 2
    # 1: PROGS_PER_SM programs per SM walk the (row block, batch, head) tiles, the tile loop
    # software-pipelined when one key block covers the sequence (see _flash_fwd)
    PERSISTENT: int = 0
    PROGS_PER_SM: int = 2
    # 1: Q, K and V tiles loaded by Hopper's TMA unit from [B*S, width] matrices (MultiHead-
    # Attention's packed or separate projections): one instruction per tile, no address
    # registers. Needs whole tiles (tma_flash_fits); see flash_mha
    TMA: int = 0
    # 1: with 8-bit codes in (a linked QKV projection), the Q.K^T dot runs on the codes
    # themselves (an int8 / fp8 tensor-core dot, exact products, float32 / int32 sums)
    # instead of on their fp16 copies; P.V stays fp16
    DOT8: int = 0


def flash_configs(
    sq: int, sk: int, d: int, dtype: torch.dtype, limit: int = 6
) -> list[FlashConfig]:
    """A few tile shapes sized to the sequence lengths and head size."""
    mcap = max(16, triton.next_power_of_2(max(sq, 1)))
    ncap = max(16, triton.next_power_of_2(max(sk, 1)))
    big_head = d > 64 or dtype == torch.float32  # registers: a wide row tile costs more
    cands = [
        (128, 64, 8 if big_head else 4, 3),
        (64, 64, 4, 3),
        (128, 128, 8 if big_head else 4, 2),  # BERT-base b64 (H200): 4 warps 21.9 us, 8: 31.7
        (64, 128, 4, 2),
        (128, 32, 4, 3),
        (64, 32, 4, 2),
        (32, 32, 2, 2),
        (16, 32, 2, 2),
    ]
    if d > 128:
        cands = [(64, 32, 4, 2), (32, 32, 4, 2), (64, 64, 8, 2), (16, 32, 2, 2)]
    elt = 4 if dtype == torch.float32 else 2
    bd = _head_block(d)
    out: list[FlashConfig] = []
    for bm, bn, w, s in cands:
        bm, bn = min(bm, mcap), min(bn, ncap)
        # shared memory: the Q tile plus `s` stages of K and V tiles (H100: 227 KiB a block)
        if elt * (bm * bd + s * bn * 2 * bd) > 200 * 1024:
            continue
        cfg = FlashConfig(bm, bn, w if bm >= 64 else 2, s)
        if cfg not in out:
            out.append(cfg)
    if not out:
        out.append(FlashConfig(16, 16, 2, 1))
    out = out[:limit]
    # short sequences (one key block): the two best-placed one-block tiles also persistent
    one = [c for c in out if c.BLOCK_N >= sk][:2]
    out += [
        FlashConfig(c.BLOCK_M, c.BLOCK_N, c.num_warps, max(2, c.num_stages), 1, p)
        for c in one
        for p in (2, 4)
    ]
    return out


@triton.jit
def _qkv_operand(
    x, inv, x_scale, X_CODES: tl.constexpr, X_EXACT: tl.constexpr, SOFT_FP8: tl.constexpr
):
    """A Q/K/V tile as the fp16 dot operand holding its codes (see X_CODES)."""
    if X_CODES == 2 or X_CODES == 3:
        x = quantize_block(x.to(tl.float32), inv, x_scale, X_CODES - 2, X_EXACT, SOFT_FP8)
    return x.to(tl.float16)


_LOG2E = 1.4426950408889634
_FLT_MAX = 3.4028234663852886e38
LOG2E: tl.constexpr = tl.constexpr(_LOG2E)
_F32_MAX: tl.constexpr = tl.constexpr(_FLT_MAX)


@triton.jit
def _to_log2(x):
    """A score term (mask value, fill) in log2 units, x * log2(e), clamped to float32's finite
    range where x is finite: finfo.min masks keep their finite meaning, -inf stays -inf, NaN
    stays NaN (the GPU's plain min/max would return the other operand)."""
    # (the enum spelled inline: the compiler cannot hold it in a local variable)
    y = tl.maximum(x * LOG2E, -_F32_MAX, propagate_nan=tl.PropagateNan.ALL)
    y = tl.minimum(y, _F32_MAX, propagate_nan=tl.PropagateNan.ALL)
    return tl.where((x == float("inf")) | (x == float("-inf")), x, y)


@triton.jit
def _flash_tile(
    pid_m,
    pid_bh,
    q_ptr,
    k_ptr,
    v_ptr,
    y_ptr,
    add_ptr,
    keep_ptr,
    ys_ptr,
    xs_ptr,
    q_desc,
    k_desc,
    v_desc,
    q_col,
    k_col,
    v_col,
    H,
    SQ,
    SK,
    D,
    DV,
    sq_b,
    sq_h,
    sq_m,
    sq_d,
    sk_b,
    sk_h,
    sk_n,
    sk_d,
    sv_b,
    sv_h,
    sv_n,
    sv_d,
    sy_b,
    sy_h,
    sy_m,
    sy_d,
    sa_b,
    sa_h,
    sa_m,
    sa_n,
    sp_b,
    sp_h,
    sp_m,
    sp_n,
    scale,
    fill,
    HAS_ADD: tl.constexpr,
    HAS_KEEP: tl.constexpr,
    ADD_ROW: tl.constexpr,
    KEEP_ROW: tl.constexpr,
    CAUSAL: tl.constexpr,
    CAUSAL_SKIP: tl.constexpr,
    NAN_TO_ZERO: tl.constexpr,
    INPUT_PRECISION: tl.constexpr,
    UPCAST: tl.constexpr,
    QOUT: tl.constexpr,
    X_CODES: tl.constexpr,
    X_EXACT: tl.constexpr,
    SOFT_FP8: tl.constexpr,
    INT64: tl.constexpr,
    ONE_BLOCK: tl.constexpr,
    EVEN_N: tl.constexpr,
    TMA: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_DV: tl.constexpr,
):
    """One BLOCK_M row block of one (batch, head): the whole attention of those rows. `fill`
    comes in log2 units (_fill_log2)."""
    b = pid_bh // H
    h = pid_bh % H
    # TMA tiles (int32 coordinates in the [B*S, width] matrices): the first row of this
    # sequence's queries and keys, and head h's first column of Q/K and of V
    q_row = b * SQ + pid_m * BLOCK_M
    k_row = b * SK
    qk_col = h * D
    v_col_h = h * DV
    if INT64:
        b = b.to(tl.int64)
        h = h.to(tl.int64)
    q_ptr += b * sq_b + h * sq_h
    k_ptr += b * sk_b + h * sk_h
    v_ptr += b * sv_b + h * sv_h
    y_ptr += b * sy_b + h * sy_h

    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    offs_dv = tl.arange(0, BLOCK_DV)
    mask_m = offs_m < SQ
    if TMA:  # rows b*SQ.. of the [B*SQ, width] matrix, head h's columns (whole tiles only)
        q = q_desc.load([q_row, q_col + qk_col])
    else:
        q = tl.load(
            q_ptr + offs_m[:, None] * sq_m + offs_d[None, :] * sq_d,
            mask=mask_m[:, None] & (offs_d[None, :] < D),
            other=0.0,
        )
    if UPCAST:
        q = q.to(tl.float32)
    qk_scale = scale
    x_scale = 1.0
    inv = 1.0
    if X_CODES > 0:
        # Q, K and V are 8-bit codes of one packed buffer with one x_scale (X_CODES 1), or
        # float values quantized here as they load (2: int8, 3: e4m3): widened to fp16 (exact
        # for both), the dots run in fp16 and the scale is applied to the float32 results,
        # twice to the scores (Q and K) and once to the output (V)
        x_scale = tl.load(xs_ptr).to(tl.float32)
        inv = tl.math.div_rn(1.0, x_scale)
        # (X_CODES 4: codes as 1, with Q.K^T dotted on the codes themselves, DOT8)
        if X_CODES != 4:
            q = _qkv_operand(q, inv, x_scale, X_CODES, X_EXACT, SOFT_FP8)
        qk_scale = scale * x_scale * x_scale
    # scores in log2 units (natural ones times log2(e), folded into the scale), so each
    # probability is one ex2; softmax is unchanged. Masks are scaled likewise, clamped to
    # float32's range so a finite fill or additive mask (finfo.min) stays finite (_to_log2)
    qk_scale = qk_scale * LOG2E

    # running row max, row sum and output accumulator, all float32
    m_i = tl.full((BLOCK_M,), float("-inf"), dtype=tl.float32)
    l_i = tl.zeros((BLOCK_M,), dtype=tl.float32)
    acc = tl.zeros((BLOCK_M, BLOCK_DV), dtype=tl.float32)

    hi = SK
    if CAUSAL_SKIP:
        # keys past the last query row of this block weigh 0 for every row (mask_fill is
        # -inf): skip them. A finite fill gives them weight in fully masked rows: not skipped
        hi = tl.minimum(SK, (pid_m + 1) * BLOCK_M)
    # ONE_BLOCK (Sk <= BLOCK_N): a loop of one trip with constant bounds, which the compiler
    # removes, so that a persistent program's tile loop is the innermost one (pipelined)
    for start_n in range(0, BLOCK_N if ONE_BLOCK else hi, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        mask_n = offs_n < SK
        if TMA:  # a [BLOCK_N, D] tile, used as [D, BLOCK_N] (the K-major operand)
            k = k_desc.load([k_row + start_n, k_col + qk_col]).T
        else:
            # K tile as [D, BLOCK_N] read through the strides (k_transposed only swaps them)
            k = tl.load(
                k_ptr + offs_d[:, None] * sk_d + offs_n[None, :] * sk_n,
                mask=(offs_d[:, None] < D) & mask_n[None, :],
                other=0.0,
            )
        if UPCAST:
            k = k.to(tl.float32)
        if X_CODES == 4:  # codes dotted as codes: int8 sums in int32, fp8 in float32
            if q.dtype == tl.int8:
                s = tl.dot(q, k, out_dtype=tl.int32).to(tl.float32) * qk_scale
            else:
                s = tl.dot(q, k) * qk_scale
        else:
            if X_CODES > 0:
                k = _qkv_operand(k, inv, x_scale, X_CODES, X_EXACT, SOFT_FP8)
            s = tl.dot(q, k, input_precision=INPUT_PRECISION) * qk_scale
        # a mask that does not vary over query rows (a key-padding mask, [B, 1, 1, Sk]) is
        # loaded as one row: BLOCK_N loads instead of BLOCK_M * BLOCK_N
        if HAS_KEEP and KEEP_ROW:
            keep = tl.load(keep_ptr + b * sp_b + h * sp_h + offs_n * sp_n, mask=mask_n, other=1)
            s = tl.where(keep[None, :] != 0, s, fill)
        elif HAS_KEEP:
            keep = tl.load(
                keep_ptr + b * sp_b + h * sp_h + offs_m[:, None] * sp_m + offs_n[None, :] * sp_n,
                mask=mask_m[:, None] & mask_n[None, :],
                other=1,
            )
            s = tl.where(keep != 0, s, fill)
        if CAUSAL:
            s = tl.where(offs_n[None, :] <= offs_m[:, None], s, fill)
        if HAS_ADD and ADD_ROW:
            add = tl.load(add_ptr + b * sa_b + h * sa_h + offs_n * sa_n, mask=mask_n, other=0.0)
            s += _to_log2(add.to(tl.float32))[None, :]
        elif HAS_ADD:
            add = tl.load(
                add_ptr + b * sa_b + h * sa_h + offs_m[:, None] * sa_m + offs_n[None, :] * sa_n,
                mask=mask_m[:, None] & mask_n[None, :],
                other=0.0,
            )
            s += _to_log2(add.to(tl.float32))
        if not EVEN_N:  # columns past Sk do not exist: they weigh exactly 0
            s = tl.where(mask_n[None, :], s, float("-inf"))

        m_new = tl.maximum(m_i, tl.max(s, 1))
        # a row with no finite score yet keeps a 0 reference, so exp(-inf - 0) = 0, not NaN
        m_ref = tl.where(m_new == float("-inf"), 0.0, m_new)
        p = tl.exp2(s - m_ref[:, None])
        if ONE_BLOCK:  # the only key block: nothing accumulated yet to rescale
            l_i = tl.sum(p, 1)
        else:
            alpha = tl.exp2(m_i - m_ref)
            l_i = l_i * alpha + tl.sum(p, 1)
            acc = acc * alpha[:, None]
        if TMA:
            v = v_desc.load([k_row + start_n, v_col + v_col_h])
        else:
            v = tl.load(
                v_ptr + offs_n[:, None] * sv_n + offs_dv[None, :] * sv_d,
                mask=mask_n[:, None] & (offs_dv[None, :] < DV),
                other=0.0,
            )
        if UPCAST:
            v = v.to(tl.float32)
        if X_CODES > 0:
            v = _qkv_operand(v, inv, x_scale, X_CODES, X_EXACT, SOFT_FP8)
        acc = tl.dot(p.to(v.dtype), v, acc, input_precision=INPUT_PRECISION)
        m_i = m_new

    # one division per row, V's scale folded in. l == 0: every score of the row was -inf:
    # softmax is 0/0 = NaN (the graph's answer), here 0 * inf, or 0 with NAN_TO_ZERO
    if NAN_TO_ZERO:
        row = tl.where(l_i > 0, x_scale / l_i, 0.0)
    else:
        row = x_scale / l_i
    y = acc * row[:, None]
    if QOUT >= 0:  # the next quantized layer's codes (link_codes): Y / y_scale, rounded once
        y_scale = tl.load(ys_ptr).to(tl.float32)
        out = quantize_block(y, 1.0 / y_scale, y_scale, QOUT, False, SOFT_FP8)
    else:
        out = y.to(y_ptr.dtype.element_ty)
    tl.store(
        y_ptr + offs_m[:, None] * sy_m + offs_dv[None, :] * sy_d,
        out,
        mask=mask_m[:, None] & (offs_dv[None, :] < DV),
    )


@triton.jit
def _flash_fwd(
    q_ptr,
    k_ptr,
    v_ptr,
    y_ptr,
    add_ptr,
    keep_ptr,
    ys_ptr,
    xs_ptr,
    q_desc,
    k_desc,
    v_desc,
    q_col,
    k_col,
    v_col,
    H,
    NUM_M,
    N_TILES,
    NUM_PROGS,
    SQ,
    SK,
    D,
    DV,
    sq_b,
    sq_h,
    sq_m,
    sq_d,
    sk_b,
    sk_h,
    sk_n,
    sk_d,
    sv_b,
    sv_h,
    sv_n,
    sv_d,
    sy_b,
    sy_h,
    sy_m,
    sy_d,
    sa_b,
    sa_h,
    sa_m,
    sa_n,
    sp_b,
    sp_h,
    sp_m,
    sp_n,
    scale,
    fill,
    HAS_ADD: tl.constexpr,
    HAS_KEEP: tl.constexpr,
    ADD_ROW: tl.constexpr,
    KEEP_ROW: tl.constexpr,
    CAUSAL: tl.constexpr,
    CAUSAL_SKIP: tl.constexpr,
    NAN_TO_ZERO: tl.constexpr,
    INPUT_PRECISION: tl.constexpr,
    UPCAST: tl.constexpr,
    QOUT: tl.constexpr,
    X_CODES: tl.constexpr,
    X_EXACT: tl.constexpr,
    SOFT_FP8: tl.constexpr,
    INT64: tl.constexpr,
    ONE_BLOCK: tl.constexpr,
    EVEN_N: tl.constexpr,
    TMA: tl.constexpr,
    PERSISTENT: tl.constexpr,
    TILE_STAGES: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_DV: tl.constexpr,
    PDL: tl.constexpr = False,
):
    """One program per row block of a (batch, head) (tile = pid_bh * NUM_M + pid_m), or with
    PERSISTENT, NUM_PROGS programs walking the tiles: with one key block per tile (short
    sequences: BERT's 128 tokens) the next tile's Q, K and V loads overlap this one's math."""
    pdl_enter(PDL)
    if PERSISTENT:
        for tile in tl.range(tl.program_id(0), N_TILES, NUM_PROGS, num_stages=TILE_STAGES):
            _flash_tile(
                tile % NUM_M,
                tile // NUM_M,
                q_ptr,
                k_ptr,
                v_ptr,
                y_ptr,
                add_ptr,
                keep_ptr,
                ys_ptr,
                xs_ptr,
                q_desc,
                k_desc,
                v_desc,
                q_col,
                k_col,
                v_col,
                H,
                SQ,
                SK,
                D,
                DV,
                sq_b,
                sq_h,
                sq_m,
                sq_d,
                sk_b,
                sk_h,
                sk_n,
                sk_d,
                sv_b,
                sv_h,
                sv_n,
                sv_d,
                sy_b,
                sy_h,
                sy_m,
                sy_d,
                sa_b,
                sa_h,
                sa_m,
                sa_n,
                sp_b,
                sp_h,
                sp_m,
                sp_n,
                scale,
                fill,
                HAS_ADD,
                HAS_KEEP,
                ADD_ROW,
                KEEP_ROW,
                CAUSAL,
                CAUSAL_SKIP,
                NAN_TO_ZERO,
                INPUT_PRECISION,
                UPCAST,
                QOUT,
                X_CODES,
                X_EXACT,
                SOFT_FP8,
                INT64,
                ONE_BLOCK,
                EVEN_N,
                TMA,
                BLOCK_M,
                BLOCK_N,
                BLOCK_D,
                BLOCK_DV,
            )
    else:
        pid = tl.program_id(0)
        _flash_tile(
            pid % NUM_M,
            pid // NUM_M,
            q_ptr,
            k_ptr,
            v_ptr,
            y_ptr,
            add_ptr,
            keep_ptr,
            ys_ptr,
            xs_ptr,
            q_desc,
            k_desc,
            v_desc,
            q_col,
            k_col,
            v_col,
            H,
            SQ,
            SK,
            D,
            DV,
            sq_b,
            sq_h,
            sq_m,
            sq_d,
            sk_b,
            sk_h,
            sk_n,
            sk_d,
            sv_b,
            sv_h,
            sv_n,
            sv_d,
            sy_b,
            sy_h,
            sy_m,
            sy_d,
            sa_b,
            sa_h,
            sa_m,
            sa_n,
            sp_b,
            sp_h,
            sp_m,
            sp_n,
            scale,
            fill,
            HAS_ADD,
            HAS_KEEP,
            ADD_ROW,
            KEEP_ROW,
            CAUSAL,
            CAUSAL_SKIP,
            NAN_TO_ZERO,
            INPUT_PRECISION,
            UPCAST,
            QOUT,
            X_CODES,
            X_EXACT,
            SOFT_FP8,
            INT64,
            ONE_BLOCK,
            EVEN_N,
            TMA,
            BLOCK_M,
            BLOCK_N,
            BLOCK_D,
            BLOCK_DV,
        )


@functools.lru_cache(maxsize=64)
def _rounded(v: float, dtype: torch.dtype) -> float:
    return float(torch.tensor(v, dtype=dtype).float())


def _as_4d(t: Tensor) -> Tensor:
    """Leading (batch/head) dims as [B, H]: MatMul-style broadcasting over a rank < 4 input."""
    if t.dim() > 4:
        raise ValueError(f"flash attention takes rank <= 4 inputs, got {list(t.shape)}")
    return t.reshape((1,) * (4 - t.dim()) + tuple(t.shape)) if t.dim() < 4 else t


def _fill_log2(fill: float) -> float:
    """mask_fill in the kernel's log2 units, as _to_log2 scales masks: -inf stays -inf, a
    finite fill stays finite in float32."""
    if math.isinf(fill) or math.isnan(fill):
        return fill
    return min(max(fill * _LOG2E, -_FLT_MAX), _FLT_MAX)


def _head_block(d: int) -> int:
    return max(16, triton.next_power_of_2(d))


def _compute_dtype(q: torch.dtype, out_dtype: torch.dtype | None) -> torch.dtype:
    """The float type attention computes Y in: Q's, or out_dtype (default float16) when Q,
    K and V arrive as 8-bit codes."""
    return (out_dtype or torch.float16) if q in QCODE_OF else q


def flash_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    add_mask: Tensor | None = None,
    keep_mask: Tensor | None = None,
    *,
    scale: float = 1.0,
    k_transposed: bool = False,
    is_causal: bool = False,
    mask_fill: float = float("-inf"),
    nan_to_zero: bool = False,
    precision: str = "float32",
    config: FlashConfig | None = None,
    out: Tensor | None = None,
    y_scale: Tensor | None = None,
    x_scale: Tensor | None = None,
    x_qtype: str = "",
    out_dtype: torch.dtype | None = None,
    tma: TmaOperands | None = None,
) -> Tensor:
    """ecoinfer.Attention on [B, H, S, D] tensors (any strides; leading dims broadcast).

    `out`, if given, is a [B, H, Sq, Dv] (possibly strided) view to write Y into; with
    y_scale (float32 scalar) `out` holds int8 / float8_e4m3fn codes of Y / y_scale. With
    x_scale (float32 scalar, one for Q, K and V) the attention runs on their quantized
    values: Q, K and V are either int8 / float8_e4m3fn codes (Y then computed in out_dtype,
    default float16) or float tensors quantized to x_qtype codes as they are loaded. `tma`
    (flash_mha with a TMA config): the same Q, K and V as descriptors through which the
    kernel loads whole tiles."""
    fdtype = q.dtype
    x_mode = 0
    if x_scale is not None:
        if k.dtype != q.dtype or v.dtype != q.dtype:
            raise ValueError(f"Q, K and V types differ: {q.dtype}, {k.dtype}, {v.dtype}")
        if q.dtype in QCODE_OF:
            x_mode = 1
            fdtype = _compute_dtype(q.dtype, out_dtype)
        elif x_qtype in QTYPES and q.is_floating_point():
            x_mode = 2 + QCODE[x_qtype]
        else:
            raise ValueError(f"x_scale needs 8-bit codes or float Q, K, V with x_qtype int8 or "
                             f"fp8e4m3, got {q.dtype} and '{x_qtype}'")  # fmt: skip
    q4, k4, v4 = _as_4d(q), _as_4d(k), _as_4d(v)
    if k_transposed:
        k4 = k4.transpose(-1, -2)  # a view: [B, H, Sk, D]
    sq, d = q4.shape[-2], q4.shape[-1]
    sk, dv = k4.shape[-2], v4.shape[-1]
    if x_mode == 1 and config is not None and config.DOT8 and dot8_fits(d):
        x_mode = 4  # Q.K^T on the codes themselves
    if k4.shape[-1] != d or v4.shape[-2] != sk:
        raise ValueError(
            f"attention shapes disagree: Q {list(q.shape)}, K {list(k.shape)}, V {list(v.shape)}"
        )
    masks = [m for m in (add_mask, keep_mask) if m is not None]
    lead = broadcast_shape(q4.shape[:2], k4.shape[:2], v4.shape[:2])
    scores = broadcast_shape((*lead, sq, sk), *(m.shape for m in masks))
    if len(scores) != 4 or tuple(scores[-2:]) != (sq, sk):
        raise ValueError(
            f"masks {[list(m.shape) for m in masks]} grow the scores {[*lead, sq, sk]}"
        )
    bsz, heads = scores[0], scores[1]
    # broadcasting as stride-0 views: nothing is copied
    q4 = q4.expand(bsz, heads, sq, d)
    k4 = k4.expand(bsz, heads, sk, d)
    v4 = v4.expand(bsz, heads, sk, dv)
    add4 = add_mask.expand(scores) if add_mask is not None else None
    keep4 = keep_mask.expand(scores).view(torch.uint8) if keep_mask is not None else None
    y = out if out is not None else torch.empty(bsz, heads, sq, dv, dtype=fdtype, device=q.device)
    if y.numel() == 0:
        return y
    if sk == 0:
        # no key at all: softmax over nothing (NaN, or 0 with nan_to_zero)
        y.fill_(0.0 if nan_to_zero else float("nan"))
        return y
    cfg = config or flash_configs(sq, sk, d, fdtype)[0]
    # mask_fill rounds to Q's dtype as the graph's constant does (-3.4e38 is -inf in fp16)
    fill = _fill_log2(_rounded(float(mask_fill), fdtype))
    dummy = y
    num_m = triton.cdiv(sq, cfg.BLOCK_M)
    tiles = num_m * bsz * heads
    progs = tiles
    if cfg.PERSISTENT:
        progs = min(tiles, num_sms(q.device) * max(1, cfg.PROGS_PER_SM))
    _flash_fwd[(progs,)](
        q4,
        k4,
        v4,
        y,
        add4 if add4 is not None else dummy,
        keep4 if keep4 is not None else dummy,
        y_scale if y_scale is not None else dummy,
        x_scale if x_scale is not None else dummy,
        *(tma.descs if tma is not None else (dummy, dummy, dummy)),
        *(tma.cols if tma is not None else (0, 0, 0)),
        heads,
        num_m,
        tiles,
        progs,
        sq,
        sk,
        d,
        dv,
        *q4.stride(),
        *k4.stride(),
        *v4.stride(),
        *y.stride(),
        *(add4.stride() if add4 is not None else (0, 0, 0, 0)),
        *(keep4.stride() if keep4 is not None else (0, 0, 0, 0)),
        float(scale),
        fill,
        HAS_ADD=add4 is not None,
        HAS_KEEP=keep4 is not None,
        ADD_ROW=add4 is not None and (add4.stride(2) == 0 or sq == 1),
        KEEP_ROW=keep4 is not None and (keep4.stride(2) == 0 or sq == 1),
        CAUSAL=bool(is_causal),
        CAUSAL_SKIP=bool(is_causal) and fill == float("-inf"),
        NAN_TO_ZERO=bool(nan_to_zero),
        INPUT_PRECISION=dot_precision(torch.float16 if x_mode else fdtype, precision),
        UPCAST=x_mode == 0 and upcast_dot(q),
        QOUT=QCODE_OF[y.dtype] if y_scale is not None else -1,
        X_CODES=x_mode,
        X_EXACT=q.dtype == torch.float32,
        SOFT_FP8=soft_fp8(q),
        INT64=needs_int64(q4, k4, v4, y, add4, keep4),
        ONE_BLOCK=sk <= cfg.BLOCK_N,
        EVEN_N=sk % cfg.BLOCK_N == 0,
        TMA=tma is not None,
        PERSISTENT=bool(cfg.PERSISTENT),
        TILE_STAGES=cfg.num_stages,
        BLOCK_M=cfg.BLOCK_M,
        BLOCK_N=cfg.BLOCK_N,
        BLOCK_D=_head_block(d),
        BLOCK_DV=_head_block(dv),
        num_warps=cfg.num_warps,
        num_stages=cfg.num_stages,
        **pdl_args(q4.device),
    )
    return y


@dataclass(frozen=True)
class TmaOperands:
    """Q, K and V as TMA descriptors over [B*S, width] matrices, with the column where each
    one's head 0 starts (packed QKV: 0, H*D, 2*H*D)."""

    descs: tuple
    cols: tuple[int, int, int]


def dot8_fits(d: int) -> bool:
    """An 8-bit tensor-core dot needs K >= 32: the head must span 32 columns or more."""
    return _head_block(d) >= 32


def tma_flash_fits(sq: int, sk: int, d: int, dv: int, cfg: FlashConfig) -> bool:
    """Whether TMA tiles cover MultiHeadAttention exactly: a head is one power-of-two tile
    wide (no columns of the next head in a tile) and the sequences are whole tiles (no rows of
    the next sequence: the TMA unit zero-fills only past the matrix's end)."""
    return (
        d == _head_block(d)
        and dv == _head_block(dv)
        and sq % cfg.BLOCK_M == 0
        and sk % cfg.BLOCK_N == 0
    )


def tma_codes_fit(codes: bool, d: int, cfg: FlashConfig) -> bool:
    """With 8-bit codes in, TMA tiles only where Q.K^T dots the codes (DOT8). Widening a
    TMA-loaded, transposed 8-bit K tile to fp16 miscompiles in Triton 3.6 (H200, BLOCK_N 64
    with 3 stages: relative error 0.57 against 0.05 for every other configuration, probe
    attention_tma_probe_h200_2026-11-28t), and DOT8 timed faster wherever it ran."""
    return not codes or (bool(cfg.DOT8) and dot8_fits(d))


def _rows2d(x: Tensor) -> Tensor | None:
    """[B, S, W] as a [B*S, W] view a TMA descriptor can address, else None."""
    if x.dim() != 3 or x.numel() == 0 or x.stride(0) != x.shape[1] * x.stride(1):
        return None
    x2 = x.as_strided((x.shape[0] * x.shape[1], x.shape[2]), (x.stride(1), x.stride(2)))
    return x2 if tma_ok(x2) else None


def _tma_operands(
    q: Tensor, k: Tensor, v: Tensor, packed: bool, h: int, d: int, dv: int, cfg: FlashConfig
) -> TmaOperands | None:
    """The descriptors of a TMA config, or None where the tensors cannot take them (strides,
    alignment, a Triton without descriptors): the kernel then loads through pointers, with the
    same result."""
    if TensorDescriptor is None or not tma_supported(q.device):
        return None
    if not tma_flash_fits(q.shape[1], k.shape[1], d, dv, cfg):
        return None
    if not tma_codes_fit(q.dtype in QCODE_OF, d, cfg):
        return None
    if packed:
        base = _rows2d(q)
        if base is None:
            return None
        bases, cols = (base, base, base), (0, h * d, 2 * h * d)
    else:
        found = [_rows2d(t) for t in (q, k, v)]
        if any(b is None for b in found):
            return None
        bases, cols = tuple(found), (0, 0, 0)
    bd, bdv = _head_block(d), _head_block(dv)
    blocks = ([cfg.BLOCK_M, bd], [cfg.BLOCK_N, bd], [cfg.BLOCK_N, bdv])
    descs = tuple(TensorDescriptor.from_tensor(b, blk) for b, blk in zip(bases, blocks))
    return TmaOperands(descs, cols)


def _split_heads(x: Tensor, h: int) -> Tensor:
    """[B, S, H*D] -> [B, H, S, D] as a strided view (splitting the last dim never copies)."""
    return x.unflatten(-1, (h, -1)).transpose(1, 2)


def flash_mha(
    q: Tensor,
    k: Tensor | None,
    v: Tensor | None,
    add_mask: Tensor | None = None,
    keep_mask: Tensor | None = None,
    *,
    num_heads: int,
    head_size: int,
    packed: bool = False,
    scale: float = 1.0,
    is_causal: bool = False,
    mask_fill: float = float("-inf"),
    nan_to_zero: bool = False,
    precision: str = "float32",
    config: FlashConfig | None = None,
    y_scale: Tensor | None = None,
    y_qtype: str = "",
    x_scale: Tensor | None = None,
    x_qtype: str = "",
    out_dtype: torch.dtype | None = None,
) -> Tensor:
    """ecoinfer.MultiHeadAttention: heads split and merged through strides only; with
    y_scale, Y as y_qtype codes; with x_scale, attention on the quantized Q, K and V (codes,
    or float quantized to x_qtype as loaded; see flash_attention)."""
    h, d = num_heads, head_size
    use_tma = config is not None and bool(config.TMA)
    tma = None
    if packed:
        qkv = q
        q, k, v = qkv[..., : h * d], qkv[..., h * d : 2 * h * d], qkv[..., 2 * h * d :]
        if use_tma:
            dv_ = (qkv.shape[-1] - 2 * h * d) // h
            tma = _tma_operands(qkv, qkv, qkv, True, h, d, dv_, config)  # type: ignore[arg-type]
    assert k is not None and v is not None
    if use_tma and not packed:
        tma = _tma_operands(q, k, v, False, h, d, v.shape[-1] // h, config)  # type: ignore[arg-type]
    bsz, sq = q.shape[0], q.shape[1]
    dv = v.shape[-1] // h
    fdt = _compute_dtype(q.dtype, out_dtype)
    ydt = QTYPES[y_qtype] if y_scale is not None else fdt
    y = torch.empty(bsz, sq, h, dv, dtype=ydt, device=q.device)
    flash_attention(
        _split_heads(q, h),
        _split_heads(k, h),
        _split_heads(v, h),
        add_mask,
        keep_mask,
        scale=scale,
        is_causal=is_causal,
        mask_fill=mask_fill,
        nan_to_zero=nan_to_zero,
        precision=precision,
        config=config,
        out=y.transpose(1, 2),  # [B, H, Sq, Dv] view of the merged [B, Sq, H, Dv] output
        y_scale=y_scale,
        x_scale=x_scale,
        x_qtype=x_qtype,
        out_dtype=fdt,
        tma=tma,
    )
    return y.view(bsz, sq, h * dv)
