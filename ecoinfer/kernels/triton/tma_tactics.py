"""Tactics of the TMA GEMM (tma_gemm.py; imported by ecoinfer.kernels.triton.tactics).

  triton_tma_gemm   ecoinfer.FusedGemm  float16/bfloat16 X and W (W [K, N], or [N, K] with
                                        trans_b), bias/activation/residual in the epilogue
  triton_tma_qgemm  ecoinfer.QGemm      X quantized in one pass (qgemm.quantize) unless it
                                        already holds codes, then the 8-bit TMA GEMM with the
                                        dequantize/bias/activation/residual epilogue

Both need TMA (compute capability 9.0, or the interpreter in the tests) and rows whose
byte length is a multiple of 16 (K, and N for a [K, N] W: multiples of 8 in half precision,
16 in 8 bits). Layers with a GELU also get FAST_GELU variants of their three best-placed
configurations (the tanh formula on the hardware tanh); the tuner keeps them only where
they agree with the reference within the layer's tolerance.
"""

from __future__ import annotations

from typing import Any

import torch

from ecoinfer.ir.graph import Node
from ecoinfer.kernels.triton.gemm import ACT_GELU_ERF, ACT_GELU_TANH, act_code
from ecoinfer.kernels.triton.gemm_tactics import _gemm_dims, _get, _grows, _runs_here
from ecoinfer.kernels.triton.qgemm import QTYPES, pack_qweight, quantize
from ecoinfer.kernels.triton.qtactics import (
    _common,
    _epilogue_ok,
    _packed_weight,
    _qgemm_dims,
)
from ecoinfer.kernels.triton.tma_gemm import (
    TmaGemmConfig,
    tma_gemm,
    tma_gemm_configs,
    tma_supported,
)
from ecoinfer.tune.tactics import BuildInfo, RunFn, TensorInfo, tactic

Tensor = torch.Tensor
_HALF = (torch.float16, torch.bfloat16)
_FLOATS = (torch.float16, torch.bfloat16, torch.float32)


def _info(inputs: list[TensorInfo | None], i: int) -> TensorInfo | None:
    return inputs[i] if i < len(inputs) else None


def _act(attrs: dict[str, Any]) -> tuple[int, float, float] | None:
    try:
        return act_code(str(attrs.get("activation") or ""), attrs.get("activation_params") or [])
    except ValueError:
        return None


def _configs(m: int, n: int, k: int, in_bytes: int, act: tuple[int, float, float] | None):
    cfgs = tma_gemm_configs(m, n, k, in_bytes)
    if act is not None and act[0] in (ACT_GELU_ERF, ACT_GELU_TANH):
        cfgs += [TmaGemmConfig(**{**c.as_dict(), "FAST_GELU": 1}) for c in cfgs[:3]]
    return [c.as_dict() for c in cfgs]


# ---------------------------------------------------------------------- FusedGemm
def _half_gemm(attrs: dict[str, Any], inputs: list[TensorInfo | None]):  # noqa: ANN202
    """(M, N, K, out shape) when the TMA kernel takes this FusedGemm, else None."""
    dims = _gemm_dims(attrs, inputs)
    a = _info(inputs, 0)
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
    return _configs(m, n, k, 2, _act(attrs))


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
    act = _act(attrs)
    if dims is None or act is None:
        return None
    _, n, _, out = dims
    bias, res = _info(inputs, 2), _info(inputs, 3)
    if bias is not None and (bias.shape != (n,) or bias.dtype not in _FLOATS):
        return None
    if res is not None and (res.dtype not in _FLOATS or _grows(res.shape, out)):
        return None
    trans_b = bool(int(attrs.get("trans_b", 0) or 0))
    config = TmaGemmConfig.from_dict(cfg) if cfg else None

    def run(xs: list[Tensor | None]) -> list[Tensor]:
        a, b = xs[0], xs[1]
        assert a is not None and b is not None
        y = tma_gemm(a, b, _get(xs, 2), _get(xs, 3), w_kn=not trans_b, act=act, config=config)
        return [y]

    return run


# ---------------------------------------------------------------------- QGemm
def _tma_qgemm_dims(attrs: dict[str, Any], inputs: list[TensorInfo | None]):  # noqa: ANN202
    dims = _qgemm_dims(attrs, inputs)
    x = _info(inputs, 0)
    if dims is None or x is None or x.dtype not in _HALF:
        return None
    if dims[2] % 16:
        return None  # 8-bit TMA rows of K codes: multiples of 16 bytes
    return dims


def _tma_qgemm_configs(
    node: Node, attrs: dict[str, Any], inputs: list[TensorInfo | None], build: BuildInfo
) -> list[dict[str, Any]]:
    dims = _tma_qgemm_dims(attrs, inputs)
    if dims is None:
        return [TmaGemmConfig().as_dict()]
    m, n, k, _ = dims
    return _configs(m, n, k, 1, _act(attrs))


@tactic(
    "QGemm",
    name="triton_tma_qgemm",
    domain="ecoinfer",
    devices=("cuda",),
    dtypes=("float16", "bfloat16"),
    configs=_tma_qgemm_configs,
    doc="X quantized in one pass, then the INT8/FP8 TMA GEMM (Hopper) with the dequantize + "
    "bias/activation/residual epilogue",
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
    dims = _tma_qgemm_dims(attrs, inputs)
    act = _act(attrs)
    if dims is None or act is None:
        return None
    _, n, _, out = dims
    if _common(attrs, inputs, n, build) is None or not _epilogue_ok(inputs, n, out, attrs):
        return None
    qtype = str(attrs.get("qtype") or "int8")
    w = _packed_weight(node, inputs, build)
    packed = pack_qweight(w) if w is not None else None
    config = TmaGemmConfig.from_dict(cfg) if cfg else None

    def run(xs: list[Tensor | None]) -> list[Tensor]:
        x, wq, x_scale, w_scale = xs[0], xs[1], xs[2], xs[3]
        assert x is not None and wq is not None and x_scale is not None and w_scale is not None
        wp = packed if packed is not None else pack_qweight(wq)
        s = x_scale.reshape(()).float()
        xq = x if x.dtype == QTYPES[qtype] else quantize(x, s, qtype, exact=True)
        y = tma_gemm(
            xq,
            wp,
            _get(xs, 4),
            _get(xs, 5),
            act=act,
            x_scale=s,
            w_scale=w_scale.float().reshape(-1),
            out_dtype=x.dtype,
            config=config,
        )
        return [y]

    return run
