"""Triton's one-pass quantize and epilogue around the library GEMMs (torch._int_mm,
torch._scaled_mm), under the interpreter: the {"triton": 1} configs of the int8_int_mm and
fp8_scaled_mm tactics against the reference kernel, and scaled_epilogue against torch."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from ecoinfer.engine.fingerprint import TOLERANCE
from ecoinfer.ir.graph import Node
from ecoinfer.ir.ops.registry import get_schema
from ecoinfer.kernels.triton.qepilogue import scaled_epilogue
from ecoinfer.tune import quant_tactics
from ecoinfer.tune.autotune import compare_outputs, reference_runfn
from ecoinfer.tune.tactics import BuildInfo, TensorInfo

_PREC = {torch.float32: "float32", torch.bfloat16: "bfloat16", torch.float16: "float16"}


def _inputs(m_shape, k, n, qtype, dtype, per_tensor=False, bias=True, res=True):  # noqa: ANN001, ANN202
    g = torch.Generator().manual_seed(3)
    x = (torch.randn(*m_shape, k, generator=g) * 2).to(dtype)
    if qtype == "int8":
        w = torch.randint(-127, 128, (n, k), generator=g, dtype=torch.int8)
    else:
        w = (torch.randn(n, k, generator=g) * 100).clamp(-448, 448).to(torch.float8_e4m3fn)
    ws = torch.rand(1 if per_tensor else n, generator=g) * 0.01 + 1e-3
    xs = torch.tensor(3.0 / (127 if qtype == "int8" else 448))  # some values saturate
    b = torch.randn(n, generator=g).to(dtype) if bias else None
    r = torch.randn(*m_shape, n, generator=g).to(dtype) if res else None
    return [x, w, xs, ws, b, r]


def _check(maker: Any, xs: list, attrs: dict, cfg: dict) -> None:  # noqa: ANN001
    names = [f"in{i}" if x is not None else "" for i, x in enumerate(xs)]
    node = Node("QGemm", names, ["y"], dict(attrs), "qgemm0", "ecoinfer")
    full = {**get_schema("QGemm", "ecoinfer").attrs, **attrs}
    weights = {names[i]: xs[i] for i in (1, 2, 3)}
    prec = _PREC[xs[0].dtype]
    build = BuildInfo(torch.device("cpu"), prec, weights)
    infos = [
        None if x is None else TensorInfo(tuple(x.shape), x.dtype, names[i] in weights)
        for i, x in enumerate(xs)
    ]
    run = maker(node, full, infos, cfg, build)
    assert run is not None, cfg
    ok, err, why = compare_outputs(run(xs), reference_runfn(node, full, build.device)(xs), [True], TOLERANCE[prec])  # fmt: skip
    assert ok, (cfg, why)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("act", ["", "Gelu", "Relu"])
def test_int8_int_mm_triton_config(dtype: torch.dtype, act: str) -> None:
    for m_shape, res in (((2, 24), True), ((5,), False), ((3, 4), True)):
        xs = _inputs(m_shape, 32, 24, "int8", dtype, res=res)
        attrs = {"qtype": "int8", "activation": act, "activation_params": [0.0] if act else []}
        _check(quant_tactics._make_int_mm, xs, attrs, {"triton": 1})


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("per_tensor", [False, True])
@pytest.mark.parametrize("act", ["", "Gelu"])
def test_fp8_scaled_mm_triton_config(dtype: torch.dtype, per_tensor: bool, act: str) -> None:
    xs = _inputs((3, 20), 64, 48, "fp8e4m3", dtype, per_tensor=per_tensor)
    attrs = {"qtype": "fp8e4m3", "activation": act, "activation_params": [0.0] if act else []}
    _check(quant_tactics._make_scaled_mm, xs, attrs, {"scales": "tensor", "triton": 1})


def test_scaled_epilogue_against_torch() -> None:
    g = torch.Generator().manual_seed(0)
    acc = torch.randint(-5000, 5000, (37, 45), generator=g, dtype=torch.int32)
    scale = torch.rand(45, generator=g) * 1e-3
    bias = torch.randn(45, generator=g).half()
    res = torch.randn(45, generator=g).half()  # broadcast over rows
    y = scaled_epilogue(acc, scale, bias, res, "Relu", [], torch.float16, (37, 45))
    want = (torch.relu(acc.float() * scale + bias.float()) + res.float()).half()
    torch.testing.assert_close(y, want, rtol=1e-3, atol=1e-3)
    # a scalar scale, no bias, a 3-D output, no activation
    y3 = scaled_epilogue(acc.float(), torch.tensor(0.5), None, None, "", [], torch.float32, (1, 37, 45))  # fmt: skip
    torch.testing.assert_close(y3, (acc.float() * 0.5).reshape(1, 37, 45))
    # no scale at all (a half GEMM output that only needs its activation)
    h = torch.randn(8, 16, generator=g).half()
    y4 = scaled_epilogue(h, None, None, None, "Gelu", [0.0], torch.float16, (8, 16))
    torch.testing.assert_close(y4, torch.nn.functional.gelu(h.float()).half(), rtol=1e-3, atol=1e-3)
