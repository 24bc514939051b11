"""ONNX import: initializers, external data, Constant nodes, inputs with defaults, old opsets."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto as T
from onnx import helper, numpy_helper

import ecoinfer
from ecoinfer.errors import ModelLoadError, UnsupportedOpError
from ecoinfer.frontend.onnx import import_onnx


def _ort(model: onnx.ModelProto, feeds: dict) -> list[np.ndarray]:
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)


def _mlp(opset: int = 17) -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((3, 4)).astype(np.float32), "w")
    b = numpy_helper.from_array(rng.standard_normal((4,)).astype(np.float32), "b")
    nodes = [
        helper.make_node(
            "Constant", [], ["two"], value=numpy_helper.from_array(np.array(2.0, np.float32))
        ),
        helper.make_node("MatMul", ["x", "w"], ["h"], name="mm"),
        helper.make_node("Add", ["h", "b"], ["hb"], name="bias"),
        helper.make_node("Mul", ["hb", "two"], ["y"], name="scale"),
    ]
    g = helper.make_graph(
        nodes,
        "mlp",
        [helper.make_tensor_value_info("x", T.FLOAT, ["batch", 3])],
        [helper.make_tensor_value_info("y", T.FLOAT, ["batch", 4])],
        initializer=[w, b],
    )
    # IR version 10: onnxruntime 1.30 (the GPU image) reads up to 13
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)], ir_version=10)


def test_initializers_constants_and_symbolic_shapes() -> None:
    m = _mlp()
    g = import_onnx(m)
    assert set(g.initializers) == {"w", "b", "two"}
    assert [n.op_type for n in g.nodes] == ["MatMul", "Add", "Mul"]
    assert g.values["y"].shape == ("batch", 4)
    x = np.random.default_rng(1).standard_normal((5, 3)).astype(np.float32)
    got = ecoinfer.load(m).run({"x": x})["y"]
    np.testing.assert_allclose(got, _ort(m, {"x": x})[0], rtol=1e-6, atol=1e-6)


def test_external_data(tmp_path) -> None:  # noqa: ANN001
    m = _mlp()
    path = tmp_path / "ext.onnx"
    # save_model rewrites the proto in place to point at the data file: save a copy
    ext = onnx.ModelProto()
    ext.CopyFrom(m)
    onnx.save_model(
        ext,
        path,
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location="ext.data",
        size_threshold=0,
    )
    assert (tmp_path / "ext.data").exists()
    x = np.ones((2, 3), np.float32)
    got = ecoinfer.load(path).run({"x": x})["y"]
    np.testing.assert_allclose(got, _ort(m, {"x": x})[0], rtol=1e-6)
    (tmp_path / "ext.data").unlink()
    with pytest.raises(ModelLoadError, match="external data"):
        ecoinfer.load(path)


def test_graph_input_that_is_also_initializer_is_a_weight() -> None:
    m = _mlp()
    m.graph.input.append(helper.make_tensor_value_info("w", T.FLOAT, [3, 4]))
    g = import_onnx(m)
    assert g.input_names == ["x"]
    assert "w" in g.initializers


def test_old_opset_attribute_forms() -> None:
    # opset 11 Squeeze/Unsqueeze take axes as attributes; the IR takes them as inputs
    nodes = [
        helper.make_node("Unsqueeze", ["x"], ["u"], axes=[0], name="u"),
        helper.make_node("Squeeze", ["u"], ["y"], axes=[0], name="s"),
    ]
    g = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", T.FLOAT, [2, 3])],
        [helper.make_tensor_value_info("y", T.FLOAT, [2, 3])],
    )
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 11)])
    ir = import_onnx(m)
    assert len(ir.nodes[0].inputs) == 2 and ir.nodes[0].inputs[1] in ir.initializers
    assert ir.values["u"].shape == (1, 2, 3)
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    np.testing.assert_array_equal(ecoinfer.load(m).run({"x": x})["y"], x)


def test_too_old_opset_is_refused() -> None:
    m = _mlp(opset=5)
    with pytest.raises(UnsupportedOpError, match="opset 5.*version_converter"):
        import_onnx(m)


def test_node_names_are_kept_and_missing_ones_generated() -> None:
    m = _mlp()
    m.graph.node[1].name = ""
    g = import_onnx(m)
    assert [n.name for n in g.nodes] == ["MatMul_1", "bias", "scale"]
