"""`ecoinfer build --int8` end to end (calibration, cache, accuracy budget, engine) and
`ecoinfer debug-precision`, through the CLI entry point on a small hand-built MLP."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from test_budget import batches, sensitive_mlp, write_npz

from ecoinfer.api import Model
from ecoinfer.cli import main
from ecoinfer.engine.builder import load_engine
from ecoinfer.frontend.onnx import import_onnx
from ecoinfer.passes.manager import OptimizeConfig, optimize
from ecoinfer.quant.cache import CalibrationCache
from ecoinfer.quant.quantize import quantize_graph


@pytest.fixture
def files(tmp_path: Path) -> tuple[Path, Path]:
    model = tmp_path / "mlp.onnx"
    onnx.save(sensitive_mlp(), model)
    return model, write_npz(tmp_path / "calib", batches())


def _error_line(capsys: pytest.CaptureFixture) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("ecoinfer: error: ") and "\n" not in err, err
    return err


def test_build_int8_engine_matches_quantized_graph_and_reuses_cache(
    files: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    model, calib = files
    eng, cache = tmp_path / "m.eng", tmp_path / "calib.json"
    args = ["build", str(model), "-o", str(eng), "--int8", "--device", "cpu"]
    assert main([*args, "--calib-data", str(calib), "--calib-method", "minmax",
                 "--calib-cache", str(cache)]) == 0  # fmt: skip
    out = capsys.readouterr().out
    assert "int8, float32 elsewhere" in out and "3 layer(s) quantized" in out
    assert "3 fused into quantized ops" in out
    assert f"calibration cache written to {cache}" in out

    # the engine computes what the quantized graph computes
    graph, _ = optimize(import_onnx(str(model)), OptimizeConfig(level=2))
    amax = {n: t.amax for n, t in CalibrationCache.load_for(cache, graph).tensors.items()}
    qgraph = quantize_graph(graph, amax)
    engine = load_engine(eng, device="cpu")
    assert engine.report["quantization"]["quantized_layers"] == ["fc1", "fc2", "fc3"]
    assert engine.graph.op_histogram() == {"ecoinfer.QGemm": 3}  # Q/DQ fused by the builder
    x = {"x": np.random.default_rng(7).normal(size=(5, 8)).astype(np.float32)}
    want = Model(qgraph).run(x)["y"]
    y = engine.run(x)["y"]
    np.testing.assert_allclose(y, want, rtol=1e-5, atol=1e-5)
    assert np.abs(Model(graph).run(x)["y"] - want).max() > 1e-2  # it really is quantized

    # a second build reuses the cache without any data, and builds the same engine
    eng2 = tmp_path / "m2.eng"
    assert main(["build", str(model), "-o", str(eng2), "--int8", "--device", "cpu",
                 "--calib-cache", str(cache), "--no-tune"]) == 0  # fmt: skip
    assert "from cache" in capsys.readouterr().out
    np.testing.assert_allclose(load_engine(eng2, device="cpu").run(x)["y"], y, rtol=1e-5, atol=1e-5)


def test_build_with_accuracy_budget_keeps_sensitive_layer(
    files: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    model, calib = files
    val = write_npz(tmp_path / "val", batches(2, seed=5))
    eng = tmp_path / "m.eng"
    base = ["build", str(model), "-o", str(eng), "--int8", "--device", "cpu", "--no-tune",
            "--calib-data", str(calib), "--calib-method", "minmax", "--val-data", str(val)]  # fmt: skip
    assert main([*base, "--accuracy-budget", "0.999"]) == 0
    out = capsys.readouterr().out
    assert "kept in float: fc2" in out and "1 kept in float" in out
    q = load_engine(eng, device="cpu").report["quantization"]
    assert q["float_layers"] == ["fc2"] and q["budget"]["value"] >= 0.999

    assert main([*base, "--accuracy-budget", "1.5"]) == 2
    err = _error_line(capsys)
    assert "no mix" in err and "best mix found" in err

    # a margin over the budget is recorded; a margin alone is a clear error
    assert main([*base, "--accuracy-budget", "0.99", "--budget-margin", "0.009"]) == 0
    capsys.readouterr()
    b = load_engine(eng, device="cpu").report["quantization"]["budget"]
    assert b["margin"] == 0.009 and b["value"] >= 0.999
    assert main([*base, "--budget-margin", "0.01"]) == 2
    assert "--accuracy-budget" in _error_line(capsys)


def test_fp8_on_cpu_is_a_clear_error(files: tuple[Path, Path], tmp_path: Path, capsys) -> None:  # noqa: ANN001
    model, calib = files
    argv = ["build", str(model), "-o", str(tmp_path / "m.eng"), "--fp8", "--device", "cpu",
            "--calib-data", str(calib)]  # fmt: skip
    assert main(argv) == 2
    err = _error_line(capsys)
    assert "compute capability >= 8.9" in err and "--int8" in err


def test_bad_calibration_data(files: tuple[Path, Path], tmp_path: Path, capsys) -> None:  # noqa: ANN001
    model, _ = files
    rng = np.random.default_rng(0)
    cases = {
        "name": ({"inp": rng.normal(size=(4, 8)).astype(np.float32)}, "no input 'inp'"),
        "dtype": ({"x": rng.normal(size=(4, 8))}, "is float64, the model expects float32"),
        "shape": ({"x": rng.normal(size=(4, 5)).astype(np.float32)}, "dim 1 must be 8"),
    }
    for what, (batch, msg) in cases.items():
        folder = write_npz(tmp_path / what, [batch])
        argv = ["build", str(model), "-o", str(tmp_path / "m.eng"), "--int8", "--device", "cpu",
                "--calib-data", str(folder)]  # fmt: skip
        assert main(argv) == 2, what
        assert msg in _error_line(capsys), what
    empty = tmp_path / "empty"
    empty.mkdir()
    script = tmp_path / "none.py"
    script.write_text("def batches():\n    return iter(())\n")
    for source in (empty, script):
        argv = ["build", str(model), "-o", str(tmp_path / "m.eng"), "--int8", "--device", "cpu",
                "--calib-data", str(source)]  # fmt: skip
        assert main(argv) == 2
        assert "empty" in _error_line(capsys)
    # no data and no cache; calibration flags without --int8
    assert main(["build", str(model), "-o", str(tmp_path / "m.eng"), "--int8"]) == 2
    assert "needs calibration data" in _error_line(capsys)
    assert main(["build", str(model), "-o", str(tmp_path / "m.eng"), "--calib-data", "d"]) == 2
    assert "add --int8" in _error_line(capsys)


def test_debug_precision_lists_every_quantized_layer(
    files: tuple[Path, Path], capsys: pytest.CaptureFixture
) -> None:
    model, calib = files
    assert main(["debug-precision", str(model), "--calib-data", str(calib), "--int8",
                 "--calib-method", "minmax"]) == 0  # fmt: skip
    out = capsys.readouterr().out
    assert "fused layer keeps the name of the root node" in out
    rows = {}
    for line in out.splitlines():
        parts = line.split()
        if len(parts) == 6 and parts[2] in ("int8", "fp32"):
            rows[parts[0]] = parts
    assert set(rows) == {"fc1", "fc2", "fc3"}
    assert all(r[2] == "int8" and r[1] == "FusedGemm" for r in rows.values())
    # the optimized fc1 (MatMul+Add+Relu) computes ONNX node relu1's output
    assert rows["fc1"][5] == "relu1" and rows["fc3"][5] == "fc3"
    rel = {k: float(r[3]) for k, r in rows.items()}
    cos = {k: float(r[4]) for k, r in rows.items()}
    assert 0 < rel["fc1"] < rel["fc2"] and cos["fc2"] < cos["fc1"] <= 1.0

    # level 0: the unfused graph, every node, sorted worst first
    assert main(["debug-precision", str(model), "--calib-data", str(calib), "--opt-level", "0",
                 "--sort"]) == 0  # fmt: skip
    out = capsys.readouterr().out
    names = [ln.split()[0] for ln in out.splitlines() if len(ln.split()) == 6]
    assert {"fc1", "bias1", "relu1", "fc2", "relu2", "fc3"} <= set(names)
    assert "3 quantized layer(s)" in out


def test_build_int8_with_smoothing(
    files: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """--smooth moves the outlier channel into the weights before calibrating; the float graph
    is unchanged, the INT8 engine gets closer to FP32 than without smoothing."""
    model, calib = files
    x = {"x": np.random.default_rng(7).normal(size=(5, 8)).astype(np.float32)}
    ref = Model(optimize(import_onnx(str(model)), OptimizeConfig(level=2))[0]).run(x)["y"]
    errs = {}
    for label, extra in (("plain", []), ("smooth", ["--smooth", "0.8"])):
        eng = tmp_path / f"{label}.eng"
        assert main(["build", str(model), "-o", str(eng), "--int8", "--device", "cpu", "--no-tune",
                     "--calib-data", str(calib), "--calib-method", "minmax", *extra]) == 0  # fmt: skip
        out = capsys.readouterr().out
        assert ("smoothed" in out) == (label == "smooth")
        y = load_engine(eng, device="cpu").run(x)["y"]
        errs[label] = float(np.linalg.norm(y - ref) / np.linalg.norm(ref))
    assert errs["smooth"] < errs["plain"], errs
    assert main(["build", str(model), "-o", str(tmp_path / "n.eng"), "--smooth", "0.8"]) == 2
    assert "only applies to quantized builds" in _error_line(capsys)


def test_check_accuracy_of_a_quantized_engine(
    files: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """--check-accuracy on an INT8 engine compares with onnxruntime FP32 under the quantized
    sanity bound (0.1), not the fp32 engine's 1e-5; --check-tolerance sets another. The
    inputs are data like the calibration's (--check-input): random N(0, 1) inputs leave
    this model's calibrated ranges, which a quantized engine cannot follow."""
    model, calib = files
    base = ["build", str(model), "-o", str(tmp_path / "q.eng"), "--int8", "--device", "cpu",
            "--no-tune", "--calib-data", str(calib), "--smooth", "0.8", "--check-accuracy",
            "--check-input", str(calib / "batch000.npz")]  # fmt: skip
    assert main(base) == 0
    rows = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("accuracy ")]
    assert rows and all("(tolerance 0.1) ok" in r for r in rows), rows
    errs = [float(r.split("rel error ")[1].split(",")[0]) for r in rows]
    assert all(1e-5 < e < 0.1 for e in errs), errs  # quantized: above fp32's bound
    assert main([*base, "--check-tolerance", "1e-6"]) == 2
    assert "output y on 1 input set beyond the tolerance 1e-06" in _error_line(capsys)
    assert main(["build", str(model), "-o", str(tmp_path / "f.eng"), "--device", "cpu",
                 "--check-tolerance", "0.1"]) == 2  # fmt: skip
    assert "add --check-accuracy" in _error_line(capsys)


def test_smoothed_cache_is_reused_without_data(
    files: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """A calibration cache written by a --smooth build keeps the smoothing statistics: a later
    build with --smooth and the cache, and no data, makes the same engine."""
    model, calib = files
    cache = tmp_path / "calib.json"
    base = ["build", str(model), "--int8", "--device", "cpu", "--no-tune", "--smooth", "0.8",
            "--calib-method", "minmax", "--calib-cache", str(cache)]  # fmt: skip
    assert main([*base, "-o", str(tmp_path / "a.eng"), "--calib-data", str(calib)]) == 0
    assert "statistics measured on the calibration data" in capsys.readouterr().out
    c = CalibrationCache.load(cache)
    assert c.smoothing["alpha"] == 0.8 and c.smoothing["act_absmax"]
    assert main([*base, "-o", str(tmp_path / "b.eng")]) == 0  # no --calib-data
    out = capsys.readouterr().out
    assert f"statistics from cache {cache}" in out and "from cache" in out
    x = {"x": np.random.default_rng(3).normal(size=(5, 8)).astype(np.float32)}
    a = load_engine(tmp_path / "a.eng", device="cpu").run(x)["y"]
    b = load_engine(tmp_path / "b.eng", device="cpu").run(x)["y"]
    assert np.array_equal(a, b)
    # without --smooth, or with another strength, the cache says which to pass
    plain = [a for a in base if a not in ("--smooth", "0.8")]
    assert main([*plain, "-o", str(tmp_path / "c.eng")]) == 2
    assert "made with --smooth 0.8: pass --smooth 0.8" in _error_line(capsys)
    other = [*plain, "--smooth", "0.5", "-o", str(tmp_path / "c.eng")]
    assert main(other) == 2
    assert "made with --smooth 0.8" in _error_line(capsys)
    # a cache made without smoothing cannot smooth
    plain_cache = tmp_path / "plain.json"
    assert main(["build", str(model), "--int8", "--device", "cpu", "--no-tune", "-o",
                 str(tmp_path / "d.eng"), "--calib-data", str(calib), "--calib-cache",
                 str(plain_cache)]) == 0  # fmt: skip
    capsys.readouterr()
    assert main(["build", str(model), "--int8", "--device", "cpu", "--no-tune", "-o",
                 str(tmp_path / "e.eng"), "--calib-cache", str(plain_cache), "--smooth",
                 "0.8"]) == 2  # fmt: skip
    assert "a --calib-cache written by a build with --smooth" in _error_line(capsys)


def test_percentile_level_and_cache_record(
    files: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    model, calib = files
    cache = tmp_path / "calib.json"
    base = ["build", str(model), "-o", str(tmp_path / "m.eng"), "--int8", "--device", "cpu",
            "--no-tune", "--calib-data", str(calib)]  # fmt: skip
    assert main([*base, "--calib-method", "percentile", "--calib-percentile", "99.9",
                 "--calib-cache", str(cache)]) == 0  # fmt: skip
    assert "percentile 99.9," in capsys.readouterr().out
    c = CalibrationCache.load(cache)
    assert c.settings == {"method": "percentile", "precision": "int8", "percentile": 99.9}
    assert c.model["opt_level"] == 2  # the CPU build's default level
    t = next(iter(c.tensors.values()))
    assert t.scale == pytest.approx(t.amax / 127)
    # a lower level clips harder: some threshold is smaller, none larger
    cache2 = tmp_path / "calib2.json"
    assert main([*base, "--calib-method", "percentile", "--calib-percentile", "50",
                 "--calib-cache", str(cache2)]) == 0  # fmt: skip
    capsys.readouterr()
    lo = CalibrationCache.load(cache2).tensors
    assert all(lo[n].amax <= c.tensors[n].amax for n in lo)
    assert any(lo[n].amax < c.tensors[n].amax for n in lo)

    assert main([*base, "--calib-percentile", "99.9"]) == 2  # entropy is the INT8 default
    assert "--calib-method percentile" in _error_line(capsys)
    assert main([*base, "--calib-method", "percentile", "--calib-percentile", "0"]) == 2
    assert "(0, 100]" in _error_line(capsys)
    assert main(["build", str(model), "-o", str(tmp_path / "f.eng"), "--device", "cpu",
                 "--calib-percentile", "99.9"]) == 2  # fmt: skip
    assert "only applies to quantized builds" in _error_line(capsys)


def test_cache_from_another_optimization_level_says_which(
    files: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    model, calib = files
    cache = tmp_path / "calib.json"
    base = ["build", str(model), "--int8", "--device", "cpu", "--no-tune"]
    assert main([*base, "-o", str(tmp_path / "a.eng"), "--calib-data", str(calib),
                 "--calib-cache", str(cache), "--opt-level", "0"]) == 0  # fmt: skip
    capsys.readouterr()
    # level 2 fuses the MLP's MatMul + Add: another graph, which the cache does not fit
    assert main([*base, "-o", str(tmp_path / "b.eng"), "--calib-cache", str(cache)]) == 2
    err = _error_line(capsys)
    assert "optimization level 0" in err and "level 2" in err and "--opt-level 0" in err
    assert main([*base, "-o", str(tmp_path / "b.eng"), "--calib-cache", str(cache),
                 "--opt-level", "0"]) == 0  # fmt: skip
    assert "from cache" in capsys.readouterr().out


def test_debug_precision_fp8_and_smoothing(
    files: tuple[Path, Path], capsys: pytest.CaptureFixture
) -> None:
    model, calib = files
    assert main(["debug-precision", str(model), "--fp8", "--calib-data", str(calib)]) == 0
    out = capsys.readouterr().out
    assert "fp8 vs fp32" in out and "3 quantized layer(s)" in out
    rows = [ln.split() for ln in out.splitlines() if ln.startswith("fc")]
    assert rows and {r[2] for r in rows} == {"fp8"}
    assert main(["debug-precision", str(model), "--calib-data", str(calib), "--smooth", "0.5"]) == 0
    out = capsys.readouterr().out
    assert "smoothed" in out and "int8 vs fp32" in out


def test_calib_batches_limits_calibration_and_budget_data(
    files: tuple[Path, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from ecoinfer.quant import budget  # noqa: PLC0415

    seen: list[int] = []  # validation batches the budget was fitted on, per build
    fit = budget.fit_budget

    def counting(graph, amax, val, *a, **kw):  # noqa: ANN001, ANN002, ANN003, ANN202
        seen.append(len(val))
        return fit(graph, amax, val, *a, **kw)

    monkeypatch.setattr(budget, "fit_budget", counting)
    model, calib = files
    base = ["build", str(model), "--int8", "--device", "cpu", "--no-tune", "--calib-data",
            str(calib), "--calib-method", "minmax"]  # fmt: skip
    caches = {}
    for limit in (None, 1):
        cache = tmp_path / f"c{limit}.json"
        more = ["--calib-batches", str(limit)] if limit else []
        assert main([*base, "-o", str(tmp_path / "m.eng"), "--calib-cache", str(cache),
                     "--accuracy-budget", "0.9", *more]) == 0  # fmt: skip
        capsys.readouterr()
        caches[limit] = CalibrationCache.load(cache).tensors
    # min-max over the first batch only: no threshold above the whole set's, some below
    assert seen == [3, 1]  # without --val-data the budget sees the same batches
    assert all(caches[1][n].amax <= caches[None][n].amax for n in caches[1])
    assert any(caches[1][n].amax < caches[None][n].amax for n in caches[1])
