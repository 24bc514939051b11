"""Tactics of the Triton GEMM, flash-attention and implicit-GEMM conv kernels.

Importing this module registers (ecoinfer.kernels.triton.tactics imports it):

  triton_gemm   ecoinfer.FusedGemm            gemm.py, one candidate per GemmConfig
  triton_flash  ecoinfer.Attention and        attention.py, one candidate per FlashConfig
                ecoinfer.MultiHeadAttention
  triton_conv   ecoinfer.FusedConv            conv.py, one candidate per ConvConfig

`make` checks what it can from the node and the opt-shape TensorInfos and returns None
where the kernel does not apply (integer dtypes, grouped convolutions, 3-D convolutions,
head sizes over 256, an unknown activation, a residual that would grow the output...).
The returned run function takes any shapes of the profile: configs are only sized at the
opt shapes. Under precision "float32" the dots use IEEE float32 (tolerance 1e-5 against
the reference), under "tf32" TF32, and half inputs use the tensor cores as they are.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from ecoinfer.ir import dtypes
from ecoinfer.ir.graph import Node, optional_input
from ecoinfer.kernels.broadcast import broadcast_shape
from ecoinfer.kernels.triton.attention import (
    MAX_HEAD_SIZE,
    FlashConfig,
    dot8_fits,
    flash_attention,
    flash_configs,
    flash_mha,
    tma_codes_fit,
    tma_flash_fits,
)
from ecoinfer.kernels.triton.conv import ConvConfig, conv_configs, conv_out_size, fused_conv
from ecoinfer.kernels.triton.gemm import (
    GemmConfig,
    act_code,
    fused_gemm,
    gemm_configs,
    interpreting,
)
from ecoinfer.kernels.triton.qgemm import QCODE_OF, QTYPES
from ecoinfer.kernels.triton.tma_gemm import tma_supported
from ecoinfer.tune.tactics import BuildInfo, RunFn, TensorInfo, tactic

Tensor = torch.Tensor
_FLOATS = (torch.float16, torch.bfloat16, torch.float32)
_DTYPES = ("float16", "bfloat16", "float32")
# flash configurations also tried with TMA loads (MultiHeadAttention whose tiles fit whole)
TMA_FLASH_CONFIGS = 4
# flash tiles also tried dotting 8-bit codes: four, not two, since an H200 probe (BERT-base
# b64, rotated inputs; bench/gpu_attention_tma_probe.py --extra --rotate) timed the fourth's
# DOT8 twin (64 x 128 tiles) at 17.0 us against 18.3 us for the tile FP8 builds had picked.
# The persistent tiles further down lost there by 20-97%; the 32-column ones were not probed
DOT8_FLASH_CONFIGS = 4


def _runs_here(build: BuildInfo) -> bool:
    """Triton runs CUDA tensors, and CPU tensors only under its interpreter (the CI tests)."""
    return torch.device(build.device).type == "cuda" or interpreting()


def _grows(extra: tuple[int, ...], target: tuple[int, ...]) -> bool:
    """Whether broadcasting `extra` against `target` changes target's shape (or fails)."""
    try:
        return tuple(broadcast_shape(extra, target)) != tuple(target)
    except RuntimeError:
        return True


def _numel(shape: tuple[int, ...]) -> int:
    return math.prod(int(d) for d in shape)


# ---------------------------------------------------------------------- FusedGemm
def _gemm_dims(
    attrs: dict[str, Any], inputs: list[TensorInfo | None]
) -> tuple[int, int, int, tuple[int, ...]] | None:
    """(M, N, K, output shape) at the opt shapes, None when the kernel does not apply."""
    a, b = optional_input(inputs, 0), optional_input(inputs, 1)
    if a is None or b is None or len(b.shape) != 2 or len(a.shape) < 1:
        return None
    if a.dtype not in _FLOATS or b.dtype != a.dtype:
        return None
    k = a.shape[-1]
    bk, n = (b.shape[1], b.shape[0]) if int(attrs.get("trans_b", 0) or 0) else b.shape
    if bk != k:
        return None
    out = (*a.shape[:-1], n)
    return _numel(a.shape[:-1]), n, k, out


def act_of(attrs: dict[str, Any]) -> tuple[int, float, float] | None:
    """The fused activation's kernel code (act_code) from a node's attributes; None for one
    the Triton epilogues do not know (the tactic then declines)."""
    try:
        return act_code(str(attrs.get("activation") or ""), attrs.get("activation_params") or [])
    except ValueError:
        return None


def gemm_epilogue_ok(inputs: list[TensorInfo | None], n: int, out: tuple[int, ...]) -> bool:
    """FusedGemm's bias (input 2, float [N]) and residual (input 3, float, not growing Y) as
    the Triton GEMM epilogues take them (shared with tma_tactics)."""
    bias, res = optional_input(inputs, 2), optional_input(inputs, 3)
    if bias is not None and (bias.shape != (n,) or bias.dtype not in _FLOATS):
        return False
    return res is None or (res.dtype in _FLOATS and not _grows(res.shape, out))


def _gemm_configs(
    node: Node, attrs: dict[str, Any], inputs: list[TensorInfo | None], build: BuildInfo
) -> list[dict[str, Any]]:
    dims = _gemm_dims(attrs, inputs)
    if dims is None:
        return [GemmConfig().as_dict()]
    m, n, k, _ = dims
    return [c.as_dict() for c in gemm_configs(m, n, k, inputs[0].dtype)]  # type: ignore[union-attr]


@tactic(
    "FusedGemm",
    name="triton_gemm",
    domain="ecoinfer",
    devices=("cuda",),
    dtypes=_DTYPES,
    configs=_gemm_configs,
    doc="Triton GEMM, fp32 accumulation, bias/activation/residual fused in the epilogue",
)
def triton_gemm(
    node: Node,
    attrs: dict[str, Any],
    inputs: list[TensorInfo | None],
    cfg: dict[str, Any],
    build: BuildInfo,
) -> RunFn | None:
    if not _runs_here(build):
        return None
    dims = _gemm_dims(attrs, inputs)
    if dims is None:
        return None
    _, n, _, out = dims
    if not gemm_epilogue_ok(inputs, n, out):
        return None
    act = act_of(attrs)
    if act is None:
        return None
    trans_b = bool(int(attrs.get("trans_b", 0) or 0))
    config = GemmConfig.from_dict(cfg) if cfg else None
    precision = build.precision

    def run(xs: list[Tensor | None]) -> list[Tensor]:
        a, b = xs[0], xs[1]
        assert a is not None and b is not None
        return [
            fused_gemm(
                a,
                b,
                optional_input(xs, 2),
                optional_input(xs, 3),
                trans_b=trans_b,
                act=act,
                precision=precision,
                config=config,
            )
        ]

    return run


# ---------------------------------------------------------------------- attention
def _masks_ok(inputs: list[TensorInfo | None], scores: tuple[int, ...]) -> bool:
    add, keep = optional_input(inputs, 3), optional_input(inputs, 4)
    if add is not None and (add.dtype not in _FLOATS or len(add.shape) > 4):
        return False
    if keep is not None and (keep.dtype != torch.bool or len(keep.shape) > 4):
        return False
    return not any(m is not None and _grows(m.shape, scores) for m in (add, keep))


def _attention_dims(
    attrs: dict[str, Any], inputs: list[TensorInfo | None]
) -> tuple[int, int, int, int] | None:
    """(Sq, Sk, D, Dv) of ecoinfer.Attention, None when the kernel does not apply."""
    q, k, v = optional_input(inputs, 0), optional_input(inputs, 1), optional_input(inputs, 2)
    if q is None or k is None or v is None or q.dtype not in _FLOATS:
        return None
    if k.dtype != q.dtype or v.dtype != q.dtype:
        return None
    if not all(2 <= len(t.shape) <= 4 for t in (q, k, v)):
        return None
    sq, d = q.shape[-2], q.shape[-1]
    sk, dk = (k.shape[-1], k.shape[-2]) if int(attrs.get("k_transposed", 0) or 0) else k.shape[-2:]
    dv = v.shape[-1]
    if dk != d or v.shape[-2] != sk or max(d, dv) > MAX_HEAD_SIZE:
        return None
    try:
        lead = broadcast_shape(q.shape[:-2], k.shape[:-2], v.shape[:-2])
    except RuntimeError:
        return None
    if not _masks_ok(inputs, (*lead, sq, sk)):
        return None
    return sq, sk, d, dv


def _attention_configs(
    node: Node, attrs: dict[str, Any], inputs: list[TensorInfo | None], build: BuildInfo
) -> list[dict[str, Any]]:
    if node.op_type == "MultiHeadAttention":
        dims = _mha_dims(attrs, inputs)
    else:
        dims = _attention_dims(attrs, inputs)
    if dims is None:
        return [FlashConfig().as_dict()]
    sq, sk, d, dv = dims
    base = flash_configs(sq, sk, d, inputs[0].dtype)  # type: ignore[union-attr]
    if node.op_type != "MultiHeadAttention":
        return [c.as_dict() for c in base]
    cfgs = list(base)
    codes = inputs[0].dtype in QCODE_OF  # type: ignore[union-attr]
    dot8 = codes and dot8_fits(d)
    if dot8:
        # codes in: the first DOT8_FLASH_CONFIGS configurations also with Q.K^T on the codes
        # (an 8-bit tensor-core dot)
        cfgs += [FlashConfig(**{**c.as_dict(), "DOT8": 1}) for c in base[:DOT8_FLASH_CONFIGS]]
    if tma_supported(build.device) and (dot8 or not codes):
        # Q, K and V of [B, S, width] projections: also loaded by TMA where tiles fit whole;
        # with codes, only dotting them (tma_codes_fit)
        fit = [c for c in base if tma_flash_fits(sq, sk, d, dv, c)][:TMA_FLASH_CONFIGS]
        extra = {"TMA": 1, "DOT8": 1} if codes else {"TMA": 1}
        cfgs += [FlashConfig(**{**c.as_dict(), **extra}) for c in fit]
    return [c.as_dict() for c in cfgs]


def _mha_dims(
    attrs: dict[str, Any], inputs: list[TensorInfo | None]
) -> tuple[int, int, int, int] | None:
    """(Sq, Sk, D, Dv) of ecoinfer.MultiHeadAttention, None when the kernel does not apply."""
    h, d = int(attrs.get("num_heads", 0) or 0), int(attrs.get("head_size", 0) or 0)
    q = optional_input(inputs, 0)
    if h <= 0 or d <= 0 or q is None or len(q.shape) != 3:
        return None
    codes = q.dtype in QCODE_OF and optional_input(inputs, 6) is not None  # a linked QKV's codes
    if q.dtype not in _FLOATS and not codes:
        return None
    bsz, sq, width = q.shape
    if int(attrs.get("packed", 0) or 0):
        rest = width - 2 * h * d
        if rest <= 0 or rest % h:
            return None
        sk, dv = sq, rest // h
    else:
        k, v = optional_input(inputs, 1), optional_input(inputs, 2)
        if k is None or v is None or k.dtype != q.dtype or v.dtype != q.dtype:
            return None
        if len(k.shape) != 3 or len(v.shape) != 3 or v.shape[-1] % h:
            return None
        if width != h * d or k.shape[-1] != h * d or k.shape[:2] != v.shape[:2]:
            return None
        if k.shape[0] != bsz or v.shape[0] != bsz:
            return None
        sk, dv = k.shape[1], v.shape[-1] // h
    if max(d, dv) > MAX_HEAD_SIZE or not _masks_ok(inputs, (bsz, h, sq, sk)):
        return None
    return sq, sk, d, dv


def _attention_common(attrs: dict[str, Any]) -> dict[str, Any]:
    return {
        "scale": float(attrs.get("scale", 1.0)),
        "is_causal": bool(int(attrs.get("is_causal", 0) or 0)),
        "mask_fill": float(attrs.get("mask_fill", float("-inf"))),
        "nan_to_zero": bool(int(attrs.get("nan_to_zero", 0) or 0)),
    }


@tactic(
    ["Attention", "MultiHeadAttention"],
    name="triton_flash",
    domain="ecoinfer",
    devices=("cuda",),
    dtypes=_DTYPES,
    configs=_attention_configs,
    doc="Triton flash-attention forward (online softmax, fp32 accumulation, strided Q/K/V)",
)
def triton_flash(
    node: Node,
    attrs: dict[str, Any],
    inputs: list[TensorInfo | None],
    cfg: dict[str, Any],
    build: BuildInfo,
) -> RunFn | None:
    if not _runs_here(build):
        return None
    config = FlashConfig.from_dict(cfg) if cfg else None
    common = _attention_common(attrs)
    precision = build.precision
    if node.op_type == "MultiHeadAttention":
        dims = _mha_dims(attrs, inputs)
        if dims is None:
            return None
        if config is not None and config.TMA:
            if not tma_supported(build.device) or not tma_flash_fits(*dims, config):
                return None  # the pointer-load configuration is the same kernel here
            if not tma_codes_fit(inputs[0].dtype in QCODE_OF, dims[2], config):  # type: ignore[union-attr]
                return None
        if config is not None and config.DOT8:
            if inputs[0].dtype not in QCODE_OF or not dot8_fits(dims[2]):  # type: ignore[union-attr]
                return None  # DOT8 dots codes (float Q, K, V have none), 32 columns or more
        h, d = int(attrs["num_heads"]), int(attrs["head_size"])
        packed = bool(int(attrs.get("packed", 0) or 0))
        ys = optional_input(
            inputs, 5
        )  # y_scale: Y as codes for a quantized projection (link_codes)
        y_qtype = str(attrs.get("y_qtype") or "")
        if ys is not None and (ys.dtype != torch.float32 or y_qtype not in QTYPES):
            return None
        xsc = optional_input(inputs, 6)  # x_scale: attention on the quantized QKV (fuse_quantized)
        x_qtype = str(attrs.get("x_qtype") or "")
        out_dtype = None
        if xsc is not None:
            if xsc.dtype != torch.float32 or x_qtype not in QTYPES or not packed:
                return None
            if inputs[0].dtype in QCODE_OF:  # type: ignore[union-attr]  # codes: a linked QKV
                if inputs[0].dtype != QTYPES[x_qtype]:  # type: ignore[union-attr]
                    return None
                out_name = str(attrs.get("out_dtype") or "")
                if out_name not in _DTYPES:
                    return None
                out_dtype = dtypes.to_torch(out_name)

        def run_mha(xs: list[Tensor | None]) -> list[Tensor]:
            q = xs[0]
            assert q is not None
            return [
                flash_mha(
                    q,
                    optional_input(xs, 1),
                    optional_input(xs, 2),
                    optional_input(xs, 3),
                    optional_input(xs, 4),
                    num_heads=h,
                    head_size=d,
                    packed=packed,
                    precision=precision,
                    config=config,
                    y_scale=optional_input(xs, 5),
                    y_qtype=y_qtype,
                    x_scale=optional_input(xs, 6),
                    x_qtype=x_qtype,
                    out_dtype=out_dtype,
                    **common,
                )
            ]

        return run_mha

    if _attention_dims(attrs, inputs) is None:
        return None
    k_transposed = bool(int(attrs.get("k_transposed", 0) or 0))

    def run(xs: list[Tensor | None]) -> list[Tensor]:
        q, k, v = xs[0], xs[1], xs[2]
        assert q is not None and k is not None and v is not None
        return [
            flash_attention(
                q,
                k,
                v,
                optional_input(xs, 3),
                optional_input(xs, 4),
                k_transposed=k_transposed,
                precision=precision,
                config=config,
                **common,
            )
        ]

    return run


# ---------------------------------------------------------------------- FusedConv
def _conv_params(
    attrs: dict[str, Any], inputs: list[TensorInfo | None]
) -> tuple[dict[str, Any], tuple[int, ...], int, int, int] | None:
    """(kernel kwargs, output shape, M, Cout, Cin) at the opt shapes, or None."""
    x, w = optional_input(inputs, 0), optional_input(inputs, 1)
    if x is None or w is None or x.dtype not in _FLOATS or w.dtype != x.dtype:
        return None
    nd = len(x.shape) - 2
    if nd not in (1, 2) or len(w.shape) != nd + 2 or int(attrs.get("group", 1) or 1) != 1:
        return None
    layout = str(attrs.get("layout") or "NCHW")
    if layout not in ("NCHW", "NHWC"):
        return None
    nhwc = layout == "NHWC"
    spatial = x.shape[1:-1] if nhwc else x.shape[2:]
    cin = x.shape[-1] if nhwc else x.shape[1]
    kernel = w.shape[1:-1] if nhwc else w.shape[2:]
    cout, wcin = w.shape[0], (w.shape[-1] if nhwc else w.shape[1])
    if wcin != cin:
        return None  # grouped/depthwise: cuDNN keeps those
    ks = attrs.get("kernel_shape")
    if ks and [int(v) for v in ks] != list(kernel):
        return None
    strides = [int(v) for v in (attrs.get("strides") or [1] * nd)]
    dilations = [int(v) for v in (attrs.get("dilations") or [1] * nd)]
    pads = [int(v) for v in (attrs.get("pads") or [0] * (2 * nd))]
    if len(strides) != nd or len(dilations) != nd or len(pads) != 2 * nd:
        return None
    out_sp = [
        conv_out_size(spatial[i], kernel[i], strides[i], dilations[i], pads[i], pads[nd + i])
        for i in range(nd)
    ]
    if any(o <= 0 for o in out_sp):
        return None
    out = (x.shape[0], *out_sp, cout) if nhwc else (x.shape[0], cout, *out_sp)
    try:
        acts = {
            "activation": str(attrs.get("activation") or ""),
            "activation_params": [float(p) for p in attrs.get("activation_params") or []],
            "post_activation": str(attrs.get("post_activation") or ""),
            "post_activation_params": [float(p) for p in attrs.get("post_activation_params") or []],
        }
        act_code(acts["activation"], acts["activation_params"])
        act_code(acts["post_activation"], acts["post_activation_params"])
    except ValueError:
        return None
    kwargs = {"strides": strides, "pads": pads, "dilations": dilations, "layout": layout, **acts}
    return kwargs, out, x.shape[0] * math.prod(out_sp), cout, cin


def _conv_configs(
    node: Node, attrs: dict[str, Any], inputs: list[TensorInfo | None], build: BuildInfo
) -> list[dict[str, Any]]:
    p = _conv_params(attrs, inputs)
    if p is None:
        return [ConvConfig().as_dict()]
    _, _, m, cout, cin = p
    return [c.as_dict() for c in conv_configs(m, cout, cin, inputs[0].dtype)]  # type: ignore[union-attr]


@tactic(
    "FusedConv",
    name="triton_conv",
    domain="ecoinfer",
    devices=("cuda",),
    dtypes=_DTYPES,
    configs=_conv_configs,
    doc="Triton implicit-GEMM convolution (group=1, 1-D/2-D, NCHW/NHWC) with fused epilogue",
)
def triton_conv(
    node: Node,
    attrs: dict[str, Any],
    inputs: list[TensorInfo | None],
    cfg: dict[str, Any],
    build: BuildInfo,
) -> RunFn | None:
    if not _runs_here(build):
        return None
    p = _conv_params(attrs, inputs)
    if p is None:
        return None
    kwargs, out, _, cout, _ = p
    bias, z = optional_input(inputs, 2), optional_input(inputs, 3)
    if bias is not None and (bias.shape != (cout,) or bias.dtype not in _FLOATS):
        return None
    if z is not None and (z.dtype not in _FLOATS or _grows(z.shape, out)):
        return None
    config = ConvConfig.from_dict(cfg) if cfg else None
    precision = build.precision

    def run(xs: list[Tensor | None]) -> list[Tensor]:
        x, w = xs[0], xs[1]
        assert x is not None and w is not None
        y = fused_conv(
            x,
            w,
            optional_input(xs, 2),
            optional_input(xs, 3),
            precision=precision,
            config=config,
            **kwargs,
        )
        return [y]

    return run
