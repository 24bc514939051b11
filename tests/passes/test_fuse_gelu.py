"""fuse_gelu (level 2): the erf and tanh GELU formulas -> Gelu.

Hand-built graphs cover every placement of the 0.5 and both spellings of x/sqrt(2) and x^3;
torch's nn.GELU exported at opset 16 (no Gelu op there), MiniLM at opset 16, ViT (dynamo
spelling) and GPT-2's NewGELU (tanh form, both exporters) are the real cases.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from helpers import SENTENCES, check_optimized, numpy_feeds
from onnx import TensorProto as T
from onnx import helper, numpy_helper

from ecoinfer.frontend.torch import export_module
from ecoinfer.ir.graph import Graph

RNG = np.random.default_rng(2)
ONLY = ("fuse_gelu",)
FORMULA_OPS = {"Erf", "Tanh", "Pow"}


def _model(nodes, inputs, outputs, inits=(), opset=18) -> bytes:  # noqa: ANN001
    g = helper.make_graph(nodes, "g", inputs, outputs, initializer=list(inits))
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)], ir_version=10)
    return m.SerializeToString()


def _c(name: str, value: float) -> onnx.TensorProto:
    return numpy_helper.from_array(np.array(value, np.float32), name)


def _ops(g: Graph) -> list[str]:
    return [n.op_type for n in g.nodes]


def _counts(reports):  # noqa: ANN001, ANN202
    return next(r for r in reports if r.name == "fuse_gelu").counts


def _gelu_graph(
    form: str, spelling: str, product: str, half: float = 0.5, also_out: str = ""
) -> bytes:
    mk = helper.make_node
    if form == "erf":
        scale = (
            mk("Div", ["x", "sqrt2"], ["s"])
            if spelling == "div"
            else mk("Mul", ["inv_sqrt2", "x"], ["s"])
        )
        nodes = [scale, mk("Erf", ["s"], ["e"]), mk("Add", ["one", "e"], ["f"])]
    else:
        if spelling == "pow":
            cube = [mk("Pow", ["x", "three"], ["x3"])]
        else:
            cube = [mk("Mul", ["x", "x"], ["x2"]), mk("Mul", ["x2", "x"], ["x3"])]
        nodes = [
            *cube,
            mk("Mul", ["k", "x3"], ["kx3"]),
            mk("Add", ["x", "kx3"], ["inner"]),
            mk("Mul", ["inner", "sqrt2pi"], ["arg"]),
            mk("Tanh", ["arg"], ["t"]),
            mk("Add", ["t", "one"], ["f"]),
        ]
    if product == "half_last":
        nodes += [mk("Mul", ["x", "f"], ["p"]), mk("Mul", ["p", "half"], ["y"])]
    elif product == "half_on_factor":
        nodes += [mk("Mul", ["half", "f"], ["h"]), mk("Mul", ["x", "h"], ["y"])]
    elif product == "half_first":
        nodes += [mk("Mul", ["x", "half"], ["h"]), mk("Mul", ["f", "h"], ["y"])]
    else:  # divided by 2
        nodes += [mk("Mul", ["f", "x"], ["p"]), mk("Div", ["p", "two"], ["y"])]
    inits = [
        _c("sqrt2", math.sqrt(2.0)),
        _c("inv_sqrt2", 1 / math.sqrt(2.0)),
        _c("one", 1.0),
        _c("two", 2.0),
        _c("three", 3.0),
        _c("half", half),
        _c("k", 0.044715),
        _c("sqrt2pi", math.sqrt(2 / math.pi)),
    ]
    x = helper.make_tensor_value_info("x", T.FLOAT, ["batch", 16])
    outs = [
        helper.make_tensor_value_info(o, T.FLOAT, None)
        for o in ["y"] + ([also_out] if also_out else [])
    ]
    return _model(nodes, [x], outs, inits)


FEEDS = {"x": (RNG.standard_normal((4, 16)) * 2).astype(np.float32)}
PRODUCTS = ["half_last", "half_on_factor", "half_first", "div2"]


@pytest.mark.parametrize("product", PRODUCTS)
@pytest.mark.parametrize("spelling", ["div", "mul"])
def test_erf_forms(spelling: str, product: str) -> None:
    model = _gelu_graph("erf", spelling, product)
    g, reports = check_optimized(model, FEEDS, only=ONLY)
    assert _ops(g) == ["Gelu"] and g.nodes[0].attrs.get("approximate", "none") == "none"
    assert _counts(reports) == {"gelu_erf": 1}
    check_optimized(model, FEEDS)


@pytest.mark.parametrize("product", PRODUCTS)
@pytest.mark.parametrize("spelling", ["pow", "mul"])
def test_tanh_forms(spelling: str, product: str) -> None:
    model = _gelu_graph("tanh", spelling, product)
    g, reports = check_optimized(model, FEEDS, only=ONLY)
    assert _ops(g) == ["Gelu"] and g.nodes[0].attrs["approximate"] == "tanh"
    assert _counts(reports) == {"gelu_tanh": 1}
    check_optimized(model, FEEDS)


def test_wrong_constant_is_left_alone() -> None:
    g, reports = check_optimized(_gelu_graph("erf", "div", "half_last", half=0.6), FEEDS, only=ONLY)
    assert "Gelu" not in _ops(g) and not _counts(reports)


@pytest.mark.parametrize("form", ["erf", "tanh"])
def test_intermediate_read_elsewhere_is_left_alone(form: str) -> None:
    model = _gelu_graph(form, "div" if form == "erf" else "pow", "half_last", also_out="f")
    g, reports = check_optimized(model, FEEDS, only=ONLY)
    assert "Gelu" not in _ops(g) and not _counts(reports)


# ------------------------------------------------------------------------------ real models
@pytest.mark.parametrize("dynamo", [False, True])
@pytest.mark.parametrize("approximate", ["none", "tanh"])
def test_torch_gelu_at_opset_16(tmp_path, approximate: str, dynamo: bool) -> None:  # noqa: ANN001
    module = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.GELU(approximate=approximate))
    x = torch.randn(3, 16, generator=torch.Generator().manual_seed(0))
    path = export_module(
        module.eval(), (x,), tmp_path / "g.onnx", input_names=["x"], dynamo=dynamo, opset=16
    )
    g, reports = check_optimized(path, {"x": x.numpy()})
    assert not FORMULA_OPS & set(_ops(g))
    assert _counts(reports) == {f"gelu_{'erf' if approximate == 'none' else 'tanh'}": 1}
    # then the GEMM took it as its activation
    (gemm,) = [n for n in g.nodes if n.op_type == "FusedGemm"]
    assert gemm.attrs["activation"] == "Gelu"
    assert gemm.attrs["activation_params"] == [0.0 if approximate == "none" else 1.0]


def _export_cached(tmp_path_factory, name: str, build) -> Path:  # noqa: ANN001
    """One export per session, shared by the test modules that need it."""
    path = tmp_path_factory.getbasetemp() / name
    if not path.exists():
        build(path)
    return path


def test_minilm_opset16_every_gelu_fused(tmp_path_factory) -> None:  # noqa: ANN001
    from ecoinfer.errors import EcoinferError  # noqa: PLC0415

    mm = pytest.importorskip("ecoinfer.models.minilm")
    try:
        mm.minilm_dir()
    except EcoinferError as e:
        pytest.skip(str(e))
    tok = mm.load_minilm_tokenizer()

    def build(path: Path) -> None:
        example = {
            k: torch.from_numpy(v)
            for k, v in mm.sample_inputs(
                ["An example sentence.", "And a longer second one."], tok
            ).items()
        }
        export_module(
            mm.load_minilm_module(),
            example,
            path,
            input_names=list(example),
            output_names=["last_hidden_state", "pooler_output"],
            dynamic_axes={k: {0: "batch", 1: "seq"} for k in example},
            dynamo=False,
            opset=16,
        )

    path = _export_cached(tmp_path_factory, "minilm_torchscript_opset16.onnx", build)
    g, reports = check_optimized(path, mm.sample_inputs(SENTENCES, tok))
    assert _counts(reports) == {"gelu_erf": 6}
    assert not FORMULA_OPS & set(_ops(g))
    gelus = [n for n in g.nodes if n.op_type == "FusedGemm" and n.attrs.get("activation") == "Gelu"]
    assert len(gelus) == 6


@pytest.mark.parametrize("dynamo", [False, True])
def test_vit_opset16(tmp_path_factory, dynamo: bool) -> None:  # noqa: ANN001
    from models import CASES  # noqa: PLC0415

    case = CASES["vit"]
    path = _export_cached(
        tmp_path_factory,
        f"vit_{'dynamo' if dynamo else 'torchscript'}_opset16.onnx",
        lambda p: export_module(case.build(), case.inputs(2), p, dynamo=dynamo, opset=16),
    )
    g, reports = check_optimized(path, numpy_feeds(case.inputs(2)))
    assert _counts(reports) == {"gelu_erf": 2}
    assert "Erf" not in _ops(g)


@pytest.mark.parametrize("dynamo", [False, True])
def test_gpt2_new_gelu(exported, dynamo: bool) -> None:  # noqa: ANN001
    from models import CASES  # noqa: PLC0415

    g, reports = check_optimized(exported("gpt2", dynamo), numpy_feeds(CASES["gpt2"].inputs(2)))
    assert _counts(reports) == {"gelu_tanh": 2}
    assert not FORMULA_OPS & set(_ops(g))
    tanh_gemms = [
        n for n in g.nodes if n.op_type == "FusedGemm" and n.attrs.get("activation") == "Gelu"
    ]
    assert [n.attrs["activation_params"] for n in tanh_gemms] == [[1.0], [1.0]]
