"""fold_batchnorm (level 2): BN folded into Conv / Gemm / MatMul; numeric and structural tests."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from helpers import check_optimized, numpy_feeds
from onnx import TensorProto as T
from onnx import helper, numpy_helper

RNG = np.random.default_rng(0)


def _model(nodes, inputs, outputs, inits=(), opset=18) -> bytes:  # noqa: ANN001
    g = helper.make_graph(nodes, "g", inputs, outputs, initializer=list(inits))
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)], ir_version=10)
    return m.SerializeToString()


def _t(name: str, arr) -> onnx.TensorProto:  # noqa: ANN001
    return numpy_helper.from_array(np.asarray(arr, np.float32), name)


def _bn_params(prefix: str, n: int) -> list[onnx.TensorProto]:
    return [
        _t(f"{prefix}_scale", RNG.uniform(0.5, 1.5, n)),
        _t(f"{prefix}_beta", RNG.standard_normal(n) * 0.1),
        _t(f"{prefix}_mean", RNG.standard_normal(n) * 0.1),
        _t(f"{prefix}_var", RNG.uniform(0.5, 1.5, n)),
    ]


def _bn(x: str, y: str, prefix: str = "bn", eps: float = 1e-3) -> onnx.NodeProto:
    ins = [x] + [f"{prefix}_{p}" for p in ("scale", "beta", "mean", "var")]
    return helper.make_node("BatchNormalization", ins, [y], epsilon=eps)


def _fold_counts(reports) -> dict:  # noqa: ANN001
    return dict(next(r.counts for r in reports if r.name == "fold_batchnorm"))


def _hist(g) -> dict:  # noqa: ANN001
    return dict(g.op_histogram())


X4 = helper.make_tensor_value_info("x", T.FLOAT, ["batch", 3, 8, 8])
Y = helper.make_tensor_value_info("y", T.FLOAT, None)
FEEDS4 = {"x": RNG.standard_normal((2, 3, 8, 8)).astype(np.float32)}


@pytest.mark.parametrize("bias", [True, False])
def test_conv_bn_folds_into_weights_and_bias(bias: bool) -> None:
    conv_in = ["x", "w", "b"] if bias else ["x", "w"]
    nodes = [
        helper.make_node("Conv", conv_in, ["c"], pads=[1, 1, 1, 1]),
        _bn("c", "y"),
    ]
    inits = [_t("w", RNG.standard_normal((4, 3, 3, 3))), *_bn_params("bn", 4)]
    if bias:
        inits.append(_t("b", RNG.standard_normal(4)))
    g, reports = check_optimized(_model(nodes, [X4], [Y], inits), FEEDS4, only=("fold_batchnorm",))
    assert _fold_counts(reports) == {"conv_bn": 1}
    assert _hist(g) == {"Conv": 1}
    conv = g.nodes[0]
    assert len(conv.inputs) == 3 and conv.inputs[2] in g.initializers  # a bias was made


def test_conv_read_twice_keeps_its_weights() -> None:
    # the conv output is also a graph output: folding the BN would change it
    c_out = helper.make_tensor_value_info("c", T.FLOAT, None)
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"]), _bn("c", "y")]
    inits = [_t("w", RNG.standard_normal((4, 3, 1, 1))), *_bn_params("bn", 4)]
    g, reports = check_optimized(
        _model(nodes, [X4], [Y, c_out], inits), FEEDS4, only=("fold_batchnorm",)
    )
    counts = _fold_counts(reports)
    assert "conv_bn" not in counts
    assert counts == {"bn_to_mul_add": 1}  # the BN becomes x * s + t instead
    conv = next(n for n in g.nodes if n.op_type == "Conv")
    assert conv.inputs[1] == "w"
    assert _hist(g) == {"Conv": 1, "Mul": 1, "Add": 1}


def test_conv_with_second_reader_keeps_bn_at_level2() -> None:
    # Conv -> BN and Conv -> Relu: neither the BN fold nor the activation fusion may fire
    r_out = helper.make_tensor_value_info("r", T.FLOAT, None)
    nodes = [
        helper.make_node("Conv", ["x", "w", "b"], ["c"]),
        _bn("c", "y"),
        helper.make_node("Relu", ["c"], ["r"]),
    ]
    inits = [
        _t("w", RNG.standard_normal((4, 3, 1, 1))),
        _t("b", RNG.standard_normal(4)),
        *_bn_params("bn", 4),
    ]
    g, reports = check_optimized(_model(nodes, [X4], [Y, r_out], inits), FEEDS4, level=2)
    assert "conv_bn" not in _fold_counts(reports)
    assert _hist(g).get("ecoinfer.FusedConv") == 1
    fc = next(n for n in g.nodes if n.op_type == "FusedConv")
    assert not fc.attrs.get("activation")
    assert "BatchNormalization" not in _hist(g)


@pytest.mark.parametrize("trans_b", [0, 1])
@pytest.mark.parametrize("with_c", [True, False])
def test_gemm_bn_folds_per_output_column(trans_b: int, with_c: bool) -> None:
    x = helper.make_tensor_value_info("x", T.FLOAT, ["batch", 6])
    w = RNG.standard_normal((5, 6) if trans_b else (6, 5))
    ins = ["x", "w", "c"] if with_c else ["x", "w"]
    nodes = [
        helper.make_node("Gemm", ins, ["h"], transB=trans_b, alpha=0.5, beta=2.0),
        _bn("h", "y"),
    ]
    inits = [_t("w", w), *_bn_params("bn", 5)]
    if with_c:
        inits.append(_t("c", RNG.standard_normal(5)))
    feeds = {"x": RNG.standard_normal((3, 6)).astype(np.float32)}
    g, reports = check_optimized(_model(nodes, [x], [Y], inits), feeds, only=("fold_batchnorm",))
    assert _fold_counts(reports) == {"gemm_bn": 1}
    assert _hist(g) == {"Gemm": 1}
    assert g.nodes[0].attrs["beta"] == 1.0


@pytest.mark.parametrize("with_add", [False, True])
def test_matmul_bn_becomes_one_gemm(with_add: bool) -> None:
    x = helper.make_tensor_value_info("x", T.FLOAT, ["batch", 6])
    nodes = [helper.make_node("MatMul", ["x", "w"], ["h"])]
    inits = [_t("w", RNG.standard_normal((6, 5))), *_bn_params("bn", 5)]
    if with_add:
        nodes.append(helper.make_node("Add", ["c", "h"], ["h2"]))
        inits.append(_t("c", RNG.standard_normal(5)))
    nodes.append(_bn("h2" if with_add else "h", "y"))
    feeds = {"x": RNG.standard_normal((3, 6)).astype(np.float32)}
    g, reports = check_optimized(_model(nodes, [x], [Y], inits), feeds, only=("fold_batchnorm",))
    rule = "matmul_add_bn" if with_add else "matmul_bn"
    assert _fold_counts(reports) == {rule: 1}
    assert _hist(g) == {"Gemm": 1}


def test_matmul_bn_over_3d_is_not_folded() -> None:
    # BN's channel axis is 1 (the sequence), not the MatMul's output column: no fold
    x = helper.make_tensor_value_info("x", T.FLOAT, [2, 5, 6])
    nodes = [helper.make_node("MatMul", ["x", "w"], ["h"]), _bn("h", "y")]
    inits = [_t("w", RNG.standard_normal((6, 5))), *_bn_params("bn", 5)]
    feeds = {"x": RNG.standard_normal((2, 5, 6)).astype(np.float32)}
    g, reports = check_optimized(_model(nodes, [x], [Y], inits), feeds, only=("fold_batchnorm",))
    assert _fold_counts(reports) == {"bn_to_mul_add": 1}
    assert g.initializers["w"] is not None and g.nodes[0].inputs[1] == "w"


def test_standalone_bn_becomes_mul_add() -> None:
    nodes = [helper.make_node("Relu", ["x"], ["r"]), _bn("r", "y", prefix="bn")]
    inits = _bn_params("bn", 3)
    g, reports = check_optimized(_model(nodes, [X4], [Y], inits), FEEDS4, only=("fold_batchnorm",))
    assert _fold_counts(reports) == {"bn_to_mul_add": 1}
    assert _hist(g) == {"Relu": 1, "Mul": 1, "Add": 1}


# ---------------------------------------------------------------------- exported models
def _export_with_bn(name: str, dynamo: bool, root: Path) -> Path:
    """The default exports fold BN themselves; these keep it (no constant folding /
    no onnxscript optimizer) so the pass has real work."""
    from models import CASES  # noqa: PLC0415

    case = CASES[name]
    path = root / f"{name}_bn_{'dynamo' if dynamo else 'torchscript'}.onnx"
    kw = (
        {"dynamo": True, "optimize": False}
        if dynamo
        else {"dynamo": False, "do_constant_folding": False}
    )
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(case.build(), (case.inputs(2)["x"],), str(path), input_names=["x"], **kw)
    return path


@pytest.mark.parametrize(
    ("name", "dynamo", "n_bn"),
    [
        ("resnet", False, 15),
        ("mobilenet_v2", False, 19),
        ("mobilenet_v3", False, 16),
        ("resnet", True, 15),  # dynamo without its optimizer: conv biases computed at run time
    ],
)
def test_exported_models_lose_every_batchnorm(
    name: str, dynamo: bool, n_bn: int, tmp_path: Path
) -> None:
    from models import CASES  # noqa: PLC0415

    path = _export_with_bn(name, dynamo, tmp_path)
    before = {n.op_type for n in onnx.load(str(path)).graph.node}
    assert "BatchNormalization" in before
    g, reports = check_optimized(path, numpy_feeds(CASES[name].inputs(2)), level=2)
    assert _fold_counts(reports) == {"conv_bn": n_bn}
    hist = _hist(g)
    assert "BatchNormalization" not in hist and "Conv" not in hist
