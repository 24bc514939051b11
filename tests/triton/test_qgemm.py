"""Triton QGemm (ecoinfer/kernels/triton/qgemm.py, qtactics.py) under TRITON_INTERPRET=1 against
a float64 reference of the op's semantics (and the torch reference kernel when present).

Inputs sit away from rounding boundaries ((integer codes + offsets within +-0.3) * x_scale for
int8, fp8 grid values times 1 +- 1.5 % for fp8), so the codes are exactly the reference's and
the only differences are float32 epilogue rounding and the output dtype. The interpreter runs
both the int8 dot (int32 accumulator) and the fp8 dot; the compiled kernels (hardware fp8
conversion, the magic-number rounding after LLVM) are checked by the gpu test at the end,
which runs bench/gpu_qgemm_selftest.py --check in a process without the interpreter.
"""

from __future__ import annotations

import os

os.environ.setdefault("TRITON_INTERPRET", "1")  # before triton is imported (conftest too)

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402
from helpers import compiled_run  # noqa: E402

pytest.importorskip("triton")

from ecoinfer.ir.graph import Node  # noqa: E402
from ecoinfer.kernels.torch_ops.activation import apply_activation  # noqa: E402
from ecoinfer.kernels.torch_ops.registry import KernelContext, get_kernel  # noqa: E402
from ecoinfer.kernels.triton import qtactics  # noqa: E402
from ecoinfer.kernels.triton.qgemm import (  # noqa: E402
    QGemmConfig,
    qgemm,
    qgemm_configs,
    quantize,
)
from ecoinfer.tune.tactics import _TACTICS, BuildInfo, TensorInfo  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
# relative L2 error: float32 output = epilogue rounding only; half = the output rounding
TOL = {torch.float32: 1e-6, torch.float16: 2e-3, torch.bfloat16: 1.5e-2}
QDT = {"int8": torch.int8, "fp8e4m3": torch.float8_e4m3fn}
SMALL = {"BLOCK_M": 16, "BLOCK_N": 32, "BLOCK_K": 32, "num_warps": 2, "num_stages": 2}


def rel(out: torch.Tensor, ref: torch.Tensor) -> float:
    d = (out.double() - ref.double()).norm()
    n = ref.double().norm()
    return float(d / n) if n > 0 else float(d)


# ---------------------------------------------------------------------- inputs and reference
def quant_ref(x: torch.Tensor, x_scale: torch.Tensor, qtype: str) -> torch.Tensor:
    """Xq as float64 codes: X / x_scale in float32, then RNE + saturation."""
    v = x.float() / x_scale.float()
    if qtype == "int8":
        return torch.round(v).clamp(-128, 127).double()
    return v.clamp(-448, 448).to(torch.float8_e4m3fn).double()


def qgemm_ref(xs: list[torch.Tensor | None], qtype: str, act: str = "", params=()) -> torch.Tensor:  # noqa: ANN001
    x, w, x_scale, w_scale = xs[0], xs[1], xs[2], xs[3]
    bias = xs[4] if len(xs) > 4 else None
    res = xs[5] if len(xs) > 5 else None
    y = quant_ref(x, x_scale, qtype) @ w.double().t()
    y = y * (x_scale.double() * w_scale.double())
    if bias is not None:
        y = y + bias.double()
    y = apply_activation(y, act, list(params))
    return y + res.double() if res is not None else y


def make_x(shape: tuple[int, ...], x_scale: float, qtype: str, dtype: torch.dtype) -> torch.Tensor:
    if qtype == "int8":
        codes = torch.randint(-127, 128, shape).double()
        off = torch.rand(shape, dtype=torch.float64) * 0.6 - 0.3
        # a few saturating values
        flat = codes.view(-1)
        flat[:: max(1, flat.numel() // 5)] = 150.0
        return ((codes + off) * x_scale).to(dtype)
    g = (torch.randn(shape) * 60).clamp(-448, 448).to(torch.float8_e4m3fn).double()
    g.view(-1)[:: max(1, g.numel() // 5)] = 500.0  # saturates to 448
    return (g * (1 + (torch.rand(shape, dtype=torch.float64) * 0.03 - 0.015)) * x_scale).to(dtype)


def make_w(n: int, k: int, qtype: str) -> torch.Tensor:
    if qtype == "int8":
        return torch.randint(-127, 128, (n, k), dtype=torch.int8)
    return (torch.randn(n, k) * 40).clamp(-448, 448).to(torch.float8_e4m3fn)


def case(
    m: tuple[int, ...], n: int, k: int, qtype: str, dtype: torch.dtype, bias: bool, res: bool
) -> list[torch.Tensor | None]:
    x_scale = 0.037
    xs: list[torch.Tensor | None] = [
        make_x((*m, k), x_scale, qtype, dtype),
        make_w(n, k, qtype),
        torch.tensor(x_scale, dtype=torch.float32),
        (torch.rand(n) * 0.01 + 0.002).float(),
    ]
    if bias or res:
        xs.append(torch.randn(n).to(dtype) if bias else None)
    if res:
        xs.append(torch.randn(*m, n).to(dtype))
    return xs


# ---------------------------------------------------------------------- tactic plumbing
def make(
    xs: list[torch.Tensor | None],
    cfg: dict | None = None,
    weights: bool = False,
    device: str = "cpu",
    **attrs,
):  # noqa: ANN201
    names = ["x", "w", "xs", "ws", "b", "r"][: len(xs)]
    node = Node("QGemm", [n if t is not None else "" for n, t in zip(names, xs)], ["y"])
    node.attrs, node.domain = attrs, "ecoinfer"
    full = {"activation": "", "activation_params": [], "qtype": "int8", **attrs}
    infos = [
        TensorInfo(tuple(t.shape), t.dtype, weights and i == 1) if t is not None else None
        for i, t in enumerate(xs)
    ]
    build = BuildInfo(torch.device(device), "float32", {"w": xs[1]} if weights else {})  # type: ignore[dict-item]
    return node, full, qtactics.triton_qgemm(node, full, infos, cfg or {}, build)


def check(
    xs: list[torch.Tensor | None], cfg: dict | None = None, weights: bool = False, **attrs
) -> torch.Tensor:
    node, full, run = make(xs, cfg, weights, **attrs)
    assert run is not None
    (y,) = run(xs)
    qtype = full["qtype"]
    ref = qgemm_ref(xs, qtype, full["activation"], full["activation_params"])
    assert y.dtype == xs[0].dtype and y.shape == ref.shape  # type: ignore[union-attr]
    err = rel(y, ref)
    assert err <= TOL[y.dtype], f"rel error {err:.3e}"
    # the torch reference kernel of the op (ecoinfer/kernels/torch_ops), in float32
    fn = get_kernel("QGemm", "ecoinfer")
    if fn is not None:
        ctx = KernelContext(node, full, torch.device("cpu"), None, 21)  # type: ignore[arg-type]
        xs32 = [t.float() if t is not None and t.dtype in TOL else t for t in xs]
        err2 = rel(y, fn(ctx, xs32)[0])
        assert err2 <= max(TOL[y.dtype], 1e-5), f"vs torch_ops reference: {err2:.3e}"
    return y


EPILOGUES = {
    "plain": ({}, False, False),
    "bias": ({}, True, False),
    "bias_gelu": ({"activation": "Gelu", "activation_params": [0.0]}, True, False),
    "bias_relu_res": ({"activation": "Relu"}, True, True),
    "res_only": ({}, False, True),
}


@pytest.mark.parametrize("qtype", ["int8", "fp8e4m3"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
@pytest.mark.parametrize("epi", list(EPILOGUES))
def test_qgemm_epilogues(qtype: str, dtype: torch.dtype, epi: str) -> None:
    """Odd M, N, K (none a multiple of the tile), each epilogue, int8 and fp8."""
    torch.manual_seed(0)
    attrs, bias, res = EPILOGUES[epi]
    xs = case((37,), 45, 75, qtype, dtype, bias, res)
    check(xs, SMALL, qtype=qtype, **attrs)


@pytest.mark.parametrize("qtype", ["int8", "fp8e4m3"])
def test_qgemm_even_k_with_ragged_rows_and_columns(qtype: str) -> None:
    """K a whole number of K steps (the unmasked EVEN_K loads) while M and N end inside a
    tile: the wrapped-around edge rows and columns must not reach Y."""
    torch.manual_seed(6)
    xs = case((37,), 45, 128, qtype, torch.float16, True, True)
    check(xs, {**SMALL, "BLOCK_K": 32}, qtype=qtype, activation="Relu")


@pytest.mark.parametrize("qtype", ["int8", "fp8e4m3"])
def test_qgemm_3d_per_tensor_scale_broadcast_residual(qtype: str) -> None:
    """[B, S, K] X, w_scale [1], a residual [N] broadcast over rows, tanh-Gelu."""
    torch.manual_seed(1)
    xs = case((2, 19), 40, 50, qtype, torch.float32, True, False)
    xs[3] = torch.tensor([0.004])
    xs.append(torch.randn(40))
    check(xs, SMALL, qtype=qtype, activation="Gelu", activation_params=[1.0])


def test_qgemm_bfloat16_and_default_config() -> None:
    torch.manual_seed(2)
    check(case((20,), 33, 64, "int8", torch.bfloat16, True, True), activation="Relu")


@pytest.mark.parametrize("qtype", ["int8", "fp8e4m3"])
def test_qgemm_prequant_and_strided_x(qtype: str) -> None:
    """PREQUANT=1 (a separate quantize pass) and a non-contiguous X give the same codes."""
    torch.manual_seed(3)
    xs = case((37,), 45, 75, qtype, torch.float16, True, True)
    xs[0] = xs[0].t().contiguous().t()  # type: ignore[union-attr]  # column-major X
    a = check(xs, {**SMALL, "PREQUANT": 1}, qtype=qtype)
    b = check(xs, SMALL, qtype=qtype)
    assert torch.equal(a, b)


def test_qgemm_int8_rounding_is_half_even_and_saturates() -> None:
    """W = identity, scales 1: Y is the quantized X itself, ties included."""
    vals = [0.5, 1.5, 2.5, -0.5, -1.5, -2.5, 3.49, -3.51, 126.5, 127.5, 200.0, -128.5, -300.0]
    x = torch.tensor(vals + [0.0] * (32 - len(vals))).reshape(1, 32)
    one = torch.tensor(1.0)
    w = torch.eye(32, dtype=torch.int8)
    y = qgemm(x, w, one, torch.ones(1), config=QGemmConfig(16, 32, 32))
    want = torch.round(x).clamp(-128, 127)
    assert torch.equal(y, want), (y, want)
    assert torch.equal(quantize(x, one, "int8"), want.to(torch.int8))


def test_fp8_rounding_matches_torch_cast() -> None:
    """Every e4m3 value, every midpoint between neighbours (exact ties) and values beyond
    448: the interpreter path's grid rounding equals torch's RNE cast with saturation."""
    grid = torch.arange(256, dtype=torch.uint8).view(torch.float8_e4m3fn).float()
    grid = grid[torch.isfinite(grid)].unique()  # sorted
    mids = (grid[1:] + grid[:-1]) / 2
    x = torch.cat([grid, mids, torch.tensor([460.0, -1000.0, 1e-4, -3e-3, 2.0**-10])])
    one = torch.tensor(1.0)
    q = quantize(x, one, "fp8e4m3")
    want = x.clamp(-448, 448).to(torch.float8_e4m3fn)
    # by value: the float32 grid rounding turns -0 into +0, which no dot can tell apart
    assert torch.equal(q.float(), want.float())
    # the in-GEMM quantization: W = identity
    xm = x[: (x.numel() // 32) * 32].reshape(-1, 32)
    w = torch.eye(32).to(torch.float8_e4m3fn)
    y = qgemm(xm, w, one, torch.ones(1), qtype="fp8e4m3", config=QGemmConfig(16, 32, 32))
    assert torch.equal(y, xm.clamp(-448, 448).to(torch.float8_e4m3fn).float())


def test_qgemm_packed_constant_weight() -> None:
    """A constant W_q is packed at make() (K-contiguous) and used by the run function."""
    torch.manual_seed(4)
    xs = case((9,), 24, 40, "int8", torch.float32, True, False)
    xs[1] = xs[1].t().contiguous().t()  # type: ignore[union-attr]  # stored [K, N]: repacked
    check(xs, SMALL, weights=True)


def test_qgemm_every_proposed_config() -> None:
    torch.manual_seed(5)
    xs = case((37,), 45, 75, "int8", torch.float16, True, False)
    infos = [TensorInfo(tuple(t.shape), t.dtype) for t in xs if t is not None]
    node, full, _ = make(xs)
    cfgs = qtactics._qgemm_configs(node, full, infos, None)  # type: ignore[arg-type]
    assert 3 <= len(cfgs) <= 8
    assert len({tuple(sorted(c.items())) for c in cfgs}) == len(cfgs)
    for cfg in cfgs:
        assert cfg["BLOCK_M"] <= 64 and cfg["BLOCK_N"] <= 64 and cfg["BLOCK_K"] <= 128
        assert cfg["BLOCK_K"] >= 32  # 8-bit dots need K >= 32
        check(xs, cfg, activation="Relu")


def test_qgemm_configs_sized_for_hopper() -> None:
    big = qgemm_configs(8192, 3072, 768, torch.float16, "int8")
    assert 4 <= len(big) <= 8
    assert big[0].BLOCK_M * big[0].BLOCK_N >= 128 * 128
    assert all(c.BLOCK_K >= 64 for c in big)
    assert any(c.PREQUANT for c in big) and not all(c.PREQUANT for c in big)
    for c in big:  # the pipelined stages fit Hopper's shared memory
        xb = 1 if c.PREQUANT else 2
        assert c.num_stages * (c.BLOCK_M * c.BLOCK_K * xb + c.BLOCK_K * c.BLOCK_N) <= 227 * 1024
    assert all(c.FP8_FAST_ACC == 0 for c in qgemm_configs(512, 512, 512, torch.float32))
    small = qgemm_configs(8, 64, 64, torch.float16)
    assert all(c.BLOCK_M == 16 and not c.PREQUANT for c in small)
    assert QGemmConfig.from_dict(big[0].as_dict()) == big[0]


def test_qgemm_empty_rows() -> None:
    w = torch.ones(3, 32, dtype=torch.int8)
    y = qgemm(torch.randn(0, 32), w, torch.tensor(1.0), torch.ones(3))
    assert y.shape == (0, 3)


def test_qgemm_declines(monkeypatch: pytest.MonkeyPatch) -> None:
    torch.manual_seed(6)
    xs = case((4,), 8, 32, "int8", torch.float32, False, False)
    assert make(xs)[2] is not None
    assert make(xs, qtype="fp8e4m3")[2] is None  # W_q is int8
    assert make(xs, qtype="int4")[2] is None
    assert make(xs, activation="Mish")[2] is None
    assert make([xs[0].long(), *xs[1:]])[2] is None  # type: ignore[union-attr]
    assert make([*xs[:2], torch.ones(2), xs[3]])[2] is None  # x_scale not a scalar
    assert make([*xs[:3], torch.ones(3)])[2] is None  # w_scale neither [N] nor [1]
    assert make([*xs[:3], xs[3].double()])[2] is None  # type: ignore[union-attr]
    assert make([*xs, torch.randn(7)])[2] is None  # bias of the wrong size
    assert make([*xs, None, torch.randn(3, 4, 8)])[2] is None  # residual grows Y
    assert make([xs[0], torch.ones(8, 31, dtype=torch.int8), *xs[2:]])[2] is None  # K
    # fp8 needs compute capability 8.9 on a GPU
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda d=None: (8, 0))
    assert not qtactics.fp8_supported("cuda")
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda d=None: (9, 0))
    assert qtactics.fp8_supported("cuda")


def test_qgemm_declines_cpu_without_interpreter(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    assert make(case((4,), 8, 32, "int8", torch.float32, False, False))[2] is None


def test_qtactics_registered() -> None:
    for op, name in (("QGemm", "triton_qgemm"), ("QConv", "triton_qconv")):
        spec = {t.name: t for t in _TACTICS[("ecoinfer", op)]}[name]
        assert spec.devices == ("cuda",)
        assert set(spec.dtypes) == {"float16", "bfloat16", "float32"}
        assert spec.configs is not None


# ---------------------------------------------------------------------- GPU (compiled)
@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_qgemm_qconv_compiled() -> None:
    """The compiled kernels (this process runs the interpreter): the self-test's correctness
    checks (rounding ties, fp8 casts, every proposed config, QConv) in a fresh process."""
    compiled_run([str(ROOT / "bench" / "gpu_qgemm_selftest.py"), "--check"])


def test_qgemm_float32_x_keeps_k_steps_small() -> None:
    """float32 X: no K step over 64 (128 miscompiled / summed too loosely on sm_90)."""
    for qtype in ("int8", "fp8e4m3"):
        cfgs = qgemm_configs(1000, 1000, 1000, torch.float32, qtype)
        assert cfgs and all(c.BLOCK_K <= 64 for c in cfgs)
        assert any(c.BLOCK_K == 128 for c in qgemm_configs(1000, 1000, 1000, torch.float16, qtype))


def test_int8_float32_x_in_kernel_quantization_declined_on_gpus() -> None:
    from ecoinfer.kernels.triton.qgemm import qgemm_compiled_ok

    assert not qgemm_compiled_ok("int8", torch.float32, False, "cuda")
    assert qgemm_compiled_ok("int8", torch.float32, True, "cuda")  # PREQUANT
    assert qgemm_compiled_ok("int8", torch.float16, False, "cuda")
    assert qgemm_compiled_ok("fp8e4m3", torch.float32, False, "cuda")
    assert qgemm_compiled_ok("int8", torch.float32, False, "cpu")
