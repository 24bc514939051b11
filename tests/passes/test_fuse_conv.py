"""fuse_conv (level 2): Conv + bias + activation + residual -> ecoinfer.FusedConv."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from helpers import EXPORTERS, check_optimized, numpy_feeds
from onnx import TensorProto as T
from onnx import helper, numpy_helper

from ecoinfer.frontend.onnx import import_onnx
from ecoinfer.ir.analysis import estimate_flops
from ecoinfer.ir.graph import Node

RNG = np.random.default_rng(1)
ACTIVATION_OPS = {"Relu", "Clip", "HardSwish", "HardSigmoid", "Sigmoid", "Gelu", "LeakyRelu"}


def _model(nodes, inputs, outputs, inits=(), opset=20) -> bytes:  # noqa: ANN001
    g = helper.make_graph(nodes, "g", inputs, outputs, initializer=list(inits))
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)], ir_version=10)
    return m.SerializeToString()


def _t(name: str, arr) -> onnx.TensorProto:  # noqa: ANN001
    return numpy_helper.from_array(np.asarray(arr, np.float32), name)


def _w(name: str, *shape: int) -> onnx.TensorProto:
    return _t(name, RNG.standard_normal(shape) * 0.3)


def _counts(reports) -> dict:  # noqa: ANN001
    return dict(next(r.counts for r in reports if r.name == "fuse_conv"))


def _fused(g) -> list[Node]:  # noqa: ANN001
    return [n for n in g.nodes if n.op_type == "FusedConv" and n.domain == "ecoinfer"]


X = helper.make_tensor_value_info("x", T.FLOAT, ["batch", 4, 8, 8])
Y = helper.make_tensor_value_info("y", T.FLOAT, None)
FEEDS = {"x": RNG.standard_normal((2, 4, 8, 8)).astype(np.float32)}
ONLY = ("fuse_conv",)


# ---------------------------------------------------------------------- code-built models
# fuse_conv rule counts per model; the same for both exporters
EXPECTED = {
    "resnet": {"conv": 15, "activation": 13, "residual": 5},
    "mobilenet_v2": {"conv": 19, "clip": 13, "residual": 3},
    "mobilenet_v3": {"conv": 22, "activation": 17, "residual": 2},
}


@pytest.mark.parametrize("exporter", list(EXPORTERS))
@pytest.mark.parametrize("name", list(EXPECTED))
def test_cnn_every_conv_fused_with_activation_and_residual(
    exported, name: str, exporter: str
) -> None:  # noqa: ANN001
    from models import CASES  # noqa: PLC0415

    path = exported(name, EXPORTERS[exporter])
    original = import_onnx(path)
    n_conv = original.op_histogram()["Conv"]
    g, reports = check_optimized(path, numpy_feeds(CASES[name].inputs(2)), level=2)
    hist = g.op_histogram()
    assert "Conv" not in hist and "BatchNormalization" not in hist
    assert hist["ecoinfer.FusedConv"] == n_conv
    assert _counts(reports) == EXPECTED[name]
    # nothing a FusedConv could still absorb: no activation or Add reads a conv output
    producers = g.producers()
    for n in g.nodes:
        if n.op_type in ACTIVATION_OPS | {"Add"}:
            src = [producers.get(i) for i in n.inputs]
            assert not any(p is not None and p.op_type == "FusedConv" for p in src), n.label()
    # every residual Add went into a conv (ResNet also absorbs the Relu after it)
    assert "Add" not in hist
    with_z = [n for n in _fused(g) if len(n.inputs) > 3]
    assert len(with_z) == EXPECTED[name]["residual"]
    if name == "resnet":
        assert all(n.attrs.get("post_activation") == "Relu" for n in with_z)
    else:  # MobileNet projection convs: linear, then the residual add
        assert all(
            not n.attrs.get("activation") and not n.attrs.get("post_activation") for n in with_z
        )
    # flops of the fused graph: the convolutions' plus a small epilogue
    assert estimate_flops(g).total >= estimate_flops(original).total * 0.95


# ---------------------------------------------------------------------- hand-built graphs
def test_conv_bias_activation_residual_post_activation_one_node() -> None:
    # Relu(Relu(Conv(x) + c) + z) with c per channel: bias, activation, residual, post-act
    z = helper.make_tensor_value_info("z", T.FLOAT, ["batch", 6, 8, 8])
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c0"], pads=[1, 1, 1, 1]),
        helper.make_node("Add", ["cb", "c0"], ["c1"]),
        helper.make_node("Relu", ["c1"], ["a"]),
        helper.make_node("Add", ["a", "z"], ["s"]),
        helper.make_node("Relu", ["s"], ["y"]),
    ]
    inits = [_w("w", 6, 4, 3, 3), _w("cb", 6, 1, 1)]
    feeds = {**FEEDS, "z": RNG.standard_normal((2, 6, 8, 8)).astype(np.float32)}
    g, reports = check_optimized(_model(nodes, [X, z], [Y], inits), feeds, only=ONLY)
    assert _counts(reports) == {
        "conv": 1, "bias_add": 1, "activation": 2, "residual": 1
    }  # fmt: skip
    (fc,) = g.nodes
    assert fc.op_type == "FusedConv" and fc.inputs[3] == "z"
    assert fc.attrs["activation"] == "Relu" and fc.attrs["post_activation"] == "Relu"


def test_conv_output_read_twice_is_not_fused() -> None:
    c_out = helper.make_tensor_value_info("c", T.FLOAT, None)
    nodes = [
        helper.make_node("Conv", ["x", "w", "b"], ["c"]),
        helper.make_node("Relu", ["c"], ["y"]),
    ]
    inits = [_w("w", 6, 4, 1, 1), _w("b", 6)]
    g, reports = check_optimized(_model(nodes, [X], [Y, c_out], inits), FEEDS, only=ONLY)
    assert _counts(reports) == {"conv": 1}
    assert [n.op_type for n in g.nodes] == ["FusedConv", "Relu"]
    assert not g.nodes[0].attrs.get("activation")


def test_conv_used_by_two_adds_is_not_fused() -> None:
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"]),
        helper.make_node("Add", ["c", "x"], ["s1"]),
        helper.make_node("Add", ["c", "s1"], ["y"]),
    ]
    inits = [_w("w", 4, 4, 1, 1)]
    g, reports = check_optimized(_model(nodes, [X], [Y], inits), FEEDS, only=ONLY)
    assert _counts(reports) == {"conv": 1}
    assert [n.op_type for n in g.nodes] == ["FusedConv", "Add", "Add"]


def test_clip_with_run_time_min_is_not_fused() -> None:
    lo = helper.make_tensor_value_info("lo", T.FLOAT, [])
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"]),
        helper.make_node("Clip", ["c", "lo", "hi"], ["y"]),
    ]
    inits = [_w("w", 6, 4, 1, 1), _t("hi", 6.0)]
    feeds = {**FEEDS, "lo": np.array(0.1, np.float32)}
    g, reports = check_optimized(_model(nodes, [X, lo], [Y], inits), feeds, only=ONLY)
    assert _counts(reports) == {"conv": 1}
    assert [n.op_type for n in g.nodes] == ["FusedConv", "Clip"]


@pytest.mark.parametrize("bounds", [("lo", "hi"), ("", "hi"), ("lo",)])
def test_clip_with_constant_bounds_is_fused(bounds: tuple[str, ...]) -> None:
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"]),
        helper.make_node("Clip", ["c", *bounds], ["y"]),
    ]
    inits = [_w("w", 6, 4, 1, 1), _t("lo", 0.0), _t("hi", 0.5)]
    g, reports = check_optimized(_model(nodes, [X], [Y], inits), FEEDS, only=ONLY)
    assert _counts(reports) == {"conv": 1, "clip": 1}
    (fc,) = g.nodes
    assert fc.attrs["activation"] == "Clip" and len(fc.attrs["activation_params"]) == 2


@pytest.mark.parametrize(
    ("form", "expect"),
    [("silu", "Swish"), ("hardswish_decomposed", "HardSwish"), ("HardSwish", "HardSwish"),
     ("Gelu", "Gelu"), ("LeakyRelu", "LeakyRelu"), ("Sigmoid", "Sigmoid"),
     ("HardSigmoid", "HardSigmoid"), ("Tanh", "Tanh")],
)  # fmt: skip
def test_activation_forms(form: str, expect: str) -> None:
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1])]
    if form == "silu":  # x * Sigmoid(x)
        nodes += [
            helper.make_node("Sigmoid", ["c"], ["g"]),
            helper.make_node("Mul", ["g", "c"], ["y"]),
        ]
    elif form == "hardswish_decomposed":  # x * HardSigmoid(x; 1/6, 1/2)
        nodes += [
            helper.make_node("HardSigmoid", ["c"], ["g"], alpha=1 / 6, beta=0.5),
            helper.make_node("Mul", ["c", "g"], ["y"]),
        ]
    elif form == "LeakyRelu":
        nodes.append(helper.make_node(form, ["c"], ["y"], alpha=0.2))
    elif form == "Gelu":
        nodes.append(helper.make_node(form, ["c"], ["y"], approximate="tanh"))
    else:
        nodes.append(helper.make_node(form, ["c"], ["y"]))
    inits = [_w("w", 6, 4, 3, 3), _w("b", 6)]
    g, reports = check_optimized(_model(nodes, [X], [Y], inits), FEEDS, only=ONLY)
    (fc,) = g.nodes
    assert fc.op_type == "FusedConv" and fc.attrs["activation"] == expect
    assert sum(_counts(reports).values()) == 2


def test_sigmoid_gate_of_another_value_is_not_silu() -> None:
    # c * Sigmoid(x'): the gate reads something else -> no SiLU
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"]),
        helper.make_node("Conv", ["x", "w"], ["d"]),
        helper.make_node("Sigmoid", ["d"], ["g"]),
        helper.make_node("Mul", ["c", "g"], ["y"]),
    ]
    inits = [_w("w", 4, 4, 1, 1)]
    g, reports = check_optimized(_model(nodes, [X], [Y], inits), FEEDS, only=ONLY)
    assert "silu" not in _counts(reports)
    assert _counts(reports)["activation"] == 1  # d's Sigmoid is its own activation
    assert sorted(n.op_type for n in g.nodes) == ["FusedConv", "FusedConv", "Mul"]


def test_act_before_residual_then_no_post_act() -> None:
    # MobileNet-style: Add(Clip(conv), z), z = the block input
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("Clip", ["c", "lo", "hi"], ["a"]),
        helper.make_node("Add", ["x", "a"], ["y"]),
    ]
    inits = [_w("w", 4, 4, 3, 3), _t("lo", 0.0), _t("hi", 6.0)]
    g, reports = check_optimized(_model(nodes, [X], [Y], inits), FEEDS, only=ONLY)
    (fc,) = g.nodes
    assert fc.inputs[3] == "x" and fc.attrs["activation"] == "Clip"
    assert not fc.attrs.get("post_activation")


def test_residual_that_would_broadcast_the_output_is_not_fused() -> None:
    x1 = helper.make_tensor_value_info("x", T.FLOAT, [1, 4, 8, 8])
    z = helper.make_tensor_value_info("z", T.FLOAT, [3, 6, 8, 8])
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"]),
        helper.make_node("Add", ["c", "z"], ["y"]),
    ]
    feeds = {
        "x": RNG.standard_normal((1, 4, 8, 8)).astype(np.float32),
        "z": RNG.standard_normal((3, 6, 8, 8)).astype(np.float32),
    }
    g, reports = check_optimized(
        _model(nodes, [x1, z], [Y], [_w("w", 6, 4, 1, 1)]), feeds, only=ONLY
    )
    assert _counts(reports) == {"conv": 1}
    assert [n.op_type for n in g.nodes] == ["FusedConv", "Add"]


def test_broadcast_residual_constant_is_fused() -> None:
    # Relu(conv) + c with c [1, 1, 8, 8] (not per channel): a constant residual
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"]),
        helper.make_node("Relu", ["c"], ["r"]),
        helper.make_node("Add", ["r", "k"], ["y"]),
    ]
    inits = [_w("w", 6, 4, 1, 1), _w("k", 1, 1, 8, 8)]
    g, reports = check_optimized(_model(nodes, [X], [Y], inits), FEEDS, only=ONLY)
    assert _counts(reports) == {"conv": 1, "activation": 1, "residual": 1}


@pytest.mark.parametrize("auto_pad", ["SAME_UPPER", "SAME_LOWER", "VALID"])
def test_auto_pad_resolved_to_explicit_pads(auto_pad: str) -> None:
    # stride 2 on 8 -> total padding 1 for a 3x3 kernel: asymmetric pads
    nodes = [helper.make_node("Conv", ["x", "w"], ["y"], auto_pad=auto_pad, strides=[2, 2])]
    g, reports = check_optimized(_model(nodes, [X], [Y], [_w("w", 6, 4, 3, 3)]), FEEDS, only=ONLY)
    (fc,) = g.nodes
    assert fc.op_type == "FusedConv" and "auto_pad" not in fc.attrs
    expect = {"SAME_UPPER": [0, 0, 1, 1], "SAME_LOWER": [1, 1, 0, 0], "VALID": [0, 0, 0, 0]}
    assert fc.attrs["pads"] == expect[auto_pad]


def test_auto_pad_same_with_unknown_size_keeps_conv() -> None:
    xs = helper.make_tensor_value_info("x", T.FLOAT, ["batch", 4, "h", "w"])
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], auto_pad="SAME_UPPER"),
             helper.make_node("Relu", ["c"], ["y"])]  # fmt: skip
    g, reports = check_optimized(_model(nodes, [xs], [Y], [_w("w", 6, 4, 3, 3)]), FEEDS, only=ONLY)
    assert not _counts(reports)
    assert [n.op_type for n in g.nodes] == ["Conv", "Relu"]


@pytest.mark.parametrize("nd", [1, 3])
def test_conv_1d_and_3d(nd: int) -> None:
    shape = [2, 4] + [6] * nd
    x = helper.make_tensor_value_info("x", T.FLOAT, shape)
    nodes = [
        helper.make_node("Conv", ["x", "w", "b"], ["c"], pads=[1] * nd + [0] * nd, group=2),
        helper.make_node("Sub", ["c", "k"], ["d"]),
        helper.make_node("Elu", ["d"], ["y"]),
    ]
    inits = [_w("w", 6, 2, *[2] * nd), _w("b", 6), _w("k", 6, *[1] * nd)]
    feeds = {"x": RNG.standard_normal(shape).astype(np.float32)}
    g, reports = check_optimized(_model(nodes, [x], [Y], inits), feeds, only=ONLY)
    assert _counts(reports) == {"conv": 1, "bias_sub": 1, "activation": 1}
    assert len(g.nodes) == 1


@pytest.mark.parametrize(
    ("form", "expect"),
    [("silu", "Swish"), ("hardswish_relu6", "HardSwish"), ("gelu_erf", "Gelu")],
)
def test_decomposed_activations_fuse_in_the_level2_pipeline(form: str, expect: str) -> None:
    # fuse_silu / fuse_gelu recognise the decomposed forms first; fuse_conv takes the op
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1])]
    inits = [_w("w", 6, 4, 3, 3), _w("b", 6)]
    if form == "silu":
        nodes += [
            helper.make_node("Sigmoid", ["c"], ["g"]),
            helper.make_node("Mul", ["c", "g"], ["y"]),
        ]
    elif form == "hardswish_relu6":  # x * relu6(x + 3) / 6
        nodes += [
            helper.make_node("Add", ["c", "three"], ["a"]),
            helper.make_node("Clip", ["a", "zero", "six"], ["r6"]),
            helper.make_node("Mul", ["c", "r6"], ["m"]),
            helper.make_node("Div", ["m", "six"], ["y"]),
        ]
        inits += [_t("three", 3.0), _t("zero", 0.0), _t("six", 6.0)]
    else:  # 0.5 * x * (1 + erf(x / sqrt(2)))
        nodes += [
            helper.make_node("Div", ["c", "sqrt2"], ["d"]),
            helper.make_node("Erf", ["d"], ["e"]),
            helper.make_node("Add", ["e", "one"], ["e1"]),
            helper.make_node("Mul", ["c", "e1"], ["m"]),
            helper.make_node("Mul", ["m", "half"], ["y"]),
        ]
        inits += [_t("sqrt2", np.sqrt(2.0)), _t("one", 1.0), _t("half", 0.5)]
    g, reports = check_optimized(_model(nodes, [X], [Y], inits), FEEDS, level=2)
    (fc,) = g.nodes
    assert fc.op_type == "FusedConv" and fc.attrs["activation"] == expect
