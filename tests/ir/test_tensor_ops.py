"""Tensor and reduce ops: symbolic shape propagation through run-time shape arithmetic
(Shape -> Gather -> Unsqueeze -> Concat -> Reshape, as exporters emit it), Reshape's -1,
index range errors, reduction shapes, and kernel details the conformance cases leave open
(stable TopK ties, unsigned dtypes, CUDA)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from ecoinfer.api import Model
from ecoinfer.errors import IndexOutOfRangeError
from ecoinfer.frontend.onnx import import_onnx

F, I64 = TensorProto.FLOAT, TensorProto.INT64
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def _const(name: str, values: list[int] | int) -> TensorProto:
    return numpy_helper.from_array(np.array(values, dtype=np.int64), name)


def _graph_model(
    nodes: list[onnx.NodeProto],
    inputs: list[tuple[str, int, list]],
    outputs: list[str],
    inits: list[TensorProto] | None = None,
    opset: int = 21,
) -> onnx.ModelProto:
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info(n, t, s) for n, t, s in inputs],
        [helper.make_empty_tensor_value_info(o) for o in outputs],
        initializer=inits or [],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def _one(op: str, inputs: list[tuple[str, int, list]], inits=None, n_out: int = 1, **attrs):
    names = [n for n, _, _ in inputs] + [t.name for t in inits or []]
    node = helper.make_node(op, names, [f"y{k}" for k in range(n_out)], name="node0", **attrs)
    return _graph_model([node], inputs, [f"y{k}" for k in range(n_out)], inits)


def _run(model: onnx.ModelProto, feeds: dict, device: str = "cpu") -> dict:
    return Model(import_onnx(model)).run(feeds, device=device)


# ---------------------------------------------------------------------------- symbolic shapes
def _split_heads_model() -> onnx.ModelProto:
    """x[batch, seq, 768] -> reshape to [batch, seq, 12, 64] via run-time shape arithmetic."""
    nodes = [
        helper.make_node("Shape", ["x"], ["shape"]),
        helper.make_node("Gather", ["shape", "i0"], ["b"], axis=0),
        helper.make_node("Gather", ["shape", "i1"], ["s"], axis=0),
        helper.make_node("Unsqueeze", ["b", "ax0"], ["b1"]),
        helper.make_node("Unsqueeze", ["s", "ax0"], ["s1"]),
        helper.make_node("Concat", ["b1", "s1", "heads", "dim"], ["new_shape"], axis=0),
        helper.make_node("Reshape", ["x", "new_shape"], ["y"]),
        # and back: keep the first two dims, let -1 find the rest
        helper.make_node("Shape", ["y"], ["yshape"], end=2),
        helper.make_node("Concat", ["yshape", "minus1"], ["back_shape"], axis=0),
        helper.make_node("Reshape", ["y", "back_shape"], ["z"]),
    ]
    inits = [
        _const("i0", 0),
        _const("i1", 1),
        _const("ax0", [0]),
        _const("heads", [12]),
        _const("dim", [64]),
        _const("minus1", [-1]),
    ]
    return _graph_model(nodes, [("x", F, ["batch", "seq", 768])], ["y", "z"], inits)


def test_shape_gather_concat_reshape_keeps_symbolic_dims() -> None:
    g = import_onnx(_split_heads_model())
    v = g.values
    assert v["shape"].sym == ("batch", "seq", 768)
    assert v["b"].shape == () and v["b"].sym == ("batch",)
    assert v["s1"].shape == (1,) and v["s1"].sym == ("seq",)
    assert v["new_shape"].sym == ("batch", "seq", 12, 64)
    assert v["y"].shape == ("batch", "seq", 12, 64)
    assert v["yshape"].sym == ("batch", "seq")
    assert v["z"].shape == ("batch", "seq", 768)  # -1 solved: 12 * 64
    x = np.random.rand(2, 5, 768).astype(np.float32)
    out = _run(_split_heads_model(), {"x": x})
    np.testing.assert_array_equal(out["y"], x.reshape(2, 5, 12, 64))
    np.testing.assert_array_equal(out["z"], x)


def test_reshape_minus_one() -> None:
    g = import_onnx(_one("Reshape", [("x", F, [2, 3, 4])], [_const("shape", [-1, 4])]))
    assert g.values["y0"].shape == (6, 4)
    # 0 copies the input dim; -1 over symbols keeps the leftover symbol
    g = import_onnx(_one("Reshape", [("x", F, ["batch", "seq", 768])], [_const("shape", [0, -1])]))
    assert g.values["y0"].shape == ("batch", "seq*768")
    g = import_onnx(_one("Reshape", [("x", F, ["batch", 8, 64])], [_const("shape", [-1, 64])]))
    assert g.values["y0"].shape == ("batch*8", 64)
    # unknown leftover: a fresh symbol rather than nothing
    g = import_onnx(_one("Reshape", [("x", F, ["n", 10])], [_const("shape", [4, -1])]))
    d = g.values["y0"].shape
    assert d[0] == 4 and isinstance(d[1], str)
    # allowzero: 0 is a real size
    g = import_onnx(_one("Reshape", [("x", F, [0, 3])], [_const("shape", [3, 0])], allowzero=1))
    assert g.values["y0"].shape == (3, 0)
    x = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    out = _run(_one("Reshape", [("x", F, [2, 3, 4])], [_const("shape", [0, -1])]), {"x": x})
    assert out["y0"].shape == (2, 12)


def test_expand_constantofshape_range_from_syms() -> None:
    nodes = [
        helper.make_node("Shape", ["x"], ["sh"]),
        helper.make_node("ConstantOfShape", ["sh"], ["zeros"]),
        helper.make_node("Expand", ["one", "sh"], ["ex"]),
        helper.make_node("Gather", ["sh", "i1"], ["seq"], axis=0),
        helper.make_node("Range", ["start", "seq", "step"], ["pos"]),
        helper.make_node("Tile", ["x", "reps"], ["tiled"]),
        helper.make_node("Slice", ["x", "st", "en", "axs"], ["sl"]),
        helper.make_node("Size", ["x"], ["n"]),
        helper.make_node("Flatten", ["x"], ["flat"], axis=1),
    ]
    inits = [
        numpy_helper.from_array(np.array([1.0], dtype=np.float32), "one"),
        _const("i1", 1),
        _const("start", 0),
        _const("step", 1),
        _const("reps", [2, 1]),
        _const("st", [0]),
        _const("en", [2**63 - 1]),
        _const("axs", [1]),
    ]
    model = _graph_model(
        nodes,
        [("x", F, ["batch", "seq"])],
        ["zeros", "ex", "pos", "tiled", "sl", "n", "flat"],
        inits,
    )
    v = import_onnx(model).values
    assert v["zeros"].shape == ("batch", "seq") and v["zeros"].dtype == "float32"
    assert v["ex"].shape == ("batch", "seq")
    assert v["pos"].shape == ("seq",) and v["pos"].dtype == "int64"
    assert v["tiled"].shape == ("batch*2", "seq")
    assert v["sl"].shape == ("batch", "seq")
    assert v["n"].shape == () and v["n"].sym == ("batch*seq",)
    assert v["flat"].shape == ("batch", "seq")
    out = _run(model, {"x": np.ones((3, 4), np.float32)})
    np.testing.assert_array_equal(out["pos"], np.arange(4))
    assert out["tiled"].shape == (6, 4) and int(out["n"]) == 12


def test_data_dependent_outputs_get_new_symbols() -> None:
    v = import_onnx(_one("NonZero", [("x", F, [3, 4])])).values
    assert v["y0"].shape[0] == 2 and isinstance(v["y0"].shape[1], str)
    v = import_onnx(_one("Unique", [("x", F, [5])], n_out=4)).values
    u = v["y0"].shape[0]
    assert isinstance(u, str) and v["y1"].shape == (u,) and v["y2"].shape == (5,)


# ---------------------------------------------------------------------------- index errors
def test_gather_out_of_range_names_node_input_value_and_range() -> None:
    model = _one("Gather", [("data", F, [3, 4]), ("idx", I64, ["n"])], axis=1)
    with pytest.raises(IndexOutOfRangeError) as e:
        _run(model, {"data": np.zeros((3, 4), np.float32), "idx": np.array([1, 7])})
    msg = str(e.value)
    assert "\n" not in msg
    assert "node0" in msg and "'idx'" in msg and "7" in msg and "[-4, 3]" in msg
    with pytest.raises(IndexOutOfRangeError, match="-5"):
        _run(model, {"data": np.zeros((3, 4), np.float32), "idx": np.array([-5])})
    # negative indices inside the range are fine
    out = _run(
        model, {"data": np.arange(12, dtype=np.float32).reshape(3, 4), "idx": np.array([-1])}
    )
    np.testing.assert_array_equal(out["y0"], [[3], [7], [11]])


@pytest.mark.parametrize(
    "op, attrs",
    [("GatherElements", {}), ("ScatterElements", {}), ("GatherND", {}), ("ScatterND", {})],
)
def test_other_index_ops_raise_out_of_range(op: str, attrs: dict) -> None:
    data = np.zeros((2, 3), np.float32)
    if op == "GatherElements":
        feeds, ins = {"data": data, "idx": np.array([[0, 3, 0]])}, [("idx", I64, [1, 3])]
    elif op == "ScatterElements":
        feeds = {"data": data, "idx": np.array([[0, 3, 0]]), "upd": np.ones((1, 3), np.float32)}
        ins = [("idx", I64, [1, 3]), ("upd", F, [1, 3])]
    elif op == "GatherND":
        feeds, ins = {"data": data, "idx": np.array([[1, 3]])}, [("idx", I64, [1, 2])]
    else:
        feeds = {"data": data, "idx": np.array([[2]]), "upd": np.ones((1, 3), np.float32)}
        ins = [("idx", I64, [1, 1]), ("upd", F, [1, 3])]
    model = _one(op, [("data", F, [2, 3])] + ins, **attrs)
    with pytest.raises(IndexOutOfRangeError, match=r"node0.*'idx'.* (3|2)\b"):
        _run(model, feeds)


# ---------------------------------------------------------------------------- reductions
@pytest.mark.parametrize(
    "axes, keepdims, noop, expected",
    [
        ([1], 1, 0, ("batch", 1, 768)),
        ([1], 0, 0, ("batch", 768)),
        ([-1, 0], 0, 0, ("seq",)),
        (None, 1, 0, (1, 1, 1)),
        (None, 0, 0, ()),
        (None, 1, 1, ("batch", "seq", 768)),
    ],
)
def test_reduce_keepdims_shapes(axes, keepdims: int, noop: int, expected: tuple) -> None:
    inits = [] if axes is None else [_const("axes", axes)]
    model = _one(
        "ReduceMean",
        [("x", F, ["batch", "seq", 768])],
        inits,
        keepdims=keepdims,
        noop_with_empty_axes=noop,
    )
    assert import_onnx(model).values["y0"].shape == expected
    out = _run(model, {"x": np.ones((2, 3, 768), np.float32)})["y0"]
    assert out.shape == tuple(
        {"batch": 2, "seq": 3}.get(d, d)
        for d in expected  # type: ignore[misc]
    )


def test_reduce_old_opset_axes_attribute_and_empty_set() -> None:
    node = helper.make_node("ReduceMax", ["x"], ["y0"], axes=[1], keepdims=0)
    model = _graph_model([node], [("x", F, [2, 0])], ["y0"], opset=13)
    g = import_onnx(model)
    assert g.values["y0"].shape == (2,)
    out = _run(model, {"x": np.zeros((2, 0), np.float32)})["y0"]
    np.testing.assert_array_equal(out, [-np.inf, -np.inf])


# ---------------------------------------------------------------------------- kernels
@pytest.mark.parametrize("device", DEVICES)
def test_topk_ties_keep_index_order(device: str) -> None:
    x = np.array([[3, 1, 3, 2, 3]], dtype=np.float32)
    model = _one("TopK", [("x", F, [1, 5])], [_const("k", [3])], n_out=2)
    out = _run(model, {"x": x}, device)
    np.testing.assert_array_equal(out["y1"], [[0, 2, 4]])
    model = _one("TopK", [("x", F, [1, 5])], [_const("k", [2])], n_out=2, largest=0)
    np.testing.assert_array_equal(_run(model, {"x": x}, device)["y1"], [[1, 3]])


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("np_dtype", [np.uint16, np.uint32, np.uint64])
def test_unsigned_dtypes(device: str, np_dtype) -> None:
    big = np.iinfo(np_dtype).max
    x = np.array([[1, big, 5], [big - 1, 0, 7]], dtype=np_dtype)
    t = helper.np_dtype_to_tensor_dtype(np.dtype(np_dtype))
    out = _run(_one("TopK", [("x", t, [2, 3])], [_const("k", [1])], n_out=2), {"x": x}, device)
    np.testing.assert_array_equal(out["y0"], [[big], [big - 1]])
    out = _run(_one("ReduceMax", [("x", t, [2, 3])], [_const("a", [0])]), {"x": x}, device)
    np.testing.assert_array_equal(out["y0"], [[big - 1, big, 7]])
    out = _run(_one("Gather", [("x", t, [2, 3])], [_const("i", [2, 0])], axis=1), {"x": x}, device)
    np.testing.assert_array_equal(out["y0"], x[:, [2, 0]])
    out = _run(_one("Transpose", [("x", t, [2, 3])]), {"x": x}, device)
    np.testing.assert_array_equal(out["y0"], x.T)
    out = _run(_one("CumSum", [("x", t, [2, 3])], [_const("a", 1)]), {"x": x}, device)
    np.testing.assert_array_equal(out["y0"], np.cumsum(x, axis=1, dtype=np_dtype))
    out = _run(_one("Trilu", [("x", t, [2, 3])]), {"x": x}, device)
    np.testing.assert_array_equal(out["y0"], np.triu(x))
    out = _run(_one("NonZero", [("x", t, [2, 3])]), {"x": x}, device)
    np.testing.assert_array_equal(out["y0"], np.array(np.nonzero(x)))


@pytest.mark.parametrize("device", DEVICES)
def test_slice_negative_steps_and_huge_bounds(device: str) -> None:
    x = np.arange(20, dtype=np.float32).reshape(4, 5)
    inits = [
        _const("st", [-1, 2**63 - 1]),
        _const("en", [-(2**63), 1]),
        _const("ax", [0, 1]),
        _const("sp", [-2, -1]),
    ]
    model = _one("Slice", [("x", F, [4, 5])], inits)
    assert import_onnx(model).values["y0"].shape == (2, 3)
    np.testing.assert_array_equal(_run(model, {"x": x}, device)["y0"], x[::-2, :1:-1])


@pytest.mark.parametrize("device", DEVICES)
def test_scatter_and_gather_nd_batch_dims(device: str) -> None:
    data = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    idx = np.array([[[2], [0]], [[1], [1]]], dtype=np.int64)
    model = _one("GatherND", [("data", F, [2, 3, 4]), ("idx", I64, [2, 2, 1])], batch_dims=1)
    assert import_onnx(model).values["y0"].shape == (2, 2, 4)
    out = _run(model, {"data": data, "idx": idx}, device)["y0"]
    np.testing.assert_array_equal(out, np.stack([data[0][[2, 0]], data[1][[1, 1]]]))
    model = _one(
        "ScatterND",
        [("data", F, [2, 3, 4]), ("idx", I64, [2, 2]), ("upd", F, [2, 4])],
        reduction="add",
    )
    upd = np.ones((2, 4), np.float32)
    ref = data.copy()
    ref[1, 2] += 2  # duplicates accumulate
    feeds = {"data": data, "idx": np.array([[1, 2], [-1, -1]]), "upd": upd}
    np.testing.assert_array_equal(_run(model, feeds, device)["y0"], ref)


@pytest.mark.parametrize("device", DEVICES)
def test_unique_unsorted_order_of_first_occurrence(device: str) -> None:
    x = np.array([2, 1, 1, 3, 4, 3], dtype=np.float32)
    model = _one("Unique", [("x", F, [6])], n_out=4, sorted=0)
    out = _run(model, {"x": x}, device)
    np.testing.assert_array_equal(out["y0"], [2, 1, 3, 4])
    np.testing.assert_array_equal(out["y1"], [0, 1, 3, 4])
    np.testing.assert_array_equal(out["y2"], [0, 1, 1, 2, 3, 2])
    np.testing.assert_array_equal(out["y3"], [1, 2, 2, 1])
