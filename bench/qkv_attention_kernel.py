"""Probe kernel (not in the engine): the packed QKV projection and the attention after it, in
one pass. bench/gpu_qkv_attention_probe.py times it against the two kernels the engines run.

Measured on an H200 (session 17, BERT-base b64, BENCHMARKS.md): it loses. FP16 78.4 us
against 68.7 for cuBLAS + flash attention; FP8 61.0 against 47.2 for the TMA GEMM + flash
(DOT8). The projection alone, with the attention left out, already takes 59.4 / 44.8 us,
against 48.6 / 30.7 for the unfused GEMMs: two dots of N = 128 and 64 in non-persistent
128-row programs use the tensor cores worse than one 128x256 tile. The attention then adds
16-19 us that nothing overlaps: one 8-warp program fills an SM's registers, and a persistent
loop (the next tile's loads during this tile's attention) was slower still.

    QKV = X @ W^T + b            X [B*S, K] (one sequence = S consecutive rows), W [3*H*D, K]
    Y[b, :, h] = softmax(scale * Q_h K_h^T + add_mask) V_h      Y [B*S, H*D]

For short sequences (S <= 128) one sequence fits one row tile of the GEMM, so a program that
owns (sequence, head) can project its head's Q, K and V (a 128 x 3D slab of the QKV product)
and attend over them while they are still in registers. The QKV tensor never reaches memory
(at BERT-base b64 that is 38 MB written and read again per layer) and the attention kernel's
own launch and load latency disappear.

W is repacked per head ([q_h; k_h; v_h], `pack_heads`) so that one TMA load fetches a head's
Q and K rows (2D of them: one dot N = 2D) and one more its V rows. X may be float16/bfloat16,
or 8-bit codes (float8_e4m3fn / int8, per-tensor x_scale) with W's codes and per-channel
w_scale: the dequantize runs on the accumulators. Q, K and V are rounded to float16 (as the
unfused QKV GEMM's float16 output would be) before the two attention dots; with y_scale, Y is
written as codes for the next 8-bit layer.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from ecoinfer.kernels.triton.attention import LOG2E, _to_log2
from ecoinfer.kernels.triton.kernel_config import KernelConfig
from ecoinfer.kernels.triton.pdl import pdl_args, pdl_enter
from ecoinfer.kernels.triton.qgemm import QCODE, QCODE_OF, QTYPES, quantize_block, soft_fp8
from ecoinfer.kernels.triton.tma_gemm import TensorDescriptor, num_sms, tma_ok, tma_supported

Tensor = torch.Tensor

MAX_SEQ = 128  # the scores tile is S x S in registers
HEAD_SIZES = (16, 32, 64)  # 3 * D accumulators per row: a wider head spills


@dataclass(frozen=True)
class QkvAttentionConfig(KernelConfig):
    BLOCK_K: int = 64
    num_warps: int = 8
    num_stages: int = 3
    # programs per SM walking the (sequence, head) tiles; 0: one program per tile
    PERSISTENT: int = 0


def qkv_attention_configs(esz: int) -> list[QkvAttentionConfig]:
    """Candidate configurations for operands of esz bytes (2: float16, 1: codes): K steps of
    128 and 256 bytes of one row, 2-4 stages, 8 warps (two warpgroups, 64 rows each)."""
    return [
        QkvAttentionConfig(128 // esz, 8, 3),
        QkvAttentionConfig(128 // esz, 8, 4),
        QkvAttentionConfig(256 // esz, 8, 2),
        QkvAttentionConfig(128 // esz, 4, 3),
    ]


def qkv_attention_fits(seq: int, heads: int, head_size: int, k: int, esz: int) -> bool:
    """Whether the fused kernel covers this attention: a sequence within one row tile, a head
    size whose accumulators fit, and K rows TMA can address."""
    return (
        1 <= seq <= MAX_SEQ
        and head_size in HEAD_SIZES
        and heads >= 1
        and (k * esz) % 16 == 0
        and k * esz >= 16
    )


def pack_heads(w: Tensor, heads: int) -> Tensor:
    """[3*H*D, ...] rows in Q, K, V order -> [H*3*D, ...] rows as [q_h; k_h; v_h] per head
    (W, its bias or its per-channel scale)."""
    d = w.shape[0] // (3 * heads)
    rest = w.shape[1:]
    return w.reshape(3, heads, d, *rest).transpose(0, 1).reshape(3 * heads * d, *rest)


@triton.jit
def _qkv_attention_kernel(
    x_desc,
    wqk_desc,
    wv_desc,
    y_ptr,
    bias_ptr,
    mask_ptr,
    xs_ptr,
    ws_ptr,
    ys_ptr,
    S,
    H,
    K,
    stride_ym,
    stride_mb,
    stride_mh,
    stride_mi,
    stride_mj,
    qk_scale,
    num_tiles,
    num_progs,
    HAS_BIAS: tl.constexpr,
    HAS_MASK: tl.constexpr,
    QIN: tl.constexpr,
    QOUT: tl.constexpr,
    SOFT_FP8: tl.constexpr,
    D: tl.constexpr,
    BLOCK_S: tl.constexpr,
    BLOCK_K: tl.constexpr,
    NUM_STAGES: tl.constexpr,
    PERSISTENT: tl.constexpr,
    PDL: tl.constexpr = False,
    ATTN: tl.constexpr = True,
):
    pdl_enter(PDL)
    # PERSISTENT: num_progs programs walk the (sequence, head) tiles; the flattened loop lets
    # the next tile's first loads start while this tile's attention runs
    for tile in tl.range(tl.program_id(0), num_tiles, num_progs, flatten=PERSISTENT):
        b = tile // H
        h = tile - b * H
        row0 = b * S
        wrow = h * 3 * D
        if QIN == 0:
            acc_qk = tl.zeros((BLOCK_S, 2 * D), dtype=tl.int32)
            acc_v = tl.zeros((BLOCK_S, D), dtype=tl.int32)
        else:
            acc_qk = tl.zeros((BLOCK_S, 2 * D), dtype=tl.float32)
            acc_v = tl.zeros((BLOCK_S, D), dtype=tl.float32)
        for k0 in tl.range(0, K, BLOCK_K, num_stages=NUM_STAGES):
            a = x_desc.load([row0, k0])
            wqk = wqk_desc.load([wrow, k0]).T  # [BLOCK_K, 2D]: the K-major operand
            wv = wv_desc.load([wrow + 2 * D, k0]).T
            if QIN == 0:
                acc_qk = tl.dot(a, wqk, acc_qk, out_dtype=tl.int32)
                acc_v = tl.dot(a, wv, acc_v, out_dtype=tl.int32)
            else:
                acc_qk = tl.dot(a, wqk, acc_qk)
                acc_v = tl.dot(a, wv, acc_v)

        c2 = tl.arange(0, 2 * D)
        cd = tl.arange(0, D)
        qk = acc_qk.to(tl.float32)
        v = acc_v.to(tl.float32)
        if QIN >= 0:  # dequantize: x_scale * w_scale[channel]
            xs = tl.load(xs_ptr).to(tl.float32)
            qk = qk * (xs * tl.load(ws_ptr + wrow + c2).to(tl.float32))[None, :]
            v = v * (xs * tl.load(ws_ptr + wrow + 2 * D + cd).to(tl.float32))[None, :]
        if HAS_BIAS:
            qk += tl.load(bias_ptr + wrow + c2).to(tl.float32)[None, :]
            v += tl.load(bias_ptr + wrow + 2 * D + cd).to(tl.float32)[None, :]
        # rounded as the unfused projection's float16 output would be
        qk = qk.to(tl.float16)
        v = v.to(tl.float16)
        q, kk = tl.split(tl.permute(tl.reshape(qk, (BLOCK_S, 2, D)), (0, 2, 1)))

        ri = tl.arange(0, BLOCK_S)
        if not ATTN:  # probe: the projection alone (Y = V_h + Q_h + K_h, so all are kept)
            o = (v.to(tl.float32) + q.to(tl.float32) + kk.to(tl.float32)) * 1.0
            denom = tl.full((BLOCK_S,), 1.0, tl.float32)
        else:
            s = tl.dot(q, tl.trans(kk)) * qk_scale  # log2 units: qk_scale = scale * log2(e)
            rj = tl.arange(0, BLOCK_S)
            if HAS_MASK:
                m_ptrs = (
                    mask_ptr
                    + b * stride_mb
                    + h * stride_mh
                    + ri[:, None] * stride_mi
                    + rj[None, :] * stride_mj
                )
                am = tl.load(m_ptrs, mask=(ri[:, None] < S) & (rj[None, :] < S), other=0.0)
                s += _to_log2(am.to(tl.float32))
            s = tl.where(rj[None, :] < S, s, float("-inf"))
            m = tl.max(s, 1)
            p = tl.math.exp2(s - m[:, None])
            denom = tl.sum(p, 1)
            o = tl.dot(p.to(tl.float16), v)
        o = o / denom[:, None]
        y_ptrs = y_ptr + (row0 + ri)[:, None] * stride_ym + (h * D + cd)[None, :]
        if QOUT >= 0:
            ys = tl.load(ys_ptr).to(tl.float32)
            out = quantize_block(o, 1.0 / ys, ys, QOUT, False, SOFT_FP8)
        else:
            out = o.to(y_ptr.dtype.element_ty)
        tl.store(y_ptrs, out, mask=(ri < S)[:, None])


def qkv_attention(
    x: Tensor,
    w_packed: Tensor,
    bias_packed: Tensor | None,
    add_mask: Tensor | None,
    *,
    batch: int,
    seq: int,
    num_heads: int,
    head_size: int,
    scale: float,
    config: QkvAttentionConfig | None = None,
    x_scale: Tensor | None = None,
    w_scale_packed: Tensor | None = None,
    y_scale: Tensor | None = None,
    y_qtype: str = "",
    out_dtype: torch.dtype = torch.float16,
    attention: bool = True,
) -> Tensor:
    """Y [B, S, H*D] of the fused projection + attention (module docstring). x: [B*S, K] rows
    (or [B, S, K]); w_packed / bias_packed / w_scale_packed in pack_heads order; add_mask
    broadcastable to [B, H, S, S]."""
    cfg = config or QkvAttentionConfig()
    h, d = num_heads, head_size
    x2 = x.reshape(batch * seq, x.shape[-1])
    k = x2.shape[1]
    if TensorDescriptor is None or not tma_supported(x.device):
        raise RuntimeError("fused QKV attention needs TMA descriptors (sm_90 or newer)")
    if not (tma_ok(x2) and tma_ok(w_packed)):
        raise ValueError("fused QKV attention: X and W need 16-byte aligned rows")
    qin = QCODE_OF.get(x.dtype, -1)
    qout = QCODE[y_qtype] if y_scale is not None else -1
    ydt = QTYPES[y_qtype] if y_scale is not None else out_dtype
    block_s = max(16, triton.next_power_of_2(seq))
    bk = cfg.BLOCK_K
    x_desc = TensorDescriptor.from_tensor(x2, [block_s, bk])
    wqk_desc = TensorDescriptor.from_tensor(w_packed, [2 * d, bk])
    wv_desc = TensorDescriptor.from_tensor(w_packed, [d, bk])
    y = torch.empty(batch * seq, h * d, dtype=ydt, device=x.device)
    if add_mask is not None:
        am = add_mask
        while am.dim() < 4:
            am = am.unsqueeze(0)
        am = am.expand(batch, h, seq, seq)
        ms = [st if sz > 1 else 0 for st, sz in zip(am.stride(), am.shape)]
    else:
        am, ms = y, [0, 0, 0, 0]
    dummy = y
    tiles = batch * h
    progs = min(tiles, cfg.PERSISTENT * num_sms(x.device)) if cfg.PERSISTENT else tiles
    _qkv_attention_kernel[(progs,)](
        x_desc,
        wqk_desc,
        wv_desc,
        y,
        bias_packed if bias_packed is not None else dummy,
        am,
        x_scale if x_scale is not None else dummy,
        w_scale_packed if w_scale_packed is not None else dummy,
        y_scale if y_scale is not None else dummy,
        seq,
        h,
        k,
        y.stride(0),
        *ms,
        scale * 1.4426950408889634,
        tiles,
        progs,
        HAS_BIAS=bias_packed is not None,
        HAS_MASK=add_mask is not None,
        QIN=qin,
        QOUT=qout,
        SOFT_FP8=soft_fp8(x),
        D=d,
        BLOCK_S=block_s,
        BLOCK_K=bk,
        NUM_STAGES=cfg.num_stages,
        PERSISTENT=bool(cfg.PERSISTENT),
        ATTN=attention,
        num_warps=cfg.num_warps,
        num_stages=cfg.num_stages,
        **pdl_args(x.device),
    )
    return y.view(batch, seq, h * d)


__all__ = [
    "LOG2E",
    "QkvAttentionConfig",
    "pack_heads",
    "qkv_attention",
    "qkv_attention_configs",
    "qkv_attention_fits",
]
