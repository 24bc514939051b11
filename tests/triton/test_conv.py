"""Triton implicit-GEMM FusedConv (ecoinfer/kernels/triton/conv.py) under TRITON_INTERPRET=1
against the torch reference kernel, in float32 from the same (rounded) inputs."""

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
from ecoinfer.kernels.triton.conv import conv_configs  # noqa: E402
from ecoinfer.tune.tactics import _TACTICS, BuildInfo, TensorInfo  # noqa: E402

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
TOL = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1.5e-2}
PRECISION = {torch.float32: "float32", torch.float16: "float16", torch.bfloat16: "bfloat16"}


def reference(node: Node, attrs: dict, xs: list[torch.Tensor | None]) -> torch.Tensor:
    fn = get_kernel(node.op_type, node.domain)
    assert fn is not None
    ctx = KernelContext(node, attrs, torch.device("cpu"), None, 21)  # type: ignore[arg-type]
    return fn(ctx, [x.float() if x is not None else None for x in xs])[0]


def make(xs: list[torch.Tensor | None], cfg: dict | None = None, **attrs):  # noqa: ANN201
    x, w = xs[0], xs[1]
    assert x is not None and w is not None
    nd = x.dim() - 2
    nhwc = attrs.get("layout") == "NHWC"
    attrs.setdefault("kernel_shape", list(w.shape[1:-1] if nhwc else w.shape[2:]))
    attrs.setdefault("strides", [1] * nd)
    attrs.setdefault("dilations", [1] * nd)
    attrs.setdefault("pads", [0] * (2 * nd))
    names = ["x", "w", "b", "z"][: len(xs)]
    node = Node("FusedConv", [n if t is not None else "" for n, t in zip(names, xs)], ["y"])
    node.attrs, node.domain = attrs, "ecoinfer"
    full = {**get_schema("FusedConv", "ecoinfer").attrs, **attrs}
    infos = [TensorInfo(tuple(t.shape), t.dtype) if t is not None else None for t in xs]
    build = BuildInfo(torch.device("cpu"), PRECISION.get(x.dtype, "float32"))
    return node, full, gemm_tactics.triton_conv(node, full, infos, cfg or {}, build)


def check(xs: list[torch.Tensor | None], cfg: dict | None = None, **attrs) -> None:
    node, full, run = make(xs, cfg, **attrs)
    assert run is not None
    (y,) = run(xs)
    ref = reference(node, full, xs)
    assert y.shape == ref.shape and y.dtype == xs[0].dtype  # type: ignore[union-attr]
    err = float((y.double() - ref.double()).norm() / ref.double().norm())
    assert err <= TOL[y.dtype], f"rel error {err:.3e}"


def to_nhwc(t: torch.Tensor) -> torch.Tensor:
    return t.permute(0, *range(2, t.dim()), 1).contiguous()


GEOMETRY = {
    "3x3_s1_p1": dict(strides=[1, 1], pads=[1, 1, 1, 1], dilations=[1, 1]),
    "3x3_s2_asym": dict(strides=[2, 2], pads=[0, 1, 1, 0], dilations=[1, 1]),
    "3x3_dil2": dict(strides=[1, 2], pads=[2, 2, 2, 2], dilations=[2, 2]),
}


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
@pytest.mark.parametrize("geom", list(GEOMETRY))
def test_conv_geometry(dtype: torch.dtype, layout: str, geom: str) -> None:
    torch.manual_seed(0)
    x, w, b = torch.randn(1, 5, 9, 9), torch.randn(7, 5, 3, 3), torch.randn(7)
    if layout == "NHWC":
        x, w = to_nhwc(x), to_nhwc(w)
    check([x.to(dtype), w.to(dtype), b.to(dtype)], layout=layout, **GEOMETRY[geom])


EPILOGUES = {
    "none": ({}, False, False),
    "bias_relu": ({"activation": "Relu"}, True, False),
    "bias_clip6": ({"activation": "Clip", "activation_params": [0.0, 6.0]}, True, False),
    "hardswish": ({"activation": "HardSwish"}, True, False),
    "swish": ({"activation": "Swish", "activation_params": [1.0]}, True, False),
    "resnet_add_relu": ({"post_activation": "Relu"}, True, True),
    "act_add_act": (
        {"activation": "Relu", "post_activation": "LeakyRelu", "post_activation_params": [0.1]},
        True,
        True,
    ),
    "residual_only": ({}, False, True),
}


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
@pytest.mark.parametrize("epi", list(EPILOGUES))
def test_conv_epilogue(dtype: torch.dtype, layout: str, epi: str) -> None:
    torch.manual_seed(1)
    attrs, with_bias, with_z = EPILOGUES[epi]
    x, w = torch.randn(1, 5, 9, 9), torch.randn(6, 5, 3, 3)
    z = torch.randn(1, 6, 9, 9)
    if layout == "NHWC":
        x, w, z = to_nhwc(x), to_nhwc(w), to_nhwc(z)
    xs: list[torch.Tensor | None] = [x.to(dtype), w.to(dtype)]
    xs.append(torch.randn(6).to(dtype) if with_bias else None)
    if with_z:
        xs.append(z.to(dtype))
    check(xs, layout=layout, pads=[1, 1, 1, 1], **attrs)


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
def test_conv_broadcast_residual_and_1x1(layout: str) -> None:
    """A per-channel Z broadcast over the image; a 1x1 strided projection (ResNet downsample)."""
    torch.manual_seed(2)
    x, w = torch.randn(2, 8, 6, 6), torch.randn(4, 8, 1, 1)
    z = torch.randn(4, 1, 1)
    if layout == "NHWC":
        x, w, z = to_nhwc(x), to_nhwc(w), z.permute(1, 2, 0)
    check([x, w, torch.randn(4), z], layout=layout, strides=[2, 2], post_activation="Relu")


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
def test_conv_1d(layout: str) -> None:
    torch.manual_seed(3)
    x, w, z = torch.randn(2, 5, 11), torch.randn(4, 5, 3), torch.randn(2, 4, 6)
    if layout == "NHWC":
        x, w, z = to_nhwc(x), to_nhwc(w), to_nhwc(z)
    check([x, w, torch.randn(4), z], layout=layout, strides=[2], pads=[1, 1], activation="Tanh")


def test_conv_stem_7x7_nchw_fp16() -> None:
    """ResNet's stem: 3 input channels (one padded K block), 7x7 stride 2 pad 3."""
    torch.manual_seed(4)
    x, w = torch.randn(1, 3, 16, 16).half(), torch.randn(8, 3, 7, 7).half()
    check([x, w, torch.randn(8).half()], strides=[2, 2], pads=[3, 3, 3, 3], activation="Relu")


def test_conv_every_proposed_config() -> None:
    torch.manual_seed(5)
    x, w, b = torch.randn(1, 20, 9, 9).half(), torch.randn(24, 20, 3, 3).half(), torch.randn(24)
    xs = [to_nhwc(x), to_nhwc(w), b.half()]
    node, full, _ = make(list(xs), layout="NHWC", pads=[1, 1, 1, 1])
    infos = [TensorInfo(tuple(t.shape), t.dtype) for t in xs]
    cfgs = gemm_tactics._conv_configs(node, full, infos, None)  # type: ignore[arg-type]
    assert 2 <= len(cfgs) <= 8
    for cfg in cfgs:
        check(list(xs), cfg=cfg, layout="NHWC", pads=[1, 1, 1, 1], activation="Relu")


def test_conv_configs_sized() -> None:
    big = conv_configs(32 * 56 * 56, 256, 64, torch.float16)
    assert any(c.BLOCK_M * c.BLOCK_N >= 128 * 128 for c in big)
    small = conv_configs(81, 7, 5, torch.float32)
    assert all(c.BLOCK_N == 16 and c.BLOCK_K == 16 for c in small)


def test_conv_declines() -> None:
    x = torch.randn(1, 4, 8, 8)
    # grouped and depthwise, 3-D, integer inputs
    assert make([x, torch.randn(4, 2, 3, 3)], group=2)[2] is None
    assert make([x, torch.randn(4, 1, 3, 3)], group=4)[2] is None
    assert make([torch.randn(1, 4, 4, 4, 4), torch.randn(2, 4, 1, 1, 1)])[2] is None
    assert make([x.long(), torch.randn(2, 4, 1, 1).long()])[2] is None
    assert make([x, torch.randn(2, 4, 1, 1)], activation="Softplus")[2] is None


def test_conv_tactic_registered() -> None:
    names = {t.name for t in _TACTICS[("ecoinfer", "FusedConv")]}
    assert "triton_conv" in names
