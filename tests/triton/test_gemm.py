"""Triton FusedGemm (ecoinfer/kernels/triton/gemm.py) under TRITON_INTERPRET=1 against the
torch reference kernel, computed in float32 from the same (rounded) inputs."""

from __future__ import annotations

import os

os.environ.setdefault("TRITON_INTERPRET", "1")  # before triton is imported (conftest too)

import pytest  # noqa: E402
import torch  # noqa: E402

pytest.importorskip("triton")

from ecoinfer.ir.graph import Node  # noqa: E402
from ecoinfer.ir.ops import get_schema  # noqa: E402
from ecoinfer.kernels.torch_ops.registry import KernelContext, get_kernel  # noqa: E402
from ecoinfer.kernels.triton import gemm_tactics  # noqa: E402
from ecoinfer.kernels.triton.gemm import GemmConfig, fused_gemm, gemm_configs  # noqa: E402
from ecoinfer.tune.tactics import _TACTICS, BuildInfo, TensorInfo  # noqa: E402

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
# relative L2 error against the fp32 reference; float32 is the builder's own 1e-5
TOL = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1.5e-2}
PRECISION = {torch.float32: "float32", torch.float16: "float16", torch.bfloat16: "bfloat16"}

ACTIVATIONS = [
    ("", []),
    ("Relu", []),
    ("Clip", [-0.5, 0.7]),
    ("Clip", [float("nan"), 1.0]),
    ("Sigmoid", []),
    ("HardSigmoid", [0.2, 0.5]),
    ("HardSwish", []),
    ("Swish", [1.0]),
    ("Swish", [1.702]),
    ("Gelu", [0.0]),
    ("Gelu", [1.0]),
    ("LeakyRelu", [0.1]),
    ("Tanh", []),
    ("Elu", [1.0]),
]


def rel(out: torch.Tensor, ref: torch.Tensor) -> float:
    d = (out.double() - ref.double()).norm()
    n = ref.double().norm()
    return float(d / n) if n > 0 else float(d)


def reference(node: Node, attrs: dict, xs: list[torch.Tensor | None]) -> torch.Tensor:
    fn = get_kernel(node.op_type, node.domain)
    assert fn is not None
    ctx = KernelContext(node, attrs, torch.device("cpu"), None, 21)  # type: ignore[arg-type]
    xs32 = [x.float() if x is not None and x.is_floating_point() else x for x in xs]
    return fn(ctx, xs32)[0]


def make_gemm(
    xs: list[torch.Tensor | None], cfg: dict | None = None, precision: str | None = None, **attrs
):  # noqa: ANN201
    node = Node(
        "FusedGemm",
        ["a", "b", "bias" if len(xs) > 2 and xs[2] is not None else "", "r"][: len(xs)],
        ["y"],
        attrs,
        name="gemm",
        domain="ecoinfer",
    )
    full = {**get_schema("FusedGemm", "ecoinfer").attrs, **attrs}
    infos = [TensorInfo(tuple(x.shape), x.dtype) if x is not None else None for x in xs]
    build = BuildInfo(torch.device("cpu"), precision or PRECISION.get(xs[0].dtype, "float32"))  # type: ignore[union-attr]
    run = gemm_tactics.triton_gemm(node, full, infos, cfg or {}, build)
    return node, full, run


def check_gemm(xs: list[torch.Tensor | None], cfg: dict | None = None, **attrs) -> None:
    node, full, run = make_gemm(xs, cfg, **attrs)
    assert run is not None
    (y,) = run(xs)
    ref = reference(node, full, xs)
    assert y.dtype == xs[0].dtype  # type: ignore[union-attr]
    assert y.shape == ref.shape
    err = rel(y, ref)
    assert err <= TOL[y.dtype], f"rel error {err:.3e}"


def _t(*shape: int, dtype: torch.dtype) -> torch.Tensor:
    return torch.randn(*shape).to(dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("act", ACTIVATIONS, ids=lambda a: f"{a[0] or 'none'}{a[1]}")
def test_gemm_bias_activation(dtype: torch.dtype, act: tuple[str, list[float]]) -> None:
    torch.manual_seed(0)
    a, b, bias = _t(37, 29, dtype=dtype), _t(29, 45, dtype=dtype), _t(45, dtype=dtype)
    check_gemm([a, b, bias], activation=act[0], activation_params=act[1])


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("trans_b", [0, 1])
def test_gemm_full_epilogue(dtype: torch.dtype, trans_b: int) -> None:
    """The transformer FFN shape: 3-D A, transposed weight, gelu(A@W + b) + skip."""
    torch.manual_seed(1)
    a = _t(2, 19, 29, dtype=dtype)
    b = _t(45, 29, dtype=dtype) if trans_b else _t(29, 45, dtype=dtype)
    bias, res = _t(45, dtype=dtype), _t(2, 19, 45, dtype=dtype)
    check_gemm([a, b, bias, res], trans_b=trans_b, activation="Gelu", activation_params=[0.0])


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_gemm_plain_and_residual_only(dtype: torch.dtype) -> None:
    torch.manual_seed(2)
    a, b = _t(37, 29, dtype=dtype), _t(29, 45, dtype=dtype)
    check_gemm([a, b])
    # residual without bias (the bias slot is the empty name), broadcast over rows
    check_gemm([a, b, None, _t(45, dtype=dtype)])
    check_gemm([a, b, None, _t(37, 1, dtype=dtype)])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
def test_gemm_even_k_with_ragged_rows_and_columns(dtype: torch.dtype) -> None:
    """K a whole number of K steps (unmasked EVEN_K loads), M and N ending inside a tile, a
    tile larger than M: edge rows/columns are read wrapped around and never stored."""
    torch.manual_seed(7)
    a, b = _t(2, 19, 64, dtype=dtype), _t(45, 64, dtype=dtype)
    bias, res = _t(45, dtype=dtype), _t(2, 19, 45, dtype=dtype)
    cfg = {
        "BLOCK_M": 64,
        "BLOCK_N": 32,
        "BLOCK_K": 32,
        "GROUP_M": 8,
        "num_warps": 4,
        "num_stages": 2,
    }
    check_gemm([a, b, bias, res], cfg, trans_b=1, activation="Gelu", activation_params=[0.0])


def test_gemm_vector_a_and_strided_inputs() -> None:
    torch.manual_seed(3)
    # 1-D A drops its row dim (MatMul semantics)
    check_gemm([torch.randn(29), torch.randn(29, 45), torch.randn(45)])
    # non-contiguous A (a transposed view) and B (a column slice) read through strides
    a = torch.randn(29, 37).t()
    b = torch.randn(29, 90)[:, ::2]
    check_gemm([a, b, torch.randn(45)], activation="Relu")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
def test_gemm_every_proposed_config(dtype: torch.dtype) -> None:
    """Each configuration the autotuner would time computes the same result."""
    torch.manual_seed(4)
    a, b, bias = _t(37, 29, dtype=dtype), _t(45, 29, dtype=dtype), _t(45, dtype=dtype)
    node, full, _ = make_gemm([a, b, bias], trans_b=1)
    cfgs = gemm_tactics._gemm_configs(node, full, [TensorInfo(a.shape, dtype)] * 2, None)  # type: ignore[arg-type]
    assert 3 <= len(cfgs) <= 10
    assert len({tuple(sorted(c.items())) for c in cfgs}) == len(cfgs)
    for cfg in cfgs:
        assert cfg["BLOCK_M"] <= 64 and cfg["BLOCK_N"] <= 64 and cfg["BLOCK_K"] <= 32  # sized
        check_gemm([a, b, bias], cfg=cfg, trans_b=1, activation="Relu")


def test_gemm_configs_scale_with_problem() -> None:
    big = gemm_configs(8192, 3072, 768, torch.float16)
    assert 4 <= len(big) <= 10
    assert max(c.BLOCK_M * c.BLOCK_N for c in big) >= 128 * 128
    small = gemm_configs(16, 64, 64, torch.float16)
    assert all(c.BLOCK_M == 16 for c in small)
    assert GemmConfig.from_dict(big[0].as_dict()) == big[0]


def test_gemm_tf32_precision_uses_tf32_dot() -> None:
    """precision tf32: float32 inputs go through the TF32 path (the interpreter computes it
    in float32, so this only checks the plumbing and the result)."""
    torch.manual_seed(5)
    a, b = torch.randn(37, 29), torch.randn(29, 45)
    node, full, run = make_gemm([a, b], precision="tf32")
    assert run is not None
    assert rel(run([a, b])[0], reference(node, full, [a, b])) <= 1e-3


def test_gemm_empty_reduction_and_rows() -> None:
    a, b, bias = torch.randn(5, 0), torch.randn(0, 7), torch.randn(7)
    # K = 0: the epilogue on a zero product (the torch reference cannot reshape [5, 0])
    y = fused_gemm(a, b, bias, activation="Sigmoid")
    assert torch.allclose(y, torch.sigmoid(bias).expand(5, 7))
    y = fused_gemm(torch.randn(0, 4), torch.randn(4, 3))
    assert y.shape == (0, 3)


def test_gemm_declines() -> None:
    a, b = torch.randn(4, 8), torch.randn(8, 5)
    # integer GEMM, unknown activation, a residual that would grow the output
    assert make_gemm([a.long(), b.long()])[2] is None
    assert make_gemm([a, b], activation="Mish")[2] is None
    assert make_gemm([a, b, None, torch.randn(3, 4, 5)])[2] is None
    assert make_gemm([a, torch.randn(5, 8)], trans_b=0)[2] is None  # K mismatch


def test_gemm_tactic_registered() -> None:
    spec = {t.name: t for t in _TACTICS[("ecoinfer", "FusedGemm")]}["triton_gemm"]
    assert spec.devices == ("cuda",)
    assert set(spec.dtypes) == {"float16", "bfloat16", "float32"}
    assert spec.configs is not None


def test_triton_tactics_decline_cpu_without_interpreter(monkeypatch: pytest.MonkeyPatch) -> None:
    """CPU tensors only run under the interpreter: a CPU build outside the tests declines."""
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    assert make_gemm([torch.randn(4, 8), torch.randn(8, 5)])[2] is None
