"""The NHWC max-pool Triton kernel against the reference kernel (TRITON_INTERPRET=1 on CPU)."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from ecoinfer.ir.graph import Node
from ecoinfer.ir.ops.registry import get_schema
from ecoinfer.kernels.triton import pool
from ecoinfer.tune.autotune import reference_runfn
from ecoinfer.tune.tactics import BuildInfo, TensorInfo, tactics_for

CASES: list[tuple[tuple[int, ...], dict[str, Any]]] = [
    # ResNet's stem pool: 3x3, stride 2, pad 1
    ((2, 9, 11, 24), {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1]}),
    ((1, 7, 7, 5), {"kernel_shape": [2, 2], "strides": [2, 2], "ceil_mode": 1}),
    ((2, 8, 6, 3), {"kernel_shape": [3, 2], "dilations": [2, 1], "pads": [2, 0, 1, 1]}),
    ((1, 5, 5, 130), {"kernel_shape": [5, 5], "pads": [2, 2, 2, 2]}),
]


def _run(x: torch.Tensor, attrs: dict[str, Any], cfg: dict | None = None):  # noqa: ANN202
    full = {**get_schema("MaxPool", "ecoinfer").attrs, **attrs, "layout": "NHWC"}
    node = Node("MaxPool", ["x"], ["y"], dict(full), "pool0", "ecoinfer")
    build = BuildInfo(torch.device("cpu"), "float32")
    run = pool.make(node, full, [TensorInfo(tuple(x.shape), x.dtype)], cfg or {}, build)
    ref = reference_runfn(node, full, build.device)([x])[0]
    return run, ref, full


@pytest.mark.parametrize("case", range(len(CASES)))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
def test_maxpool_nhwc_matches_reference(case: int, dtype: torch.dtype) -> None:
    torch.manual_seed(case)
    shape, attrs = CASES[case]
    x = torch.randn(shape).to(dtype)
    run, ref, full = _run(x, attrs)
    assert run is not None
    for cfg in pool.configs(Node("MaxPool", ["x"], ["y"]), full, [TensorInfo(shape, dtype)], None):  # type: ignore[arg-type]
        y = pool.maxpool_nhwc(x, full, pool.PoolConfig(**cfg))
        assert y.shape == ref.shape and y.dtype == dtype
        assert torch.equal(y, ref), cfg  # a max is exact


def test_maxpool_nhwc_nan_and_strided_input() -> None:
    x = torch.randn(1, 6, 6, 40)
    x[0, 2, 3, 7] = float("nan")
    view = torch.randn(1, 6, 6, 80)[..., ::2]  # channels not contiguous: copied first
    for t in (x, view):
        run, ref, _ = _run(t, CASES[0][1])
        assert run is not None
        y = run([t])[0]
        assert torch.equal(y.isnan(), ref.isnan()) and y.isnan().any() == ref.isnan().any()
        torch.testing.assert_close(y, ref, equal_nan=True, rtol=0, atol=0)


def test_maxpool_nhwc_declines() -> None:
    x = torch.randn(1, 6, 6, 8)
    full = {**get_schema("MaxPool", "ecoinfer").attrs, "kernel_shape": [2, 2], "layout": "NHWC"}
    build = BuildInfo(torch.device("cpu"), "float32")
    info = [TensorInfo(tuple(x.shape), x.dtype)]
    with_idx = Node("MaxPool", ["x"], ["y", "i"], dict(full), "p", "ecoinfer")
    assert pool.make(with_idx, full, info, {}, build) is None  # Indices wanted
    nchw = {**full, "layout": "NCHW"}
    assert (
        pool.make(Node("MaxPool", ["x"], ["y"], nchw, "p", "ecoinfer"), nchw, info, {}, build)
        is None
    )
    same = {**full, "auto_pad": "SAME_UPPER"}
    assert (
        pool.make(Node("MaxPool", ["x"], ["y"], same, "p", "ecoinfer"), same, info, {}, build)
        is None
    )
    assert any(
        t.name == "triton_maxpool" for t in tactics_for("MaxPool", "ecoinfer", "cuda", "float16")
    )
