"""Writing the IR back to ONNX: standard graphs run in onnxruntime, fused ones re-import."""

from __future__ import annotations

import subprocess
import sys

import onnx
from helpers import assert_close, run_onnxruntime

import ecoinfer
from ecoinfer.frontend.onnx import import_onnx
from ecoinfer.frontend.onnx_writer import FUSED_DOMAIN, to_onnx
from ecoinfer.passes import OptimizeConfig, optimize


def test_level1_graph_is_valid_onnx_and_runs_in_onnxruntime(minilm) -> None:  # noqa: ANN001
    path, feeds = minilm
    graph, _ = optimize(import_onnx(path), OptimizeConfig(level=1))
    model = to_onnx(graph)
    onnx.checker.check_model(model, full_check=True)
    assert [i.name for i in model.graph.input] == ["input_ids", "attention_mask", "token_type_ids"]
    dims = [d.dim_param or d.dim_value for d in model.graph.output[0].type.tensor_type.shape.dim]
    assert dims == ["batch", "seq", 384]
    assert_close(
        run_onnxruntime(model.SerializeToString(), feeds),
        run_onnxruntime(path, feeds),
        "level-1 graph written back, in onnxruntime",
        rtol=1e-6,
    )


def test_level2_graph_round_trips_through_ecoinfer(minilm, tmp_path) -> None:  # noqa: ANN001
    path, feeds = minilm
    graph, _ = optimize(import_onnx(path), OptimizeConfig(level=2))
    model = to_onnx(graph)
    domains = {o.domain: o.version for o in model.opset_import}
    if any(n.domain == FUSED_DOMAIN for n in graph.nodes):
        assert domains.get(FUSED_DOMAIN) == 1
    out = tmp_path / "opt.onnx"
    onnx.save(model, out)
    again = ecoinfer.load(out)
    assert [n.op_type for n in again.graph.nodes] == [n.op_type for n in graph.nodes]
    assert_close(again.run(feeds), run_onnxruntime(path, feeds), "level-2 graph re-imported")


def test_optimize_command(minilm, tmp_path) -> None:  # noqa: ANN001
    path, _ = minilm
    out = tmp_path / "o.onnx"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "ecoinfer.cli",
            "optimize",
            str(path),
            "-o",
            str(out),
            "--level",
            "1",
            "--verify",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert "fold_constants" in proc.stdout and "fewer nodes" in proc.stdout and out.exists()
    proc = subprocess.run(
        [sys.executable, "-m", "ecoinfer.cli", "optimize", str(path), "-o", str(path)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2 and "is the same file as MODEL" in proc.stderr
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "ecoinfer.cli",
            "optimize",
            str(path),
            "-o",
            str(out),
            "--disable",
            "nope",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2 and "no such pass" in proc.stderr
