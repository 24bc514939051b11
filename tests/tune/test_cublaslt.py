"""kernels/cublaslt.py (cuBLASLt FP8 GEMMs through ctypes) and quant_tactics' cublaslt_fp8.

The library exists only with a CUDA GPU, so the arithmetic is checked under the gpu mark; on
the CPU the tactic must say it does not apply (and never load anything)."""

from __future__ import annotations

import pytest
import torch

from ecoinfer.ir.graph import Node
from ecoinfer.ir.ops.registry import get_schema
from ecoinfer.kernels import cublaslt
from ecoinfer.tune import quant_tactics
from ecoinfer.tune.tactics import BuildInfo, TensorInfo, tactics_for

F8 = torch.float8_e4m3fn


def _node(inputs: int, act: str = "") -> tuple[Node, dict]:
    names = ["x", "w", "xs", "ws", "b", "", "ys"][:inputs]
    attrs = {**get_schema("QGemm", "ecoinfer").attrs, "qtype": "fp8e4m3", "activation": act,
             "out_dtype": "float16"}  # fmt: skip
    return Node("QGemm", names, ["y"], attrs, "q", "ecoinfer"), attrs


def test_registered_for_gpu_builds_only() -> None:
    gpu = {t.name for t in tactics_for("QGemm", "ecoinfer", "cuda", "float16")}
    cpu = {t.name for t in tactics_for("QGemm", "ecoinfer", "cpu", "float16")}
    assert "cublaslt_fp8" in gpu and "cublaslt_fp8" not in cpu


def test_not_applicable_off_cuda() -> None:
    node, attrs = _node(5)
    infos = [TensorInfo((64, 32), F8), TensorInfo((48, 32), F8, True),
             TensorInfo((), torch.float32, True), TensorInfo((1,), torch.float32, True),
             TensorInfo((48,), torch.float16, True)]  # fmt: skip
    build = BuildInfo(torch.device("cpu"), "float16", {})
    assert quant_tactics._make_cublaslt(node, attrs, infos, {"algo": 0}, build) is None
    if not torch.cuda.is_available():  # nothing was looked for, let alone loaded
        assert cublaslt._lib.cache_info().currsize == 0
        assert not cublaslt.available()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("act", ["", "Relu", "Gelu"])
@pytest.mark.parametrize("codes_out", [False, True])
def test_fp8_gemm_against_float32(act: str, codes_out: bool) -> None:
    if not cublaslt.available():
        pytest.skip("no FP8 cuBLASLt here (compute capability < 8.9)")
    torch.manual_seed(0)
    m, n, k = 256, 192, 128
    x = torch.randn(m, k, device="cuda")
    w = torch.randn(n, k, device="cuda") / k**0.5
    b = (torch.randn(n, device="cuda") * 0.1).half()
    xs = (x.abs().amax() / 448).reshape(1)
    ws = (w.abs().amax() / 448).reshape(1)
    xq, wq = (x / xs).to(F8), (w / ws).to(F8)
    ref = (xq.float() * xs) @ (wq.float() * ws).t() + b.float()
    ref = {"": ref, "Relu": torch.relu(ref), "Gelu": torch.nn.functional.gelu(ref)}[act]
    if codes_out:
        ys = (ref.abs().amax() / 448).reshape(1)
        y = cublaslt.fp8_gemm(xq, wq, xs, ws, b, act, F8, 1.0 / ys).float() * ys
        tol = 0.04  # one E4M3 rounding: 2^-4 relative at most, about 0.027 in L2
    else:
        y = cublaslt.fp8_gemm(xq, wq, xs, ws, b, act, torch.float16).float()
        tol = 2e-3  # fast accumulation and the float16 rounding (cuBLASLt's GELU: tanh form)
    err = float((y - ref).norm() / ref.norm())
    assert err < tol, err
    assert cublaslt.saturates(0)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_tactic_in_a_cuda_graph() -> None:
    """The tactic as the tuner and the runtime run it: made once, then captured in a CUDA
    graph and replayed on new inputs (pointers set per call are baked into the capture)."""
    if not cublaslt.available():
        pytest.skip("no FP8 cuBLASLt here")
    torch.manual_seed(1)
    m, n, k = 128, 64, 64
    xq = (torch.randn(m, k, device="cuda") * 50).to(F8)
    wq = (torch.randn(n, k, device="cuda") * 50).to(F8)
    xs = torch.tensor(0.01, device="cuda")
    ws = torch.tensor([0.02], device="cuda")
    b = torch.randn(n, device="cuda").half()
    node, attrs = _node(5, "Gelu")
    infos = [TensorInfo((m, k), F8), TensorInfo((n, k), F8, True), TensorInfo((), torch.float32, True),
             TensorInfo((1,), torch.float32, True), TensorInfo((n,), torch.float16, True)]  # fmt: skip
    build = BuildInfo(torch.device("cuda"), "float16", {"w": wq, "xs": xs, "ws": ws, "b": b})
    run = quant_tactics._make_cublaslt(node, attrs, infos, {"algo": 0}, build)
    assert run is not None
    static_x = xq.clone()
    torch.cuda.synchronize()
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        (y,) = run([static_x, wq, xs, ws, b])
    new = (torch.randn(m, k, device="cuda") * 50).to(F8)
    static_x.copy_(new)
    g.replay()
    torch.cuda.synchronize()
    ref = torch.nn.functional.gelu((new.float() * xs) @ (wq.float() * ws).t() + b.float())
    assert float((y.float() - ref).norm() / ref.norm()) < 2e-3
