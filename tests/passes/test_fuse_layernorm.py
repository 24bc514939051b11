"""fuse_layernorm (level 2): decomposed layer norms -> LayerNormalization.

Hand-built graphs cover the spellings (Pow or Mul for the square, Div or Reciprocal+Mul, with
and without gamma/beta, one or two trailing axes) and the cases that must be left alone; the
real models are MiniLM (real weights), ViT and GPT-2 exported by TorchScript at opset 16, where
layer norms are decomposed, and at the default opset, where they are native.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from helpers import SENTENCES, check_optimized, numpy_feeds
from onnx import TensorProto as T
from onnx import helper, numpy_helper

from ecoinfer.ir.graph import Graph

RNG = np.random.default_rng(0)
ONLY = ("fuse_layernorm",)
DECOMPOSED = {"ReduceMean", "Sub", "Pow", "Sqrt", "Div", "Reciprocal"}


def _model(nodes, inputs, outputs, inits=(), opset=18) -> bytes:  # noqa: ANN001
    g = helper.make_graph(nodes, "g", inputs, outputs, initializer=list(inits))
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)], ir_version=10)
    return m.SerializeToString()


def _t(name: str, arr) -> onnx.TensorProto:  # noqa: ANN001
    return numpy_helper.from_array(np.asarray(arr), name)


def _ops(g: Graph, op: str) -> int:
    return sum(n.op_type == op for n in g.nodes)


def _counts(reports, name: str = "fuse_layernorm"):  # noqa: ANN001, ANN202
    return next(r for r in reports if r.name == name).counts


def _layernorm_graph(
    square: str = "pow",
    divide: str = "div",
    gamma: bool = True,
    beta: bool = True,
    axes: tuple[int, ...] = (-1,),
    shape: tuple = ("batch", "seq", 16),
    extra_outputs: tuple[str, ...] = (),
) -> bytes:
    norm_shape = [int(shape[a]) for a in sorted(a % len(shape) for a in axes)]
    nodes = [
        helper.make_node("ReduceMean", ["x", "axes"], ["mean"]),
        helper.make_node("Sub", ["x", "mean"], ["d"]),
    ]
    if square == "pow":
        nodes.append(helper.make_node("Pow", ["d", "two"], ["sq"]))
    else:
        nodes.append(helper.make_node("Mul", ["d", "d"], ["sq"]))
    nodes += [
        helper.make_node("ReduceMean", ["sq", "axes"], ["var"]),
        helper.make_node("Add", ["var", "eps"], ["ve"]),
        helper.make_node("Sqrt", ["ve"], ["std"]),
    ]
    if divide == "div":
        nodes.append(helper.make_node("Div", ["d", "std"], ["n"]))
    else:
        nodes.append(helper.make_node("Reciprocal", ["std"], ["inv"]))
        nodes.append(helper.make_node("Mul", ["inv", "d"], ["n"]))
    last = "n"
    if gamma:
        nodes.append(helper.make_node("Mul", ["gamma", last], ["g"]))
        last = "g"
    if beta:
        nodes.append(helper.make_node("Add", [last, "beta"], ["b"]))
        last = "b"
    nodes.append(helper.make_node("Identity", [last], ["y"]))
    inits = [
        _t("axes", np.array(axes, np.int64)),
        _t("two", np.array(2.0, np.float32)),
        _t("eps", np.array(1e-5, np.float32)),
        _t("gamma", (RNG.standard_normal(norm_shape) + 1).astype(np.float32)),
        _t("beta", RNG.standard_normal(norm_shape).astype(np.float32)),
    ]
    x = helper.make_tensor_value_info("x", T.FLOAT, list(shape))
    outs = [helper.make_tensor_value_info(o, T.FLOAT, None) for o in ("y", *extra_outputs)]
    return _model(nodes, [x], outs, inits)


def _feeds(shape=(2, 5, 16)) -> dict[str, np.ndarray]:  # noqa: ANN001
    return {"x": (RNG.standard_normal(shape) * 3 + 1).astype(np.float32)}


@pytest.mark.parametrize("square", ["pow", "mul"])
@pytest.mark.parametrize("divide", ["div", "reciprocal"])
def test_decomposed_forms_fuse(square: str, divide: str) -> None:
    model = _layernorm_graph(square, divide)
    g, reports = check_optimized(model, _feeds(), only=ONLY)
    assert [n.op_type for n in g.nodes] == ["LayerNormalization", "Identity"]
    ln = g.nodes[0]
    assert ln.attrs["axis"] == -1 and ln.attrs["epsilon"] == pytest.approx(1e-5)
    assert len(ln.inputs) == 3  # gamma and beta folded in
    assert _counts(reports) == {"layernorm": 1, "scale": 1, "bias": 1}
    check_optimized(model, _feeds())  # the whole level-2 pipeline


@pytest.mark.parametrize(("gamma", "beta"), [(False, False), (True, False), (False, True)])
def test_partial_affine(gamma: bool, beta: bool) -> None:
    # exporters drop *1 and +0 (or a cleanup does): the bare normalisation still fuses
    g, reports = check_optimized(_layernorm_graph(gamma=gamma, beta=beta), _feeds(), only=ONLY)
    assert _ops(g, "LayerNormalization") == 1 and not DECOMPOSED & {n.op_type for n in g.nodes}
    assert _ops(g, "Mul") == 0 and _ops(g, "Add") == 0
    assert _counts(reports)["layernorm"] == 1


def test_two_trailing_axes() -> None:
    model = _layernorm_graph(axes=(1, 2), shape=("batch", 4, 6))
    g, _ = check_optimized(model, _feeds((3, 4, 6)), only=ONLY)
    (ln,) = [n for n in g.nodes if n.op_type == "LayerNormalization"]
    assert ln.attrs["axis"] == -2
    assert list(g.initializers[ln.inputs[1]].shape) == [4, 6]


def test_non_last_axis_is_left_alone() -> None:
    # normalising over axis 1 of [batch, 4, 6] is not a LayerNormalization over trailing axes
    model = _layernorm_graph(axes=(1,), shape=("batch", 4, 6), gamma=False, beta=False)
    g, reports = check_optimized(model, _feeds((3, 4, 6)))
    assert _ops(g, "LayerNormalization") == 0
    assert _ops(g, "ReduceMean") + _ops(g, "FusedElementwise") >= 1
    assert not _counts(reports)


def test_shared_intermediate_is_left_alone() -> None:
    # x - mean is also a graph output: deleting it would starve that reader
    model = _layernorm_graph(extra_outputs=("d",))
    g, reports = check_optimized(model, _feeds(), only=ONLY)
    assert _ops(g, "LayerNormalization") == 0
    assert not _counts(reports)


def test_non_constant_eps_is_left_alone() -> None:
    model = onnx.load_from_string(_layernorm_graph())
    model.graph.initializer.remove(next(i for i in model.graph.initializer if i.name == "eps"))
    model.graph.input.append(helper.make_tensor_value_info("eps", T.FLOAT, []))
    feeds = {**_feeds(), "eps": np.array(1e-5, np.float32)}
    g, reports = check_optimized(model.SerializeToString(), feeds, only=ONLY)
    assert _ops(g, "LayerNormalization") == 0 and not _counts(reports)


def test_gamma_varying_along_a_batch_dim_stays_outside() -> None:
    # gamma of shape [5, 1] varies along seq: it cannot become the LayerNorm scale
    model = onnx.load_from_string(_layernorm_graph(shape=("batch", 5, 16)))
    for i, init in enumerate(model.graph.initializer):
        if init.name == "gamma":
            model.graph.initializer[i].CopyFrom(
                _t("gamma", RNG.standard_normal((5, 1)).astype(np.float32))
            )
    g, reports = check_optimized(model.SerializeToString(), _feeds(), only=ONLY)
    assert _ops(g, "LayerNormalization") == 1 and _ops(g, "Mul") == 1
    assert _counts(reports) == {"layernorm": 1}


# ------------------------------------------------------------------------------ real models
def _export_cached(tmp_path_factory, name: str, build) -> Path:  # noqa: ANN001
    """One export per session, shared by the test modules that need it."""
    path = tmp_path_factory.getbasetemp() / name
    if not path.exists():
        build(path)
    return path


@pytest.fixture(scope="module")
def minilm_opset16(tmp_path_factory):  # noqa: ANN001, ANN201
    """MiniLM (real weights) exported by TorchScript at opset 16: decomposed LayerNorm/GELU."""
    import torch  # noqa: PLC0415

    from ecoinfer.errors import EcoinferError  # noqa: PLC0415
    from ecoinfer.frontend.torch import export_module  # noqa: PLC0415

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
    return path, mm.sample_inputs(SENTENCES, tok)


def test_minilm_opset16_every_layernorm_fused(minilm_opset16) -> None:  # noqa: ANN001
    path, feeds = minilm_opset16
    g, reports = check_optimized(path, feeds)
    assert _counts(reports)["layernorm"] == 13
    # the embeddings' LayerNorm then goes into EmbedLayerNorm (fuse_embed_layernorm)
    assert _ops(g, "LayerNormalization") == 12 and _ops(g, "EmbedLayerNorm") == 1
    assert not {"ReduceMean", "Sqrt", "Pow", "Erf"} & {n.op_type for n in g.nodes}


@pytest.mark.parametrize("dynamo", [False, True])
def test_minilm_native_layernorms_kept(minilm_export, dynamo: bool) -> None:  # noqa: ANN001
    path, feeds = minilm_export(dynamo)
    g, _ = check_optimized(path, feeds)
    assert _ops(g, "LayerNormalization") == 12 and _ops(g, "EmbedLayerNorm") == 1


@pytest.mark.parametrize("name", ["vit", "gpt2"])
def test_code_built_models_opset16(tmp_path_factory, name: str) -> None:  # noqa: ANN001
    from models import CASES  # noqa: PLC0415

    from ecoinfer.frontend.torch import export_module  # noqa: PLC0415

    case = CASES[name]
    path = _export_cached(
        tmp_path_factory,
        f"{name}_torchscript_opset16.onnx",
        lambda p: export_module(case.build(), case.inputs(2), p, dynamo=False, opset=16),
    )
    g, reports = check_optimized(path, numpy_feeds(case.inputs(2)))
    assert _counts(reports)["layernorm"] == 5  # 2 blocks x 2 + the final one
    assert _ops(g, "LayerNormalization") == 5 and _ops(g, "ReduceMean") == 0


@pytest.mark.parametrize("dynamo", [False, True])
@pytest.mark.parametrize("name", ["vit", "gpt2"])
def test_code_built_models_default_export(exported, name: str, dynamo: bool) -> None:  # noqa: ANN001
    from models import CASES  # noqa: PLC0415

    g, _ = check_optimized(exported(name, dynamo), numpy_feeds(CASES[name].inputs(2)))
    assert _ops(g, "LayerNormalization") == 5 and _ops(g, "ReduceMean") == 0
