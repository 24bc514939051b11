"""Triton implicit-GEMM convolution with a fused epilogue: ecoinfer.FusedConv.

The convolution is a GEMM that is never materialised: rows are output pixels (n, oh, ow),
columns output channels, and the reduction runs over (kh, kw, c): for each filter tap the
program loads a [BLOCK_M pixels, BLOCK_K channels] tile of the input, shifted by the tap
(out-of-image positions read 0, which is the zero padding), and a [BLOCK_K, BLOCK_N] tile of
the weight. All tensors are read through their (n, c, h, w) / (o, c, kh, kw) strides, so one
kernel serves NCHW and NHWC (channels-last: the channel loads are contiguous) and OIHW/OHWI
weights. The epilogue, on the float32 accumulator, is FusedConv's, in its order:

    y = conv(x, w) + bias;  y = activation(y);  y = y + Z;  y = post_activation(y)

2-D convolutions (1-D ones as H=1) with group=1; grouped and depthwise convolutions are
declined (the tactic returns None), cuDNN keeps them.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from ecoinfer.kernels.triton.gemm import (
    act_code,
    apply_act,
    dot_precision,
    needs_int64,
    tile_ids,
    upcast_dot,
)
from ecoinfer.kernels.triton.kernel_config import KernelConfig
from ecoinfer.kernels.triton.pdl import pdl_args, pdl_enter

Tensor = torch.Tensor


@dataclass(frozen=True)
class ConvConfig(KernelConfig):
    BLOCK_M: int = 64
    BLOCK_N: int = 64
    BLOCK_K: int = 32
    GROUP_M: int = 8
    num_warps: int = 4
    num_stages: int = 3


_HALF_CANDIDATES = (
    (128, 128, 64, 8, 3),
    (128, 128, 32, 4, 4),
    (128, 64, 64, 4, 4),
    (64, 128, 64, 4, 4),
    (128, 256, 32, 8, 3),
    (64, 64, 64, 4, 4),
    (64, 64, 32, 4, 5),
    (32, 64, 32, 4, 5),
)
_F32_CANDIDATES = (
    (128, 128, 32, 8, 3),
    (128, 64, 32, 4, 3),
    (64, 128, 32, 4, 3),
    (64, 64, 32, 4, 3),
    (64, 64, 16, 4, 4),
    (32, 64, 32, 4, 3),
)


def conv_configs(
    m: int, cout: int, cin: int, dtype: torch.dtype, limit: int = 6
) -> list[ConvConfig]:
    """Tile shapes sized to the implicit GEMM: m output pixels, cout columns, cin per tap."""
    cands = _F32_CANDIDATES if dtype == torch.float32 else _HALF_CANDIDATES
    mcap = max(16, triton.next_power_of_2(max(m, 1)))
    ncap = max(16, triton.next_power_of_2(max(cout, 1)))
    kcap = max(16, triton.next_power_of_2(max(cin, 1)))
    out: list[ConvConfig] = []
    for bm, bn, bk, w, s in cands:
        bm, bn, bk = min(bm, mcap), min(bn, ncap), min(bk, kcap)
        if bm * bn <= 64 * 64:
            w = min(w, 4 if bm * bn >= 2048 else 2)
        cfg = ConvConfig(bm, bn, bk, 8, w, s)
        if cfg not in out:
            out.append(cfg)

    def tiles(c: ConvConfig) -> int:
        return triton.cdiv(m, c.BLOCK_M) * triton.cdiv(cout, c.BLOCK_N)

    full = [c for c in out if tiles(c) >= 128]
    rest = sorted((c for c in out if tiles(c) < 128), key=lambda c: -tiles(c))
    return (full + rest)[:limit]


@triton.jit
def conv_step_tiles(
    it,
    num_c,
    x_row,
    ih0,
    iw0,
    w_col,
    offs_k,
    mask_m,
    mask_n,
    CIN,
    H,
    W,
    sx_c,
    sx_h,
    sx_w,
    sw_c,
    sw_h,
    sw_w,
    dil_h,
    dil_w,
    KW: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    """Pointers and masks of reduction step `it` = (filter tap, channel block): the
    [pixels, channels] input tile shifted by the tap and the [channels, Cout] weight tile
    (shared with qconv.py). Out-of-image taps are masked: they load 0, the zero padding."""
    tap = it // num_c
    cs = (it - tap * num_c) * BLOCK_K + offs_k
    ih = ih0 + (tap // KW) * dil_h
    iw = iw0 + (tap % KW) * dil_w
    ok = mask_m & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
    ok_c = cs < CIN
    a_ptrs = (x_row + ih * sx_h + iw * sx_w)[:, None] + cs[None, :] * sx_c
    b_ptrs = w_col + (tap // KW) * sw_h + (tap % KW) * sw_w + cs[:, None] * sw_c
    return a_ptrs, ok[:, None] & ok_c[None, :], b_ptrs, ok_c[:, None] & mask_n[None, :]


@triton.jit
def conv_epilogue(
    acc,
    n,
    oh,
    ow,
    offs_n,
    mask_m,
    mask_n,
    y_ptr,
    bias_ptr,
    z_ptr,
    sy_n,
    sy_c,
    sy_h,
    sy_w,
    sz_n,
    sz_c,
    sz_h,
    sz_w,
    a0,
    a1,
    q0,
    q1,
    HAS_BIAS: tl.constexpr,
    ACT: tl.constexpr,
    HAS_Z: tl.constexpr,
    POST_ACT: tl.constexpr,
):
    """FusedConv's epilogue on a float32 [pixels, channels] tile (shared with qconv.py):
    bias, activation, + Z, post-activation, one rounding to Y's dtype."""
    if HAS_BIAS:
        acc += tl.load(bias_ptr + offs_n, mask=mask_n, other=0.0).to(tl.float32)[None, :]
    acc = apply_act(acc, ACT, a0, a1)
    mask = mask_m[:, None] & mask_n[None, :]
    if HAS_Z:
        z_ptrs = z_ptr + (n * sz_n + oh * sz_h + ow * sz_w)[:, None] + offs_n[None, :] * sz_c
        acc += tl.load(z_ptrs, mask=mask, other=0.0).to(tl.float32)
    acc = apply_act(acc, POST_ACT, q0, q1)
    y_ptrs = y_ptr + (n * sy_n + oh * sy_h + ow * sy_w)[:, None] + offs_n[None, :] * sy_c
    tl.store(y_ptrs, acc.to(y_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _conv_kernel(
    x_ptr,
    w_ptr,
    y_ptr,
    bias_ptr,
    z_ptr,
    M,
    COUT,
    CIN,
    H,
    W,
    OH,
    OW,
    sx_n,
    sx_c,
    sx_h,
    sx_w,
    sw_o,
    sw_c,
    sw_h,
    sw_w,
    sy_n,
    sy_c,
    sy_h,
    sy_w,
    sz_n,
    sz_c,
    sz_h,
    sz_w,
    stride_h,
    stride_w,
    pad_h,
    pad_w,
    dil_h,
    dil_w,
    a0,
    a1,
    q0,
    q1,
    KH: tl.constexpr,
    KW: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    ACT: tl.constexpr,
    HAS_Z: tl.constexpr,
    POST_ACT: tl.constexpr,
    INPUT_PRECISION: tl.constexpr,
    UPCAST: tl.constexpr,
    INT64: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    GROUP_M: tl.constexpr,
    PDL: tl.constexpr = False,
):
    pdl_enter(PDL)
    pid_m, pid_n = tile_ids(M, COUT, BLOCK_M, BLOCK_N, GROUP_M)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    mask_m = offs_m < M
    mask_n = offs_n < COUT
    # output pixel -> (n, oh, ow), once per tile
    ow = offs_m % OW
    t = offs_m // OW
    oh = t % OH
    n = t // OH
    if INT64:
        n = n.to(tl.int64)
        offs_n = offs_n.to(tl.int64)
    x_row = x_ptr + n * sx_n
    ih0 = oh * stride_h - pad_h
    iw0 = ow * stride_w - pad_w
    w_col = w_ptr + offs_n[None, :] * sw_o

    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    # one flat loop over (tap, channel block): the innermost loop is the one Triton
    # software-pipelines, and a per-tap inner loop would have a single step when C <= BLOCK_K
    num_c = tl.cdiv(CIN, BLOCK_K)
    for it in range(0, KH * KW * num_c):
        a_ptrs, a_mask, b_ptrs, b_mask = conv_step_tiles(
            it,
            num_c,
            x_row,
            ih0,
            iw0,
            w_col,
            offs_k,
            mask_m,
            mask_n,
            CIN,
            H,
            W,
            sx_c,
            sx_h,
            sx_w,
            sw_c,
            sw_h,
            sw_w,
            dil_h,
            dil_w,
            KW,
            BLOCK_K,
        )
        a = tl.load(a_ptrs, mask=a_mask, other=0.0)
        b = tl.load(b_ptrs, mask=b_mask, other=0.0)
        b = b.to(a.dtype)
        if UPCAST:
            a = a.to(tl.float32)
            b = b.to(tl.float32)
        acc = tl.dot(a, b, acc, input_precision=INPUT_PRECISION)

    conv_epilogue(
        acc,
        n,
        oh,
        ow,
        offs_n,
        mask_m,
        mask_n,
        y_ptr,
        bias_ptr,
        z_ptr,
        sy_n,
        sy_c,
        sy_h,
        sy_w,
        sz_n,
        sz_c,
        sz_h,
        sz_w,
        a0,
        a1,
        q0,
        q1,
        HAS_BIAS,
        ACT,
        HAS_Z,
        POST_ACT,
    )


def conv_out_size(size: int, k: int, stride: int, dil: int, pad_begin: int, pad_end: int) -> int:
    return (size + pad_begin + pad_end - dil * (k - 1) - 1) // stride + 1


@dataclass
class ConvViews:
    """A 2-D convolution as the kernels index it: (n, c, h, w) views of X, W, Y and Z whose
    strides carry the layout (1-D convolutions become H x 1 images)."""

    xv: Tensor
    wv: Tensor
    yv: Tensor
    zv: Tensor | None
    y: Tensor  # the output the caller returns (a 1-D convolution's squeezed back)
    strides: tuple[int, int]
    pads: tuple[int, int, int, int]
    dilations: tuple[int, int]

    @property
    def m(self) -> int:
        """Rows of the implicit GEMM: output pixels."""
        return self.yv.shape[0] * self.yv.shape[2] * self.yv.shape[3]


def conv_views(
    x: Tensor,
    w: Tensor,
    z: Tensor | None,
    *,
    strides: list[int] | tuple[int, ...],
    pads: list[int] | tuple[int, ...],
    dilations: list[int] | tuple[int, ...],
    layout: str,
    out_dtype: torch.dtype | None = None,
) -> ConvViews:
    """Y allocated (in out_dtype, default x's) and the views of a 1-D or 2-D convolution
    (shared with qconv.py). pads are ONNX's [begins..., ends...]; NHWC: x, Z, Y channels-last
    and w OHWI. Raises ValueError for other ranks and grouped weights."""
    nhwc = layout == "NHWC"
    nd = x.dim() - 2
    squeeze: int | None = None
    if nd == 1:
        # 1-D as 2-D with a unit width (views only): [N, C, L] -> [N, C, L, 1], NHWC alike
        squeeze = -2 if nhwc else -1
        k = w.shape[squeeze]
        lout = conv_out_size(x.shape[squeeze], k, strides[0], dilations[0], *pads)
        if z is not None:
            shape1 = (x.shape[0], lout, w.shape[0]) if nhwc else (x.shape[0], w.shape[0], lout)
            z = z.expand(shape1).unsqueeze(squeeze)
        x, w = x.unsqueeze(squeeze), w.unsqueeze(squeeze)
        strides, pads, dilations = (strides[0], 1), (pads[0], 0, pads[1], 0), (dilations[0], 1)
    elif nd != 2:
        raise ValueError(f"the Triton conv takes 1-D or 2-D convolutions, got {nd}-D")
    # (n, c, h, w) views of the channels-last tensors: strides carry the layout
    xv = x.permute(0, 3, 1, 2) if nhwc else x
    wv = w.permute(0, 3, 1, 2) if nhwc else w
    bsz, cin, h, wd = xv.shape
    cout, wcin, kh, kw = wv.shape
    if wcin != cin:
        raise ValueError(f"grouped convolution (input {cin} channels, weight {wcin}) unsupported")
    oh = conv_out_size(h, kh, strides[0], dilations[0], pads[0], pads[2])
    ow = conv_out_size(wd, kw, strides[1], dilations[1], pads[1], pads[3])
    dt = out_dtype or x.dtype
    if nhwc:
        y = torch.empty(bsz, oh, ow, cout, dtype=dt, device=x.device)
        yv = y.permute(0, 3, 1, 2)
    else:
        y = torch.empty(bsz, cout, oh, ow, dtype=dt, device=x.device)
        yv = y
    zv = None
    if z is not None:
        zb = z.expand(y.shape)  # broadcast as a stride-0 view
        zv = zb.permute(0, 3, 1, 2) if nhwc else zb
    return ConvViews(
        xv,
        wv,
        yv,
        zv,
        y.squeeze(squeeze) if squeeze is not None else y,
        (int(strides[0]), int(strides[1])),
        (int(pads[0]), int(pads[1]), int(pads[2]), int(pads[3])),
        (int(dilations[0]), int(dilations[1])),
    )


def fused_conv(
    x: Tensor,
    w: Tensor,
    bias: Tensor | None = None,
    z: Tensor | None = None,
    *,
    strides: list[int] | tuple[int, ...] = (1, 1),
    pads: list[int] | tuple[int, ...] = (0, 0, 0, 0),
    dilations: list[int] | tuple[int, ...] = (1, 1),
    layout: str = "NCHW",
    activation: str = "",
    activation_params: list[float] | tuple[float, ...] = (),
    post_activation: str = "",
    post_activation_params: list[float] | tuple[float, ...] = (),
    precision: str = "float32",
    config: ConvConfig | None = None,
) -> Tensor:
    """ecoinfer.FusedConv (group=1) over 1-D or 2-D spatial dims, in x's dtype.

    pads are ONNX's [begins..., ends...]; with layout="NHWC", x, Z and Y are channels-last
    and w is OHWI. Z must broadcast to Y without growing it."""
    v = conv_views(x, w, z, strides=strides, pads=pads, dilations=dilations, layout=layout)
    xv, wv, yv, zv = v.xv, v.wv, v.yv, v.zv
    _, cin, h, wd = xv.shape
    cout, _, kh, kw = wv.shape
    oh, ow = yv.shape[2], yv.shape[3]
    m = v.m
    if m == 0 or cout == 0:
        return v.y
    code, a0, a1 = act_code(activation, activation_params)
    pcode, q0, q1 = act_code(post_activation, post_activation_params)
    cfg = config or conv_configs(m, cout, cin, x.dtype)[0]
    grid = (triton.cdiv(m, cfg.BLOCK_M) * triton.cdiv(cout, cfg.BLOCK_N),)
    _conv_kernel[grid](
        xv,
        wv,
        yv,
        bias.contiguous() if bias is not None else yv,  # read as a dense [Cout] vector
        zv if zv is not None else yv,
        m,
        cout,
        cin,
        h,
        wd,
        oh,
        ow,
        *xv.stride(),
        *wv.stride(),
        *yv.stride(),
        *(zv.stride() if zv is not None else (0, 0, 0, 0)),
        *v.strides,
        v.pads[0],
        v.pads[1],
        *v.dilations,
        a0,
        a1,
        q0,
        q1,
        KH=kh,
        KW=kw,
        HAS_BIAS=bias is not None,
        ACT=code,
        HAS_Z=zv is not None,
        POST_ACT=pcode,
        INPUT_PRECISION=dot_precision(x.dtype, precision),
        UPCAST=upcast_dot(x),
        INT64=needs_int64(xv, wv, yv, zv),
        BLOCK_M=cfg.BLOCK_M,
        BLOCK_N=cfg.BLOCK_N,
        BLOCK_K=cfg.BLOCK_K,
        GROUP_M=cfg.GROUP_M,
        num_warps=cfg.num_warps,
        num_stages=cfg.num_stages,
        **pdl_args(xv.device),
    )
    return v.y
