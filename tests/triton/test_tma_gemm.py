"""The TMA GEMM (ecoinfer/kernels/triton/tma_gemm.py, tma_tactics.py) under TRITON_INTERPRET=1:
half GEMMs against float64, 8-bit GEMMs on codes against test_qgemm's reference, the
requantizing epilogue against the one-pass quantize kernel, persistence, edges and K tails
(zero-filled by the descriptor), and the tactics' registration and declines."""

from __future__ import annotations

import os

os.environ.setdefault("TRITON_INTERPRET", "1")  # before triton is imported (conftest too)

import pytest  # noqa: E402
import torch  # noqa: E402

pytest.importorskip("triton")
pytest.importorskip("triton.tools.tensor_descriptor")

from helpers import compiled_run  # noqa: E402
from test_qgemm import case, make_w, qgemm_ref, quant_ref, rel  # noqa: E402

from ecoinfer.ir.graph import Node  # noqa: E402
from ecoinfer.ir.ops import get_schema  # noqa: E402
from ecoinfer.kernels.torch_ops.activation import apply_activation  # noqa: E402
from ecoinfer.kernels.torch_ops.registry import KernelContext, get_kernel  # noqa: E402
from ecoinfer.kernels.triton import tma_tactics  # noqa: E402
from ecoinfer.kernels.triton.qgemm import quantize  # noqa: E402
from ecoinfer.kernels.triton.tma_gemm import (  # noqa: E402
    TmaGemmConfig,
    tma_gemm,
    tma_gemm_configs,
    tma_ok,
)
from ecoinfer.tune.tactics import _TACTICS, BuildInfo, TensorInfo  # noqa: E402

QDT = {"int8": torch.int8, "fp8e4m3": torch.float8_e4m3fn}
TOL = {torch.float16: 2e-3, torch.bfloat16: 1.5e-2}
# small tiles so the interpreter sees several tiles, ragged edges and a K tail
TINY = TmaGemmConfig(BLOCK_M=16, BLOCK_N=16, BLOCK_K=32, num_warps=4, num_stages=2)


def half_ref(x, w, bias, res, act: str, params=(), w_kn: bool = False) -> torch.Tensor:  # noqa: ANN001
    y = x.double() @ (w.double() if w_kn else w.double().t())
    if bias is not None:
        y = y + bias.double()
    y = apply_activation(y, act, list(params))
    return y + res.double() if res is not None else y


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("w_kn", [False, True])
@pytest.mark.parametrize("persistent", [0, 1, 2])  # programs per SM (0: one per tile)
@pytest.mark.parametrize("epi", ["plain", "bias_gelu", "bias_relu_res"])
@pytest.mark.parametrize("epi_tma", [0, 1])
def test_half_gemm(dtype: torch.dtype, w_kn: bool, persistent: int, epi: str, epi_tma: int) -> None:
    torch.manual_seed(0)
    m, n, k = 37, 40, 72  # ragged in M and N, K = 2 steps + a tail of 8
    x = torch.randn(m, k).to(dtype)
    w = (torch.randn(k, n) if w_kn else torch.randn(n, k)).to(dtype) / 8
    bias = torch.randn(n).to(dtype) if epi != "plain" else None
    res = torch.randn(m, n).to(dtype) if epi == "bias_relu_res" else None
    act = {"plain": "", "bias_gelu": "Gelu", "bias_relu_res": "Relu"}[epi]
    cfg = TmaGemmConfig(**{**TINY.as_dict(), "PERSISTENT": persistent, "EPI_TMA": epi_tma})
    # 40 columns: 80-byte rows, so with EPI_TMA Y and the residual go through descriptors
    assert tma_ok(torch.empty(m, n, dtype=dtype))
    y = tma_gemm(x, w, bias, res, w_kn=w_kn, activation=act, config=cfg)
    assert y.dtype == dtype and y.shape == (m, n)
    assert rel(y, half_ref(x, w, bias, res, act, w_kn=w_kn)) <= TOL[dtype]


def test_fast_gelu_within_half_tolerance() -> None:
    """FAST_GELU evaluates erf GELU by the tanh formula: close, not bit-equal."""
    torch.manual_seed(1)
    x, w, b = torch.randn(32, 64).half(), (torch.randn(48, 64) / 6).half(), torch.randn(48).half()
    ref = half_ref(x, w, b, None, "Gelu")
    cfg = TmaGemmConfig(**{**TINY.as_dict(), "FAST_GELU": 1})
    fast = tma_gemm(x, w, b, activation="Gelu", config=cfg)
    exact = tma_gemm(x, w, b, activation="Gelu", config=TINY)
    assert rel(fast, ref) <= 2e-3
    assert not torch.equal(fast, exact)  # the other formula really ran


@pytest.mark.parametrize("qtype", ["int8", "fp8e4m3"])
@pytest.mark.parametrize("epi", ["bias", "bias_gelu_res"])
def test_codes_gemm_matches_qgemm_reference(qtype: str, epi: str) -> None:
    torch.manual_seed(2)
    xs = case((3, 11), 48, 96, qtype, torch.float16, True, epi == "bias_gelu_res")
    act = "Gelu" if epi == "bias_gelu_res" else ""
    x, wq, x_scale, w_scale = xs[0], xs[1], xs[2], xs[3]
    xq = quantize(x, x_scale, qtype, exact=True)  # type: ignore[arg-type]
    assert torch.equal(
        xq.double() if qtype == "int8" else xq.float().double(), quant_ref(x, x_scale, qtype)
    )  # type: ignore[arg-type]
    res = xs[5] if len(xs) > 5 else None
    y = tma_gemm(xq, wq, xs[4], res, activation=act, x_scale=x_scale, w_scale=w_scale, config=TINY)  # type: ignore[arg-type]
    assert y.dtype == torch.float16 and y.shape == (3, 11, 48)
    assert rel(y, qgemm_ref(xs, qtype, act)) <= 2e-3


@pytest.mark.parametrize("qtype", ["int8", "fp8e4m3"])
@pytest.mark.parametrize("epi_tma", [0, 1])
def test_requantizing_epilogue(qtype: str, epi_tma: int) -> None:
    """out_scale: the float result becomes the next layer's codes, as the one-pass quantize
    kernel would make them from a float32 Y (ties aside: none at these values)."""
    torch.manual_seed(3)
    xs = case((40,), 32, 64, qtype, torch.float16, True, False)
    x, wq, x_scale, w_scale, b = xs[0], xs[1], xs[2], xs[3], xs[4]
    xq = quantize(x, x_scale, qtype, exact=True)  # type: ignore[arg-type]
    yf = tma_gemm(xq, wq, b, x_scale=x_scale, w_scale=w_scale, out_dtype=torch.float32, config=TINY)  # type: ignore[arg-type]
    out_scale = (yf.abs().amax() / (127 if qtype == "int8" else 448) * 0.8).reshape(())
    yq = tma_gemm(
        xq,
        wq,
        b,
        x_scale=x_scale,
        w_scale=w_scale,
        out_scale=out_scale,
        out_qtype=qtype,
        config=TmaGemmConfig(**{**TINY.as_dict(), "EPI_TMA": epi_tma}),
    )  # type: ignore[arg-type]
    assert yq.dtype == QDT[qtype]
    want = quantize(yf, out_scale, qtype, exact=True)
    diff = (yq.float() - want.float()).abs()
    step = 1.0 if qtype == "int8" else want.float().abs() / 8 + 2**-9
    assert bool((diff <= step).all())  # at most one code apart (multiply vs divide)
    assert (diff > 0).float().mean() < 0.05
    assert float(want.float().abs().max()) >= (127 if qtype == "int8" else 448)  # saturated


def test_k_zero_and_empty_rows() -> None:
    x = torch.zeros(5, 0, dtype=torch.float16)
    w = torch.zeros(8, 0, dtype=torch.float16)
    b = torch.arange(8).half()
    y = tma_gemm(x, w, b, config=TINY)
    assert torch.equal(y, b.expand(5, 8))
    assert tma_gemm(torch.zeros(0, 16).half(), torch.zeros(8, 16).half()).shape == (0, 8)


def test_misaligned_x_is_copied_not_misread() -> None:
    torch.manual_seed(4)
    base = torch.randn(20 * 40 + 1).half()
    x = base[1:].view(20, 40)  # 2-byte offset: no descriptor can address it
    assert not tma_ok(x)
    w = torch.randn(16, 40).half()
    y = tma_gemm(x, w, config=TINY)
    assert rel(y, half_ref(x, w, None, None, "")) <= 2e-3


def test_bad_operands_raise() -> None:
    x = torch.zeros(4, 32, dtype=torch.float8_e4m3fn)
    with pytest.raises(ValueError, match="x_scale"):
        tma_gemm(x, torch.zeros(8, 32, dtype=torch.float8_e4m3fn))
    with pytest.raises(ValueError, match="K=32"):
        tma_gemm(torch.zeros(4, 32).half(), torch.zeros(8, 16).half())
    with pytest.raises(ValueError, match="float16/bfloat16"):
        tma_gemm(torch.zeros(4, 32), torch.zeros(8, 32))
    with pytest.raises(ValueError, match="8-bit W needs"):  # float32 X with 8-bit W
        s = torch.tensor(1.0)
        tma_gemm(torch.zeros(4, 32), torch.zeros(8, 32, dtype=torch.int8), x_scale=s, w_scale=s)


@pytest.mark.parametrize("qtype", ["int8", "fp8e4m3"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_float_x_quantized_in_registers(qtype: str, dtype: torch.dtype) -> None:
    """Half X with 8-bit W: each X tile is quantized in the kernel. Against the codes path
    (X quantized by the one-pass kernel first): the same codes up to ties (multiply by
    1/x_scale there, exact division here), so the same result within rounding."""
    torch.manual_seed(9)
    xs = case((3, 11), 48, 96, qtype, dtype, True, True)
    x, wq, x_scale, w_scale, b, r = xs[0], xs[1], xs[2], xs[3], xs[4], xs[5]
    kw = {"x_scale": x_scale, "w_scale": w_scale, "out_dtype": dtype}
    cfg = TmaGemmConfig(**{**TINY.as_dict(), "QUANT_X": 1})
    y = tma_gemm(x, wq, b, r, activation="Relu", config=cfg, **kw)  # type: ignore[arg-type]
    xq = quantize(x, x_scale, qtype, exact=True)  # type: ignore[arg-type]
    y_codes = tma_gemm(xq, wq, b, r, activation="Relu", config=TINY, **kw)  # type: ignore[arg-type]
    assert y.dtype == dtype and y.shape == (3, 11, 48)
    assert rel(y, y_codes.double()) <= (2e-3 if dtype == torch.float16 else 1e-2)
    assert rel(y, qgemm_ref(xs, qtype, "Relu")) <= (2e-3 if dtype == torch.float16 else 1e-2)


def test_configs_fit_hopper_shared_memory() -> None:
    for esz in (1, 2):
        cfgs = tma_gemm_configs(8192, 3072, 768, esz)
        assert cfgs and len(cfgs) == len(set(cfgs))
        for c in cfgs:
            smem = c.num_stages * (c.BLOCK_M + c.BLOCK_N) * c.BLOCK_K * esz
            assert smem + c.BLOCK_M * c.BLOCK_N <= 200 * 1024 and c.num_stages >= 2
            assert c.BLOCK_K * esz == 128  # 128-byte K steps
        assert {c.PERSISTENT for c in cfgs} == {0, 1}
    small = tma_gemm_configs(8, 16, 40, 2)
    assert all(c.BLOCK_M <= 16 and c.BLOCK_N <= 16 for c in small)


# ---------------------------------------------------------------------- tactics
def _build(weights: dict) -> BuildInfo:
    return BuildInfo(torch.device("cpu"), "float16", weights)  # type: ignore[arg-type]


def test_tma_gemm_tactic_runs_fused_gemm() -> None:
    torch.manual_seed(5)
    a, b = torch.randn(2, 9, 32).half(), (torch.randn(24, 32) / 4).half()
    bias, res = torch.randn(24).half(), torch.randn(2, 9, 24).half()
    node = Node("FusedGemm", ["a", "b", "bias", "r"], ["y"], domain="ecoinfer")
    attrs = {"trans_b": 1, "activation": "Gelu", "activation_params": []}
    infos = [TensorInfo(tuple(t.shape), t.dtype, i == 1) for i, t in enumerate((a, b, bias, res))]
    cfgs = tma_tactics._tma_gemm_configs(node, attrs, infos, _build({"b": b}))
    assert any(c["FAST_GELU"] for c in cfgs) and any(not c["FAST_GELU"] for c in cfgs)
    run = tma_tactics.triton_tma_gemm(node, attrs, infos, TINY.as_dict(), _build({"b": b}))
    assert run is not None
    (y,) = run([a, b, bias, res])
    assert rel(y, half_ref(a, b, bias, res, "Gelu")) <= 2e-3
    # K not a multiple of 8 (rows not 16-byte aligned) and float32: declined
    odd = [TensorInfo((4, 30), torch.float16), TensorInfo((24, 30), torch.float16, True)]
    assert tma_tactics.triton_tma_gemm(node, attrs, odd, {}, _build({})) is None
    f32 = [TensorInfo((4, 32), torch.float32), TensorInfo((24, 32), torch.float32, True)]
    assert tma_tactics.triton_tma_gemm(node, attrs, f32, {}, _build({})) is None


@pytest.mark.parametrize("qtype", ["int8", "fp8e4m3"])
def test_tma_qgemm_tactic_quantizes_then_multiplies(qtype: str) -> None:
    torch.manual_seed(6)
    xs = case((2, 13), 32, 64, qtype, torch.float16, True, True)
    node = Node("QGemm", ["x", "w", "xs", "ws", "b", "r"], ["y"], domain="ecoinfer")
    attrs = {"qtype": qtype, "activation": "Relu", "activation_params": []}
    infos = [TensorInfo(tuple(t.shape), t.dtype, i in (1, 2, 3)) for i, t in enumerate(xs)]  # type: ignore[union-attr]
    build = _build({"w": xs[1], "xs": xs[2], "ws": xs[3]})
    # float X: the tuned configurations quantize X in a pass of their own (QUANT_X lost on
    # the GPU), but the kernel still takes QUANT_X
    cfgs = tma_tactics._tma_qgemm_configs(node, attrs, infos, build)
    assert cfgs and not any(c["QUANT_X"] for c in cfgs)
    for quant_x in (0, 1):
        cfg = {**TINY.as_dict(), "QUANT_X": quant_x}
        run = tma_tactics.triton_tma_qgemm(node, attrs, infos, cfg, build)
        assert run is not None
        (y,) = run(xs)
        assert y.dtype == torch.float16
        assert rel(y, qgemm_ref(xs, qtype, "Relu")) <= 2e-3
    # K = 40: 8-bit rows of 40 bytes cannot be TMA rows
    odd = case((4,), 16, 40, qtype, torch.float16, False, False)
    oinfos = [TensorInfo(tuple(t.shape), t.dtype, i == 1) for i, t in enumerate(odd)]  # type: ignore[union-attr]
    assert tma_tactics.triton_tma_qgemm(node, attrs, oinfos, {}, _build({"w": odd[1]})) is None


def test_tma_tactics_registered_for_gpus_only() -> None:
    for op, name in (("FusedGemm", "triton_tma_gemm"), ("QGemm", "triton_tma_qgemm")):
        spec = {t.name: t for t in _TACTICS[("ecoinfer", op)]}[name]
        assert spec.devices == ("cuda",) and spec.configs is not None
    assert make_w(4, 32, "int8").dtype == torch.int8  # the shared helpers are the real ones


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_tma_gemm_compiled() -> None:
    """The compiled kernel in a fresh process (this one interprets): bench/gpu_tma_probe.py's
    correctness half on small shapes."""
    from pathlib import Path

    script = Path(__file__).resolve().parents[2] / "bench" / "gpu_tma_probe.py"
    compiled_run([str(script), "--check"])


def test_codes_in_bfloat16_out_with_broadcast_residual() -> None:
    """8-bit codes in, Y in bfloat16 (out_dtype), a [N] residual broadcast over 3-D rows."""
    torch.manual_seed(7)
    xs = case((2, 9), 32, 64, "fp8e4m3", torch.float16, True, False)
    x, wq, x_scale, w_scale = xs[0], xs[1], xs[2], xs[3]
    xq = quantize(x, x_scale, "fp8e4m3", exact=True)  # type: ignore[arg-type]
    res = torch.randn(32).to(torch.bfloat16)
    bias = xs[4].to(torch.bfloat16)  # type: ignore[union-attr]
    y = tma_gemm(
        xq, wq, bias, res, x_scale=x_scale, w_scale=w_scale, out_dtype=torch.bfloat16, config=TINY
    )  # type: ignore[arg-type]
    assert y.dtype == torch.bfloat16 and y.shape == (2, 9, 32)
    ref = qgemm_ref([x, wq, x_scale, w_scale, bias.half(), None], "fp8e4m3") + res.double()
    assert rel(y, ref) <= 1.5e-2


# ---------------------------------------------------------------------- 1x1 convolutions
def _conv_ref(op: str, attrs: dict, xs: list[torch.Tensor | None]) -> torch.Tensor:
    """The torch reference kernel of FusedConv / QConv on float32 copies of the inputs."""
    names = ["x", "w", "xs", "ws", "b", "r"] if op == "QConv" else ["x", "w", "b", "r"]
    node = Node(op, names[: len(xs)], ["y"], attrs, domain="ecoinfer")
    full = {**get_schema(op, "ecoinfer").attrs, **attrs}
    ctx = KernelContext(node, full, torch.device("cpu"), None, 21)  # type: ignore[arg-type]
    fn = get_kernel(op, "ecoinfer")
    assert fn is not None
    f32 = [x.float() if x is not None and x.dtype == torch.float16 else x for x in xs]
    return fn(ctx, f32)[0]


NHWC_1X1 = {"layout": "NHWC", "kernel_shape": [1, 1], "post_activation": "Relu"}


def _infos(xs: list[torch.Tensor | None], weights: tuple[int, ...]) -> list[TensorInfo | None]:
    return [
        TensorInfo(tuple(t.shape), t.dtype, i in weights) if t is not None else None
        for i, t in enumerate(xs)
    ]


def test_tma_conv1x1_tactic_matches_fused_conv() -> None:
    """relu(conv1x1(x) + b + residual) on channels-last tensors, as ResNet's block tail."""
    torch.manual_seed(7)
    x = torch.randn(2, 3, 5, 32).half()  # NHWC
    w = (torch.randn(24, 1, 1, 32) / 6).half()  # [Cout, kh, kw, Cin]
    b, r = torch.randn(24).half(), torch.randn(2, 3, 5, 24).half()
    xs: list[torch.Tensor | None] = [x, w, b, r]
    node = Node("FusedConv", ["x", "w", "b", "r"], ["y"], NHWC_1X1, domain="ecoinfer")
    attrs = {**get_schema("FusedConv", "ecoinfer").attrs, **NHWC_1X1}
    build = _build({"w": w})
    run = tma_tactics.triton_tma_conv1x1(node, attrs, _infos(xs, (1,)), TINY.as_dict(), build)
    assert run is not None
    (y,) = run(xs)
    ref = _conv_ref("FusedConv", NHWC_1X1, xs)
    assert y.shape == (2, 3, 5, 24) and y.dtype == torch.float16
    assert rel(y, ref.double()) <= 2e-3
    assert float(y.float().min()) >= 0.0  # the post-residual ReLU ran
    # declined: strided, 3x3, NCHW, and channel counts that make no 16-byte TMA rows
    for extra, xi, wi in (
        ({"strides": [2, 2]}, x, w),
        ({"kernel_shape": [3, 3]}, x, torch.zeros(24, 3, 3, 32).half()),
        ({"layout": "NCHW"}, x.permute(0, 3, 1, 2), w.permute(0, 3, 1, 2)),
        ({}, torch.zeros(2, 3, 5, 30).half(), torch.zeros(24, 1, 1, 30).half()),
    ):
        a2 = {**attrs, **extra}
        if "kernel_shape" in extra:
            a2["pads"] = [1, 1, 1, 1]
        infos = _infos([xi, wi, b, None], (1,))
        assert tma_tactics.triton_tma_conv1x1(node, a2, infos, {}, build) is None, extra


def _qconv_case(qtype: str, nhw: tuple[int, int, int], cin: int, cout: int, conv: dict):  # noqa: ANN202
    """A channels-last QConv with float16 X, W_q [Cout, KH, KW, Cin], bias and residual:
    (inputs, attributes, node, build, input infos)."""
    kh, kw = conv["kernel_shape"]
    x = torch.randn(*nhw, cin).half()
    wq = make_w(cout, kh * kw * cin, qtype).reshape(cout, kh, kw, cin)
    x_scale = torch.tensor(float(x.float().abs().max()) / (127 if qtype == "int8" else 448))
    w_scale = (torch.rand(cout) * 0.01 + 0.002).float()
    b, r = torch.randn(cout).half(), torch.randn(*nhw, cout).half()
    xs: list[torch.Tensor | None] = [x, wq, x_scale, w_scale, b, r]
    attrs = {**get_schema("QConv", "ecoinfer").attrs, **conv, "qtype": qtype}
    node = Node("QConv", ["x", "w", "xs", "ws", "b", "r"], ["y"], attrs, domain="ecoinfer")
    build = _build({"w": wq, "xs": x_scale, "ws": w_scale})
    return xs, attrs, node, build, _infos(xs, (1, 2, 3))


@pytest.mark.parametrize("qtype", ["int8", "fp8e4m3"])
def test_tma_qconv1x1_tactic_matches_qconv(qtype: str) -> None:
    torch.manual_seed(8)
    xs, attrs, node, build, infos = _qconv_case(qtype, (2, 4, 3), 32, 48, NHWC_1X1)
    assert not any(c["QUANT_X"] for c in tma_tactics._qconv1x1_configs(node, attrs, infos, build))
    ref = _conv_ref("QConv", {**NHWC_1X1, "qtype": qtype}, xs)
    for quant_x in (0, 1):
        cfg = {**TINY.as_dict(), "QUANT_X": quant_x}
        run = tma_tactics.triton_tma_qconv1x1(node, attrs, infos, cfg, build)
        assert run is not None
        (y,) = run(xs)
        assert y.shape == (2, 4, 3, 48) and y.dtype == torch.float16
        assert rel(y, ref.double()) <= 2e-3
    # Cin = 40: 8-bit rows of 40 bytes are no TMA rows
    odd = [torch.zeros(2, 4, 3, 40).half(), make_w(48, 40, qtype).reshape(48, 1, 1, 40), *xs[2:]]
    assert tma_tactics.triton_tma_qconv1x1(node, attrs, _infos(odd, (1, 2, 3)), {}, build) is None


def test_tma_epilogue_fits_shared_memory() -> None:
    """The TMA store stages a whole output tile in shared memory, and a residual costs one
    more: taken only where they fit beside the K loop (the H200 refused 272 KB for a 128x256
    tile over three 48 KB stages with a residual)."""
    from ecoinfer.kernels.triton.tma_gemm import tma_epilogue

    big = TmaGemmConfig(128, 256, 128, num_warps=8, num_stages=3)
    assert tma_epilogue(big, 1, 2, 2) == (False, False)  # 144 KB + 64 + 64: pointers
    assert tma_epilogue(big, 1, 2, 0) == (True, False)  # 144 KB + 64 KB Y
    small = TmaGemmConfig(128, 128, 128, num_warps=8, num_stages=4)
    assert tma_epilogue(small, 1, 2, 2) == (True, True)  # 128 KB + 32 + 32
    assert tma_epilogue(TmaGemmConfig(**{**small.as_dict(), "EPI_TMA": 0}), 1, 2, 2) == (
        False,
        False,
    )
    for c in tma_gemm_configs(8192, 3072, 768, 1) + tma_gemm_configs(8192, 768, 3072, 2):
        esz = 128 // c.BLOCK_K  # 128-byte K steps
        y, r = tma_epilogue(c, esz, 2, 2)
        used = c.num_stages * (c.BLOCK_M + c.BLOCK_N) * 128
        assert y == r and (not y or used + c.BLOCK_M * c.BLOCK_N * 4 <= 220 * 1024)


# ---------------------------------------------------------------------- KxK convolutions
def _conv_nhwc_ref(x, w, bias, res, pads, dil, relu_post: bool) -> torch.Tensor:  # noqa: ANN001
    """float64 F.conv2d on NHWC x and OHWI w, with explicit (top, left, bottom, right) pads."""
    import torch.nn.functional as F

    t, left, b, r = pads
    xn = F.pad(x.double().permute(0, 3, 1, 2), (left, r, t, b))
    y = F.conv2d(xn, w.double().permute(0, 3, 1, 2), bias.double(), dilation=dil)
    y = y.permute(0, 2, 3, 1) + res.double()
    return y.clamp_min(0) if relu_post else y


@pytest.mark.parametrize(
    ("kh", "kw", "pads", "dil"),
    [
        (3, 3, (1, 1, 1, 1), (1, 1)),
        (3, 3, (2, 2, 2, 2), (2, 2)),
        (1, 3, (0, 2, 0, 0), (1, 1)),  # asymmetric: all padding on the left
        (5, 5, (2, 2, 2, 2), (1, 1)),
    ],
)
def test_tma_conv_same_size(kh: int, kw: int, pads: tuple, dil: tuple) -> None:
    """The implicit-GEMM convolution: taps as shifted rows of X [N*H*W, C], rows across
    the image edge zeroed; C = 24 is no multiple of the K step (16), so steps straddle taps."""
    from ecoinfer.kernels.triton.tma_gemm import ConvGeometry

    torch.manual_seed(10)
    n, h, wd, c, cout = 2, 5, 7, 24, 40
    x = torch.randn(n, h, wd, c).half()
    w = (torch.randn(cout, kh, kw, c) / (c * kh * kw) ** 0.5).half()
    b, res = torch.randn(cout).half(), torch.randn(n, h, wd, cout).half()
    geo = ConvGeometry(kh, kw, pads, dil)
    cfg = TmaGemmConfig(**{**TINY.as_dict(), "BLOCK_K": 16})
    y = tma_gemm(x, w.reshape(cout, -1), b, res, post=(1, 0.0, 0.0), config=cfg, conv=geo)
    assert y.shape == (n, h, wd, cout)
    ref = _conv_nhwc_ref(x, w, b, res, pads, dil, True)
    assert rel(y, ref) <= 2e-3


@pytest.mark.parametrize("qtype", ["int8", "fp8e4m3"])
@pytest.mark.parametrize("codes_in", [False, True])
def test_tma_conv_8bit(qtype: str, codes_in: bool) -> None:
    """3x3 on 8-bit W: X as codes, or float16 X quantized in registers (QUANT_X)."""
    from ecoinfer.kernels.triton.tma_gemm import ConvGeometry

    torch.manual_seed(12)
    n, h, wd, c, cout = 1, 6, 5, 32, 48
    x = torch.randn(n, h, wd, c).half()
    qmax = 127.0 if qtype == "int8" else 448.0
    x_scale = (x.float().abs().amax() / qmax).reshape(())
    wq = make_w(cout, 9 * c, qtype)
    w_scale = (torch.rand(cout) * 0.01 + 0.002).float()
    b, res = torch.randn(cout).half(), torch.randn(n, h, wd, cout).half()
    xq = quantize(x, x_scale, qtype, exact=True)
    cfg = TmaGemmConfig(**{**TINY.as_dict(), "QUANT_X": int(not codes_in)})
    y = tma_gemm(
        xq if codes_in else x,
        wq,
        b,
        res,
        x_scale=x_scale,
        w_scale=w_scale,
        out_dtype=torch.float16,
        config=cfg,
        conv=ConvGeometry(3, 3, (1, 1, 1, 1)),
    )
    wf = (wq.double() * w_scale.double()[:, None]).reshape(cout, 3, 3, c)
    ref = _conv_nhwc_ref(xq.double() * float(x_scale), wf, b, res, (1, 1, 1, 1), (1, 1), False)
    assert rel(y, ref) <= 2e-3


def test_tma_conv_rejects_what_it_cannot_run() -> None:
    from ecoinfer.kernels.triton.tma_gemm import ConvGeometry

    x, w = torch.zeros(1, 4, 4, 8).half(), torch.zeros(8, 72).half()
    with pytest.raises(ValueError, match="same-size"):  # pads that shrink the output
        tma_gemm(x, w, conv=ConvGeometry(3, 3, (0, 0, 0, 0)))
    with pytest.raises(ValueError, match="K=8"):  # W of another tap count
        tma_gemm(x, torch.zeros(8, 40).half(), conv=ConvGeometry(3, 3, (1, 1, 1, 1)))


NHWC_3X3 = {
    "layout": "NHWC",
    "kernel_shape": [3, 3],
    "pads": [1, 1, 1, 1],
    "strides": [1, 1],
    "dilations": [1, 1],
    "post_activation": "Relu",
}


def test_tma_conv_tactic_matches_fused_conv() -> None:
    torch.manual_seed(13)
    x = torch.randn(2, 5, 6, 16).half()
    w = (torch.randn(24, 3, 3, 16) / 12).half()
    b, r = torch.randn(24).half(), torch.randn(2, 5, 6, 24).half()
    xs: list[torch.Tensor | None] = [x, w, b, r]
    attrs = {**get_schema("FusedConv", "ecoinfer").attrs, **NHWC_3X3}
    node = Node("FusedConv", ["x", "w", "b", "r"], ["y"], attrs, domain="ecoinfer")
    build = _build({"w": w})
    run = tma_tactics.triton_tma_conv(node, attrs, _infos(xs, (1,)), TINY.as_dict(), build)
    assert run is not None
    (y,) = run(xs)
    assert y.shape == (2, 5, 6, 24)
    assert rel(y, _conv_ref("FusedConv", NHWC_3X3, xs).double()) <= 2e-3
    # declined: stride 2, padding that shrinks the image, 1x1 (triton_tma_conv1x1's), NCHW
    for extra, wi in (
        ({"strides": [2, 2]}, w),
        ({"pads": [0, 0, 0, 0]}, w),
        ({"kernel_shape": [1, 1], "pads": [0, 0, 0, 0]}, torch.zeros(24, 1, 1, 16).half()),
    ):
        infos = _infos([x, wi, b, None], (1,))
        assert tma_tactics.triton_tma_conv(node, {**attrs, **extra}, infos, {}, build) is None
    nchw = _infos([x.permute(0, 3, 1, 2), w.permute(0, 3, 1, 2), b, None], (1,))
    assert tma_tactics.triton_tma_conv(node, {**attrs, "layout": "NCHW"}, nchw, {}, build) is None


@pytest.mark.parametrize("qtype", ["int8", "fp8e4m3"])
def test_tma_qconv_tactic_matches_qconv(qtype: str) -> None:
    torch.manual_seed(14)
    xs, attrs, node, build, infos = _qconv_case(qtype, (1, 4, 5), 32, 16, NHWC_3X3)
    ref = _conv_ref("QConv", {**NHWC_3X3, "qtype": qtype}, xs)
    # a K step never spans more than one tap's 32 channels (wider steps multiply W's zeros)
    cfgs = tma_tactics._conv_configs(True, quantized=True)(node, attrs, infos, build)
    assert cfgs and max(c["BLOCK_K"] for c in cfgs) == 32
    for quant_x in (0, 1):
        cfg = {**TINY.as_dict(), "QUANT_X": quant_x}
        run = tma_tactics.triton_tma_qconv(node, attrs, infos, cfg, build)
        assert run is not None
        (y,) = run(xs)
        assert y.shape == (1, 4, 5, 16) and rel(y, ref.double()) <= 2e-3


@pytest.mark.parametrize("qtype", ["int8", "fp8e4m3"])
def test_tma_qconv_linked_forms(qtype: str) -> None:
    """A linked QConv: X already codes (out_dtype names Y's float dtype) and y_scale (Y
    written as the next layer's codes), against the reference kernel's linked forms."""
    torch.manual_seed(15)
    qdt = QDT[qtype]
    x = torch.randn(1, 4, 5, 32).half()
    x_scale = torch.tensor(float(x.float().abs().max()) / (127 if qtype == "int8" else 448))
    xq = quantize(x, x_scale, qtype, exact=True)
    wq = make_w(16, 9 * 32, qtype).reshape(16, 3, 3, 32)
    w_scale = (torch.rand(16) * 0.01 + 0.002).float()
    b = torch.randn(16).half()
    y_scale = torch.tensor(0.05)
    xs: list[torch.Tensor | None] = [xq, wq, x_scale, w_scale, b, None, y_scale]
    linked = {**NHWC_3X3, "qtype": qtype, "out_dtype": "float16"}
    attrs = {**get_schema("QConv", "ecoinfer").attrs, **linked}
    node = Node("QConv", ["x", "w", "xs", "ws", "b", "", "ys"], ["y"], attrs, domain="ecoinfer")
    build = _build({"w": wq, "xs": x_scale, "ws": w_scale, "ys": y_scale})
    infos = _infos(xs, (1, 2, 3, 6))
    run = tma_tactics.triton_tma_qconv(node, attrs, infos, TINY.as_dict(), build)
    assert run is not None
    (y,) = run(xs)
    assert y.dtype == qdt and y.shape == (1, 4, 5, 16)
    names = ["x", "w", "xs", "ws", "b", "", "ys"]
    rnode = Node("QConv", names, ["y"], attrs, domain="ecoinfer")
    ctx = KernelContext(rnode, attrs, torch.device("cpu"), None, 21)  # type: ignore[arg-type]
    fn = get_kernel("QConv", "ecoinfer")
    assert fn is not None
    (ref,) = fn(ctx, xs)
    assert ref.dtype == qdt
    # the reference convolves in float16, the kernel in float32 and rounds once: codes agree
    # but where float16's rounding of a cancelling sum moves a value across a code boundary
    assert rel(y.float(), ref.double()) <= 1e-2
    assert float((y.float() != ref.float()).float().mean()) < 0.05
    # the float convolutions' tactics decline codes
    assert tma_tactics.triton_tma_conv(node, attrs, infos, {}, build) is None


def residual_rebuilt_check(epi_tma: int, has_bias: bool, device: str = "cpu") -> None:
    """A LayerNorm that writes only its codes and row statistics, and a GEMM that adds the
    norm's Y as its residual by rebuilding it from the norm's input (residual_norm): the same
    output as the norm writing Y and the GEMM reading it, bit for bit on the interpreter (on
    a GPU the two kernels may contract the float32 formula differently: to 1e-3 there)."""
    from ecoinfer.kernels.triton.norms import layer_norm  # noqa: PLC0415

    torch.manual_seed(5)
    dev = torch.device(device)
    m, k, n = 40, 64, 32
    h = (torch.randn(m, n) * 3 + 1).half().to(dev)  # the norm's input (a sum before the norm)
    gamma, beta = (torch.rand(n) + 0.5).half().to(dev), (torch.randn(n) * 0.1).half().to(dev)
    bias = beta if has_bias else None
    ys = torch.tensor(0.02, device=dev)
    codes_full = torch.empty(m, n, dtype=torch.float8_e4m3fn, device=dev)
    y = layer_norm(h, gamma, bias, -1, 1e-12, None, codes_full, ys, False)
    codes = torch.empty_like(codes_full)
    stats = (torch.empty(m, device=dev), torch.empty(m, device=dev))
    empty = layer_norm(h, gamma, bias, -1, 1e-12, None, codes, ys, False, stats=stats,
                       write_y=False)  # fmt: skip
    assert empty.numel() == 0 and torch.equal(codes.view(torch.uint8), codes_full.view(torch.uint8))
    hf = h.float()
    assert torch.allclose(stats[0], hf.mean(-1), atol=1e-5)
    assert torch.allclose(stats[1], 1 / torch.sqrt(hf.var(-1, unbiased=False) + 1e-12), rtol=1e-5)

    xs = [t.to(dev) if t is not None else None
          for t in case((m,), n, k, "fp8e4m3", torch.float16, True, False)]  # fmt: skip
    xq = quantize(xs[0], xs[2], "fp8e4m3", exact=True)  # type: ignore[arg-type]
    cfg = TmaGemmConfig(**{**TINY.as_dict(), "EPI_TMA": epi_tma})
    kw = {"x_scale": xs[2], "w_scale": xs[3], "config": cfg}
    want = tma_gemm(xq, xs[1], xs[4], y, **kw)  # type: ignore[arg-type]
    got = tma_gemm(xq, xs[1], xs[4], h, residual_norm=(*stats, gamma, bias), **kw)  # type: ignore[arg-type]
    if dev.type == "cpu":
        assert torch.equal(got, want)
    else:
        assert rel(got, want.float()) <= 1e-3, rel(got, want.float())
    with pytest.raises(ValueError, match="residual_norm needs a residual"):
        tma_gemm(xq, xs[1], xs[4], None, residual_norm=(*stats, gamma, bias), **kw)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="float32"):
        tma_gemm(xq, xs[1], xs[4], h, residual_norm=(stats[0].half(), stats[1], gamma, bias), **kw)  # type: ignore[arg-type]


@pytest.mark.parametrize("epi_tma", [0, 1])
@pytest.mark.parametrize("has_bias", [True, False])
def test_residual_rebuilt_from_norm_statistics(epi_tma: int, has_bias: bool) -> None:
    residual_rebuilt_check(epi_tma, has_bias)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_residual_rebuilt_compiled() -> None:
    """The same with the compiled kernels (this process runs the interpreter)."""
    from pathlib import Path

    code = (
        "import test_tma_gemm as t\n"
        "for e in (0, 1):\n"
        "    for b in (True, False):\n"
        "        t.residual_rebuilt_check(e, b, 'cuda')\n"
        "print('ok')\n"
    )
    assert "ok" in compiled_run(["-c", code], cwd=Path(__file__).resolve().parent)


def test_norm_link_tactics_match_their_reference_kernels() -> None:
    """The two halves of a norm link (engine/link_norm.py) on their Triton tactics: the
    LayerNormCodes writing codes and row statistics without Y, and the QGemm rebuilding its
    residual from them, each against the op's reference kernel; other QGemm tactics decline."""
    from ecoinfer.kernels.triton import norms as norm_tactics  # noqa: PLC0415
    from ecoinfer.kernels.triton import qtactics  # noqa: PLC0415

    torch.manual_seed(8)
    m, n, k = 24, 32, 64
    h = (torch.randn(m, n) * 2).half()
    gamma, beta, ys = (torch.rand(n) + 0.5).half(), torch.randn(n).half(), torch.tensor(0.02)
    ln_in = [h, gamma, beta, ys]
    ln = Node("LayerNormCodes", ["h", "g", "b", "ys"], ["", "c", "mu", "inv"],
              {"qtype": "fp8e4m3"}, "ln", "ecoinfer")  # fmt: skip
    ln_attrs = {**get_schema("LayerNormCodes", "ecoinfer").attrs, "qtype": "fp8e4m3"}
    ln_infos = [TensorInfo(tuple(t.shape), t.dtype, i in (1, 2, 3)) for i, t in enumerate(ln_in)]
    run = norm_tactics.make_layernorm_codes(ln, ln_attrs, ln_infos, {"exact": 1}, _build({}))
    assert run is not None
    y, codes, mu, inv = run(ln_in)
    ref = get_kernel("LayerNormCodes", "ecoinfer")(
        KernelContext(ln, ln_attrs, torch.device("cpu"), None, 17), ln_in
    )  # type: ignore[misc]
    assert y.numel() == 0 and mu.shape == inv.shape == (m,)
    assert (codes.float() - ref[1].float()).abs().max() <= 32  # one FP8 step at most
    torch.testing.assert_close(mu, ref[2], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(inv, ref[3], rtol=1e-4, atol=1e-5)

    xs = case((m,), n, k, "fp8e4m3", torch.float16, True, False)
    q_in = [*xs[:5], h, None, mu, inv, gamma, beta]
    node = Node("QGemm", ["x", "w", "xs", "ws", "b", "h", "", "mu", "inv", "g", "bb"], ["y"],
                domain="ecoinfer")  # fmt: skip
    attrs = {**get_schema("QGemm", "ecoinfer").attrs, "qtype": "fp8e4m3"}
    infos = [None if t is None else TensorInfo(tuple(t.shape), t.dtype, i in (1, 2, 3))
             for i, t in enumerate(q_in)]  # fmt: skip
    build = _build({"w": xs[1], "xs": xs[2], "ws": xs[3]})
    run = tma_tactics.triton_tma_qgemm(node, attrs, infos, TINY.as_dict(), build)
    assert run is not None
    (got,) = run(q_in)
    (want,) = get_kernel("QGemm", "ecoinfer")(
        KernelContext(node, attrs, torch.device("cpu"), None, 17), q_in
    )  # type: ignore[misc]
    assert rel(got, want.float()) <= 2e-3
    assert qtactics.triton_qgemm(node, attrs, infos, {}, build) is None
