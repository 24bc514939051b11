"""fuse_silu (level 2): x*sigmoid(x) -> Swish, x*hardsigmoid(x) / x*relu6(x+3)/6 -> HardSwish."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from helpers import check_optimized
from onnx import TensorProto as T
from onnx import helper, numpy_helper

from ecoinfer.frontend.torch import export_module
from ecoinfer.ir.graph import Graph

RNG = np.random.default_rng(3)
ONLY = ("fuse_silu",)
FEEDS = {"x": (RNG.standard_normal((3, 8, 5)) * 4).astype(np.float32)}


def _model(nodes, outputs=("y",), inits=(), opset=18) -> bytes:  # noqa: ANN001
    x = helper.make_tensor_value_info("x", T.FLOAT, ["batch", 8, 5])
    outs = [helper.make_tensor_value_info(o, T.FLOAT, None) for o in outputs]
    g = helper.make_graph(nodes, "g", [x], outs, initializer=list(inits))
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)], ir_version=10)
    return m.SerializeToString()


def _c(name: str, value: float) -> onnx.TensorProto:
    return numpy_helper.from_array(np.array(value, np.float32), name)


CONSTS = [_c("three", 3.0), _c("zero", 0.0), _c("six", 6.0), _c("sixth", 1 / 6), _c("a", 1.702)]
mk = helper.make_node


def _ops(g: Graph) -> list[str]:
    return [n.op_type for n in g.nodes]


def _counts(reports):  # noqa: ANN001, ANN202
    return next(r for r in reports if r.name == "fuse_silu").counts


def test_silu() -> None:
    model = _model([mk("Sigmoid", ["x"], ["s"]), mk("Mul", ["s", "x"], ["y"])])
    g, reports = check_optimized(model, FEEDS, only=ONLY)
    assert _ops(g) == ["Swish"] and g.nodes[0].attrs == {}
    assert _counts(reports) == {"silu": 1}
    check_optimized(model, FEEDS)


def test_swish_with_alpha() -> None:
    # x * sigmoid(1.702 x): the "quick GELU" of CLIP
    nodes = [
        mk("Mul", ["a", "x"], ["ax"]),
        mk("Sigmoid", ["ax"], ["s"]),
        mk("Mul", ["x", "s"], ["y"]),
    ]
    g, reports = check_optimized(_model(nodes, inits=CONSTS), FEEDS, only=ONLY)
    assert _ops(g) == ["Swish"] and g.nodes[0].attrs["alpha"] == pytest.approx(1.702)
    assert _counts(reports) == {"swish": 1}


def test_hardswish_from_hardsigmoid() -> None:
    nodes = [mk("HardSigmoid", ["x"], ["s"], alpha=1 / 6, beta=0.5), mk("Mul", ["x", "s"], ["y"])]
    g, reports = check_optimized(_model(nodes), FEEDS, only=ONLY)
    assert _ops(g) == ["HardSwish"] and _counts(reports) == {"hardswish": 1}


def test_hardsigmoid_with_default_alpha_is_left_alone() -> None:
    # alpha=0.2 is not HardSwish's gate
    nodes = [mk("HardSigmoid", ["x"], ["s"]), mk("Mul", ["x", "s"], ["y"])]
    g, reports = check_optimized(_model(nodes), FEEDS, only=ONLY)
    assert _ops(g) == ["HardSigmoid", "Mul"] and not _counts(reports)


@pytest.mark.parametrize("form", ["div_last", "div_gate", "sixth_last", "sixth_gate"])
def test_hardswish_from_relu6(form: str) -> None:
    nodes = [mk("Add", ["x", "three"], ["x3"]), mk("Clip", ["x3", "zero", "six"], ["r6"])]
    if form == "div_last":
        nodes += [mk("Mul", ["x", "r6"], ["p"]), mk("Div", ["p", "six"], ["y"])]
    elif form == "div_gate":
        nodes += [mk("Div", ["r6", "six"], ["gate"]), mk("Mul", ["gate", "x"], ["y"])]
    elif form == "sixth_last":
        nodes += [mk("Mul", ["r6", "x"], ["p"]), mk("Mul", ["sixth", "p"], ["y"])]
    else:
        nodes += [mk("Mul", ["r6", "sixth"], ["gate"]), mk("Mul", ["x", "gate"], ["y"])]
    model = _model(nodes, inits=CONSTS)
    g, reports = check_optimized(model, FEEDS, only=ONLY)
    assert _ops(g) == ["HardSwish"] and _counts(reports) == {"hardswish": 1}
    check_optimized(model, FEEDS)


def test_sigmoid_read_elsewhere_is_left_alone() -> None:
    model = _model([mk("Sigmoid", ["x"], ["s"]), mk("Mul", ["s", "x"], ["y"])], outputs=("y", "s"))
    g, reports = check_optimized(model, FEEDS, only=ONLY)
    assert _ops(g) == ["Sigmoid", "Mul"] and not _counts(reports)


def test_gate_of_another_tensor_is_left_alone() -> None:
    # x * sigmoid(2x) with 2x computed as x + x: not x * sigmoid(x), nor a constant alpha
    nodes = [
        mk("Add", ["x", "x"], ["x2"]),
        mk("Sigmoid", ["x2"], ["s"]),
        mk("Mul", ["s", "x"], ["y"]),
    ]
    g, reports = check_optimized(_model(nodes), FEEDS, only=ONLY)
    assert "Swish" not in _ops(g) and not _counts(reports)


@pytest.mark.parametrize("dynamo", [False, True])
def test_exported_silu_mlp(tmp_path, dynamo: bool) -> None:  # noqa: ANN001
    torch.manual_seed(0)
    module = torch.nn.Sequential(torch.nn.Linear(5, 12), torch.nn.SiLU(), torch.nn.Linear(12, 5))
    x = torch.randn(2, 7, 5, generator=torch.Generator().manual_seed(1))
    path = export_module(module.eval(), (x,), tmp_path / "m.onnx", input_names=["x"], dynamo=dynamo)
    g, reports = check_optimized(path, {"x": x.numpy()})
    assert "Sigmoid" not in _ops(g)
    # the Swish became the first GEMM's epilogue
    acts = [n.attrs.get("activation", "") for n in g.nodes if n.op_type == "FusedGemm"]
    assert acts == ["Swish", ""]
    assert _counts(reports) == {"silu": 1}
