"""Tactics of the quantized Triton kernels (imported by ecoinfer.kernels.triton.tactics).

  triton_qgemm  ecoinfer.QGemm   qgemm.py, one candidate per QGemmConfig
  triton_qconv  ecoinfer.QConv   qconv.py, one candidate per QGemmConfig

Inputs are (X, W_q, x_scale, w_scale, bias?, residual?) (ecoinfer/ir/ops/fused_quant.py).
`make` returns None where the kernels do not apply: X not float, W_q not the qtype's element
type, scales of the wrong shape, fp8 on a GPU below compute capability 8.9 (no fp8 tensor
cores), and whatever triton_gemm / triton_conv decline (grouped or 3-D convolutions, unknown
activations, a residual that would grow the output). A constant W_q is packed once here
(pack_qweight / pack_qconv_weight) and the run function uses the packed copy; a W_q that
is not a constant is read through its strides as it comes.
"""

from __future__ import annotations

from typing import Any

import torch

from ecoinfer.ir.graph import Node, optional_input
from ecoinfer.ir.ops.fused_quant import has_residual_norm
from ecoinfer.kernels.triton.gemm_tactics import (
    _conv_params,
    _gemm_dims,
    _grows,
    _runs_here,
    act_of,
)
from ecoinfer.kernels.triton.qconv import compiled_ok, pack_qconv_weight, qconv, qconv_configs
from ecoinfer.kernels.triton.qgemm import (
    QTYPES,
    QGemmConfig,
    pack_qweight,
    qgemm,
    qgemm_compiled_ok,
    qgemm_configs,
)
from ecoinfer.tune.tactics import BuildInfo, RunFn, TensorInfo, tactic

Tensor = torch.Tensor
_FLOATS = (torch.float16, torch.bfloat16, torch.float32)
_DTYPES = ("float16", "bfloat16", "float32")


def fp8_supported(device: torch.device | str) -> bool:
    """fp8 tensor-core dots need compute capability 8.9 (Ada) or 9.0 (Hopper); the CPU
    interpreter emulates them."""
    dev = torch.device(device)
    if dev.type != "cuda":
        return True
    try:
        return torch.cuda.get_device_capability(dev) >= (8, 9)
    except (RuntimeError, AssertionError):  # no usable CUDA device
        return False


def _common(
    attrs: dict[str, Any], inputs: list[TensorInfo | None], n: int, build: BuildInfo
) -> tuple[str, TensorInfo] | None:
    """(qtype, X info) when X, W_q and the scales are what the kernels take, else None."""
    qtype = str(attrs.get("qtype") or "int8")
    x, w = optional_input(inputs, 0), optional_input(inputs, 1)
    xs, ws = optional_input(inputs, 2), optional_input(inputs, 3)
    if qtype not in QTYPES or x is None or w is None or xs is None or ws is None:
        return None
    if optional_input(inputs, 6) is not None or has_residual_norm(inputs):
        return None  # y_scale (codes out), a rebuilt residual: triton_tma_qgemm's forms
    if x.dtype not in _FLOATS or w.dtype != QTYPES[qtype]:
        return None
    if qtype == "fp8e4m3" and not fp8_supported(build.device):
        return None
    if xs.dtype != torch.float32 or tuple(xs.shape) not in ((), (1,)):
        return None
    if ws.dtype != torch.float32 or tuple(ws.shape) not in ((n,), (1,)):
        return None
    return qtype, x


def _epilogue_ok(
    inputs: list[TensorInfo | None], n: int, out: tuple[int, ...], attrs: dict[str, Any]
) -> bool:
    bias, res = optional_input(inputs, 4), optional_input(inputs, 5)
    if bias is not None and (tuple(bias.shape) != (n,) or bias.dtype not in _FLOATS):
        return False
    return res is None or (res.dtype in _FLOATS and not _grows(tuple(res.shape), out))


def _as_float(inputs: list[TensorInfo | None]) -> list[TensorInfo | None]:
    """(X, W) with W seen as X's dtype: the float tactics' shape checks apply unchanged."""
    x, w = optional_input(inputs, 0), optional_input(inputs, 1)
    if x is None or w is None:
        return [x, w]
    return [x, TensorInfo(tuple(w.shape), x.dtype, w.is_weight)]


def _packed_weight(node: Node, inputs: list[TensorInfo | None], build: BuildInfo) -> Tensor | None:
    """The constant W_q on the build device, when the engine has it (packed by the caller)."""
    info = optional_input(inputs, 1)
    if info is None or not info.is_weight or len(node.inputs) < 2:
        return None
    w = build.weights.get(node.inputs[1])
    if w is None or tuple(w.shape) != tuple(info.shape) or w.dtype != info.dtype:
        return None
    return w.to(device=build.device)


# ---------------------------------------------------------------------- QGemm
def _qgemm_dims(
    attrs: dict[str, Any], inputs: list[TensorInfo | None]
) -> tuple[int, int, int, tuple[int, ...]] | None:
    """(M, N, K, output shape) at the opt shapes; W_q is [N, K]."""
    return _gemm_dims({"trans_b": 1}, _as_float(inputs))


def _qgemm_configs(
    node: Node, attrs: dict[str, Any], inputs: list[TensorInfo | None], build: BuildInfo
) -> list[dict[str, Any]]:
    dims = _qgemm_dims(attrs, inputs)
    x = optional_input(inputs, 0)
    if dims is None or x is None:
        return [QGemmConfig().as_dict()]
    m, n, k, _ = dims
    qtype = str(attrs.get("qtype") or "int8")
    return [c.as_dict() for c in qgemm_configs(m, n, k, x.dtype, qtype)]


@tactic(
    "QGemm",
    name="triton_qgemm",
    domain="ecoinfer",
    devices=("cuda",),
    dtypes=_DTYPES,
    configs=_qgemm_configs,
    doc="Triton INT8/FP8 GEMM, X quantized in registers, dequant + FusedGemm epilogue fused",
)
def triton_qgemm(
    node: Node,
    attrs: dict[str, Any],
    inputs: list[TensorInfo | None],
    cfg: dict[str, Any],
    build: BuildInfo,
) -> RunFn | None:
    if not _runs_here(build):
        return None
    dims = _qgemm_dims(attrs, inputs)
    if dims is None:
        return None
    _, n, _, out = dims
    if _common(attrs, inputs, n, build) is None or not _epilogue_ok(inputs, n, out, attrs):
        return None
    act = act_of(attrs)
    if act is None:
        return None
    qtype = str(attrs.get("qtype") or "int8")
    config = QGemmConfig.from_dict(cfg) if cfg else None
    x_info = inputs[0]
    prequant = bool(config.PREQUANT) if config else False
    if x_info is not None and not qgemm_compiled_ok(qtype, x_info.dtype, prequant, build.device):
        return None
    w = _packed_weight(node, inputs, build)
    packed = pack_qweight(w) if w is not None else None

    def run(xs: list[Tensor | None]) -> list[Tensor]:
        x, wq, x_scale, w_scale = xs[0], xs[1], xs[2], xs[3]
        assert x is not None and wq is not None and x_scale is not None and w_scale is not None
        wp = packed if packed is not None else wq  # read through its strides
        bias, res = optional_input(xs, 4), optional_input(xs, 5)
        y = qgemm(x, wp, x_scale, w_scale, bias, res, qtype=qtype, config=config, act=act)
        return [y]

    return run


# ---------------------------------------------------------------------- QConv
def _qconv_params(attrs: dict[str, Any], inputs: list[TensorInfo | None]):  # noqa: ANN202
    """triton_conv's (kernel kwargs, output shape, M, Cout, Cin), or None."""
    return _conv_params(attrs, _as_float(inputs))


def _qconv_configs(
    node: Node, attrs: dict[str, Any], inputs: list[TensorInfo | None], build: BuildInfo
) -> list[dict[str, Any]]:
    p = _qconv_params(attrs, inputs)
    x = optional_input(inputs, 0)
    if p is None or x is None:
        return [QGemmConfig().as_dict()]
    _, _, m, cout, cin = p
    qtype = str(attrs.get("qtype") or "int8")
    return [c.as_dict() for c in qconv_configs(m, cout, cin, x.dtype, qtype)]


@tactic(
    "QConv",
    name="triton_qconv",
    domain="ecoinfer",
    devices=("cuda",),
    dtypes=_DTYPES,
    configs=_qconv_configs,
    doc="Triton INT8/FP8 implicit-GEMM convolution (group=1, 1-D/2-D, NCHW/NHWC), X "
    "quantized in registers, dequant + FusedConv epilogue fused",
)
def triton_qconv(
    node: Node,
    attrs: dict[str, Any],
    inputs: list[TensorInfo | None],
    cfg: dict[str, Any],
    build: BuildInfo,
) -> RunFn | None:
    if not _runs_here(build):
        return None
    p = _qconv_params(attrs, inputs)
    if p is None:
        return None
    kwargs, out, _, cout, _ = p
    if _common(attrs, inputs, cout, build) is None or not _epilogue_ok(inputs, cout, out, attrs):
        return None
    qtype = str(attrs.get("qtype") or "int8")
    config = QGemmConfig.from_dict(cfg) if cfg else None
    layout = kwargs["layout"]
    if not compiled_ok(qtype, layout, build.device):
        return None
    w = _packed_weight(node, inputs, build)
    packed = pack_qconv_weight(w, layout) if w is not None else None

    def run(xs: list[Tensor | None]) -> list[Tensor]:
        x, wq, x_scale, w_scale = xs[0], xs[1], xs[2], xs[3]
        assert x is not None and wq is not None and x_scale is not None and w_scale is not None
        wp = packed if packed is not None else wq  # read through its strides
        bias, res = optional_input(xs, 4), optional_input(xs, 5)
        y = qconv(x, wp, x_scale, w_scale, bias, res, qtype=qtype, config=config, **kwargs)
        return [y]

    return run
