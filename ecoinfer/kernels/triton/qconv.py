"""Triton INT8 / FP8 implicit-GEMM convolution: ecoinfer.QConv.

    y = conv(quant(X / x_scale), W_q) * (x_scale * w_scale[c]) + bias
    y = activation(y);  y = y + Z;  y = post_activation(y)         (FusedConv's epilogue)

conv.py's implicit GEMM with qgemm.py's quantization: every (filter tap, channel block) step
loads a float input tile (conv_step_tiles: the same indexing, zero padding by masking, which
quantizes to code 0), quantizes it in registers (quantize_block) and runs an int8 x int8 ->
int32 (fp8 x fp8 -> float32) dot against the W_q tile; the dequantized float32 accumulator
goes through conv.py's FusedConv epilogue. 1-D and 2-D convolutions, NCHW and NHWC, group=1.

W_q is read through its strides; `pack_qconv_weight` gives it channels-innermost memory (the
K-major operand 8-bit dots want) in the logical layout the node stores (OIHW for NCHW, OHWI
for NHWC). Configurations are qgemm.py's QGemmConfig (PREQUANT=1 quantizes X in a separate
pass first).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ecoinfer.ir.ops.fused_conv import to_first, to_last
from ecoinfer.kernels.triton.conv import conv_epilogue, conv_step_tiles, conv_views
from ecoinfer.kernels.triton.gemm import act_code, needs_int64, tile_ids
from ecoinfer.kernels.triton.pdl import pdl_args, pdl_enter
from ecoinfer.kernels.triton.qgemm import (
    QCODE,
    QTYPES,
    QGemmConfig,
    check_scales,
    quantize,
    quantize_block,
    ranked_configs,
    soft_fp8,
)

Tensor = torch.Tensor

# (BM, BN, BK, warps, stages): BK is channels per tap step (>= 32 for 8-bit dots)
_CANDIDATES = (
    (128, 128, 128, 8, 3),
    (128, 128, 64, 8, 4),
    (128, 256, 64, 8, 3),
    (128, 64, 64, 4, 4),
    (64, 128, 64, 4, 4),
    (64, 64, 64, 4, 4),
    (64, 64, 32, 4, 5),
    (32, 64, 32, 4, 5),
)


def compiled_ok(qtype: str, layout: str, device: object) -> bool:
    """False for INT8 NCHW on a GPU: compiled by Triton 3.6 for sm_90, four of its six
    configurations gave wrong results in bench/gpu_qgemm_selftest.py (relative error ~1; the
    interpreter's results are right, and NHWC, which GPU builds use, and FP8 are right). The
    tuner would reject the wrong ones; declining keeps them out of every build."""
    import torch  # noqa: PLC0415

    return not (qtype == "int8" and layout == "NCHW" and torch.device(device).type == "cuda")  # type: ignore[arg-type]


def qconv_configs(
    m: int, cout: int, cin: int, x_dtype: torch.dtype, qtype: str = "int8", limit: int = 6
) -> list[QGemmConfig]:
    """Tile shapes for the implicit GEMM: m output pixels, cout columns, cin channels per tap;
    plus a PREQUANT variant of the first when there are several column tiles."""
    ranked = ranked_configs(_CANDIDATES, m, cout, cin, x_dtype)[: max(1, limit - 1)]
    if m >= 256 and cout > ranked[0].BLOCK_N:
        ranked.append(QGemmConfig(**{**ranked[0].as_dict(), "PREQUANT": 1}))
    return ranked


def pack_qconv_weight(w_q: Tensor, layout: str = "NCHW") -> Tensor:
    """W_q in its logical layout (OIHW / OHWI) with input channels innermost in memory."""
    if layout == "NHWC":
        return w_q if w_q.stride(-1) == 1 else w_q.contiguous()
    r = w_q.dim()
    return w_q.permute(to_last(r)).contiguous().permute(to_first(r))


@triton.jit
def _qconv_kernel(
    x_ptr,
    w_ptr,
    y_ptr,
    xs_ptr,
    ws_ptr,
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
    stride_ws,
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
    QTYPE: tl.constexpr,
    PREQUANT: tl.constexpr,
    EXACT_DIV: tl.constexpr,
    SOFT_FP8: tl.constexpr,
    FP8_FAST_ACC: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    ACT: tl.constexpr,
    HAS_Z: tl.constexpr,
    POST_ACT: tl.constexpr,
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

    x_scale = tl.load(xs_ptr).to(tl.float32)
    inv = tl.math.div_rn(1.0, x_scale)
    if QTYPE == 0:
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.int32)
    else:
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
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
        if not PREQUANT:
            a = quantize_block(a.to(tl.float32), inv, x_scale, QTYPE, EXACT_DIV, SOFT_FP8)
        b = tl.load(b_ptrs, mask=b_mask, other=0.0)
        if QTYPE == 0:
            acc = tl.dot(a, b, acc, out_dtype=tl.int32)
        elif FP8_FAST_ACC:
            acc = tl.dot(a, b, acc)
        else:
            acc = tl.dot(a, b, acc, max_num_imprecise_acc=BLOCK_K)

    w_scale = tl.load(ws_ptr + offs_n * stride_ws, mask=mask_n, other=0.0).to(tl.float32)
    out = acc.to(tl.float32) * (x_scale * w_scale)[None, :]
    conv_epilogue(
        out,
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


def qconv(
    x: Tensor,
    w_packed: Tensor,
    x_scale: Tensor,
    w_scale: Tensor,
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
    qtype: str = "int8",
    config: QGemmConfig | None = None,
) -> Tensor:
    """ecoinfer.QConv (group=1, 1-D or 2-D) in X's dtype.

    w_packed is W_q in the layout's weight shape (OIHW for NCHW, OHWI for NHWC; any strides,
    fastest as pack_qconv_weight leaves it); x_scale a float32 scalar tensor, w_scale float32
    [Cout] or [1]. Z must broadcast to Y without growing it."""
    if qtype not in QTYPES:
        raise ValueError(f"QConv: qtype must be one of {', '.join(QTYPES)}, got '{qtype}'")
    if w_packed.dtype != QTYPES[qtype]:
        raise ValueError(f"QConv: W_q is {w_packed.dtype}, qtype '{qtype}' wants {QTYPES[qtype]}")
    check_scales(x_scale, w_scale, w_packed.shape[0], "QConv")
    geom = {"strides": strides, "pads": pads, "dilations": dilations, "layout": layout}
    dtype = x.dtype
    v = conv_views(x, w_packed, z, **geom)
    xv, wv, yv, zv = v.xv, v.wv, v.yv, v.zv
    _, cin, h, wd = xv.shape
    cout, _, kh, kw = wv.shape
    oh, ow = yv.shape[2], yv.shape[3]
    m = v.m
    if m == 0 or cout == 0:
        return v.y
    cfg = config or qconv_configs(m, cout, cin, dtype, qtype)[0]
    if cfg.PREQUANT:
        # X quantized once, dense in its own memory order, then viewed like X
        v = conv_views(quantize(x, x_scale, qtype), w_packed, z, out_dtype=dtype, **geom)
        xv, yv, zv = v.xv, v.yv, v.zv
    code, a0, a1 = act_code(activation, activation_params)
    pcode, q0, q1 = act_code(post_activation, post_activation_params)
    ws = w_scale.reshape(-1)
    grid = (triton.cdiv(m, cfg.BLOCK_M) * triton.cdiv(cout, cfg.BLOCK_N),)
    _qconv_kernel[grid](
        xv,
        wv,
        yv,
        x_scale,
        ws,
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
        ws.stride(0) if ws.numel() > 1 else 0,  # [1]: one scale for every channel
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
        QTYPE=QCODE[qtype],
        PREQUANT=bool(cfg.PREQUANT),
        EXACT_DIV=dtype == torch.float32,
        SOFT_FP8=soft_fp8(x),
        FP8_FAST_ACC=bool(cfg.FP8_FAST_ACC),
        HAS_BIAS=bias is not None,
        ACT=code,
        HAS_Z=zv is not None,
        POST_ACT=pcode,
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
