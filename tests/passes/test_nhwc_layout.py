"""nhwc_layout (level 3): conv chains run channels-last, Transposes only at their boundaries."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from helpers import EXPORTERS, check_optimized, numpy_feeds
from onnx import TensorProto as T
from onnx import helper, numpy_helper

RNG = np.random.default_rng(2)
LAYOUT = ("fuse_conv", "nhwc_layout")


def _model(nodes, inputs, outputs, inits=(), opset=20) -> bytes:  # noqa: ANN001
    g = helper.make_graph(nodes, "g", inputs, outputs, initializer=list(inits))
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)], ir_version=10)
    return m.SerializeToString()


def _t(name: str, arr) -> onnx.TensorProto:  # noqa: ANN001
    return numpy_helper.from_array(np.asarray(arr), name)


def _w(name: str, *shape: int) -> onnx.TensorProto:
    return _t(name, (RNG.standard_normal(shape) * 0.3).astype(np.float32))


def _counts(reports) -> dict:  # noqa: ANN001
    return dict(next(r.counts for r in reports if r.name == "nhwc_layout"))


def _ops(g) -> list[str]:  # noqa: ANN001
    return [n.op_type for n in g.nodes]


X = helper.make_tensor_value_info("x", T.FLOAT, ["batch", 4, 8, 8])
Y = helper.make_tensor_value_info("y", T.FLOAT, None)
FEEDS = {"x": RNG.standard_normal((2, 4, 8, 8)).astype(np.float32)}


@pytest.mark.parametrize("exporter", list(EXPORTERS))
@pytest.mark.parametrize("name", ["resnet", "mobilenet_v2", "mobilenet_v3"])
def test_cnn_runs_channels_last(exported, name: str, exporter: str) -> None:  # noqa: ANN001
    from models import CASES  # noqa: PLC0415

    path = exported(name, EXPORTERS[exporter])
    g, reports = check_optimized(path, numpy_feeds(CASES[name].inputs(2)), level=3)
    fused = [n for n in g.nodes if n.op_type == "FusedConv"]
    assert fused and all(n.attrs.get("layout") == "NHWC" for n in fused)
    assert "Conv" not in g.op_histogram()
    # one region; a Transpose at the image input and one where the features leave
    assert _counts(reports)["regions"] == 1
    transposes = [n for n in g.nodes if n.op_type == "Transpose"]
    assert len(transposes) == 2
    assert transposes[0].inputs == ["x"] or any(t.inputs == ["x"] for t in transposes)
    if name == "resnet":
        assert g.op_histogram()["ecoinfer.MaxPool"] == 1


def test_chain_with_pool_elementwise_and_global_pool() -> None:
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("MaxPool", ["r1"], ["p"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Mul", ["p", "scale"], ["m"]),  # per-channel constant
        helper.make_node("Add", ["m", "row"], ["a"]),  # broadcasts over the last axis (W)
        helper.make_node("Conv", ["a", "w2"], ["c2"], pads=[0, 0, 1, 1]),
        helper.make_node("AveragePool", ["c2"], ["q"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
        helper.make_node("Sigmoid", ["q"], ["s"]),
        helper.make_node("GlobalAveragePool", ["s"], ["gp"]),
        helper.make_node("Flatten", ["gp"], ["y"]),
    ]
    inits = [
        _w("w1", 6, 4, 3, 3), _w("b1", 6), _w("scale", 6, 1, 1), _w("row", 4),
        _w("w2", 5, 6, 2, 2),
    ]  # fmt: skip
    g, reports = check_optimized(_model(nodes, [X], [Y], inits), FEEDS, level=3, only=LAYOUT)
    counts = _counts(reports)
    assert counts["regions"] == 1 and counts["transposes"] == 2
    assert counts["nodes"] == 8  # 2 convs, 2 pools, Mul, Add, Sigmoid, global pool
    ops = _ops(g)
    assert ops.count("Transpose") == 2 and "GlobalAveragePool" not in ops
    assert ops[0] == "Transpose" and ops[-2:] == ["Transpose", "Flatten"]
    w = next(n for n in g.nodes if n.op_type == "FusedConv").inputs[1]
    assert tuple(g.initializers[w].shape) == (6, 3, 3, 4)  # OHWI


def test_input_transposed_from_nhwc_cancels() -> None:
    # the model takes NHWC and transposes to NCHW itself: the two Transposes cancel
    xh = helper.make_tensor_value_info("x", T.FLOAT, ["batch", 8, 8, 4])
    nodes = [
        helper.make_node("Transpose", ["x"], ["xt"], perm=[0, 3, 1, 2]),
        helper.make_node("Conv", ["xt", "w"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["r"]),
        helper.make_node("Transpose", ["r"], ["y"], perm=[0, 2, 3, 1]),
    ]
    feeds = {"x": RNG.standard_normal((2, 8, 8, 4)).astype(np.float32)}
    g, reports = check_optimized(
        _model(nodes, [xh], [Y], [_w("w", 6, 4, 3, 3)]), feeds, level=3, only=LAYOUT
    )
    assert _ops(g) == ["FusedConv"]  # no Transpose left at all
    assert _counts(reports)["cancelled"] == 2
    assert g.nodes[0].inputs[0] == "x" and g.nodes[0].outputs == ["y"]


def test_graph_output_inside_region_keeps_name_and_layout() -> None:
    c_out = helper.make_tensor_value_info("c", T.FLOAT, None)
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["c"]),
        helper.make_node("Conv", ["c", "w2"], ["y"]),
    ]
    g, reports = check_optimized(
        _model(nodes, [X], [Y, c_out], [_w("w1", 4, 4, 1, 1), _w("w2", 3, 4, 1, 1)]),
        FEEDS,
        level=3,
        only=LAYOUT,
    )
    assert _counts(reports) == {"regions": 1, "nodes": 2, "transposes": 3}
    assert g.output_names == ["y", "c"]


def test_layout_sensitive_op_splits_regions() -> None:
    # Softmax over axis 1 does not follow the layout: two regions around it
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["c1"]),
        helper.make_node("Conv", ["c1", "w1"], ["c2"]),
        helper.make_node("Softmax", ["c2"], ["s"], axis=1),
        helper.make_node("Conv", ["s", "w1"], ["c3"]),
        helper.make_node("Conv", ["c3", "w2"], ["c4"]),
        helper.make_node("Relu", ["c4"], ["y"]),
    ]
    g, reports = check_optimized(
        _model(nodes, [X], [Y], [_w("w1", 4, 4, 1, 1), _w("w2", 3, 4, 1, 1)]),
        FEEDS,
        level=3,
        only=LAYOUT,
    )
    assert _counts(reports)["regions"] == 2
    assert _ops(g).count("Transpose") == 4


def test_lone_conv_between_nchw_edges_is_left_alone() -> None:
    # one conv with an NCHW input and output: two Transposes for nothing
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"]), helper.make_node("Relu", ["c"], ["y"])]
    g, reports = check_optimized(
        _model(nodes, [X], [Y], [_w("w", 3, 4, 1, 1)]), FEEDS, level=3, only=LAYOUT
    )
    assert _counts(reports) == {"regions_skipped": 1}
    assert _ops(g) == ["FusedConv"] and g.nodes[0].attrs.get("layout", "NCHW") == "NCHW"


def test_concat_residual_and_reduce() -> None:
    z = helper.make_tensor_value_info("z", T.FLOAT, ["batch", 8, 8, 8])
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["c1"], pads=[1, 1, 1, 1]),
        helper.make_node("Conv", ["x", "w2"], ["c2"]),
        helper.make_node("Concat", ["c1", "c2"], ["cat"], axis=1),
        helper.make_node("Conv", ["cat", "w3"], ["c3"]),
        helper.make_node("Add", ["c3", "z"], ["r"]),  # residual from outside the region
        helper.make_node("ReduceMean", ["r", "axes"], ["y"], keepdims=0),
    ]
    inits = [
        _w("w1", 3, 4, 3, 3), _w("w2", 5, 4, 1, 1), _w("w3", 8, 8, 1, 1),
        _t("axes", np.array([2, -1], np.int64)),
    ]  # fmt: skip
    feeds = {**FEEDS, "z": RNG.standard_normal((2, 8, 8, 8)).astype(np.float32)}
    g, reports = check_optimized(_model(nodes, [X, z], [Y], inits), feeds, level=3, only=LAYOUT)
    counts = _counts(reports)
    assert counts["regions"] == 1 and counts["transposes"] == 2  # x and z come in; [N, C] out
    cat = next(n for n in g.nodes if n.op_type == "Concat")
    assert cat.attrs["axis"] == 3
    fc = [n for n in g.nodes if n.op_type == "FusedConv"]
    assert any(len(n.inputs) == 4 for n in fc)


def test_no_conv_no_change() -> None:
    nodes = [
        helper.make_node("Relu", ["x"], ["r"]),
        helper.make_node("MaxPool", ["r"], ["y"], kernel_shape=[2, 2]),
    ]
    g, reports = check_optimized(_model(nodes, [X], [Y]), FEEDS, level=3, only=LAYOUT)
    assert _counts(reports) == {}
    assert _ops(g) == ["Relu", "MaxPool"]
