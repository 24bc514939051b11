"""Quantized engines on the CPU: the builder fuses Q/DQ into QGemm/QConv, INT8 combines with a
float precision, the report says honestly what runs, and int8/float8 weights survive the
engine file."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "quant"))
from test_budget import batches, sensitive_mlp, write_npz  # noqa: E402

from ecoinfer.api import Model  # noqa: E402
from ecoinfer.cli import main  # noqa: E402
from ecoinfer.commands.inspect_engine import engine_summary  # noqa: E402
from ecoinfer.engine.builder import BuildConfig, build, load_engine  # noqa: E402
from ecoinfer.engine.format import read_engine, write_engine  # noqa: E402
from ecoinfer.frontend.onnx import import_onnx  # noqa: E402
from ecoinfer.passes.fuse_quantized import fuse_for_build  # noqa: E402
from ecoinfer.passes.manager import OptimizeConfig, optimize  # noqa: E402
from ecoinfer.quant.budget import QuantizeOptions, quant_tactics_report  # noqa: E402
from ecoinfer.quant.quantize import calibrate, quantize_graph  # noqa: E402

X = {"x": np.random.default_rng(7).normal(size=(5, 8)).astype(np.float32)}


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("qeng")
    model = root / "mlp.onnx"
    onnx.save(sensitive_mlp(), model)
    return model, write_npz(root / "calib", batches())


def _opts(calib: Path) -> QuantizeOptions:
    return QuantizeOptions("int8", calib_data=str(calib), calib_method="minmax")


def test_int8_engine_fuses_reports_and_round_trips(files, tmp_path: Path) -> None:  # noqa: ANN001
    model, calib = files
    eng = build(str(model), BuildConfig(device="cpu", quant=_opts(calib)))
    assert eng.graph.op_histogram() == {"ecoinfer.QGemm": 3}
    q = eng.report["quantization"]
    assert q["fused"] == {"qgemm": 3} and set(q["tactics"]) == {"fc1", "fc2", "fc3"}
    real = [t for t in q["tactics"].values() if not t.startswith(("reference", "dequant"))]
    assert q["emulated"] == (not real) and q["qdq_nodes"] == 0
    # each quantized layer's precision column says int8, or "int8 emul" on a float kernel
    want_labels = {k: "int8" if t in real else "int8 emul" for k, t in q["tactics"].items()}
    assert q["layer_precision"] == want_labels and q["eight_bit"] == len(real)
    shown = {r["layer"]: r["precision"] for r in eng.layer_table()}
    assert all(shown[k] == v for k, v in want_labels.items())
    # what the Q/DQ graph computes
    graph, _ = optimize(import_onnx(str(model)), OptimizeConfig(level=2))
    amax = calibrate(graph, batches(), method="minmax")
    want = Model(quantize_graph(graph, amax)).run(X)["y"]
    y = eng.run(X)["y"]
    np.testing.assert_allclose(y, want, rtol=1e-5, atol=1e-5)

    path = tmp_path / "m.eng"
    eng.save(path)
    back = load_engine(path, device="cpu")
    assert not back.warnings
    assert {t.dtype for t in back.graph.initializers.values()} >= {torch.int8, torch.float32}
    np.testing.assert_array_equal(back.run(X)["y"], y)
    assert back.report["quantization"]["tactics"] == q["tactics"]
    info = engine_summary(path)
    assert {r["layer"]: r["precision"] for r in info["layers"] if r["layer"] in want_labels} == (
        want_labels
    )
    assert info["quantized_layers"] == {
        "eight_bit": len(real),
        "emulated": 3 - len(real),
        "float_twin": 0,
    }


def test_reference_only_build_is_reported_emulated(files) -> None:  # noqa: ANN001
    model, calib = files
    eng = build(str(model), BuildConfig(device="cpu", tune=False, quant=_opts(calib)))
    q = eng.report["quantization"]
    assert q["emulated"] and set(q["tactics"].values()) == {"reference"}
    assert set(q["layer_precision"].values()) == {"int8 emul"} and q["eight_bit"] == 0


def test_int8_with_bf16_float_layers(files) -> None:  # noqa: ANN001
    model, calib = files
    base = build(str(model), BuildConfig(device="cpu", quant=_opts(calib))).run(X)["y"]
    eng = build(str(model), BuildConfig(precision="bf16", device="cpu", quant=_opts(calib)))
    qgemms = [n for n in eng.graph.nodes if n.op_type == "QGemm"]
    assert len(qgemms) == 3
    for n in qgemms:
        assert eng.graph.values[n.inputs[0]].dtype == "bfloat16"
        assert eng.graph.values[n.outputs[0]].dtype == "bfloat16"
        assert eng.graph.initializers[n.inputs[1]].dtype == torch.int8
        assert {eng.graph.initializers[i].dtype for i in n.inputs[2:4]} == {torch.float32}
    rows = {r["name"]: r for r in eng.report["layer_precision"]}
    assert rows["fc1"]["precision"] == "bfloat16" and "int8" in rows["fc1"]["note"]
    y = eng.run(X)["y"]
    assert y.dtype == np.float32  # the interface keeps its type
    assert np.linalg.norm(y - base) / np.linalg.norm(base) < 2e-2


def test_fp8_engine_file_on_cpu(files, tmp_path: Path) -> None:  # noqa: ANN001
    """The CLI refuses --fp8 on the CPU; an FP8-quantized graph built through the Python API
    still makes an engine whose float8 weights survive the file."""
    model, _ = files
    graph, _ = optimize(import_onnx(str(model)), OptimizeConfig(level=2))
    amax = calibrate(graph, batches(), method="minmax")
    qgraph = quantize_graph(graph, amax, "fp8")
    fused, counts = fuse_for_build(qgraph)
    assert counts == {"qgemm": 3}
    eng = build(fused, BuildConfig(device="cpu"))
    w8 = [t for t in eng.graph.initializers.values() if t.dtype == torch.float8_e4m3fn]
    assert len(w8) == 3
    want = Model(qgraph).run(X)["y"]
    np.testing.assert_allclose(eng.run(X)["y"], want, rtol=1e-5, atol=1e-5)
    path = tmp_path / "fp8.eng"
    eng.save(path)
    back = load_engine(path, device="cpu")
    for name, t in eng.graph.initializers.items():
        assert back.graph.initializers[name].dtype == t.dtype
        b = back.graph.initializers[name]
        assert torch.equal(b.reshape(-1).view(torch.uint8), t.reshape(-1).view(torch.uint8))
    np.testing.assert_allclose(back.run(X)["y"], want, rtol=1e-5, atol=1e-5)
    # what the builder would report: a QGemm on the reference kernel is emulated
    assert quant_tactics_report(eng.graph, {})["emulated"]


def test_float8_and_int8_tensors_in_the_file_format(tmp_path: Path) -> None:
    t = {
        "f8": torch.tensor([0.5, -448.0, 3.0]).to(torch.float8_e4m3fn),
        "i8": torch.tensor([-128, 0, 127], dtype=torch.int8),
    }
    p = write_engine(tmp_path / "t.eng", {"x": 1}, t)
    _, back = read_engine(p)
    for k, v in t.items():
        assert back[k].dtype == v.dtype and torch.equal(back[k].float(), v.float())


def test_cli_int8_with_fp16_flag_and_fp8_refusal(files, tmp_path: Path, capsys) -> None:  # noqa: ANN001
    model, calib = files
    eng = tmp_path / "m.eng"
    argv = ["build", str(model), "-o", str(eng), "--int8", "--bf16", "--device", "cpu",
            "--calib-data", str(calib), "--calib-method", "minmax"]  # fmt: skip
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "int8, bfloat16 elsewhere" in out and "3 fused into quantized ops" in out
    assert "0 kept in float for accuracy; 3 run 8-bit tactics (" in out or "3 emulated" in out
    assert "warning: no layer runs in" not in out
    assert load_engine(eng, device="cpu").precision == "bfloat16"
    assert main([*argv[:4], "--fp8", *argv[5:]]) == 2
    err = capsys.readouterr().err.strip()
    assert "compute capability >= 8.9" in err and "--int8" in err and "\n" not in err
