"""Triton LayerNormalization / RMSNormalization against the torch reference kernels.

Runs under Triton's CPU interpreter (tests/triton/conftest.py sets TRITON_INTERPRET=1); with
TRITON_INTERPRET=0 and CUDA the same tests run on the GPU. References in float32.
"""

from __future__ import annotations

import os

import pytest
import torch
from helpers import rel_error

from ecoinfer.ir.graph import Node
from ecoinfer.ir.ops import get_schema
from ecoinfer.kernels.torch_ops import KernelContext, get_kernel
from ecoinfer.kernels.triton import norms
from ecoinfer.tune.tactics import BuildInfo, TensorInfo, tactics_for

INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"
# without CUDA and without the interpreter (test_compile_sm90.py's pass) launches on CPU
# tensors are compiled for sm_90, not run
DEVICE = torch.device("cuda" if not INTERPRET and torch.cuda.is_available() else "cpu")
BUILD = BuildInfo(device=DEVICE, precision="float32")

TOL = {torch.float32: 1e-5, torch.float16: 1e-2, torch.bfloat16: 1e-2}
FLOATS = [torch.float32, torch.float16, torch.bfloat16]


def _node(op: str, n_in: int, attrs: dict, outputs: tuple[str, ...] = ("y",)) -> Node:
    return Node(op, [f"i{k}" for k in range(n_in)], list(outputs), dict(attrs), "n")


def _reference(node: Node, xs: list[torch.Tensor | None]) -> list[torch.Tensor]:
    """The torch reference kernel, on float32 copies of the inputs."""
    attrs = {**get_schema(node.op_type).attrs, **node.attrs}
    ctx = KernelContext(node, attrs, torch.device("cpu"), None, 21)  # type: ignore[arg-type]
    fn = get_kernel(node.op_type)
    assert fn is not None
    return fn(ctx, [None if x is None else x.cpu().float() for x in xs])


def _run_all_configs(node: Node, xs: list[torch.Tensor | None], make, configs) -> None:  # noqa: ANN001
    infos = [None if x is None else TensorInfo(tuple(x.shape), x.dtype) for x in xs]
    (ref,) = _reference(node, xs)[:1]
    x_dt = xs[0].dtype  # type: ignore[union-attr]
    cfgs = configs(node, node.attrs, infos, BUILD)
    assert cfgs
    for cfg in cfgs:
        run = make(node, node.attrs, infos, cfg, BUILD)
        assert run is not None, cfg
        (out,) = run([None if x is None else x.to(DEVICE) for x in xs])
        assert out.shape == ref.shape
        rel, max_abs = rel_error(out.cpu().double().numpy(), ref.double().numpy())
        assert rel <= TOL[x_dt], f"{cfg}: rel L2 {rel:.3e} (max abs {max_abs:.3e})"


def _rand(shape: tuple[int, ...], dtype: torch.dtype, scale: float = 1.0, shift: float = 0.0):
    g = torch.Generator().manual_seed(sum(shape) * 7 + len(shape))
    return (torch.randn(shape, generator=g) * scale + shift).to(dtype)


# ------------------------------------------------------------------------------ LayerNorm
@pytest.mark.parametrize("dtype", FLOATS, ids=str)
@pytest.mark.parametrize("n", [37, 384, 1000])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
def test_layernorm(n: int, dtype: torch.dtype, bias: bool) -> None:
    # a mean far from 0 checks the two-pass variance (x - mean first)
    x = _rand((3, 5, n), dtype, 2.0, 3.0)
    xs = [x, _rand((n,), dtype, 0.5, 1.0)] + ([_rand((n,), dtype, 0.2)] if bias else [])
    node = _node("LayerNormalization", len(xs), {"axis": -1, "epsilon": 1e-5})
    _run_all_configs(node, xs, norms.make_layernorm, norms.norm_configs)
    out = norms.make_layernorm(
        node, node.attrs, [TensorInfo(tuple(t.shape), t.dtype) for t in xs], {}, BUILD
    )
    assert out is not None and out([t.to(DEVICE) for t in xs])[0].dtype == dtype


def test_layernorm_over_two_axes_and_small_epsilon() -> None:
    # axis=1 of [2, 3, 13]: rows of 39 elements; BERT's epsilon 1e-12
    x = _rand((2, 3, 13), torch.float32, 1.0)
    xs = [x, _rand((3, 13), torch.float32), _rand((3, 13), torch.float32)]
    node = _node("LayerNormalization", 3, {"axis": 1, "epsilon": 1e-12})
    _run_all_configs(node, xs, norms.make_layernorm, norms.norm_configs)


def test_layernorm_non_contiguous_input() -> None:
    x = _rand((40, 6), torch.float32).t()  # [6, 40] with column stride 6
    xs = [x, _rand((40,), torch.float32), _rand((40,), torch.float32)]
    node = _node("LayerNormalization", 3, {"axis": -1, "epsilon": 1e-5})
    _run_all_configs(node, xs, norms.make_layernorm, norms.norm_configs)


def test_layernorm_declines() -> None:
    x = TensorInfo((4, 8), torch.float32)
    w = TensorInfo((8,), torch.float32)
    # Mean / InvStdDev outputs requested: the reference computes them
    node = _node("LayerNormalization", 3, {"axis": -1}, ("y", "mean", "inv"))
    assert norms.make_layernorm(node, node.attrs, [x, w, w], {}, BUILD) is None
    node = _node("LayerNormalization", 3, {"axis": -1}, ("y", "", "inv"))
    assert norms.make_layernorm(node, node.attrs, [x, w, w], {}, BUILD) is None
    plain = _node("LayerNormalization", 3, {"axis": -1}, ("y", "", ""))
    assert norms.make_layernorm(plain, plain.attrs, [x, w, w], {}, BUILD) is not None
    # integer input, over-long rows
    xi = TensorInfo((4, 8), torch.int32)
    assert norms.make_layernorm(plain, plain.attrs, [xi, w, w], {}, BUILD) is None
    long = TensorInfo((2, norms.MAX_BLOCK + 1), torch.float32)
    wl = TensorInfo((norms.MAX_BLOCK + 1,), torch.float32)
    assert norms.make_layernorm(plain, plain.attrs, [long, wl, wl], {}, BUILD) is None


# ------------------------------------------------------------------------------ RMSNorm
@pytest.mark.parametrize("dtype", FLOATS, ids=str)
@pytest.mark.parametrize("n", [37, 384, 1000])
def test_rmsnorm(n: int, dtype: torch.dtype) -> None:
    xs = [_rand((7, n), dtype, 2.0, 0.5), _rand((n,), dtype, 0.5, 1.0)]
    node = _node("RMSNormalization", 2, {"axis": -1, "epsilon": 1e-6})
    _run_all_configs(node, xs, norms.make_rmsnorm, norms.norm_configs)


def test_rmsnorm_output_takes_scale_dtype() -> None:
    # ONNX's V: Y has the scale's type (the reference's .to(scale.dtype) * scale)
    x, w = _rand((3, 37), torch.float16), _rand((37,), torch.float32)
    node = _node("RMSNormalization", 2, {"axis": -1, "epsilon": 1e-5})
    infos = [TensorInfo(tuple(x.shape), x.dtype), TensorInfo(tuple(w.shape), w.dtype)]
    run = norms.make_rmsnorm(node, node.attrs, infos, {}, BUILD)
    assert run is not None
    (out,) = run([x.to(DEVICE), w.to(DEVICE)])
    (ref,) = _reference(node, [x, w])
    assert out.dtype == torch.float32
    assert rel_error(out.cpu().double().numpy(), ref.double().numpy())[0] <= 1e-2


def test_registered_for_cuda() -> None:
    assert "triton_layernorm" in [
        t.name for t in tactics_for("LayerNormalization", "", "cuda", "float16")
    ]
    assert "triton_rmsnorm" in [
        t.name for t in tactics_for("RMSNormalization", "", "cuda", "bfloat16")
    ]
    assert "triton_layernorm" not in [
        t.name for t in tactics_for("LayerNormalization", "", "cpu", "float32")
    ]


def test_row_configs() -> None:
    c = norms.default_config(384)
    assert (c.rows, c.num_warps) == (4, 4)  # 4 rows of 512 per program
    assert norms.default_config(4096).rows == 1
    assert norms.next_pow2(37) == 64 and norms.next_pow2(64) == 64 and norms.next_pow2(1) == 1
    assert {"rows": 1, "num_warps": 4} in norms.row_configs(384)
    assert {"rows": 4, "num_warps": 2} in norms.row_configs(384)  # half the warps


@pytest.mark.parametrize("qtype", ["int8", "fp8e4m3"])
def test_layernorm_codes_one_pass(qtype: str) -> None:
    """ecoinfer.LayerNormCodes: Y as LayerNormalization's, plus its codes (from the stored Y,
    divided exactly, QGemm's rounding) in the same kernel."""
    torch.manual_seed(11)
    x, g, b = torch.randn(3, 5, 48).half(), (torch.rand(48) + 0.5).half(), torch.randn(48).half()
    ys = torch.tensor(0.02)
    node = Node("LayerNormCodes", ["x", "g", "b", "ys"], ["y", "c"], {"qtype": qtype}, "lnq")
    node.domain = "ecoinfer"
    attrs = {**get_schema("LayerNormCodes", "ecoinfer").attrs, "qtype": qtype}
    infos = [TensorInfo(tuple(t.shape), t.dtype) for t in (x, g, b, ys)]
    build = BuildInfo(DEVICE, "float16")  # the CPU under the interpreter, else the GPU
    run = norms.make_layernorm_codes(node, attrs, infos, {}, build)
    assert run is not None
    y, codes = (t.cpu() for t in run([t.to(DEVICE) for t in (x, g, b, ys)]))
    ref = get_kernel("LayerNormCodes", "ecoinfer")
    ry, rc = ref(KernelContext(node, attrs, torch.device("cpu"), None, 21), [x, g, b, ys])  # type: ignore[misc, arg-type]
    assert y.dtype == torch.float16 and codes.dtype == rc.dtype and codes.shape == x.shape
    assert rel_error(y.float().numpy(), ry.float().numpy())[0] < 2e-3
    # codes of the kernel's own Y are exactly the reference quantization of that Y
    from ecoinfer.kernels.torch_ops.quant import quantize

    want = quantize(y.float(), ys, None, rc.dtype)
    assert torch.equal(codes.float(), want.float())
    # exact=0 (a tuning candidate) multiplies by 1 / y_scale: at most one code away
    fast = norms.make_layernorm_codes(node, attrs, infos, {"exact": 0}, build)
    assert fast is not None and {"exact": 0} in [
        {"exact": c["exact"]} for c in norms.codes_configs(node, attrs, infos, None)
    ]
    y2, codes2 = (t.cpu() for t in fast([t.to(DEVICE) for t in (x, g, b, ys)]))
    assert torch.equal(y2, y)
    as_int = (lambda t: t.view(torch.uint8).int()) if qtype != "int8" else (lambda t: t.int())
    assert (as_int(codes2) - as_int(want)).abs().max() <= 1
    bad = TensorInfo((2,), torch.float32)  # y_scale not a scalar
    assert norms.make_layernorm_codes(node, attrs, [*infos[:3], bad], {}, build) is None


def test_layernorm_codes_with_a_skip() -> None:
    """LayerNormCodes(X, Scale, B, y_scale, Skip) (engine/link_skip_codes.py): the norm of
    X + Skip summed in float32, as the reference kernel (SkipLayerNorm's) computes it, and
    the codes of that Y; a Skip of another shape is not this tactic's, nor are statistics."""
    torch.manual_seed(12)
    x, sk = torch.randn(4, 3, 48).half(), torch.randn(4, 3, 48).half()
    g, b, ys = (torch.rand(48) + 0.5).half(), torch.randn(48).half(), torch.tensor(0.02)
    node = Node("LayerNormCodes", ["x", "g", "b", "ys", "s"], ["y", "c"], {"qtype": "fp8e4m3"},
                "lnq", "ecoinfer")  # fmt: skip
    attrs = {**get_schema("LayerNormCodes", "ecoinfer").attrs, "qtype": "fp8e4m3"}
    infos = [TensorInfo(tuple(t.shape), t.dtype) for t in (x, g, b, ys, sk)]
    build = BuildInfo(DEVICE, "float16")
    run = norms.make_layernorm_codes(node, attrs, infos, {}, build)
    assert run is not None
    y, codes = (t.cpu() for t in run([t.to(DEVICE) for t in (x, g, b, ys, sk)]))
    ry, rc = get_kernel("LayerNormCodes", "ecoinfer")(
        KernelContext(node, attrs, torch.device("cpu"), None, 21),  # type: ignore[arg-type]
        [x, g, b, ys, sk],
    )
    want = _skip_ref(x, sk, g, b)
    assert rel_error(y.float().numpy(), want.float().numpy())[0] < 2e-3
    assert rel_error(ry.float().numpy(), want.float().numpy())[0] < 2e-3
    from ecoinfer.kernels.torch_ops.quant import quantize

    assert torch.equal(codes.float(), quantize(y.float(), ys, None, rc.dtype).float())
    # without the skip the result differs: the skip was read
    plain = norms.make_layernorm_codes(node, attrs, infos[:4], {}, build)
    assert plain is not None
    assert not torch.equal(plain([t.to(DEVICE) for t in (x, g, b, ys)])[0].cpu(), y)
    other = TensorInfo((4, 1, 48), torch.float16)  # a broadcast skip: not this kernel's
    assert norms.make_layernorm_codes(node, attrs, [*infos[:4], other], {}, build) is None
    stats = Node("LayerNormCodes", node.inputs, ["y", "c", "mu", "inv"], node.attrs, "lnq",
                 "ecoinfer")  # fmt: skip
    assert norms.make_layernorm_codes(stats, attrs, infos, {}, build) is None


# ------------------------------------------------------------------------------ SkipLayerNorm
def _skip_ref(x: torch.Tensor, skip: torch.Tensor, g: torch.Tensor, b: torch.Tensor | None):
    """LayerNormalization of x + skip in float64: what ecoinfer.SkipLayerNorm means."""
    s = x.double() + skip.double()
    return torch.nn.functional.layer_norm(
        s, (s.shape[-1],), g.double(), None if b is None else b.double(), 1e-5
    )


@pytest.mark.parametrize("dtype", FLOATS, ids=str)
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
def test_skip_layernorm(dtype: torch.dtype, bias: bool) -> None:
    """ecoinfer.SkipLayerNorm: the Triton row kernel (every tuning configuration) and the
    torch reference kernel both give LayerNorm(X + Skip), with the sum kept in float32."""
    n = 384
    x, skip = _rand((3, 5, n), dtype, 2.0, 3.0), _rand((3, 5, n + 0), dtype, 1.5, -1.0)
    skip = skip.flip(0)  # a different tensor from x
    g, b = _rand((n,), dtype, 0.5, 1.0), _rand((n,), dtype, 0.2) if bias else None
    xs = [x, skip, g] + ([b] if bias else [])
    node = Node("SkipLayerNorm", [f"i{k}" for k in range(len(xs))], ["y"], {}, "sln", "ecoinfer")
    attrs = {**get_schema("SkipLayerNorm", "ecoinfer").attrs}
    want = _skip_ref(x, skip, g, b).numpy()
    ref = get_kernel("SkipLayerNorm", "ecoinfer")
    assert ref is not None
    (ry,) = ref(KernelContext(node, attrs, torch.device("cpu"), None, 21), xs)  # type: ignore[arg-type]
    assert ry.dtype == dtype
    assert rel_error(ry.double().numpy(), want)[0] <= TOL[dtype]
    infos = [TensorInfo(tuple(t.shape), t.dtype) for t in xs]
    cfgs = norms.norm_configs(node, attrs, infos, BUILD)
    for cfg in cfgs:
        run = norms.make_skip_layernorm(node, attrs, infos, cfg, BUILD)
        assert run is not None, cfg
        (y,) = run([t.to(DEVICE) for t in xs])
        assert y.dtype == dtype and y.shape == x.shape
        rel, max_abs = rel_error(y.cpu().double().numpy(), want)
        assert rel <= TOL[dtype], f"{cfg}: rel L2 {rel:.3e} (max abs {max_abs:.3e})"
    if dtype == torch.float32:  # the sum is not rounded first: tight against float64
        assert rel_error(y.cpu().double().numpy(), want)[0] < 1e-6


def test_skip_layernorm_declines_mismatched_skip() -> None:
    x, w = TensorInfo((4, 8), torch.float16), TensorInfo((8,), torch.float16)
    node = Node("SkipLayerNorm", ["x", "s", "w"], ["y"], {}, "sln", "ecoinfer")
    assert norms.make_skip_layernorm(node, {}, [x, x, w], {}, BUILD) is not None
    wide = TensorInfo((1, 8), torch.float16)  # a broadcast skip: not this kernel's
    assert norms.make_skip_layernorm(node, {}, [x, wide, w], {}, BUILD) is None
    other = TensorInfo((4, 8), torch.float32)
    assert norms.make_skip_layernorm(node, {}, [x, other, w], {}, BUILD) is None
    assert "triton_skip_layernorm" in [
        t.name for t in tactics_for("SkipLayerNorm", "ecoinfer", "cuda", "float16")
    ]
