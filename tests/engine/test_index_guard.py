"""Index inputs on the GPU are checked on the device, with no host sync per call (GPU)."""

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
from ecoinfer.errors import IndexOutOfRangeError

CUDA = torch.cuda.is_available()
VOCAB = 10


def _embed(path: Path) -> Path:
    table = nh.from_array(np.arange(VOCAB * 4, dtype=np.float32).reshape(VOCAB, 4), "table")
    g = oh.make_graph(
        [
            oh.make_node("Gather", ["table", "ids"], ["e"], axis=0),
            oh.make_node("Relu", ["e"], ["y"]),
        ],
        "embed",
        [oh.make_tensor_value_info("ids", TensorProto.INT64, [2, 3])],
        [oh.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3, 4])],
        [table],
    )
    onnx.save(oh.make_model(g, opset_imports=[oh.make_opsetid("", 17)]), path)
    return path


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")
def test_bad_index_on_gpu_raises_later_without_faulting(tmp_path) -> None:  # noqa: ANN001
    shp = {"ids": (2, 3)}
    eng = build(
        _embed(tmp_path / "embed.onnx"),
        BuildConfig(device="cuda", precision="float32", profiles=[ShapeProfile(shp, shp, shp)]),
    )
    ctx = eng.create_context()
    good = torch.tensor([[0, 1, 2], [3, -1, 9]], device="cuda")
    bad = good.clone()
    bad[1, 1] = VOCAB + 5
    want = ctx.run({"ids": good}, as_torch=True)["y"].clone()
    ctx.synchronize()  # nothing flagged

    ctx.run({"ids": bad}, as_torch=True)  # returns at once: the check is on the GPU
    assert bad[1, 1].item() == VOCAB + 5  # the caller's tensor is left alone
    with pytest.raises(IndexOutOfRangeError, match=r"input 'ids' held an index .*\[-10, 9\]"):
        ctx.synchronize()
    # the flags were cleared and the CUDA context still works
    again = ctx.run({"ids": good}, as_torch=True)["y"]
    ctx.synchronize()
    assert torch.equal(again, want) and ctx.graph_replays >= 2

    # numpy outputs wait for the GPU, so the call itself raises, with the exact value
    with pytest.raises(IndexOutOfRangeError, match=f"holds index {VOCAB + 5}"):
        ctx.run({"ids": bad})
    # a bad call followed by good ones: a later call reports it once its flags are back
    ctx.run({"ids": bad}, as_torch=True)
    torch.cuda.synchronize()
    with pytest.raises(IndexOutOfRangeError, match="in a call since the last check"):
        ctx.run({"ids": good}, as_torch=True)
    ctx.run({"ids": good}, as_torch=True)
    ctx.synchronize()
