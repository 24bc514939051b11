"""fuse_rmsnorm (level 2): decomposed RMS norms (T5/LLaMA style) -> RMSNormalization."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from helpers import check_optimized
from onnx import TensorProto as T
from onnx import helper, numpy_helper
from torch import nn

from ecoinfer.frontend.torch import export_module
from ecoinfer.ir.graph import Graph

RNG = np.random.default_rng(1)
ONLY = ("fuse_rmsnorm",)


def _model(nodes, inputs, outputs, inits=(), opset=18) -> bytes:  # noqa: ANN001
    g = helper.make_graph(nodes, "g", inputs, outputs, initializer=list(inits))
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)], ir_version=10)
    return m.SerializeToString()


def _t(name: str, arr) -> onnx.TensorProto:  # noqa: ANN001
    return numpy_helper.from_array(np.asarray(arr), name)


def _ops(g: Graph) -> list[str]:
    return [n.op_type for n in g.nodes]


def _counts(reports):  # noqa: ANN001, ANN202
    return next(r for r in reports if r.name == "fuse_rmsnorm").counts


def _rms_graph(square: str = "pow", divide: str = "div", gamma: bool = True, axes=(-1,)) -> bytes:  # noqa: ANN001
    nodes = [
        helper.make_node("Pow", ["x", "two"], ["sq"])
        if square == "pow"
        else helper.make_node("Mul", ["x", "x"], ["sq"]),
        helper.make_node("ReduceMean", ["sq", "axes"], ["ms"]),
        helper.make_node("Add", ["eps", "ms"], ["mse"]),
        helper.make_node("Sqrt", ["mse"], ["den"]),
    ]
    if divide == "div":
        nodes.append(helper.make_node("Div", ["x", "den"], ["n"]))
    elif divide == "reciprocal":
        nodes.append(helper.make_node("Reciprocal", ["den"], ["inv"]))
        nodes.append(helper.make_node("Mul", ["x", "inv"], ["n"]))
    else:  # 1 / den
        nodes.append(helper.make_node("Div", ["one", "den"], ["inv"]))
        nodes.append(helper.make_node("Mul", ["inv", "x"], ["n"]))
    nodes.append(
        helper.make_node("Mul", ["n", "gamma"], ["y"])
        if gamma
        else helper.make_node("Identity", ["n"], ["y"])
    )
    inits = [
        _t("axes", np.array(axes, np.int64)),
        _t("two", np.array(2.0, np.float32)),
        _t("one", np.array(1.0, np.float32)),
        _t("eps", np.array(1e-6, np.float32)),
        _t("gamma", RNG.standard_normal(16).astype(np.float32)),
    ]
    x = helper.make_tensor_value_info("x", T.FLOAT, ["batch", 4, 16])
    y = helper.make_tensor_value_info("y", T.FLOAT, None)
    return _model(nodes, [x], [y], inits)


FEEDS = {"x": RNG.standard_normal((2, 4, 16)).astype(np.float32)}


@pytest.mark.parametrize("square", ["pow", "mul"])
@pytest.mark.parametrize("divide", ["div", "reciprocal", "one_over"])
def test_decomposed_forms_fuse(square: str, divide: str) -> None:
    model = _rms_graph(square, divide)
    g, reports = check_optimized(model, FEEDS, only=ONLY)
    assert _ops(g) == ["RMSNormalization"]
    n = g.nodes[0]
    assert n.attrs["axis"] == -1 and n.attrs["epsilon"] == pytest.approx(1e-6)
    # gamma became the scale
    np.testing.assert_array_equal(
        g.initializers[n.inputs[1]].numpy(),
        numpy_helper.to_array(
            next(i for i in onnx.load_from_string(model).graph.initializer if i.name == "gamma")
        ),
    )
    assert _counts(reports) == {"rmsnorm": 1, "scale": 1}
    check_optimized(model, FEEDS)  # whole level-2 pipeline


def test_without_gamma() -> None:
    g, reports = check_optimized(_rms_graph(gamma=False), FEEDS, only=ONLY)
    assert _ops(g) == ["RMSNormalization", "Identity"] and _counts(reports) == {"rmsnorm": 1}


def test_non_trailing_axis_is_left_alone() -> None:
    g, reports = check_optimized(_rms_graph(axes=(1,), gamma=False), FEEDS, only=ONLY)
    assert "RMSNormalization" not in _ops(g) and not _counts(reports)


def test_denominator_read_elsewhere_is_left_alone() -> None:
    model = onnx.load_from_string(_rms_graph())
    model.graph.output.append(helper.make_tensor_value_info("den", T.FLOAT, None))
    g, reports = check_optimized(model.SerializeToString(), FEEDS, only=ONLY)
    assert "RMSNormalization" not in _ops(g) and not _counts(reports)


# ------------------------------------------------------------------------------ torch modules
class LlamaRMSNorm(nn.Module):
    """transformers' LlamaRMSNorm: rsqrt (Sqrt + Reciprocal or Div) then weight * h."""

    def __init__(self, d: int = 16, eps: float = 1e-6):
        super().__init__()
        torch.manual_seed(0)
        self.weight = nn.Parameter(torch.randn(d))
        self.eps = eps
        self.proj = nn.Linear(d, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x.to(torch.float32)
        var = h.pow(2).mean(-1, keepdim=True)
        h = h * torch.rsqrt(var + self.eps)
        return self.proj(self.weight * h.to(x.dtype))


class T5LayerNorm(nn.Module):
    """T5's RMS norm: x / sqrt(mean(x^2) + eps), scaled."""

    def __init__(self, d: int = 16, eps: float = 1e-6):
        super().__init__()
        torch.manual_seed(1)
        self.weight = nn.Parameter(torch.randn(d))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        var = x.to(torch.float32).pow(2).mean(-1, keepdim=True)
        return self.weight * (x / torch.sqrt(var + self.eps))


@pytest.mark.parametrize("dynamo", [False, True])
@pytest.mark.parametrize("module", [LlamaRMSNorm, T5LayerNorm])
def test_exported_modules(tmp_path, module: type[nn.Module], dynamo: bool) -> None:  # noqa: ANN001
    x = torch.randn(2, 5, 16, generator=torch.Generator().manual_seed(3))
    path = export_module(module().eval(), (x,), tmp_path / "m.onnx", dynamo=dynamo)
    g, reports = check_optimized(path, {"x": x.numpy()})
    assert _ops(g).count("RMSNormalization") == 1
    assert not {"Pow", "ReduceMean", "Sqrt", "Reciprocal", "Div"} & set(_ops(g))
    assert _counts(reports) == {"rmsnorm": 1, "scale": 1}
