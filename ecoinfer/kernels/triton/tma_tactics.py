"""Tactics of the TMA GEMM (tma_gemm.py; imported by ecoinfer.kernels.triton.tactics).

  triton_tma_gemm   ecoinfer.FusedGemm  float16/bfloat16 X and W (W [K, N], or [N, K] with
                                        trans_b), bias/activation/residual in the epilogue
  triton_tma_qgemm  ecoinfer.QGemm      X quantized in one pass (qgemm.quantize), or tile by
                                        tile in the kernel's registers (QUANT_X
                                        configurations), unless it already holds codes; the
                                        8-bit TMA GEMM with the dequantize/bias/activation/
                                        residual epilogue
  triton_tma_conv1x1   ecoinfer.FusedConv  a channels-last 1x1 convolution with stride 1 and
  triton_tma_qconv1x1  ecoinfer.QConv      no padding is a GEMM on [N*H*W, C]: the half or
                                           the 8-bit kernel above, with the conv's activation,
                                           residual and post-residual activation fused
  triton_tma_conv      ecoinfer.FusedConv  a channels-last KxK convolution with stride 1 whose
  triton_tma_qconv     ecoinfer.QConv      padding keeps the image size: the same kernels as
                                           an implicit GEMM whose K steps walk the taps

Both need TMA (compute capability 9.0, or the interpreter in the tests) and rows whose
byte length is a multiple of 16 (K, and N for a [K, N] W: multiples of 8 in half precision,
16 in 8 bits). Layers with a GELU also get FAST_GELU variants of their three best-placed
configurations (the tanh formula on the hardware tanh); the tuner keeps them only where
they agree with the reference within the layer's tolerance.
"""

from __future__ import annotations

from typing import Any

import torch

from ecoinfer.ir.graph import Node, optional_input
from ecoinfer.ir.ops.fused_quant import has_residual_norm
from ecoinfer.kernels.triton.gemm import ACT_GELU_ERF, ACT_GELU_TANH, act_code
from ecoinfer.kernels.triton.gemm_tactics import (
    _gemm_dims,
    _numel,
    _runs_here,
    act_of,
    gemm_epilogue_ok,
)
from ecoinfer.kernels.triton.qgemm import QTYPES, pack_qweight, quantize
from ecoinfer.kernels.triton.qtactics import (
    _epilogue_ok,
    _packed_weight,
    fp8_supported,
)
from ecoinfer.kernels.triton.tma_gemm import (
    ConvGeometry,
    TmaGemmConfig,
    tma_gemm,
    tma_gemm_configs,
    tma_supported,
)
from ecoinfer.tune.tactics import BuildInfo, RunFn, TensorInfo, tactic

Tensor = torch.Tensor
_HALF = (torch.float16, torch.bfloat16)


def _configs(m: int, n: int, k: int, in_bytes: int, act: tuple[int, float, float] | None):
    """The tile configurations (k: the K of one K step's source, a convolution tap's
    channels). QUANT_X configurations (float X quantized in registers) are not tried: on an
    H200 they lost to the one-pass quantize everywhere (BERT QKV 62.8 us against 33.7 + 5.1;
    ResNet 3x3 at 28x28 87.0 against 70.1 + 9.2; bench/gpu_kernel_probe.py)."""
    cfgs = tma_gemm_configs(m, n, k, in_bytes)
    if act is not None and act[0] in (ACT_GELU_ERF, ACT_GELU_TANH):
        cfgs += [TmaGemmConfig(**{**c.as_dict(), "FAST_GELU": 1}) for c in cfgs[:3]]
    return [c.as_dict() for c in cfgs]


# ---------------------------------------------------------------------- FusedGemm
def _half_gemm(attrs: dict[str, Any], inputs: list[TensorInfo | None]):  # noqa: ANN202
    """(M, N, K, out shape) when the TMA kernel takes this FusedGemm, else None."""
    dims = _gemm_dims(attrs, inputs)
    a = optional_input(inputs, 0)
    if dims is None or a is None or a.dtype not in _HALF:
        return None
    _, n, k, _ = dims
    trans_b = bool(int(attrs.get("trans_b", 0) or 0))
    if k % 8 or (not trans_b and n % 8):
        return None  # TMA rows: multiples of 16 bytes
    return dims


def _tma_gemm_configs(
    node: Node, attrs: dict[str, Any], inputs: list[TensorInfo | None], build: BuildInfo
) -> list[dict[str, Any]]:
    dims = _half_gemm(attrs, inputs)
    if dims is None:
        return [TmaGemmConfig().as_dict()]
    m, n, k, _ = dims
    return _configs(m, n, k, 2, act_of(attrs))


@tactic(
    "FusedGemm",
    name="triton_tma_gemm",
    domain="ecoinfer",
    devices=("cuda",),
    dtypes=("float16", "bfloat16"),
    configs=_tma_gemm_configs,
    doc="Triton GEMM with TMA tile loads (Hopper), persistent, bias/activation/residual fused",
)
def triton_tma_gemm(
    node: Node,
    attrs: dict[str, Any],
    inputs: list[TensorInfo | None],
    cfg: dict[str, Any],
    build: BuildInfo,
) -> RunFn | None:
    if not _runs_here(build) or not tma_supported(build.device):
        return None
    dims = _half_gemm(attrs, inputs)
    act = act_of(attrs)
    if dims is None or act is None:
        return None
    _, n, _, out = dims
    if not gemm_epilogue_ok(inputs, n, out):
        return None
    trans_b = bool(int(attrs.get("trans_b", 0) or 0))
    config = TmaGemmConfig.from_dict(cfg) if cfg else None

    def run(xs: list[Tensor | None]) -> list[Tensor]:
        a, b = xs[0], xs[1]
        assert a is not None and b is not None
        bias, res = optional_input(xs, 2), optional_input(xs, 3)
        y = tma_gemm(a, b, bias, res, w_kn=not trans_b, act=act, config=config)
        return [y]

    return run


# ---------------------------------------------------------------------- QGemm
_HALF_NAMES = {"float16": torch.float16, "bfloat16": torch.bfloat16}


def _qgemm_plan(attrs: dict[str, Any], inputs: list[TensorInfo | None], build: BuildInfo):  # noqa: ANN202
    """(qtype, M, N, K, float dtype of Y, output shape) when the TMA kernel takes this QGemm
    (X float or already codes, Y float or codes for the next layer), else None."""
    w, x = optional_input(inputs, 1), optional_input(inputs, 0)
    if w is None or x is None or len(w.shape) != 2 or not x.shape:
        return None
    n, k = w.shape
    io = _quantized_io(attrs, inputs, n, build)
    if io is None or x.shape[-1] != k or k % 16:
        return None  # 8-bit TMA rows of K codes: multiples of 16 bytes
    qtype, fdt = io
    out = (*x.shape[:-1], n)
    m = _numel(x.shape[:-1])
    return qtype, m, n, k, fdt, out


def _quantized_io(
    attrs: dict[str, Any], inputs: list[TensorInfo | None], n: int, build: BuildInfo
) -> tuple[str, torch.dtype] | None:
    """(qtype, float dtype Y is computed in) of a QGemm / QConv the 8-bit TMA kernel takes:
    W_q of the qtype, X float16/bfloat16 or already codes (a linked layer; its out_dtype
    names Y's float dtype), float32 scalar x_scale and y_scale (codes out), float32 w_scale
    [N] or [1]; FP8 only where the GPU has it."""
    qtype = str(attrs.get("qtype") or "int8")
    x, w, xs, ws, ys = (optional_input(inputs, i) for i in (0, 1, 2, 3, 6))
    if qtype not in QTYPES or x is None or w is None or xs is None or ws is None:
        return None
    if w.dtype != QTYPES[qtype]:
        return None
    if x.dtype == QTYPES[qtype]:  # codes from the previous layer
        fdt = _HALF_NAMES.get(str(attrs.get("out_dtype") or ""))
    else:
        fdt = x.dtype if x.dtype in _HALF else None
    if fdt is None or (qtype == "fp8e4m3" and not fp8_supported(build.device)):
        return None
    for s in (xs, ys):
        if s is not None and (s.dtype != torch.float32 or tuple(s.shape) not in ((), (1,))):
            return None
    if ws.dtype != torch.float32 or tuple(ws.shape) not in ((n,), (1,)):
        return None
    return qtype, fdt


def _tma_qgemm_configs(
    node: Node, attrs: dict[str, Any], inputs: list[TensorInfo | None], build: BuildInfo
) -> list[dict[str, Any]]:
    plan = _qgemm_plan(attrs, inputs, build)
    if plan is None:
        return [TmaGemmConfig().as_dict()]
    _, m, n, k, _, _ = plan
    return _configs(m, n, k, 1, act_of(attrs))


@tactic(
    "QGemm",
    name="triton_tma_qgemm",
    domain="ecoinfer",
    devices=("cuda",),
    dtypes=("float16", "bfloat16"),
    configs=_tma_qgemm_configs,
    doc="the INT8/FP8 TMA GEMM (Hopper) with the dequantize + bias/activation/residual "
    "epilogue; X quantized in one pass first unless it already holds codes; writes the next "
    "layer's codes when the layer has a y_scale",
)
def triton_tma_qgemm(
    node: Node,
    attrs: dict[str, Any],
    inputs: list[TensorInfo | None],
    cfg: dict[str, Any],
    build: BuildInfo,
) -> RunFn | None:
    if not _runs_here(build) or not tma_supported(build.device):
        return None
    plan = _qgemm_plan(attrs, inputs, build)
    act = act_of(attrs)
    if plan is None or act is None:
        return None
    qtype, m, n, _, fdt, out = plan
    if not _epilogue_ok(inputs, n, out, attrs):
        return None
    norm = has_residual_norm(inputs)
    if norm and not _residual_norm_ok(inputs, m, n, out):
        return None
    w = _packed_weight(node, inputs, build)
    packed = pack_qweight(w) if w is not None else None
    config = TmaGemmConfig.from_dict(cfg) if cfg else None

    def run(xs: list[Tensor | None]) -> list[Tensor]:
        wq = xs[1]
        assert wq is not None
        wp = packed if packed is not None else pack_qweight(wq)
        rn = (xs[7], xs[8], xs[9], optional_input(xs, 10)) if norm else None
        return [_run_8bit(xs, wp, qtype, fdt, act, config, residual_norm=rn)]

    return run


def _residual_norm_ok(
    inputs: list[TensorInfo | None], m: int, n: int, out: tuple[int, ...]
) -> bool:
    """res_mean / res_inv_std float32 [rows], res_scale (res_bias) [N], residual of Y's shape."""
    res = optional_input(inputs, 5)
    stats = [optional_input(inputs, i) for i in (7, 8)]
    params = [optional_input(inputs, 9), optional_input(inputs, 10)]
    if res is None or tuple(res.shape) != tuple(out) or params[0] is None:
        return False
    if any(t is None or t.dtype != torch.float32 or _numel(t.shape) != m for t in stats):
        return False
    return all(t is None or _numel(t.shape) == n for t in params)


def _run_8bit(
    xs: list[Tensor | None],
    wp: Tensor,
    qtype: str,
    fdt: torch.dtype,
    act: tuple[int, float, float],
    config: TmaGemmConfig | None,
    post: tuple[int, float, float] | None = None,
    conv: ConvGeometry | None = None,
    residual_norm: tuple | None = None,
) -> Tensor:
    """A QGemm / QConv (inputs X, W_q, x_scale, w_scale, bias?, residual?, y_scale?) on the
    8-bit TMA kernel with W_q as wp: X read as codes, quantized in the kernel's registers
    (QUANT_X) or in one pass first; Y float (fdt) or, with y_scale, the next layer's codes."""
    x, x_scale, w_scale = xs[0], xs[2], xs[3]
    assert x is not None and x_scale is not None and w_scale is not None
    s = x_scale.reshape(()).float()
    in_kernel = x.dtype == QTYPES[qtype] or (config is not None and config.QUANT_X)
    ys = optional_input(xs, 6)
    bias, res = optional_input(xs, 4), optional_input(xs, 5)
    return tma_gemm(
        x if in_kernel else quantize(x, s, qtype, exact=True),
        wp,
        bias,
        res,
        act=act,
        post=post,
        x_scale=s,
        w_scale=w_scale.float().reshape(-1),
        out_scale=None if ys is None else ys.reshape(()).float(),
        out_qtype=qtype,
        out_dtype=fdt,
        config=config,
        conv=conv,
        residual_norm=residual_norm,
    )


# ---------------------------------------------------------------------- convolutions
def _conv_plan(attrs: dict[str, Any], inputs: list[TensorInfo | None], align: int, kxk: bool):  # noqa: ANN202
    """(M, Cout, Cin, output shape, act, post, geometry) when this FusedConv (or QConv, W
    seen as float) runs on the TMA GEMM, else None: channels-last, 2-D, one group, stride 1,
    Cin a multiple of `align` elements (16-byte TMA rows). kxk=False: the 1x1 convolutions
    without padding (a plain GEMM on [N*H*W, C], geometry None); kxk=True: larger kernels
    whose padding keeps the image size (the implicit GEMM over taps, tma_gemm.ConvGeometry)."""
    # (tune imports this module)
    from ecoinfer.ir.ops.nn import window_params  # noqa: PLC0415
    from ecoinfer.tune.torch_tactics import _conv_parse, conv_as_gemm  # noqa: PLC0415

    x, w = optional_input(inputs, 0), optional_input(inputs, 1)
    if x is None or w is None:
        return None
    geo = None
    if kxk:
        c = _conv_parse(attrs, inputs[:2])  # X and W: a QConv's scales are no float inputs
        if c is None or not c.nhwc or c.nd != 2 or c.group != 1 or any(v != 1 for v in c.strides):
            return None
        kh, kw = int(w.shape[1]), int(w.shape[2])
        try:
            _, dil, pads, _ = window_params(attrs, 2, [kh, kw])
        except ValueError:
            return None
        geo = ConvGeometry(kh, kw, (pads[0], pads[1], pads[2], pads[3]), (dil[0], dil[1]))
        if (kh, kw) == (1, 1) or not geo.same_size():
            return None
    else:
        c = conv_as_gemm(attrs, inputs[:2])
        if c is None:
            return None
    cout, cin = int(w.shape[0]), int(w.shape[-1])
    if cin % align:
        return None
    try:
        act, post = act_code(c.act, c.params), act_code(c.post, c.post_params)
    except ValueError:
        return None
    out = (*x.shape[:-1], cout)
    return _numel(tuple(x.shape[:-1])), cout, cin, out, act, post, geo


def _as_half(inputs: list[TensorInfo | None]) -> list[TensorInfo | None]:
    """A QConv's (X, W) seen as the float convolution's: X's codes (a linked layer) and W_q
    as float16 (the shape checks are the same)."""
    x, w = optional_input(inputs, 0), optional_input(inputs, 1)
    if x is None or w is None:
        return [x, w]
    dt = x.dtype if x.dtype in _HALF else torch.float16
    return [TensorInfo(tuple(x.shape), dt), TensorInfo(tuple(w.shape), dt, w.is_weight)]


def _conv_configs(kxk: bool, quantized: bool = False):  # noqa: ANN202
    """The configs function of a float (FusedConv) or 8-bit (QConv) TMA convolution tactic."""

    def configs(
        node: Node, attrs: dict[str, Any], inputs: list[TensorInfo | None], build: BuildInfo
    ) -> list[dict[str, Any]]:
        seen = _as_half(inputs) if quantized else inputs
        p = _conv_plan(attrs, seen, 16 if quantized else 8, kxk)
        if p is None:
            return [TmaGemmConfig().as_dict()]
        m, n, k, _, act, _, _ = p
        # a K step reads one tap's channels: a step wider than C would read the next
        # pixel's channels against W's zeros (on an H200, FP8 3x3 over 64 channels took
        # 228 us with 128-channel steps)
        return _configs(m, n, k, 1 if quantized else 2, act)

    return configs


def _conv_tactic(kxk: bool):  # noqa: ANN202
    def make(
        node: Node,
        attrs: dict[str, Any],
        inputs: list[TensorInfo | None],
        cfg: dict[str, Any],
        build: BuildInfo,
    ) -> RunFn | None:
        if not _runs_here(build) or not tma_supported(build.device):
            return None
        x = optional_input(inputs, 0)
        p = _conv_plan(attrs, inputs, 8, kxk)
        if p is None or x is None or x.dtype not in _HALF:
            return None
        _, cout, _, out, act, post, geo = p
        if not gemm_epilogue_ok(inputs, cout, out):
            return None
        config = TmaGemmConfig.from_dict(cfg) if cfg else None

        def run(xs: list[Tensor | None]) -> list[Tensor]:
            a, w = xs[0], xs[1]
            assert a is not None and w is not None
            wk = w.reshape(cout, -1)  # [Cout, KH*KW*Cin]: OHWI rows
            bias, res = optional_input(xs, 2), optional_input(xs, 3)
            y = tma_gemm(a, wk, bias, res, act=act, post=post, config=config, conv=geo)
            return [y]

        return run

    return make


def _qconv_tactic(kxk: bool):  # noqa: ANN202
    def make(
        node: Node,
        attrs: dict[str, Any],
        inputs: list[TensorInfo | None],
        cfg: dict[str, Any],
        build: BuildInfo,
    ) -> RunFn | None:
        if not _runs_here(build) or not tma_supported(build.device):
            return None
        p = _conv_plan(attrs, _as_half(inputs), 16, kxk)
        if p is None:
            return None
        _, cout, _, out, act, post, geo = p
        io = _quantized_io(attrs, inputs, cout, build)
        if io is None or not _epilogue_ok(inputs, cout, out, attrs):
            return None
        qtype, fdt = io
        w = _packed_weight(node, inputs, build)
        packed = w.reshape(cout, -1).contiguous() if w is not None else None
        config = TmaGemmConfig.from_dict(cfg) if cfg else None

        def run(xs: list[Tensor | None]) -> list[Tensor]:
            wq = xs[1]
            assert wq is not None
            wp = packed if packed is not None else wq.reshape(cout, -1)
            return [_run_8bit(xs, wp, qtype, fdt, act, config, post, geo)]

        return run

    return make


_CONV_DOC = (
    "bias/activation/residual/post-activation fused; Hopper TMA tile loads",
    "channels-last 1x1 stride-1 convolution as the TMA GEMM on [N*H*W, C]",
    "channels-last KxK stride-1 same-size convolution as an implicit TMA GEMM over the taps "
    "(X rows shifted per tap, the image edge zeroed in registers)",
)
_conv1x1_configs = _conv_configs(False)
_qconv1x1_configs = _conv_configs(False, quantized=True)
triton_tma_conv1x1 = _conv_tactic(False)
triton_tma_qconv1x1 = _qconv_tactic(False)
triton_tma_conv = _conv_tactic(True)
triton_tma_qconv = _qconv_tactic(True)
for _name, _kxk, _float, _quant, _what in (
    ("conv1x1", False, triton_tma_conv1x1, triton_tma_qconv1x1, _CONV_DOC[1]),
    ("conv", True, triton_tma_conv, triton_tma_qconv, _CONV_DOC[2]),
):
    tactic(
        "FusedConv",
        name=f"triton_tma_{_name}",
        domain="ecoinfer",
        devices=("cuda",),
        dtypes=("float16", "bfloat16"),
        configs=_conv_configs(_kxk),
        doc=f"{_what}, {_CONV_DOC[0]}",
    )(_float)
    tactic(
        "QConv",
        name=f"triton_tma_q{_name}",
        domain="ecoinfer",
        devices=("cuda",),
        dtypes=("float16", "bfloat16"),
        configs=_conv_configs(_kxk, quantized=True),
        doc=f"INT8/FP8 {_what} (X as codes or quantized in one pass), dequantize + {_CONV_DOC[0]}",
    )(_quant)
