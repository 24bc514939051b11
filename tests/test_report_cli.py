"""`ecoinfer report` end to end on a small results file, against hand-computed numbers."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from ecoinfer.cli import main


def _result(name: str, tput: float, p99: float, j: float, method: str = "nvml_counter") -> dict:
    # the shape dataclasses.asdict(BenchResult) gives (trimmed; the loader ignores the rest)
    return {
        "name": name,
        "device": "NVIDIA H100 80GB HBM3",
        "batch": 32,
        "latency": {"n": 500, "median_ms": p99 * 0.8, "p99_ms": p99},
        "throughput_per_s": tput,
        "energy": {"method": method, "measured": method != "estimated", "idle_power_w": None},
        "j_per_inference": j,
        "skipped": None,
    }


@pytest.fixture
def results(tmp_path):  # noqa: ANN001, ANN201
    # shared/USERS.md: FP32 1,200 req/s at 25 ms; FP16 2,800 req/s at 9 ms, 0.62x the energy;
    # INT8 4,100 req/s at 6 ms, 0.48x (here an estimate, not a measurement)
    path = tmp_path / "results.json"
    rows = [
        _result("PyTorch eager FP32", 1200.0, 25.0, 0.3),
        _result("ecoinfer fp16", 2800.0, 9.0, 0.186),
        _result("ecoinfer int8", 4100.0, 6.0, 0.144, method="estimated"),
    ]
    path.write_text(json.dumps(rows))
    return path


FLEET = ["--load-rps", "200000", "--host-power-w", "500", "--gpu-idle-w", "60"]


def test_report_table_json_and_markdown(results, tmp_path, capsys) -> None:  # noqa: ANN001
    out_json, out_md = tmp_path / "p.json", tmp_path / "p.md"
    args = ["report", str(results), *FLEET, "--grid-kgco2-per-kwh", "0.4"]
    rc = main([*args, "--json", str(out_json), "--markdown", str(out_md)])
    text = capsys.readouterr().out
    assert rc == 0
    # FP32: 167 GPUs (42 servers); FP16: 72 GPUs (18 servers); INT8: 200,000 / 4,100 = 48.78
    # -> 49 GPUs, 13 servers (tests/energy/test_datacenter.py has the FP32/FP16 arithmetic)
    lines = {ln.split("  ")[0]: ln for ln in text.splitlines()}
    assert lines["GPUs needed"].split()[-3:] == ["167", "72", "49"]
    # facility kWh at PUE 1.6: FP32 1,136,417; FP16 648,020; saved 488,398 kWh = 42.977 %
    assert "1,136,417" in lines["facility kWh/yr"] and "648,020" in lines["facility kWh/yr"]
    assert "488,398" in lines["saved kWh/yr"] and "43.0%" in lines["saved %"]
    # $170,462.59 and 454.6 t CO2 (0.4 kg/kWh) for FP32
    assert "$170,463" in lines["cost USD/yr"] and "454.6" in lines["CO2 t/yr"]
    assert "ecoinfer int8 (estimated)" in text and "0.144 estimated" in text
    assert "Assumptions:" in text and "fixed PUE 1.6" in text
    assert "baseline: PyTorch eager FP32 (the first result" in text

    data = json.loads(out_json.read_text())
    fp16 = data["projections"][1]
    assert fp16["gpus_needed"] == 72 and fp16["facility_kwh"] == pytest.approx(648_019.75)
    assert fp16["savings"]["facility_kwh"] == pytest.approx(488_397.53, rel=1e-7)
    assert data["projections"][2]["energy_label"] == "estimated"
    assert data["fleet"]["facility_kind"] == "fixed_pue" and data["assumptions"]
    md = out_md.read_text()
    assert "| ecoinfer int8 (estimated) |" in md and "### Assumptions" in md


def test_report_facility_model_slo_and_baseline(results, capsys) -> None:  # noqa: ANN001
    args = [*FLEET, "--facility-fixed-kw", "20", "--facility-proportional", "0.35"]
    rc = main(["report", str(results), *args, "--slo-ms", "20", "--baseline", "ecoinfer fp16"])
    text = capsys.readouterr().out
    assert rc == 0
    lines = {ln.split("  ")[0]: ln for ln in text.splitlines()}
    # PUE computed: FP32 129.458 / 81.08 = 1.597, FP16 82.416 / 46.234 = 1.783
    assert lines["PUE (computed)"].split()[-3:-1] == ["1.597", "1.783"]
    assert "NO" in lines["meets p99 SLO"]  # FP32's 25 ms misses the 20 ms SLO
    assert "INFEASIBLE, p99 25 ms exceeds the 20 ms SLO" in text
    # savings are against FP16 now; FP32 misses the SLO, so no savings claimed for it
    assert "n/a (misses SLO)" in lines["saved %"] and "baseline" in lines["saved %"]
    assert "baseline: ecoinfer fp16 (--baseline)" in text
    assert "20 kW fixed + 0.35 x IT power" in text


def test_default_load_is_stated(results, capsys) -> None:  # noqa: ANN001
    assert main(["report", str(results)]) == 0
    text = capsys.readouterr().out
    # default load: 400 GPUs * 1,200 req/s * 40 % = 192,000 req/s -> FP32 needs exactly 160 GPUs
    assert "load 192,000 req/s" in text and "at 40% of the baseline's throughput" in text
    assert "grid intensity: 0.481 kgCO2/kWh (default: world average" in text


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--baseline", "nope"], "baseline 'nope' is not among the results"),
        (["--load-rps", "-5"], "load (requests/s) must be greater than 0"),
        (["--pue", "1.5", "--facility-fixed-kw", "10"], "give either --pue or a facility model"),
        (["--pue", "0.8"], "PUE is facility power / IT power and cannot be below 1"),
        (["--servers", "-1"], "servers must be"),
        (["--price", "-0.15"], "electricity price ($/kWh) must be 0 or more"),
    ],
)
def test_bad_options_are_one_line_errors(results, capsys, extra, message) -> None:  # noqa: ANN001
    assert main(["report", str(results), *extra]) == 2
    err = capsys.readouterr().err
    assert err.startswith("ecoinfer: error: ") and message in err
    assert err.count("\n") == 1


def test_bad_files_are_one_line_errors(tmp_path, capsys) -> None:  # noqa: ANN001
    missing = tmp_path / "missing.json"
    assert main(["report", str(missing)]) == 2
    assert "does not exist" in capsys.readouterr().err
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([{"name": "x", "latency": {"p99_ms": 3}}]))
    assert main(["report", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "has no throughput_per_s, j_per_inference" in err and err.count("\n") == 1
    neg = tmp_path / "neg.json"
    neg.write_text(json.dumps([_result("x", 1000.0, 5.0, -0.2)]))
    assert main(["report", str(neg)]) == 2
    assert "j_per_inference must be greater than 0" in capsys.readouterr().err


def test_report_through_the_installed_entry_point(results) -> None:  # noqa: ANN001
    proc = subprocess.run(
        [sys.executable, "-m", "ecoinfer.cli", "report", str(results), *FLEET],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "Datacenter projection: 100 servers x 4 GPUs" in proc.stdout
    proc = subprocess.run(
        [sys.executable, "-m", "ecoinfer.cli", "report", str(results), "--baseline", "x"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1


def test_compare_report_file_names_its_baseline(tmp_path, capsys) -> None:  # noqa: ANN001
    # compare writes bench/report.py's to_json: a dict with "baseline" and "results"
    rows = [
        _result("ecoinfer fp16", 2800.0, 9.0, 0.186),
        _result("PyTorch eager FP32", 1200.0, 25.0, 0.3),
        {"name": "onnxruntime", "skipped": "onnxruntime-gpu is not installed"},
    ]
    path = tmp_path / "compare.json"
    doc = {"schema": "ecoinfer.report/1", "baseline": "PyTorch eager FP32", "results": rows}
    path.write_text(json.dumps(doc))
    assert main(["report", str(path), *FLEET]) == 0
    text = capsys.readouterr().out
    assert "baseline 'PyTorch eager FP32'" in text
    assert "baseline: PyTorch eager FP32 (the baseline the results file names" in text
    assert "onnxruntime: skipped (onnxruntime-gpu is not installed)" in text
    lines = {ln.split("  ")[0]: ln for ln in text.splitlines()}
    assert "488,398" in lines["saved kWh/yr"]  # FP16 vs FP32 at PUE 1.6, as above


def test_report_says_which_results_came_from_a_cpu(tmp_path, capsys) -> None:  # noqa: ANN001
    """A CPU result projects onto the same fleet model; the report says its 'GPUs' are CPUs.
    GPU results and results that do not say where they ran get no such note."""
    cpu = _result("ecoinfer fp32 on the CPU", 900.0, 3.0, 0.07, method="estimated")
    cpu["device"], cpu["extra"] = "AMD EPYC", {"device_kind": "cpu"}
    gpu = _result("ecoinfer fp16", 2800.0, 9.0, 0.186)
    gpu["extra"] = {"device_kind": "cuda"}
    path = tmp_path / "r.json"
    path.write_text(json.dumps([gpu, cpu, _result("old file", 1200.0, 25.0, 0.3)]))
    assert main(["report", str(path), *FLEET]) == 0
    notes = [ln for ln in capsys.readouterr().out.splitlines() if "measured on a CPU" in ln]
    assert len(notes) == 1 and notes[0].strip().startswith("- ecoinfer fp32 on the CPU:"), notes
    assert "(AMD EPYC)" in notes[0]
