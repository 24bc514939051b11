"""`ecoinfer compare` and `ecoinfer tune-energy` end to end through the real CLI, on the CPU
with a tiny ONNX model and short windows."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto as T
from onnx import helper, numpy_helper

FAST = ["--duration", "0.2", "--warmup", "0.05"]


def _cli(*args: str, timeout: int = 300, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "ecoinfer.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=None if env is None else {**os.environ, **env},
    )


@pytest.fixture(scope="module")
def mlp(tmp_path_factory) -> Path:  # noqa: ANN001
    """ids [batch, seq] -> Gather(embedding) -> MatMul -> Relu: a tiny token model."""
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
    path = tmp_path_factory.mktemp("cli") / "mlp.onnx"
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


def test_compare_prints_the_table_and_writes_reports(mlp, tmp_path) -> None:  # noqa: ANN001
    out = {k: tmp_path / f"r.{k}" for k in ("json", "md", "html")}
    proc = _cli(
        "compare", str(mlp), "--batch", "4", "--seq", "16", "--device", "cpu", *FAST,
        "--json", str(out["json"]), "--markdown", str(out["md"]), "--html", str(out["html"]),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    text = proc.stdout
    assert "inputs ids: int64[4x16]" in text
    for col in ("p50 ms", "p99 ms", "throughput/s", "GPU util %", "J/inference",
                "energy vs FP32", "error vs FP32"):  # fmt: skip
        assert col in text
    lines = text.splitlines()
    torch_row = next(ln for ln in lines if ln.startswith("PyTorch eager FP32"))
    assert "skipped: give the nn.Module (Python API) or --torch-model" in torch_row
    eng = next(ln for ln in lines if ln.startswith("ecoinfer engine"))
    assert "skipped" not in eng and "ecoinfer engine FP32" in eng
    ort = next(ln for ln in lines if ln.startswith("onnxruntime FP32 (CPU EP)"))
    eco = next(ln for ln in lines if ln.startswith("ecoinfer reference fp32"))
    assert "1.00x (baseline)" in eco and "baseline" in eco
    data = json.loads(out["json"].read_text())
    rows = {r["extra"]["peer"]: r for r in data["results"]}
    method = rows["ecoinfer-fp32"]["energy"]["method"]
    assert method in ("rapl", "estimated")
    # the label follows the meter: estimated rows say so, measured ones do not
    assert ("(estimated)" in ort) is (method == "estimated")
    assert rows["onnxruntime"]["extra"]["rel_l2_error"] < 1e-5
    assert rows["torch-fp32"]["skipped"].startswith("give the nn.Module")
    assert data["meta"]["batch"] == 4 and data["meta"]["inputs"] == {"ids": "int64[4x16]"}
    assert "| onnxruntime FP32 (CPU EP) |" in out["md"].read_text()
    page = out["html"].read_text()
    assert page.count("data:image/png;base64,") >= 3  # latency, J bars, scatter (+ power)
    assert "wrote" in text and str(out["html"]) in text


def test_compare_peers_option_and_errors(mlp) -> None:  # noqa: ANN001
    proc = _cli("compare", str(mlp), "--peers", "ecoinfer", "--device", "cpu", *FAST)
    assert proc.returncode == 0, proc.stderr
    assert "onnxruntime" not in proc.stdout and "ecoinfer reference fp32" in proc.stdout
    bad = _cli("compare", str(mlp), "--peers", "tensorrt")
    assert bad.returncode == 2 and "unknown peer" in bad.stderr
    none = _cli("compare")
    assert none.returncode == 2 and "--torch-model" in none.stderr
    zero = _cli("compare", str(mlp), "--streams", "0", "--device", "cpu")
    assert zero.returncode == 2 and "--streams 0" in zero.stderr and "Traceback" not in zero.stderr


def test_compare_streams_runs_concurrent_callers(mlp, tmp_path) -> None:  # noqa: ANN001
    out = tmp_path / "r.json"
    proc = _cli(
        "compare", str(mlp), "--peers", "ecoinfer-engine", "--device", "cpu", "--streams", "2",
        "--batch", "2", "--seq", "8", "--json", str(out), *FAST,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "2 concurrent callers per peer" in proc.stdout
    data = json.loads(out.read_text())
    assert data["meta"]["config"]["streams"] == 2
    (row,) = [r for r in data["results"] if not r.get("skipped")]
    assert row["latency"]["n"] > 0 and row["throughput_per_s"] > 0


def test_tune_energy_measures_engines_and_says_what_the_cpu_lacks(mlp, tmp_path) -> None:  # noqa: ANN001
    js, png, page = tmp_path / "t.json", tmp_path / "t.png", tmp_path / "t.html"
    cache = tmp_path / "timing_cache.json"
    proc = _cli(
        "tune-energy", str(mlp), "--slo-ms", "1000", "--batches", "1,4", "--seq", "8",
        "--precisions", "fp32,bf16,fp16", "--cuda-graphs", "on,off", "--device", "cpu", *FAST,
        "--json", str(js), "--plot", str(png), "--html", str(page),
        env={"ECOINFER_TIMING_CACHE": str(cache)},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    text = proc.stdout
    assert "Not measured: fp16 not available on the CPU" in text
    assert "Not measured: CUDA graphs on (CUDA graphs need a GPU)" in text
    assert (
        "Search space on the CPU" in text and "GPU clocks" not in text  # a GPU note, on a GPU
    )
    assert "Pareto front" in text and "Chosen: ecoinfer " in text
    assert "skipped: fp16 not available on the CPU" in text
    assert "skipped: CUDA graphs need a GPU" in text
    data = json.loads(js.read_text())
    assert data["kind"] == "tune-energy" and data["slo_ms"] == 1000
    res = data["results"]
    key = {(r["extra"]["precision"], r["batch"], r["extra"]["cuda_graphs"]): r for r in res}
    assert len(key) == len(res) == 3 * 2 * 2  # every asked-for configuration has a row
    for prec in ("fp32", "bf16"):
        for b in (1, 4):
            ran = key[(prec, b, False)]
            assert ran["skipped"] is None and ran["latency"]["n"] > 0, ran
            assert ran["extra"]["framework"] == "ecoinfer engine"
            assert ran["extra"]["engine_precision"] == {"fp32": "float32", "bf16": "bfloat16"}[prec]
            assert ran["extra"]["build_seconds"] > 0
            assert key[(prec, b, True)]["skipped"] == "CUDA graphs need a GPU"
    for b in (1, 4):
        assert key[("fp16", b, False)]["skipped"] == "fp16 not available on the CPU"
        assert key[("fp16", b, True)]["skipped"] == (
            "fp16 not available on the CPU; CUDA graphs need a GPU"
        )
    (best,) = [r for r in res if r["extra"].get("chosen")]
    ok = [r for r in res if r["extra"].get("meets_slo")]
    assert best["extra"]["meets_slo"] and best["latency"]["p99_ms"] <= 1000
    assert best["j_per_inference"] == min(r["j_per_inference"] for r in ok)
    assert best["extra"]["precision"] in ("fp32", "bf16") and best["extra"]["cuda_graphs"] is False
    assert any(r["extra"].get("pareto") for r in res)
    # the Pareto lines tag an estimated J/inference as the table does
    front = [ln for ln in text.split("Pareto front")[1].splitlines() if ln.startswith("  ecoinfer")]
    est = best["energy"]["method"] == "estimated"
    assert front and all(("J/inference (estimated)" in ln) == est for ln in front), front
    meta = data["meta"]
    assert meta["precisions"] == ["fp32", "bf16", "fp16"] and meta["cuda_graphs"] == [True, False]
    assert meta["batches"] == [1, 4] and len(meta["configs"]) == 12
    assert sum(c["measured"] for c in meta["configs"]) == 4
    assert meta["timing_cache"] == str(cache) and cache.exists()  # ECOINFER_TIMING_CACHE is used
    assert png.read_bytes().startswith(b"\x89PNG")
    assert "CHOSEN" in page.read_text()


def test_tune_energy_with_an_impossible_slo_exits_1(mlp) -> None:  # noqa: ANN001
    proc = _cli("tune-energy", str(mlp), "--slo-ms", "0.000001", "--batches", "1",
                "--seq", "4", "--device", "cpu", *FAST)  # fmt: skip
    assert proc.returncode == 1, proc.stderr
    assert "No configuration meets p99 <= 1e-06 ms" in proc.stdout


def test_tune_energy_refuses_when_nothing_is_available(mlp) -> None:  # noqa: ANN001
    proc = _cli("tune-energy", str(mlp), "--slo-ms", "10", "--precisions", "fp16,tf32",
                "--device", "cpu")  # fmt: skip
    assert proc.returncode == 2
    assert "nothing to measure on the CPU: fp16 not available on the CPU" in proc.stderr
    assert "--precisions fp32,bf16 with --cuda-graphs off" in proc.stderr
    proc = _cli("tune-energy", str(mlp), "--slo-ms", "10", "--precisions", "int8",
                "--device", "cpu")  # fmt: skip
    assert proc.returncode == 2
    assert "int8 needs calibration data: give --calib-data DIR" in proc.stderr
    proc = _cli("tune-energy", str(mlp), "--slo-ms", "10", "--batches", "0")
    assert proc.returncode == 2 and "--batches" in proc.stderr


def test_tune_energy_search_space_per_device() -> None:
    from ecoinfer.commands import tune_energy as tune

    assert tune.offered("cpu") == (("fp32", "bf16"), (False,))
    assert tune.offered("cuda") == (("fp32", "tf32", "fp16", "bf16"), (True, False))
    assert tune.unavailable("bf16", False, "cpu") is None
    assert tune.unavailable("tf32", False, "cpu") == "tf32 not available on the CPU"
    assert tune.unavailable("fp32", True, "cpu") == "CUDA graphs need a GPU"
    assert tune.unavailable("fp16", True, "cuda:0") is None
    assert tune.unavailable("fp8", True, "cuda").startswith("fp8 needs calibration data")
    assert tune.unavailable("fp8", True, "cuda", calib=True) is None
    assert tune.unavailable("fp8", False, "cpu", calib=True).startswith("fp8 not available on")
    assert tune.unavailable("int8", False, "cpu", calib=True) is None
    assert tune.offered("cpu", calib=True) == (("fp32", "bf16", "int8"), (False,))
    assert tune.offered("cuda", calib=True)[0][-2:] == ("int8", "fp8")
    assert tune.parse_precisions("auto") is None and tune.parse_cuda_graphs("auto") is None
    assert tune.parse_precisions("FP32, float16,fp32") == ["fp32", "fp16"]
    assert tune.parse_cuda_graphs("on,off") == [True, False]


def test_never_touches_clocks_or_power_limits() -> None:
    """The search only measures: no NVML setter in the code that drives it."""
    import ecoinfer.bench.peers as peers
    import ecoinfer.commands.tune_energy as tune

    for mod in (peers, tune):
        src = Path(mod.__file__).read_text()
        for setter in (
            "nvmlDeviceSet",
            "nvidia-smi",
            "SetApplicationsClocks",
            "PowerManagementLimit",
        ):
            assert setter not in src, f"{mod.__name__} mentions {setter}"


@pytest.mark.slow
def test_compare_with_the_bundled_minilm_module(minilm) -> None:  # noqa: ANN001
    path, _ = minilm
    proc = _cli(
        "compare", str(path), "--torch-model", "minilm", "--peers", "torch-fp32,ecoinfer",
        "--batch", "2", "--seq", "16", "--device", "cpu", *FAST,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    rows = [
        ln
        for ln in proc.stdout.splitlines()
        if ln.startswith(("PyTorch eager", "ecoinfer reference"))
    ]
    assert len(rows) == 2 and not any("skipped" in r for r in rows), proc.stdout
    assert "1.00x (baseline)" in rows[0]
    assert "disagree" not in proc.stdout


def _token_calib(folder: Path) -> Path:
    """Three calibration batches of 4 x 8 token ids for the `mlp` fixture."""
    folder.mkdir()
    rng = np.random.default_rng(1)
    for i in range(3):
        np.savez(folder / f"b{i}.npz", ids=rng.integers(0, 50, (4, 8)).astype(np.int64))
    return folder


def test_tune_energy_measures_int8_with_calibration_data(mlp, tmp_path) -> None:  # noqa: ANN001
    calib = _token_calib(tmp_path / "calib")
    js = tmp_path / "t.json"
    proc = _cli(
        "tune-energy", str(mlp), "--slo-ms", "1000", "--batches", "1,4", "--seq", "8",
        "--precisions", "fp32,int8,fp8", "--device", "cpu", "--calib-data", str(calib),
        *FAST, "--json", str(js),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    res = json.loads(js.read_text())["results"]
    key = {(r["extra"]["precision"], r["batch"]): r for r in res}
    for b in (1, 4):
        q = key[("int8", b)]
        assert q["skipped"] is None and q["latency"]["n"] > 0, q
        assert q["extra"]["engine_precision"] == "float32"  # the float layers, on a CPU
        assert key[("fp8", b)]["skipped"].startswith("fp8 not available on the CPU")
    # calibrated once: the second int8 build read the thresholds from the shared cache
    assert key[("int8", 1)]["extra"]["quantization"]["calibrator"] == "entropy"
    assert key[("int8", 4)]["extra"]["quantization"]["calibrator"] == "cache"
    assert key[("int8", 4)]["extra"]["quantization"]["quantized_layers"] == 1


def test_tune_energy_chooses_only_within_the_error_bound(mlp, tmp_path) -> None:  # noqa: ANN001
    """Every engine row carries its error against onnxruntime FP32 on the timed inputs; a row
    over its bound (--max-error, else its precision's --check-accuracy bound) is shown but
    never chosen, and the notes name it."""
    calib = _token_calib(tmp_path / "calib")
    js = tmp_path / "t.json"
    args = ["tune-energy", str(mlp), "--slo-ms", "1000", "--batches", "4", "--seq", "8",
            "--precisions", "fp32,int8", "--device", "cpu", "--calib-data", str(calib), *FAST,
            "--json", str(js)]  # fmt: skip
    proc = _cli(*args)
    assert proc.returncode == 0, proc.stderr
    assert "error vs FP32" in proc.stdout
    res = {r["extra"]["precision"]: r for r in json.loads(js.read_text())["results"]}
    fp32, int8 = res["fp32"]["extra"], res["int8"]["extra"]
    assert fp32["rel_l2_error"] < 1e-5 and fp32["max_rel_error"] == 1e-5
    assert 1e-5 < int8["rel_l2_error"] < 0.1 and int8["max_rel_error"] == 0.1  # quantized
    assert fp32["accurate"] is True and int8["accurate"] is True  # every flag in every row
    assert fp32["chosen"] is not int8["chosen"] and isinstance(int8["pareto"], bool)

    proc = _cli(*args, "--max-error", "1e-4")  # int8's error is over it: fp32 is chosen
    assert proc.returncode == 0, proc.stderr
    assert "Not chosen for accuracy" in proc.stdout and "ecoinfer int8 batch 4" in proc.stdout
    res = {r["extra"]["precision"]: r for r in json.loads(js.read_text())["results"]}
    assert res["int8"]["extra"]["accurate"] is False and not res["int8"]["extra"].get("chosen")
    assert res["fp32"]["extra"]["chosen"]
    front = proc.stdout.split("Pareto front")[1]
    if res["int8"]["extra"].get("pareto"):
        assert "ecoinfer int8 batch 4" in front and "over its error bound" in front
    other = tmp_path / "other"
    other.mkdir()
    np.savez(other / "b.npz", x=np.zeros((4, 8), np.float32))  # not this model's input
    bad = _cli(*[str(other) if a == str(calib) else a for a in args])
    assert bad.returncode == 2 and "the model has no input 'x'" in bad.stderr, bad.stderr
    bad = _cli(*args[:-2], "--max-error", "0")
    assert (
        bad.returncode == 2
        and "--max-error 0.0: give a finite positive relative error" in bad.stderr
    )
