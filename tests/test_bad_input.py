"""Bad input gives a typed error with a one-line message; the CLI exits 2 without a traceback."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import onnx
import pytest
from onnx import TensorProto as T
from onnx import helper

import ecoinfer
from ecoinfer.errors import (
    IndexOutOfRangeError,
    InputDTypeError,
    InputShapeError,
    MissingInputError,
    ModelLoadError,
    UnknownInputError,
    UnsupportedOpError,
)


def _model(nodes, inputs, outputs, inits=(), opset=17):  # noqa: ANN001, ANN202
    g = helper.make_graph(nodes, "g", inputs, outputs, initializer=list(inits))
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])


@pytest.fixture
def add_model(tmp_path):  # noqa: ANN001, ANN201
    m = _model(
        [helper.make_node("Add", ["x", "y"], ["z"], name="add0")],
        [
            helper.make_tensor_value_info("x", T.FLOAT, ["batch", 3]),
            helper.make_tensor_value_info("y", T.FLOAT, ["batch", 3]),
        ],
        [helper.make_tensor_value_info("z", T.FLOAT, ["batch", 3])],
    )
    path = tmp_path / "add.onnx"
    onnx.save(m, path)
    return path


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "ecoinfer.cli", *args], capture_output=True, text=True, timeout=120
    )


def _one_line_error(proc: subprocess.CompletedProcess, *needles: str) -> None:
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, proc.stderr
    for n in needles:
        assert n in lines[0], lines[0]


def test_truncated_file(add_model, tmp_path) -> None:  # noqa: ANN001
    data = add_model.read_bytes()
    bad = tmp_path / "cut.onnx"
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelLoadError, match=r"cut\.onnx: not a valid ONNX model"):
        ecoinfer.load(bad)
    _one_line_error(_cli("inspect", str(bad)), "cut.onnx", "truncated")


def test_not_onnx_file(tmp_path) -> None:  # noqa: ANN001
    bad = tmp_path / "notes.onnx"
    bad.write_text("this is a text file, not a model\n" * 10)
    with pytest.raises(ModelLoadError, match="notes.onnx"):
        ecoinfer.load(bad)
    _one_line_error(_cli("run", str(bad)), "notes.onnx", "not")


def test_empty_and_missing_file(tmp_path) -> None:  # noqa: ANN001
    empty = tmp_path / "empty.onnx"
    empty.write_bytes(b"")
    with pytest.raises(ModelLoadError, match="empty.onnx: not an ONNX model"):
        ecoinfer.load(empty)
    with pytest.raises(ModelLoadError, match="no such file"):
        ecoinfer.load(tmp_path / "nope.onnx")
    _one_line_error(_cli("inspect", str(tmp_path / "nope.onnx")), "nope.onnx", "no such file")


def test_unsupported_op_names_op_node_opset_and_lists_supported(tmp_path) -> None:  # noqa: ANN001
    m = _model(
        [
            helper.make_node("Add", ["x", "x"], ["y"], name="a"),
            helper.make_node("FancyOp", ["y"], ["z"], name="my_fancy_node"),
        ],
        [helper.make_tensor_value_info("x", T.FLOAT, [2])],
        [helper.make_tensor_value_info("z", T.FLOAT, [2])],
        opset=18,
    )
    with pytest.raises(UnsupportedOpError) as e:
        ecoinfer.load(m)
    msg = str(e.value)
    assert "'FancyOp'" in msg and "my_fancy_node" in msg and "opset 18" in msg
    assert "Supported ONNX ops:" in msg and "Add" in msg
    path = tmp_path / "fancy.onnx"
    onnx.save(m, path)
    _one_line_error(_cli("inspect", str(path)), "FancyOp", "my_fancy_node")


def test_unknown_domain_op() -> None:
    m = _model(
        [helper.make_node("FusedGemm", ["x"], ["z"], name="fg", domain="com.microsoft")],
        [helper.make_tensor_value_info("x", T.FLOAT, [2])],
        [helper.make_tensor_value_info("z", T.FLOAT, [2])],
    )
    m.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    with pytest.raises(UnsupportedOpError, match="FusedGemm.*com.microsoft"):
        ecoinfer.load(m)


def test_missing_and_misnamed_input(add_model) -> None:  # noqa: ANN001
    model = ecoinfer.load(add_model)
    x = np.ones((2, 3), np.float32)
    with pytest.raises(MissingInputError, match="input 'y'"):
        model.run({"x": x})
    with pytest.raises(UnknownInputError, match="no input 'yy'; did you mean 'y'"):
        model.run({"x": x, "yy": x})


def test_wrong_dtype_is_never_cast(add_model) -> None:  # noqa: ANN001
    model = ecoinfer.load(add_model)
    with pytest.raises(InputDTypeError, match="input 'y': expected float32 but got float64"):
        model.run({"x": np.ones((2, 3), np.float32), "y": np.ones((2, 3))})
    with pytest.raises(InputDTypeError, match="int32"):
        model.run({"x": np.ones((2, 3), np.float32), "y": np.ones((2, 3), np.int32)})


def test_wrong_rank_and_contradicting_shape(add_model) -> None:  # noqa: ANN001
    model = ecoinfer.load(add_model)
    x = np.ones((2, 3), np.float32)
    with pytest.raises(InputShapeError, match="expected rank 2"):
        model.run({"x": x, "y": np.ones((2, 3, 1), np.float32)})
    with pytest.raises(InputShapeError, match="dimension 1 must be 3"):
        model.run({"x": x, "y": np.ones((2, 4), np.float32)})
    # both inputs share the symbolic 'batch' dim
    with pytest.raises(InputShapeError, match="'batch'"):
        model.run({"x": x, "y": np.ones((5, 3), np.float32)})


def test_cli_reports_input_errors(add_model, tmp_path) -> None:  # noqa: ANN001
    np.save(tmp_path / "y.npy", np.ones((2, 3), np.float64))
    np.save(tmp_path / "x.npy", np.ones((2, 3), np.float32))
    proc = _cli(
        "run",
        str(add_model),
        "--input",
        f"x={tmp_path / 'x.npy'}",
        "--input",
        f"y={tmp_path / 'y.npy'}",
    )
    _one_line_error(proc, "input 'y'", "float64")
    _one_line_error(_cli("run", str(add_model), "--input", "x=/no/such.npy"), "/no/such.npy")
    _one_line_error(_cli("run", str(add_model), "--shapes", "x:2by3"), "--shapes")


def test_debug_flag_shows_traceback(tmp_path) -> None:  # noqa: ANN001
    proc = _cli("--debug", "inspect", str(tmp_path / "nope.onnx"))
    assert proc.returncode == 2 and "Traceback" in proc.stderr


def test_gather_out_of_range_indices() -> None:
    table = helper.make_tensor("table", T.FLOAT, [4, 2], np.arange(8, dtype=np.float32))
    m = _model(
        [helper.make_node("Gather", ["table", "ids"], ["out"], name="embed", axis=0)],
        [helper.make_tensor_value_info("ids", T.INT64, ["n"])],
        [helper.make_tensor_value_info("out", T.FLOAT, ["n", 2])],
        inits=[table],
    )
    model = ecoinfer.load(m)
    ok = model.run({"ids": np.array([0, 3, -1], np.int64)})["out"]
    np.testing.assert_array_equal(ok, np.array([[0, 1], [6, 7], [6, 7]], np.float32))
    with pytest.raises(IndexOutOfRangeError) as e:
        model.run({"ids": np.array([1, 7], np.int64)})
    msg = str(e.value)
    assert "embed" in msg and "7" in msg and "\n" not in msg


def test_a_node_reading_an_undefined_tensor_is_named(tmp_path) -> None:  # noqa: ANN001
    """It used to import, and `build` then failed with an internal KeyError."""
    m = _model(
        [
            helper.make_node("Relu", ["x"], ["h"], name="ok"),
            helper.make_node("Add", ["h", "nope"], ["z"], name="badadd"),
        ],
        [helper.make_tensor_value_info("x", T.FLOAT, [2])],
        [helper.make_tensor_value_info("z", T.FLOAT, [2])],
    )
    path = tmp_path / "dangling.onnx"
    onnx.save(m, path)
    for cmd in (["inspect", str(path)], ["build", str(path), "-o", str(tmp_path / "d.eng")]):
        _one_line_error(_cli(*cmd), "dangling.onnx", "node 'badadd'", "'nope'")
    lost = _model(
        [helper.make_node("Relu", ["x"], ["h"], name="ok")],
        [helper.make_tensor_value_info("x", T.FLOAT, [2])],
        [helper.make_tensor_value_info("z", T.FLOAT, [2])],
    )
    onnx.save(lost, path)
    with pytest.raises(ecoinfer.errors.GraphError, match="graph output 'z' is produced by no"):
        ecoinfer.load(path)
