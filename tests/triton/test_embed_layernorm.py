"""Triton ecoinfer.EmbedLayerNorm against the torch reference kernel.

Runs under Triton's CPU interpreter (tests/triton/conftest.py sets TRITON_INTERPRET=1); with
TRITON_INTERPRET=0 and CUDA the same tests run on the GPU.
"""

from __future__ import annotations

import os

import pytest
import torch
from helpers import rel_error

from ecoinfer.ir.graph import Node
from ecoinfer.ir.ops import get_schema
from ecoinfer.kernels.torch_ops import KernelContext, get_kernel
from ecoinfer.kernels.triton import embed_layernorm as eln
from ecoinfer.tune.tactics import BuildInfo, TensorInfo, tactics_for

INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"
# without CUDA and without the interpreter (test_compile_sm90.py's pass) launches on CPU
# tensors are compiled for sm_90, not run
DEVICE = torch.device("cuda" if not INTERPRET and torch.cuda.is_available() else "cpu")
BUILD = BuildInfo(device=DEVICE, precision="float32")
TOL = {torch.float32: 1e-5, torch.float16: 1e-2, torch.bfloat16: 1e-2}


def _node(k: int, bias: bool, eps: float = 1e-5) -> Node:
    n_in = 2 * k + 1 + int(bias)
    attrs = {"num_lookups": k, "epsilon": eps}
    return Node("EmbedLayerNorm", [f"i{j}" for j in range(n_in)], ["y"], attrs, "n", "ecoinfer")


def _reference(node: Node, xs: list[torch.Tensor]) -> torch.Tensor:
    """The torch reference kernel, tables/scale/bias in float32."""
    attrs = {**get_schema(node.op_type, node.domain).attrs, **node.attrs}
    ctx = KernelContext(node, attrs, torch.device("cpu"), None, 21)  # type: ignore[arg-type]
    fn = get_kernel(node.op_type, node.domain)
    assert fn is not None
    return fn(ctx, [x.cpu().float() if x.is_floating_point() else x.cpu() for x in xs])[0]


def _case(
    k: int, h: int, dtype: torch.dtype, lead=(3, 7), negative: bool = False, bias: bool = True
) -> list[torch.Tensor]:
    """k lookups: word-like ids over `lead`, int32 type ids, [1, S] (broadcast) positions,
    [S] (rank-1, broadcast) extra ids; tables of different sizes."""
    g = torch.Generator().manual_seed(k * 100 + h)
    sizes = [50, 3, 20, 9][:k]
    shapes = [lead, lead, (1,) + tuple(lead[1:]), tuple(lead[-1:])][:k]
    xs: list[torch.Tensor] = []
    for j, (v, shape) in enumerate(zip(sizes, shapes)):
        lo = -v if negative else 0
        ids = torch.randint(lo, v, shape, generator=g)
        xs += [
            ids.to(torch.int32 if j == 1 else torch.int64),
            torch.randn(v, h, generator=g).to(dtype),
        ]
    xs.append((torch.randn(h, generator=g) * 0.5 + 1.0).to(dtype))
    if bias:
        xs.append((torch.randn(h, generator=g) * 0.1).to(dtype))
    return xs


def _check(node: Node, xs: list[torch.Tensor], cfg: dict | None = None) -> None:
    infos = [TensorInfo(tuple(x.shape), x.dtype) for x in xs]
    ref = _reference(node, xs)
    cfgs = [cfg] if cfg is not None else eln.configs(node, node.attrs, infos, BUILD)
    assert cfgs
    dt = xs[1].dtype
    for c in cfgs:
        run = eln.make_embed_layernorm(node, node.attrs, infos, c, BUILD)
        assert run is not None, c
        (out,) = run([x.to(DEVICE) for x in xs])
        assert out.dtype == dt and out.shape == ref.shape
        rel, max_abs = rel_error(out.cpu().double().numpy(), ref.double().numpy())
        assert rel <= TOL[dt], f"{c}: rel L2 {rel:.3e} (max abs {max_abs:.3e})"


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
@pytest.mark.parametrize("k", [2, 3, 4])
def test_lookups_broadcast_and_negative_ids(k: int, dtype: torch.dtype) -> None:
    """H = 48 (not a power of two: masked columns), int32 and int64 ids, broadcast ids."""
    _check(_node(k, bias=True), _case(k, 48, dtype, negative=True))


@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
def test_every_row_config(bias: bool) -> None:
    _check(_node(3, bias), _case(3, 96, torch.float32, lead=(5, 4), bias=bias))


def test_fp16_is_the_fp32_computation_rounded_once() -> None:
    """fp16 tables: the kernel sums in fp32 like the reference (the unfused graph would round
    each partial sum), so it agrees with the reference far below fp16's tolerance."""
    xs = _case(3, 48, torch.float16)
    node = _node(3, True)
    infos = [TensorInfo(tuple(x.shape), x.dtype) for x in xs]
    run = eln.make_embed_layernorm(node, node.attrs, infos, {}, BUILD)
    assert run is not None
    (out,) = run([x.to(DEVICE) for x in xs])
    ref = _reference(node, xs).to(torch.float16).float()  # one rounding of the fp32 result
    assert ((out.cpu().float() - ref).abs() <= ref.abs() * 2**-10 + 2**-24).all()  # <= 1 ulp


@pytest.mark.parametrize("lead", [(2, 3, 5), (4,), ()], ids=["rank3", "rank1", "scalar"])
def test_other_leading_ranks(lead: tuple[int, ...]) -> None:
    g = torch.Generator().manual_seed(3)
    xs = [torch.randint(0, 10, lead, generator=g), torch.randn(10, 40, generator=g)]
    # [B, 1, S]-like ids under a rank-3 leading shape: dims that do not collapse to one stride
    ids2 = torch.randint(0, 6, (lead[0], 1, lead[2]) if len(lead) == 3 else lead, generator=g)
    xs += [ids2, torch.randn(6, 40, generator=g), torch.randn(40, generator=g)]
    _check(_node(2, bias=False), xs, {})


def test_out_of_range_index_reads_a_zero_row() -> None:
    """The kernel cannot raise: an index outside [-V, V) contributes zeros (the reference
    raises; the engine runtime checks graph inputs before running)."""
    xs = _case(2, 48, torch.float32, lead=(1, 4))
    xs[0][0, 1] = 50  # V = 50
    node = _node(2, True)
    infos = [TensorInfo(tuple(x.shape), x.dtype) for x in xs]
    run = eln.make_embed_layernorm(node, node.attrs, infos, {}, BUILD)
    assert run is not None
    (out,) = run([x.to(DEVICE) for x in xs])
    ok = [x.clone() for x in xs]
    ok[0][0, 1] = 0
    ok[1] = ok[1].clone()
    ok[1][0] = 0.0  # row 0 zeroed: what the bad index reads
    assert torch.allclose(out.cpu()[0, 1], _reference(node, ok)[0, 1], atol=1e-5)


def test_declines() -> None:
    node = _node(2, True)
    ids = TensorInfo((2, 8), torch.int64)
    tab = TensorInfo((10, 48), torch.float32)
    vec = TensorInfo((48,), torch.float32)
    ok = [ids, tab, ids, tab, vec, vec]
    assert eln.make_embed_layernorm(node, node.attrs, ok, {}, BUILD) is not None
    bad = {
        "float ids": [TensorInfo((2, 8), torch.float32), tab, ids, tab, vec, vec],
        "int16 ids": [TensorInfo((2, 8), torch.int16), tab, ids, tab, vec, vec],
        "table dtypes differ": [ids, tab, ids, TensorInfo((10, 48), torch.float16), vec, vec],
        "table widths differ": [ids, tab, ids, TensorInfo((10, 40), torch.float32), vec, vec],
        "3-D table": [ids, TensorInfo((10, 4, 12), torch.float32), ids, tab, vec, vec],
        "ids do not broadcast": [ids, tab, TensorInfo((3, 8), torch.int64), tab, vec, vec],
        "scale not along H": [ids, tab, ids, tab, TensorInfo((2, 48), torch.float32), vec],
        "int table": [ids, TensorInfo((10, 48), torch.int64), ids, tab, vec, vec],
        "inputs missing": [ids, tab, ids, tab],
    }
    for why, infos in bad.items():
        assert eln.make_embed_layernorm(node, node.attrs, infos, {}, BUILD) is None, why
    five = _node(5, True)
    infos5 = [ids, tab] * 5 + [vec, vec]
    assert eln.make_embed_layernorm(five, five.attrs, infos5, {}, BUILD) is None  # k > 4
    wide = TensorInfo((10, 20000), torch.float32)  # beyond MAX_BLOCK
    wv = TensorInfo((20000,), torch.float32)
    assert eln.make_embed_layernorm(node, node.attrs, [ids, wide, ids, wide, wv], {}, BUILD) is None
    cpu = BuildInfo(device=torch.device("cpu"), precision="float32")
    if not INTERPRET:
        assert eln.make_embed_layernorm(node, node.attrs, ok, {}, cpu) is None


def test_registered_for_cuda() -> None:
    for dt in ("float32", "float16", "bfloat16"):
        names = [t.name for t in tactics_for("EmbedLayerNorm", "ecoinfer", "cuda", dt)]
        assert "triton_embed_layernorm" in names
    assert "triton_embed_layernorm" not in [
        t.name for t in tactics_for("EmbedLayerNorm", "ecoinfer", "cpu", "float32")
    ]
