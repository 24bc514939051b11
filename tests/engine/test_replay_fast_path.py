"""A call whose tensor feeds match the last replayed signature goes straight to the CUDA
graph replay, with the same results and the same index checks as the full path (GPU)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto
from onnx import helper as oh
from onnx import numpy_helper as nh

from ecoinfer.engine.builder import BuildConfig, build
from ecoinfer.engine.runtime import ShapeProfile
from ecoinfer.errors import IndexOutOfRangeError, InputShapeError

CUDA = torch.cuda.is_available()
VOCAB = 10
pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")]


def _engine(tmp_path: Path):  # noqa: ANN202
    table = nh.from_array(np.arange(VOCAB * 4, dtype=np.float32).reshape(VOCAB, 4), "table")
    g = oh.make_graph(
        [
            oh.make_node("Gather", ["table", "ids"], ["e"], axis=0),
            oh.make_node("Mul", ["e", "x"], ["y"]),
        ],
        "embed_scale",
        [
            oh.make_tensor_value_info("ids", TensorProto.INT64, ["n", 3]),
            oh.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3, 4]),
        ],
        [oh.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 3, 4])],
        [table],
    )
    path = tmp_path / "embed_scale.onnx"
    onnx.save(oh.make_model(g, opset_imports=[oh.make_opsetid("", 17)]), path)
    prof = ShapeProfile(
        {"ids": (1, 3), "x": (1, 3, 4)},
        {"ids": (2, 3), "x": (2, 3, 4)},
        {"ids": (4, 3), "x": (4, 3, 4)},
    )
    return build(path, BuildConfig(device="cuda", precision="float32", profiles=[prof]))


def _feeds(n: int, seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, VOCAB, (n, 3), generator=g)
    return {"ids": ids.cuda(), "x": torch.randn(n, 3, 4, generator=g).cuda()}


def _want(f: dict[str, torch.Tensor]) -> torch.Tensor:
    table = torch.arange(VOCAB * 4, dtype=torch.float32, device="cuda").reshape(VOCAB, 4)
    return table[f["ids"]] * f["x"]


def test_fast_path_results_checks_and_switches(tmp_path, monkeypatch) -> None:  # noqa: ANN001
    ctx = _engine(tmp_path).create_context()
    a2 = _feeds(2, 0)
    ctx.run(a2, as_torch=True)  # capture
    assert ctx._fast is not None  # this signature now replays directly
    planned = []
    real_plan = ctx._plan
    monkeypatch.setattr(ctx, "_plan", lambda s: planned.append(s) or real_plan(s))
    replays = ctx.graph_replays
    for seed in range(1, 4):  # new values, same signature: the fast path, right results
        f = _feeds(2, seed)
        torch.testing.assert_close(ctx.run(f, as_torch=True)["y"], _want(f))
    assert planned == [] and ctx.graph_replays == replays + 3

    # another shape goes the full path (its own capture), then has the fast path itself
    a4 = _feeds(4, 7)
    torch.testing.assert_close(ctx.run(a4, as_torch=True)["y"], _want(a4))
    assert len(planned) == 1
    torch.testing.assert_close(ctx.run(_feeds(4, 8), as_torch=True)["y"], _want(_feeds(4, 8)))
    assert len(planned) == 1
    # back to the first shape: full path once (its graph is kept), right results
    torch.testing.assert_close(ctx.run(a2, as_torch=True)["y"], _want(a2))
    assert len(planned) == 2

    # a bad index at the fast signature: the call returns, the guard reports it later
    bad = {k: v.clone() for k, v in a2.items()}
    bad["ids"][0, 0] = VOCAB + 3
    ctx.run(bad, as_torch=True)
    with pytest.raises(IndexOutOfRangeError, match="input 'ids' held an index"):
        ctx.synchronize()
    torch.testing.assert_close(ctx.run(a2, as_torch=True)["y"], _want(a2))

    # numpy outputs and host tensors take the full path, which checks on the host
    with pytest.raises(IndexOutOfRangeError, match=f"holds index {VOCAB + 3}"):
        ctx.run(bad)
    host = {k: v.cpu() for k, v in a2.items()}
    torch.testing.assert_close(ctx.run(host, as_torch=True)["y"], _want(a2))
    with pytest.raises(IndexOutOfRangeError, match=f"holds index {VOCAB + 3}"):
        ctx.run({k: v.cpu() for k, v in bad.items()}, as_torch=True)
    # a shape outside the profile is still refused with the profile's message
    with pytest.raises(InputShapeError, match="outside every shape profile"):
        ctx.run(_feeds(5, 9), as_torch=True)
    ctx.synchronize()


def test_outputs_of_fast_calls_are_not_overwritten(tmp_path) -> None:  # noqa: ANN001
    """Each call's outputs are its own copy: the next replay does not change them."""
    ctx = _engine(tmp_path).create_context()
    ctx.run(_feeds(2, 0), as_torch=True)
    feeds = [_feeds(2, s) for s in range(1, 6)]
    outs = [ctx.run(f, as_torch=True)["y"] for f in feeds]
    for f, y in zip(feeds, outs):
        torch.testing.assert_close(y, _want(f))
