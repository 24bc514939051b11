"""Channels-last (NHWC) 2-D max pooling: ecoinfer.MaxPool with layout="NHWC", one output.

The nhwc_layout pass leaves a CNN's pools channels-last; torch's max_pool2d on a
channels-last tensor is several times slower than the bytes it moves (ResNet-50's stem pool
took 10% of the FP16 engine's time on an H200). Each program here takes a tile of output
pixels x channels: channels are contiguous, so every window tap is one coalesced load, and
the input is read about once (neighbouring windows overlap in L2).

NaN propagates as in torch and the reference (tl.maximum with PropagateNan.ALL); padding
reads -inf, so a window's max is over its in-range taps only, as ONNX defines it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import triton
import triton.language as tl

from ecoinfer.ir.graph import Node
from ecoinfer.ir.ops.nn import window_out, window_params
from ecoinfer.kernels.triton.kernel_config import KernelConfig
from ecoinfer.kernels.triton.pdl import pdl_args, pdl_enter
from ecoinfer.tune.tactics import BuildInfo, RunFn, TensorInfo

Tensor = torch.Tensor
_FLOATS = (torch.float16, torch.bfloat16, torch.float32)


@dataclass(frozen=True)
class PoolConfig(KernelConfig):
    BLOCK_P: int = 32  # output pixels per program
    BLOCK_C: int = 64  # channels per program
    num_warps: int = 4


def pool_configs(channels: int) -> list[PoolConfig]:
    bc = min(128, triton.next_power_of_2(max(channels, 16)))
    out = [PoolConfig(32, bc, 4), PoolConfig(64, bc, 4), PoolConfig(16, bc, 2)]
    if bc >= 64:
        out.append(PoolConfig(64, bc // 2, 4))
    return out


@triton.jit
def _maxpool_nhwc_kernel(
    x_ptr,
    y_ptr,
    P,
    C,
    H,
    W,
    OH,
    OW,
    sxn,
    sxh,
    sxw,
    SH,
    SW,
    PH,
    PW,
    DH,
    DW,
    KH: tl.constexpr,
    KW: tl.constexpr,
    BLOCK_P: tl.constexpr,
    BLOCK_C: tl.constexpr,
    PDL: tl.constexpr = False,
):
    pdl_enter(PDL)
    offs_p = tl.program_id(0) * BLOCK_P + tl.arange(0, BLOCK_P)  # flat (n, oh, ow)
    offs_c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    mask_p = offs_p < P
    mask_c = offs_c < C
    ow = offs_p % OW
    t = offs_p // OW
    oh = t % OH
    n = t // OH
    acc = tl.full((BLOCK_P, BLOCK_C), float("-inf"), tl.float32)
    for kh in tl.static_range(KH):
        ih = oh * SH - PH + kh * DH
        ok_h = mask_p & (ih >= 0) & (ih < H)
        for kw in tl.static_range(KW):
            iw = ow * SW - PW + kw * DW
            ok = ok_h & (iw >= 0) & (iw < W)
            base = n.to(tl.int64) * sxn + ih * sxh + iw * sxw
            v = tl.load(
                x_ptr + base[:, None] + offs_c[None, :],
                mask=ok[:, None] & mask_c[None, :],
                other=float("-inf"),
            )
            acc = tl.maximum(acc, v.to(tl.float32), propagate_nan=tl.PropagateNan.ALL)
    y = y_ptr + offs_p.to(tl.int64)[:, None] * C + offs_c[None, :]
    tl.store(y, acc.to(y_ptr.dtype.element_ty), mask=mask_p[:, None] & mask_c[None, :])


@dataclass(frozen=True)
class _Geom:
    kernel: tuple[int, int]
    strides: tuple[int, int]
    dil: tuple[int, int]
    begins: tuple[int, int]
    ends: tuple[int, int]
    ceil_mode: bool


def _geom(attrs: dict[str, Any]) -> _Geom | None:
    kernel = [int(k) for k in attrs.get("kernel_shape") or []]
    if len(kernel) != 2 or attrs.get("layout") != "NHWC":
        return None
    try:
        strides, dil, pads, auto_pad = window_params(attrs, 2, kernel)
    except ValueError:
        return None
    if auto_pad not in ("NOTSET", "", None) or int(attrs.get("storage_order") or 0):
        return None  # auto_pad pads depend on the input size: the reference handles them
    return _Geom(
        (kernel[0], kernel[1]),
        (strides[0], strides[1]),
        (dil[0], dil[1]),
        (pads[0], pads[1]),
        (pads[2], pads[3]),
        bool(attrs.get("ceil_mode") or 0),
    )


def maxpool_nhwc(x: Tensor, attrs: dict[str, Any], config: PoolConfig | None = None) -> Tensor:
    """Y of ecoinfer.MaxPool(layout="NHWC") on a 4-D channels-last X (any N, H, W)."""
    g = _geom(attrs)
    assert g is not None
    return _maxpool(x, g, config)


def _maxpool(x: Tensor, g: _Geom, config: PoolConfig | None) -> Tensor:
    assert x.dim() == 4
    n, h, w, c = x.shape
    oh, ow = [
        int(window_out(size, k, s, d, pb, pe, "NOTSET", g.ceil_mode))  # type: ignore[arg-type]
        for size, k, s, d, pb, pe in zip((h, w), g.kernel, g.strides, g.dil, g.begins, g.ends)
    ]
    x = x if x.stride(3) == 1 else x.contiguous()
    y = torch.empty((n, oh, ow, c), dtype=x.dtype, device=x.device)
    p = n * oh * ow
    if y.numel() == 0:
        return y
    cfg = config or pool_configs(c)[0]
    grid = (triton.cdiv(p, cfg.BLOCK_P), triton.cdiv(c, cfg.BLOCK_C))
    _maxpool_nhwc_kernel[grid](
        x, y, p, c, h, w, oh, ow, x.stride(0), x.stride(1), x.stride(2),
        g.strides[0], g.strides[1], g.begins[0], g.begins[1], g.dil[0], g.dil[1],
        KH=g.kernel[0], KW=g.kernel[1], BLOCK_P=cfg.BLOCK_P, BLOCK_C=cfg.BLOCK_C,
        num_warps=cfg.num_warps,
        **pdl_args(x.device),
    )  # fmt: skip
    return y


def configs(
    node: Node, attrs: dict[str, Any], inputs: list[TensorInfo | None], build: BuildInfo
) -> list[dict[str, Any]]:
    x = inputs[0] if inputs else None
    channels = int(x.shape[-1]) if x is not None and len(x.shape) == 4 else 64
    return [c.as_dict() for c in pool_configs(channels)]


def make(
    node: Node,
    attrs: dict[str, Any],
    inputs: list[TensorInfo | None],
    cfg: dict[str, Any],
    build: BuildInfo,
) -> RunFn | None:
    from ecoinfer.kernels.triton.gemm_tactics import _runs_here  # noqa: PLC0415

    x = inputs[0] if inputs else None
    if not _runs_here(build) or x is None or len(x.shape) != 4 or x.dtype not in _FLOATS:
        return None
    if len(node.outputs) > 1 and node.outputs[1]:
        return None  # the Indices output: the reference computes it
    g = _geom(attrs)
    if g is None:
        return None
    config = PoolConfig(**{k: int(v) for k, v in cfg.items()}) if cfg else None

    def run(xs: list[Tensor | None]) -> list[Tensor]:
        assert xs[0] is not None
        return [_maxpool(xs[0], g, config)]

    return run
