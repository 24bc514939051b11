"""Triton GEMM that loads its tiles with Hopper's tensor-memory accelerator (TMA).

    Y = post(act(X @ W^T * scale + bias) + residual)    scale = x_scale * w_scale[n] (8-bit)
    Y_codes = quant(Y / out_scale)                       only with out_scale (quantized output)

One kernel serves three layer kinds:
  * 8-bit GEMMs whose X is still float16/bfloat16: each X tile is quantized to W's codes in
    registers after its TMA load (QUANT_X), so no pass of its own writes X's codes (the
    tactics do not try it: on an H200 it lost to the one-pass quantize on every layer);
  * half GEMMs (float16/bfloat16 X and W): FusedGemm with its bias/activation/residual, and
    FusedConv 1x1 channels-last convolutions (post: the activation after the residual add);
  * 8-bit GEMMs whose X already holds codes (int8 or float8_e4m3fn, per-tensor x_scale) and
    W_q [N, K] codes with per-channel or per-tensor w_scale: QGemm with the dequantizing
    epilogue, no quantize step inside the kernel;
  * either of them writing codes for the next quantized layer (out_scale): the requantize
    epilogue, so that layer reads 8-bit X and nothing quantizes it in a pass of its own.

Why a second GEMM kernel beside gemm.py: gemm.py loads tiles through pointer arithmetic,
which Triton pipelines with cp.async; TMA moves a whole tile per instruction, frees the
registers that held the addresses and lets the warps run the epilogue math instead. Tiles
past the matrix edge are zero-filled by the TMA unit, so there are no masks in the K loop.
The kernel is persistent when `PERSISTENT`: that many programs per SM walk the tiles
(grouped order, GROUP_M row-blocks at a time), so one tile's epilogue overlaps the next one's
loads; with two per SM (where registers and shared memory let two blocks share an SM), one
program's epilogue can also overlap the other's K loop.

TMA needs compute capability 9.0 on the GPU (`tma_supported`); it needs 16-byte aligned
row strides and base addresses (`tma_ok`). The CPU interpreter runs it (the CI tests).
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
    apply_act,
    interpreting,
    upcast_dot,
)
from ecoinfer.kernels.triton.kernel_config import KernelConfig
from ecoinfer.kernels.triton.norms import norm_affine
from ecoinfer.kernels.triton.pdl import pdl_args, pdl_enter
from ecoinfer.kernels.triton.qgemm import QCODE, QCODE_OF, QTYPES, quantize_block, soft_fp8

Tensor = torch.Tensor

try:  # Triton >= 3.3
    from triton.tools.tensor_descriptor import TensorDescriptor
except ImportError:  # pragma: no cover  (older Triton: the tactic declines)
    TensorDescriptor = None  # type: ignore[assignment,misc]

_HALF = (torch.float16, torch.bfloat16)


def tma_supported(device: torch.device | str) -> bool:
    """TMA descriptors: Hopper (sm_90) or newer GPUs, and the CPU interpreter."""
    if TensorDescriptor is None:
        return False
    dev = torch.device(device)
    if dev.type != "cuda":
        return True
    try:
        return torch.cuda.get_device_capability(dev) >= (9, 0)
    except (RuntimeError, AssertionError):
        return False


def tma_ok(t: Tensor) -> bool:
    """A 2-D tensor a TMA descriptor can address: unit last stride, 16-byte aligned base and
    row stride."""
    esz = t.element_size()
    return (
        t.dim() == 2
        and t.stride(1) == 1
        and (t.stride(0) * esz) % 16 == 0
        and t.data_ptr() % 16 == 0
        and t.shape[1] * esz >= 16
    )


# ---------------------------------------------------------------------- configurations
@dataclass(frozen=True)
class ConvGeometry:
    """A KH x KW, stride-1 convolution whose output has the input's height and width
    (pad_t + pad_b = dil_h * (kh - 1), likewise across): the TMA GEMM runs it as an implicit
    GEMM whose K steps walk the taps, each reading X's rows shifted by dh * W + dw."""

    kh: int
    kw: int
    pads: tuple[int, int, int, int] = (0, 0, 0, 0)  # top, left, bottom, right
    dil: tuple[int, int] = (1, 1)

    def same_size(self) -> bool:
        t, left, b, r = self.pads
        return t + b == self.dil[0] * (self.kh - 1) and left + r == self.dil[1] * (self.kw - 1)

    def args(self, h: int, w: int) -> tuple[int, ...]:
        return h, w, self.pads[0], self.pads[1], self.dil[0], self.dil[1]


@dataclass(frozen=True)
class TmaGemmConfig(KernelConfig):
    BLOCK_M: int = 128
    BLOCK_N: int = 128
    BLOCK_K: int = 64
    GROUP_M: int = 8
    num_warps: int = 8
    num_stages: int = 3
    # programs per SM walking the tiles (persistent kernel); 0: one program per tile
    PERSISTENT: int = 1
    FAST_GELU: int = 0  # 1: exact GELU computed by the tanh formula with the hardware tanh
    # 1: Y stored (and the residual loaded) a whole tile at a time by TMA descriptors, where
    # their layouts allow (tma_ok); else by pointers, as with 0. On an H200 it was 1-5% faster
    # on BERT-base's GEMMs (bench/gpu_kernel_probe.py)
    EPI_TMA: int = 1
    # 1: a float X given to the 8-bit kernel is quantized a tile at a time in registers
    # (multiplying by 1/x_scale) instead of in a pass of its own. Kept for callers and the
    # probe; the tactics do not tune it (bench/gpu_kernel_probe.py: slower everywhere)
    QUANT_X: int = 0


# (BM, BN, BK in bytes of K per row, warps, stages): Hopper wgmma tiles; K steps of 128 bytes
# (64 half or 128 8-bit elements) and as many stages as 227 KB of shared memory holds
_CANDIDATES = (
    (128, 256, 128, 8, 3),
    (128, 128, 128, 8, 4),
    (256, 128, 128, 8, 3),
    (128, 128, 128, 4, 4),
    (128, 64, 128, 4, 4),
    (64, 128, 128, 4, 4),
    (64, 64, 128, 4, 4),
)
_SMEM_BYTES = 200 * 1024
# what a block may hold in all (Hopper: 227 KB, less the barriers and the compiler's scratch)
_SMEM_LIMIT = 220 * 1024


def tma_epilogue(
    cfg: TmaGemmConfig, in_bytes: int, y_bytes: int, r_bytes: int = 0, x_bytes: int = 0
) -> tuple[bool, bool]:
    """(store Y by TMA, load the residual by TMA) for an EPI_TMA configuration. The TMA
    store stages a whole Y tile in shared memory beside the K loop's stages, and a residual
    costs a whole tile more either way (TMA's landing tile, or the pointer load's layout
    conversion, which the H200 did not share with the store's tile: 272 KB for a 128x256
    tile over three 48 KB stages). Both by TMA where all of it fits, else both by pointers,
    whose conversions share one scratch tile. x_bytes: X's element size where it differs
    from W's (float X quantized in registers)."""
    if not cfg.EPI_TMA:
        return False, False
    used = cfg.num_stages * _stage_bytes(cfg.BLOCK_M, cfg.BLOCK_N, cfg.BLOCK_K, in_bytes, x_bytes)
    fits = used + cfg.BLOCK_M * cfg.BLOCK_N * (y_bytes + r_bytes) <= _SMEM_LIMIT
    return fits, fits and bool(r_bytes)


def _stage_bytes(bm: int, bn: int, bk: int, in_bytes: int, x_bytes: int = 0) -> int:
    """Shared memory of one K stage: an X tile and a W tile."""
    return (bm * (x_bytes or in_bytes) + bn * in_bytes) * bk


def tma_gemm_configs(
    m: int, n: int, k: int, in_bytes: int, out_bytes: int = 2, limit: int = 8, x_bytes: int = 0
) -> list[TmaGemmConfig]:
    """Configurations sized to an M x N x K problem with in_bytes-wide operands (X
    x_bytes wide where it differs: float X quantized in registers): tiles no larger than the
    rounded matrix, stages fitted to shared memory (with room for the epilogue), grids of
    at least 128 tiles first; each also as a non-persistent variant for grids of under two
    waves. k caps the K step: for an implicit-GEMM convolution give one tap's channels, so
    that no step spans two taps."""
    mcap, ncap = _pow2_at_least(m, 16), _pow2_at_least(n, 16)
    kmin = 16 if in_bytes == 2 else 32  # the smallest K step of a half / 8-bit dot
    kcap = _pow2_at_least(k, kmin)
    out: list[TmaGemmConfig] = []
    for bm, bn, kbytes, w, s in _CANDIDATES:
        bm, bn = min(bm, mcap), min(bn, ncap)
        bk = max(kmin, min(kbytes // max(in_bytes, x_bytes), kcap))  # 128-byte X rows
        stage = _stage_bytes(bm, bn, bk, in_bytes, x_bytes)
        # half an output tile of shared memory for the epilogue's layout conversion (a config
        # that still does not fit fails to compile, and the tuner skips it)
        s = max(2, min(s, (_SMEM_BYTES - bm * bn * out_bytes // 2) // stage))
        if bm * bn <= 64 * 64:
            w = 4
        cfg = TmaGemmConfig(bm, bn, bk, 8, w, s, 1, QUANT_X=int(bool(x_bytes)))
        if cfg not in out:
            out.append(cfg)

    def tiles(c: TmaGemmConfig) -> int:
        return triton.cdiv(m, c.BLOCK_M) * triton.cdiv(n, c.BLOCK_N)

    full = [c for c in out if tiles(c) >= 128]
    rest = sorted((c for c in out if tiles(c) < 128), key=lambda c: -tiles(c))
    ranked = (full + rest)[: max(1, limit - 2)]
    # the two best-placed tiles also without persistence (one program per tile)
    flat = [TmaGemmConfig(**{**c.as_dict(), "PERSISTENT": 0}) for c in ranked[:2]]
    return ranked + flat


# ---------------------------------------------------------------------- kernel
@triton.jit
def _grouped(tile, num_m, num_n, GROUP_M: tl.constexpr):
    """(pid_m, pid_n) of tile number `tile` in grouped order (see gemm.tile_ids)."""
    in_group = GROUP_M * num_n
    first_m = (tile // in_group) * GROUP_M
    size_m = min(num_m - first_m, GROUP_M)
    pid_m = first_m + ((tile % in_group) % size_m)
    pid_n = (tile % in_group) // size_m
    return pid_m, pid_n


@triton.jit
def _gelu_tanh_hw(x, HW_TANH: tl.constexpr):
    """GELU by the tanh formula; with HW_TANH the tanh is one MUFU instruction (tanh.approx,
    about 2**-11 relative error), else exp-based (the interpreter has no inline asm). Against
    erf GELU it differs by at most about 5e-4 absolute: within half-precision tolerances, and
    the tuner checks it against the reference like any tactic."""
    u = 0.7978845608028654 * (x + 0.044715 * x * x * x)
    if HW_TANH:
        t = tl.inline_asm_elementwise(
            "tanh.approx.f32 $0, $1;", "=r,r", [u], dtype=tl.float32, is_pure=True, pack=1
        )
    else:
        e = tl.exp(-2.0 * tl.abs(u))
        t = (1.0 - e) / (1.0 + e)
        t = tl.where(u < 0, -t, t)
    return 0.5 * x * (1.0 + t)


@triton.jit
def _tma_gemm_kernel(
    x_desc,
    w_desc,
    y_desc,
    r_desc,
    y_ptr,
    xs_ptr,
    ws_ptr,
    bias_ptr,
    res_ptr,
    os_ptr,
    M,
    N,
    K,
    IMG_H,
    IMG_W,
    PAD_T,
    PAD_L,
    DIL_H,
    DIL_W,
    num_progs,
    stride_ws,
    stride_ym,
    stride_yn,
    stride_rm,
    stride_rn,
    p0,
    p1,
    q0,
    q1,
    W_KN: tl.constexpr,
    KH: tl.constexpr,
    KW: tl.constexpr,
    QIN: tl.constexpr,
    QUANT_A: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    ACT: tl.constexpr,
    HAS_RES: tl.constexpr,
    POST: tl.constexpr,
    QOUT: tl.constexpr,
    SOFT_FP8: tl.constexpr,
    FAST_GELU: tl.constexpr,
    HW_TANH: tl.constexpr,
    Y_TMA: tl.constexpr,
    RES_TMA: tl.constexpr,
    UPCAST: tl.constexpr,
    INT64: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    GROUP_M: tl.constexpr,
    PDL: tl.constexpr = False,
    rmean_ptr=None,
    rinv_ptr=None,
    rw_ptr=None,
    rb_ptr=None,
    RES_NORM: tl.constexpr = False,
    RES_NORM_B: tl.constexpr = False,
):
    pdl_enter(PDL)
    num_m = tl.cdiv(M, BLOCK_M)
    num_n = tl.cdiv(N, BLOCK_N)
    # a KH x KW convolution (stride 1, output the size of the input): K = C channels per
    # tap, one K step reads BLOCK_K channels of one tap
    c_steps = tl.cdiv(K, BLOCK_K)
    k_tiles = KH * KW * c_steps
    if QIN >= 0:
        x_scale = tl.load(xs_ptr).to(tl.float32)
        x_inv = 1.0 / x_scale
    if QOUT >= 0:
        o_scale = tl.load(os_ptr).to(tl.float32)
        o_inv = 1.0 / o_scale
    # (Triton 3.6's warp_specialize=True instead of flatten was slower on every BERT GEMM
    # on an H200, e.g. FP8 FFN-up 54.2 against 50.2 us, and failed to compile some tiles)
    for tile in tl.range(tl.program_id(0), num_m * num_n, num_progs, flatten=True):
        pid_m, pid_n = _grouped(tile, num_m, num_n, GROUP_M)
        off_m = pid_m * BLOCK_M
        off_n = pid_n * BLOCK_N
        if QIN == 0:
            acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.int32)
        else:
            acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        if KH * KW > 1:
            pix = off_m + tl.arange(0, BLOCK_M)  # output pixels, flat over [N, H, W]
            ow = pix % IMG_W
            oh = (pix // IMG_W) % IMG_H
        for ki in range(k_tiles):
            if KH * KW == 1:
                a = x_desc.load([off_m, ki * BLOCK_K])
                kcol = ki * BLOCK_K
            else:
                # tap (r, s) reads the pixel dh rows and dw columns away: in X as rows
                # [N*H*W, C] that is dh * W + dw rows further; rows that cross the image's
                # edge (the zero padding, or a neighbouring row or image) are zeroed here
                tap = ki // c_steps
                c0 = (ki - tap * c_steps) * BLOCK_K
                dh = (tap // KW) * DIL_H - PAD_T
                dw = (tap % KW) * DIL_W - PAD_L
                a = x_desc.load([off_m + dh * IMG_W + dw, c0])
                ih = oh + dh
                iw = ow + dw
                inside = (ih >= 0) & (ih < IMG_H) & (iw >= 0) & (iw < IMG_W)
                if QIN == 1 and not QUANT_A:  # fp8 codes: zeroed as their bytes
                    ab = a.to(tl.int8, bitcast=True)
                    a = tl.where(inside[:, None], ab, tl.zeros_like(ab)).to(a.dtype, bitcast=True)
                else:
                    a = tl.where(inside[:, None], a, tl.zeros_like(a))
                # W [N, KH*KW*C]: a step past this tap's C channels meets zeros in X
                kcol = tap * K + c0
            if QUANT_A:  # float X: W's codes made here, in registers
                a = quantize_block(a.to(tl.float32), x_inv, x_scale, QIN, False, SOFT_FP8)
            if W_KN:
                b = w_desc.load([kcol, off_n])
            else:
                b = w_desc.load([off_n, kcol]).T  # W [N, K]: the K-major operand
            if UPCAST:  # the interpreter's bfloat16 dot is wrong (gemm.upcast_dot)
                a = a.to(tl.float32)
                b = b.to(tl.float32)
            if QIN == 0:
                acc = tl.dot(a, b, acc, out_dtype=tl.int32)
            else:
                acc = tl.dot(a, b, acc)

        offs_m = off_m + tl.arange(0, BLOCK_M)
        offs_n = off_n + tl.arange(0, BLOCK_N)
        if INT64:
            offs_m = offs_m.to(tl.int64)
            offs_n = offs_n.to(tl.int64)
        mask_m = offs_m < M
        mask_n = offs_n < N
        out = acc.to(tl.float32)
        if QIN >= 0:
            w_scale = tl.load(ws_ptr + offs_n * stride_ws, mask=mask_n, other=0.0)
            out = out * (x_scale * w_scale.to(tl.float32))[None, :]
        if HAS_BIAS:
            out += tl.load(bias_ptr + offs_n, mask=mask_n, other=0.0).to(tl.float32)[None, :]
        if FAST_GELU and (ACT == 7 or ACT == 8):  # erf or tanh GELU, by the tanh formula
            out = _gelu_tanh_hw(out, HW_TANH)
        else:
            out = apply_act(out, ACT, p0, p1)
        mask = mask_m[:, None] & mask_n[None, :]
        if HAS_RES:
            if RES_TMA:  # tiles past the edge read as zeros
                r = r_desc.load([off_m, off_n]).to(tl.float32)
            else:
                r_ptrs = res_ptr + offs_m[:, None] * stride_rm + offs_n[None, :] * stride_rn
                r = tl.load(r_ptrs, mask=mask, other=0.0).to(tl.float32)
            if RES_NORM:  # the residual is LayerNorm(R): rebuilt from R and its row statistics
                mu = tl.load(rmean_ptr + offs_m, mask=mask_m, other=0.0)
                iv = tl.load(rinv_ptr + offs_m, mask=mask_m, other=0.0)
                rw = tl.load(rw_ptr + offs_n, mask=mask_n, other=0.0).to(tl.float32)
                rb = rw
                if RES_NORM_B:
                    rb = tl.load(rb_ptr + offs_n, mask=mask_n, other=0.0).to(tl.float32)
                r = norm_affine(r - mu[:, None], iv, rw, rb, RES_NORM_B)
                r = r.to(res_ptr.dtype.element_ty).to(tl.float32)  # as the norm stores its Y
            out += r
        out = apply_act(out, POST, q0, q1)  # the activation after the residual add
        if QOUT >= 0:
            # the float result rounds once, straight to the next layer's codes
            out = quantize_block(out, o_inv, o_scale, QOUT, False, SOFT_FP8)
        else:
            out = out.to(y_ptr.dtype.element_ty)
        if Y_TMA:  # the TMA unit drops what lies past the edge
            y_desc.store([off_m, off_n], out)
        else:
            y_ptrs = y_ptr + offs_m[:, None] * stride_ym + offs_n[None, :] * stride_yn
            tl.store(y_ptrs, out, mask=mask)


# ---------------------------------------------------------------------- host side
def num_sms(device: torch.device) -> int:
    if device.type != "cuda":
        return 4  # the interpreter: a few programs, so persistence is exercised
    return torch.cuda.get_device_properties(device).multi_processor_count


def _aligned(t: Tensor) -> Tensor:
    """t itself when a TMA descriptor can address it, else a dense copy (which can)."""
    return t if tma_ok(t) else t.contiguous().clone()


def tma_gemm(
    x: Tensor,
    w: Tensor,
    bias: Tensor | None = None,
    residual: Tensor | None = None,
    *,
    w_kn: bool = False,
    act: tuple[int, float, float] | None = None,
    activation: str = "",
    activation_params: list[float] | tuple[float, ...] = (),
    post: tuple[int, float, float] | None = None,
    x_scale: Tensor | None = None,
    w_scale: Tensor | None = None,
    out_scale: Tensor | None = None,
    out_qtype: str = "fp8e4m3",
    out_dtype: torch.dtype | None = None,
    config: TmaGemmConfig | None = None,
    conv: ConvGeometry | None = None,
    residual_norm: tuple[Tensor, Tensor, Tensor, Tensor | None] | None = None,
) -> Tensor:
    """post(act(X @ W^T [* x_scale * w_scale] + bias) + residual), optionally as codes.

    residual_norm (mean, inv_std, scale, bias): the residual added is LayerNorm(residual)
    over its last axis, rebuilt in the epilogue from the residual given (the norm's input,
    of the output's shape), the row statistics the norm kernel wrote (float32 [rows], see
    norms.layer_norm's stats) and its scale / bias [N], and rounded to the residual's dtype
    as the norm rounds its Y: the same sum as with the norm's stored Y, which need not be
    written.

    With `conv`, X is a channels-last image [N, H, W, C] and W [Cout, KH*KW*C] (OHWI
    flattened): the stride-1 convolution whose output has the input's size, as an implicit
    GEMM over the KH*KW taps (see ConvGeometry).

    X [..., K]: float16/bfloat16, or codes (int8 / float8_e4m3fn) with x_scale (float32
    scalar) and then W codes of the same dtype with w_scale (float32 [N] or [1]). A
    float16/bfloat16 X with 8-bit W is quantized to W's codes in registers (X / x_scale,
    rounded once; by multiplication with 1/x_scale, so a tie may round the other way).
    W: [N, K], or [K, N] with w_kn (half W only; 8-bit W must be [N, K], K contiguous).
    The float result has out_dtype (X's dtype for half X; float16 unless given for codes);
    with out_scale (float32 scalar) it is written as out_qtype codes of Y / out_scale."""
    code, p0, p1 = act if act is not None else act_code(activation, activation_params)
    pcode, q0, q1 = post if post is not None else act_code("")
    k = x.shape[-1]
    coded = w.dtype in QCODE_OF
    quant_a = coded and x.dtype in _HALF  # float X, quantized in the kernel
    if coded:
        if (w.dtype != x.dtype and not quant_a) or x_scale is None or w_scale is None:
            raise ValueError(
                "tma_gemm: 8-bit W needs X of its dtype (or float16/bfloat16), x_scale and w_scale"
            )
        if w_kn:
            raise ValueError("tma_gemm: 8-bit W must be [N, K] (the K-major operand)")
    elif x.dtype not in _HALF or w.dtype != x.dtype:
        raise ValueError(f"tma_gemm: X {x.dtype} and W {w.dtype}: want float16/bfloat16 pairs")
    n = w.shape[1] if w_kn else w.shape[0]
    wk = w.shape[0] if w_kn else w.shape[1]
    taps = conv.kh * conv.kw if conv is not None else 1
    if w.dim() != 2 or wk != k * taps:
        raise ValueError(f"tma_gemm: X has K={k} but W is {list(w.shape)}")
    if conv is not None and (x.dim() != 4 or w_kn or not conv.same_size()):
        raise ValueError(f"tma_gemm: conv wants NHWC X, W [N, K] and same-size padding: {conv}")
    out_shape = (*x.shape[:-1], n)
    m = math.prod(x.shape[:-1])
    if out_scale is not None:
        ydt = QTYPES[out_qtype]
    else:
        ydt = out_dtype or (torch.float16 if x.dtype in QCODE_OF else x.dtype)
    y = torch.empty(out_shape, dtype=ydt, device=x.device)
    if y.numel() == 0:
        return y
    y2 = y.view(m, n)
    if k == 0 and conv is not None:
        raise ValueError("tma_gemm: a convolution over zero channels")
    if k == 0:  # no K step: the epilogue alone (TMA cannot describe an empty row)
        x = torch.zeros((*x.shape[:-1], 16), dtype=x.dtype, device=x.device)
        w = torch.zeros((16, n) if w_kn else (n, 16), dtype=w.dtype, device=w.device)
        k = 16
    x2 = _aligned(x.reshape(m, k))
    w2 = _aligned(w)
    esz = w2.element_size()
    xsz = x2.element_size() if quant_a else 0
    cfg = config or tma_gemm_configs(m, n, k, esz, x_bytes=xsz)[0]  # K steps within a tap
    x_desc = TensorDescriptor.from_tensor(x2, [cfg.BLOCK_M, cfg.BLOCK_K])
    wblock = [cfg.BLOCK_K, cfg.BLOCK_N] if w_kn else [cfg.BLOCK_N, cfg.BLOCK_K]
    w_desc = TensorDescriptor.from_tensor(w2, wblock)
    r2 = _as_2d(residual.expand(out_shape), m, n) if residual is not None else None
    rn = _residual_norm(residual_norm, residual, out_shape, m, n)
    y_fits, r_fits = tma_epilogue(
        cfg, esz, y2.element_size(), r2.element_size() if r2 is not None else 0, xsz
    )
    y_tma = y_fits and tma_ok(y2)
    res_tma = r_fits and r2 is not None and tma_ok(r2)
    y_desc = TensorDescriptor.from_tensor(y2, [cfg.BLOCK_M, cfg.BLOCK_N]) if y_tma else x_desc
    r_desc = TensorDescriptor.from_tensor(r2, [cfg.BLOCK_M, cfg.BLOCK_N]) if res_tma else x_desc
    ws = w_scale.reshape(-1) if w_scale is not None else None
    tiles = triton.cdiv(m, cfg.BLOCK_M) * triton.cdiv(n, cfg.BLOCK_N)
    progs = min(tiles, cfg.PERSISTENT * num_sms(x.device)) if cfg.PERSISTENT else tiles
    _tma_gemm_kernel[(progs,)](
        x_desc,
        w_desc,
        y_desc,
        r_desc,
        y2,
        x_scale if x_scale is not None else y2,
        ws if ws is not None else y2,
        bias.contiguous() if bias is not None else y2,
        r2 if r2 is not None else y2,
        out_scale if out_scale is not None else y2,
        m,
        n,
        k,
        *(conv.args(x.shape[1], x.shape[2]) if conv is not None else (1, 1, 0, 0, 1, 1)),
        progs,
        ws.stride(0) if ws is not None and ws.numel() > 1 else 0,
        y2.stride(0),
        y2.stride(1),
        r2.stride(0) if r2 is not None else 0,
        r2.stride(1) if r2 is not None else 0,
        p0,
        p1,
        q0,
        q1,
        W_KN=w_kn,
        KH=conv.kh if conv is not None else 1,
        KW=conv.kw if conv is not None else 1,
        QIN=QCODE_OF[w.dtype] if coded else -1,
        QUANT_A=quant_a,
        HAS_BIAS=bias is not None,
        ACT=code,
        HAS_RES=r2 is not None,
        POST=pcode,
        QOUT=QCODE[out_qtype] if out_scale is not None else -1,
        SOFT_FP8=soft_fp8(x),
        FAST_GELU=bool(cfg.FAST_GELU),
        HW_TANH=x.device.type == "cuda" and not interpreting(),
        Y_TMA=y_tma,
        RES_TMA=res_tma,
        UPCAST=upcast_dot(x) and not coded,
        INT64=y2.numel() >= 2**31 or (r2 is not None and r2.numel() >= 2**31),
        BLOCK_M=cfg.BLOCK_M,
        BLOCK_N=cfg.BLOCK_N,
        BLOCK_K=cfg.BLOCK_K,
        GROUP_M=cfg.GROUP_M,
        num_warps=cfg.num_warps,
        num_stages=cfg.num_stages,
        **pdl_args(x.device),
        rmean_ptr=rn[0] if rn is not None else y2,
        rinv_ptr=rn[1] if rn is not None else y2,
        rw_ptr=rn[2] if rn is not None else y2,
        rb_ptr=rn[3] if rn is not None and rn[3] is not None else y2,
        RES_NORM=rn is not None,
        RES_NORM_B=rn is not None and rn[3] is not None,
    )
    return y


def _residual_norm(
    rn: tuple[Tensor, Tensor, Tensor, Tensor | None] | None,
    residual: Tensor | None,
    out_shape: tuple[int, ...],
    m: int,
    n: int,
) -> tuple[Tensor, Tensor, Tensor, Tensor | None] | None:
    """residual_norm's tensors, checked: float32 [m] statistics, [n] scale and bias."""
    if rn is None:
        return None
    if residual is None or tuple(residual.shape) != tuple(out_shape):
        raise ValueError("tma_gemm: residual_norm needs a residual of the output's shape")
    mean, inv, scale, bias = rn
    for t, what in ((mean, "mean"), (inv, "inv_std")):
        if t.dtype != torch.float32 or t.numel() != m or not t.is_contiguous():
            raise ValueError(f"tma_gemm: residual_norm {what} must be contiguous float32 [{m}]")
    for t, what in ((scale, "scale"), (bias, "bias")):
        if t is not None and t.numel() != n:
            raise ValueError(f"tma_gemm: residual_norm {what} must have {n} elements")
    return (mean, inv, scale.reshape(n).contiguous(),
            bias.reshape(n).contiguous() if bias is not None else None)  # fmt: skip
