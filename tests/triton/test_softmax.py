"""Triton Softmax / LogSoftmax against the torch reference kernels (float32 references).

Runs under Triton's CPU interpreter (tests/triton/conftest.py sets TRITON_INTERPRET=1); with
TRITON_INTERPRET=0 and CUDA the same tests run on the GPU.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from helpers import rel_error

from ecoinfer.ir.graph import Node
from ecoinfer.ir.ops import get_schema
from ecoinfer.kernels.torch_ops import KernelContext, get_kernel
from ecoinfer.kernels.triton import softmax as sm
from ecoinfer.tune.tactics import BuildInfo, TensorInfo, tactics_for

INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"
# without CUDA and without the interpreter (test_compile_sm90.py's pass) launches on CPU
# tensors are compiled for sm_90, not run
DEVICE = torch.device("cuda" if not INTERPRET and torch.cuda.is_available() else "cpu")
BUILD = BuildInfo(device=DEVICE, precision="float32")

TOL = {torch.float32: 1e-5, torch.float16: 1e-2, torch.bfloat16: 1e-2}
FLOATS = [torch.float32, torch.float16, torch.bfloat16]


def _node(op: str, axis: int = -1) -> Node:
    return Node(op, ["x"], ["y"], {"axis": axis}, "n")


def _reference(node: Node, x: torch.Tensor) -> torch.Tensor:
    attrs = {**get_schema(node.op_type).attrs, **node.attrs}
    ctx = KernelContext(node, attrs, torch.device("cpu"), None, 21)  # type: ignore[arg-type]
    fn = get_kernel(node.op_type)
    assert fn is not None
    return fn(ctx, [x.cpu().float()])[0]


def _check(node: Node, x: torch.Tensor, cfgs: list[dict] | None = None) -> None:
    infos = [TensorInfo(tuple(x.shape), x.dtype)]
    ref = _reference(node, x)
    for cfg in cfgs or sm.softmax_configs(node, node.attrs, infos, BUILD):
        run = sm.make_softmax(node, node.attrs, infos, cfg, BUILD)
        assert run is not None, cfg
        (out,) = run([x.to(DEVICE)])
        assert out.dtype == x.dtype and out.shape == x.shape
        o, r = out.cpu().double().numpy(), ref.double().numpy()
        # NaN (all -inf rows) and -inf (LogSoftmax of masked entries) where the reference has them
        bad = ~np.isfinite(r)
        assert np.array_equal(o[bad], r[bad], equal_nan=True), "non-finite values differ"
        rel, max_abs = rel_error(o[~bad], r[~bad])
        assert rel <= TOL[x.dtype], f"{cfg}: rel L2 {rel:.3e} (max abs {max_abs:.3e})"


def _rand(shape: tuple[int, ...], dtype: torch.dtype, scale: float = 3.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(sum(shape) + len(shape))
    return (torch.randn(shape, generator=g) * scale).to(dtype)


@pytest.mark.parametrize("dtype", FLOATS, ids=str)
@pytest.mark.parametrize("n", [37, 384, 1000])
@pytest.mark.parametrize("op", ["Softmax", "LogSoftmax"])
def test_softmax(op: str, n: int, dtype: torch.dtype) -> None:
    _check(_node(op), _rand((2, 3, n), dtype))


@pytest.mark.parametrize("op", ["Softmax", "LogSoftmax"])
def test_large_logits_and_masked_rows(op: str) -> None:
    # scores of +-1e4 (no overflow: the row max is subtracted), a row with -inf entries
    # (an attention mask) and a row of only -inf (NaN, as the reference gives)
    x = _rand((4, 19), torch.float32, 1e4)
    x[1, ::2] = float("-inf")
    x[2, :] = float("-inf")
    _check(_node(op), x)


def test_one_column_and_non_contiguous_input() -> None:
    _check(_node("Softmax"), _rand((5, 1), torch.float32))
    _check(_node("Softmax"), _rand((33, 6), torch.float32).t())  # [6, 33], column stride 6


def test_declines_other_axes_and_integers() -> None:
    info = [TensorInfo((4, 8), torch.float32)]
    node = _node("Softmax", axis=0)
    assert sm.make_softmax(node, node.attrs, info, {}, BUILD) is None
    node = _node("Softmax", axis=1)  # the last axis, written positively
    assert sm.make_softmax(node, node.attrs, info, {}, BUILD) is not None
    node = _node("Softmax")
    assert sm.make_softmax(node, node.attrs, [TensorInfo((4, 8), torch.int64)], {}, BUILD) is None


def test_registered_for_cuda() -> None:
    for op in ("Softmax", "LogSoftmax"):
        assert "triton_softmax" in [t.name for t in tactics_for(op, "", "cuda", "float16")]
        assert "triton_softmax" not in [t.name for t in tactics_for(op, "", "cpu", "float32")]
