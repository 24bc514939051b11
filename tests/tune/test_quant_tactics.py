"""Tactics of ecoinfer.QGemm / QConv (ecoinfer/tune/quant_tactics.py) against the reference
kernels. torch._int_mm and torch._scaled_mm run on the CPU in this torch, so every tactic's
arithmetic is checked here, with the GPU's shape rules (K, N multiples of 16 for FP8); the
cuBLASLt paths themselves run under the gpu mark."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from ecoinfer.engine.fingerprint import TOLERANCE
from ecoinfer.ir.graph import Node
from ecoinfer.ir.ops.registry import get_schema
from ecoinfer.kernels.torch_ops.fused_quant import qtype_dtype
from ecoinfer.tune import quant_tactics
from ecoinfer.tune.autotune import compare_outputs, reference_runfn
from ecoinfer.tune.tactics import BuildInfo, TensorInfo, all_tactics, tactics_for

_PREC = {torch.float32: "float32", torch.bfloat16: "bfloat16", torch.float16: "float16"}
_MAKERS = {
    "int8_int_mm": quant_tactics._make_int_mm,
    "fp8_scaled_mm": quant_tactics._make_scaled_mm,
    "dequant": quant_tactics._make_dequant_gemm,
}


def _qgemm_inputs(
    m_shape: tuple[int, ...],
    k: int,
    n: int,
    qtype: str,
    dtype: torch.dtype,
    bias: bool = True,
    residual: bool = True,
    per_tensor: bool = False,
    seed: int = 0,
) -> list[torch.Tensor | None]:
    g = torch.Generator().manual_seed(seed)
    x = (torch.randn(*m_shape, k, generator=g) * 2).to(dtype)
    wf = torch.randn(n, k, generator=g)
    if qtype == "int8":
        w = torch.randint(-127, 128, (n, k), generator=g, dtype=torch.int8)
    else:
        w = (wf * 100).clamp(-448, 448).to(torch.float8_e4m3fn)
    ws = torch.rand(1 if per_tensor else n, generator=g) * 0.01 + 1e-3
    xs = torch.tensor(3.0 / (127 if qtype == "int8" else 448))  # some values saturate
    b = torch.randn(n, generator=g).to(dtype) if bias else None
    r = torch.randn(*m_shape, n, generator=g).to(dtype) if residual else None
    return [x, w, xs, ws, b, r]


def _run(
    op: str,
    maker: Any,
    xs: list[torch.Tensor | None],
    attrs: dict[str, Any],
    cfg: dict | None = None,
    device: str = "cpu",
) -> tuple[bool, float | None, str]:
    """Make the tactic, run it, compare with the reference kernel: (ok, error, reason)."""
    names = [f"in{i}" if x is not None else "" for i, x in enumerate(xs)]
    while names and not names[-1]:
        names.pop()
    node = Node(op, names, ["y"], dict(attrs), f"{op.lower()}0", "ecoinfer")
    full = {**get_schema(op, "ecoinfer").attrs, **attrs}
    xs = [None if x is None else x.to(device) for x in xs]
    weights = {names[i]: xs[i] for i in (1, 2, 3) if xs[i] is not None}
    # (X as codes: the float dtype out_dtype names)
    prec = _PREC.get(xs[0].dtype) or str(attrs["out_dtype"])  # type: ignore[union-attr]
    build = BuildInfo(torch.device(device), prec, weights)
    infos = [
        None if x is None else TensorInfo(tuple(x.shape), x.dtype, names[i] in weights)
        for i, x in enumerate(xs)
    ]
    fn = maker(node, full, infos, dict(cfg or {}), build)
    if fn is None:
        return False, None, "n/a"
    ref = reference_runfn(node, full, build.device)(xs)
    snap = [None if x is None else x.clone() for x in xs]
    out = fn(xs)
    for x, s in zip(xs, snap):
        assert x is None or torch.equal(
            x.reshape(-1).view(torch.uint8), s.reshape(-1).view(torch.uint8)
        )
    return compare_outputs(out, ref, [True], TOLERANCE[prec])


def test_registered() -> None:
    names = {t.name for t in all_tactics()[("ecoinfer", "QGemm")]}
    assert {"int8_int_mm", "fp8_scaled_mm", "dequant_cublas", "dequant_mm"} <= names
    cpu = {t.name for t in tactics_for("QGemm", "ecoinfer", "cpu", "float32")}
    assert "int8_int_mm" in cpu and "fp8_scaled_mm" not in cpu  # FP8 is a GPU build only
    assert {t.name for t in tactics_for("QConv", "ecoinfer", "cpu", "float32")} == {"dequant_conv"}


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("act", ["", "Gelu", "Relu"])
def test_int8_int_mm_matches_reference(dtype: torch.dtype, act: str) -> None:
    for m_shape in ((2, 24), (5,), ()):  # 3-D, a small M (the GPU pads it), 1-D X
        xs = _qgemm_inputs(m_shape, 32, 24, "int8", dtype, residual=bool(m_shape))
        attrs = {"qtype": "int8", "activation": act, "activation_params": [0.0] if act else []}
        ok, err, why = _run("QGemm", _MAKERS["int8_int_mm"], xs, attrs)
        assert ok, (m_shape, why)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("per_tensor", [False, True])
def test_fp8_scaled_mm_matches_reference(dtype: torch.dtype, per_tensor: bool) -> None:
    xs = _qgemm_inputs((3, 20), 64, 48, "fp8e4m3", dtype, per_tensor=per_tensor)
    attrs = {"qtype": "fp8e4m3", "activation": "Relu"}
    configs = quant_tactics._fp8_configs(
        Node("QGemm", [], []),
        attrs,
        [TensorInfo(tuple(x.shape), x.dtype) for x in xs],
        None,  # type: ignore[arg-type]
    )
    assert ({"scales": "rowwise"} in configs) == (dtype == torch.bfloat16 and not per_tensor)
    assert {"scales": "tensor", "triton": 1} in configs
    for cfg in configs:
        ok, err, why = _run("QGemm", _MAKERS["fp8_scaled_mm"], xs, attrs, cfg)
        if cfg.get("triton") and why == "n/a":
            continue  # Triton's kernels need a GPU or the interpreter (tests/triton runs them)
        assert ok, (cfg, why)
    # cuBLASLt FP8 wants K and N multiples of 16: not applicable otherwise
    odd = _qgemm_inputs((4,), 40, 48, "fp8e4m3", dtype)
    assert _run("QGemm", _MAKERS["fp8_scaled_mm"], odd, attrs)[2] == "n/a"


@pytest.mark.parametrize("qtype", ["int8", "fp8e4m3"])
def test_library_gemms_take_codes(qtype: str) -> None:
    """A linked QGemm's X holds codes (out_dtype names Y's float dtype): the library tactics
    use them as they are, with fast accumulation among the FP8 configurations; the dequantize
    fallback, which needs float X, is not applicable."""
    xs = _qgemm_inputs((3, 20), 64, 48, qtype, torch.float16, per_tensor=qtype != "int8")
    x = xs[0]
    assert x is not None
    qdt = qtype_dtype(qtype, "t")
    s = xs[2]
    assert s is not None
    if qtype == "int8":
        codes = torch.round(x.float() / s).clamp(-128, 127).to(qdt)
    else:
        codes = (x.float() / s).clamp(-448, 448).to(qdt)
    xs = [codes, *xs[1:]]
    attrs = {"qtype": qtype, "activation": "Relu", "out_dtype": "float16"}
    maker = _MAKERS["int8_int_mm" if qtype == "int8" else "fp8_scaled_mm"]
    if qtype == "int8":
        configs = quant_tactics._library_configs(Node("QGemm", [], []), attrs, [], None)  # type: ignore[arg-type]
    else:
        infos = [None if t is None else TensorInfo(tuple(t.shape), t.dtype) for t in xs]
        configs = quant_tactics._fp8_configs(Node("QGemm", [], []), attrs, infos, None)  # type: ignore[arg-type]
        assert {"scales": "tensor", "fast": 1} in configs
    ran = 0
    for cfg in configs:
        ok, err, why = _run("QGemm", maker, xs, attrs, cfg)
        if cfg.get("triton") and why == "n/a":
            continue
        assert ok, (cfg, why)
        ran += 1
    assert ran >= 1
    assert _run("QGemm", _MAKERS["dequant"], xs, attrs)[2] == "n/a"


@pytest.mark.parametrize("qtype", ["int8", "fp8e4m3"])
def test_dequant_gemm_matches_reference(qtype: str) -> None:
    xs = _qgemm_inputs((2, 7), 24, 16, qtype, torch.float32)
    ok, _, why = _run("QGemm", _MAKERS["dequant"], xs, {"qtype": qtype, "activation": "Tanh"})
    assert ok, why
    # the other tactic kind is not applicable to the other qtype
    other = "fp8_scaled_mm" if qtype == "int8" else "int8_int_mm"
    assert _run("QGemm", _MAKERS[other], xs, {"qtype": qtype})[2] == "n/a"


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
@pytest.mark.parametrize("qtype", ["int8", "fp8e4m3"])
def test_dequant_conv_matches_reference(layout: str, qtype: str) -> None:
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, 6, 9, 9, generator=g)
    w = torch.randn(8, 6, 3, 3, generator=g) * 50
    z = torch.randn(2, 8, 4, 4, generator=g)
    if layout == "NHWC":
        x, w, z = x.permute(0, 2, 3, 1), w.permute(0, 2, 3, 1), z.permute(0, 2, 3, 1)
    q = qtype_dtype(qtype)
    wq = w.round().clamp(-127, 127).to(q) if q == torch.int8 else w.clamp(-448, 448).to(q)
    xs = [x.contiguous(), wq.contiguous(), torch.tensor(0.02), torch.rand(8, generator=g) * 0.01,
          torch.randn(8, generator=g), z.contiguous()]  # fmt: skip
    attrs = {"qtype": qtype, "layout": layout, "kernel_shape": [3, 3], "pads": [1, 1, 0, 0],
             "strides": [2, 2], "activation": "Relu", "post_activation": "Relu"}  # fmt: skip
    ok, _, why = _run("QConv", quant_tactics._make_dequant_conv, xs, attrs)
    assert ok, why


# ------------------------------------------------------------------------------ on the GPU
@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_gpu_tactics(dtype: torch.dtype) -> None:
    for m_shape in ((4, 32), (5,)):  # M = 128 and M = 5 (int8: padded to 17 rows)
        xs = _qgemm_inputs(m_shape, 64, 48, "int8", dtype)
        for name in ("int8_int_mm", "dequant"):
            ok, _, why = _run("QGemm", _MAKERS[name], xs, {"qtype": "int8"}, device="cuda")
            assert ok, (name, m_shape, why)
    if torch.cuda.get_device_capability() >= (8, 9):
        xs = _qgemm_inputs((4, 32), 64, 48, "fp8e4m3", dtype)
        ws = TensorInfo(tuple(xs[3].shape), torch.float32)  # type: ignore[union-attr]
        x = TensorInfo(tuple(xs[0].shape), dtype)  # type: ignore[union-attr]
        attrs = {"qtype": "fp8e4m3", "activation": "Gelu", "activation_params": [1.0]}
        for cfg in quant_tactics._fp8_configs(
            Node("QGemm", [], []), attrs, [x, None, None, ws], None
        ):  # type: ignore[arg-type]
            ok, err, why = _run("QGemm", _MAKERS["fp8_scaled_mm"], xs, attrs, cfg, "cuda")
            # FP8 tensor cores accumulate with fewer bits than fp32: fp32 layers may disagree
            # with the emulating reference beyond 1e-5 and then lose to other tactics
            assert ok or (dtype == torch.float32 and err is not None and err < 1e-3), (cfg, why)
