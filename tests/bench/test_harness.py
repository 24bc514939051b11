"""The timing loop: statistics, throughput, energy labels, streams, profile; `ecoinfer bench`."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import numpy as np
import onnx
import pytest
from onnx import TensorProto as T
from onnx import helper, numpy_helper

from ecoinfer.bench.harness import BenchConfig, LatencyStats, layer_table, run_benchmark

FAST = dict(warmup_s=0.02, measure_energy=True, declared_power_w=100.0)


def test_latency_stats_match_numpy() -> None:
    xs = [0.001 * k for k in range(1, 101)]
    s = LatencyStats.of(xs)
    assert s.n == 100 and s.min_ms == pytest.approx(1.0) and s.max_ms == pytest.approx(100.0)
    assert s.median_ms == pytest.approx(50.5) and s.p99_ms == pytest.approx(
        np.percentile(np.arange(1, 101), 99)
    )
    assert s.cv == pytest.approx(s.std_ms / s.mean_ms)


def test_sleeping_fn_gives_its_latency_throughput_and_estimated_energy() -> None:
    r = run_benchmark(
        "sleep", lambda: time.sleep(0.004), batch=8, config=BenchConfig(iterations=25, **FAST)
    )
    assert r.latency.n == 25
    assert 3.9 <= r.latency.median_ms <= 8.0
    # 8 items per call, one call at a time
    assert r.throughput_per_s == pytest.approx(8 * 1e3 / r.latency.mean_ms, rel=0.15)
    e = r.energy
    assert e is not None
    if e.method == "estimated":  # no RAPL here: the number is an estimate and says so
        assert not e.measured and any("estimated" in w for w in r.warnings)
        assert e.energy_j == pytest.approx(100.0 * e.duration_s, rel=1e-6)
    assert r.j_per_inference == pytest.approx(e.energy_j / (25 * 8))


def test_throughput_is_the_timed_calls_own_window() -> None:
    """With the progress display on, its 0.2 s waits counted in the window: 25 calls of
    2 ms (50 ms of work) reported about a fifth of their throughput."""
    cfg = BenchConfig(iterations=25, progress=True, **FAST)
    r = run_benchmark("sleep", lambda: time.sleep(0.002), batch=4, config=cfg)
    assert r.throughput_per_s == pytest.approx(4 * 1e3 / r.latency.mean_ms, rel=0.15)


def test_gc_paused_in_the_timed_window_only() -> None:
    """The cyclic collector is off during timed calls (timeit's rule), on during the warm-up
    and afterwards, and stays off after the window when the caller had turned it off."""
    import gc

    seen: list[bool] = []
    cfg = BenchConfig(iterations=5, warmup_s=0.0, warmup_iterations=2, measure_energy=False)
    run_benchmark("gc", lambda: seen.append(gc.isenabled()), 1, cfg)
    assert seen[:2] == [True, True] and seen[2:] == [False] * 5 and gc.isenabled()
    gc.disable()
    try:
        run_benchmark("gc", lambda: None, 1, cfg)
        assert not gc.isenabled()
    finally:
        gc.enable()


def test_streams_run_concurrently() -> None:
    one = run_benchmark(
        "s1", lambda: time.sleep(0.005), 1, BenchConfig(duration_s=0.3, streams=1, **FAST)
    )
    two = run_benchmark(
        "s2", lambda: time.sleep(0.005), 1, BenchConfig(duration_s=0.3, streams=2, **FAST)
    )
    assert two.throughput_per_s > 1.6 * one.throughput_per_s


def test_noisy_latency_is_flagged() -> None:
    k = iter(range(10**6))
    r = run_benchmark(
        "noisy",
        lambda: time.sleep(0.001 if next(k) % 4 else 0.02),
        1,
        BenchConfig(iterations=24, **FAST),
    )
    assert any("varies a lot" in w for w in r.warnings)


def test_op_summary_sums_layers_per_op_and_tactic() -> None:
    from ecoinfer.bench.harness import op_summary  # noqa: PLC0415

    rows = [
        {"layer": "a", "op": "FusedGemm", "tactic": "linear", "median_ms": 2.0},
        {"layer": "b", "op": "FusedGemm", "tactic": "linear", "median_ms": 1.0},
        {"layer": "c", "op": "FusedGemm", "tactic": "triton_gemm", "median_ms": 0.5},
        {"layer": "d", "op": "Relu", "median_ms": 0.5},
    ]
    s = op_summary(rows)
    got = [(g["op"], g["tactic"], g["layers"]) for g in s]
    # ties keep the layers' order
    assert got == [("FusedGemm", "linear", 2), ("FusedGemm", "triton_gemm", 1), ("Relu", "", 1)]
    assert s[0]["median_ms"] == 3.0 and abs(sum(g["percent"] for g in s) - 100.0) < 1e-9
    assert s[0]["percent"] == 75.0


def test_layer_table_orders_by_time() -> None:
    rows = layer_table({"a": [0.001, 0.003], "b": [0.010]}, {"a": "Relu", "b": "MatMul"})
    assert [r["layer"] for r in rows] == ["b", "a"]
    assert rows[1]["mean_ms"] == pytest.approx(2.0) and rows[1]["median_ms"] == pytest.approx(2.0)
    assert sum(r["percent"] for r in rows) == pytest.approx(100.0)


@pytest.fixture
def mlp(tmp_path):  # noqa: ANN001, ANN201
    rng = np.random.default_rng(0)
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["h"], name="proj"),
        helper.make_node("Relu", ["h"], ["y"], name="act"),
    ]
    g = helper.make_graph(
        nodes,
        "mlp",
        [helper.make_tensor_value_info("x", T.FLOAT, ["batch", 16])],
        [helper.make_tensor_value_info("y", T.FLOAT, ["batch", 32])],
        initializer=[
            numpy_helper.from_array(rng.standard_normal((16, 32)).astype(np.float32), "w")
        ],
    )
    path = tmp_path / "mlp.onnx"
    onnx.save(
        helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=10), path
    )
    return path


def _bench(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "ecoinfer.cli", "bench", *args],
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_bench_cli_json_profile_and_labels(mlp, tmp_path) -> None:  # noqa: ANN001
    out = tmp_path / "r.json"
    proc = _bench(
        str(mlp),
        "--batch",
        "4",
        "--duration",
        "0.3",
        "--warmup",
        "0.05",
        "--profile",
        "--opt-level",
        "0",
        "--export-json",
        str(out),
    )
    assert proc.returncode == 0, proc.stderr
    assert "throughput" in proc.stdout and "mJ/inference" in proc.stdout
    (r,) = json.loads(out.read_text())
    assert r["batch"] == 4 and r["latency"]["n"] > 0 and r["throughput_per_s"] > 0
    assert {row["layer"] for row in r["profile"]} == {"proj", "act"}
    assert "by op" in proc.stdout and "sum of layer medians" in proc.stdout
    if r["energy"]["method"] == "estimated":
        assert "ESTIMATED" in proc.stdout and r["energy"]["measured"] is False
        line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("energy "))
        assert line.lower().count("estimated") == 1, line  # said once, not "(estimated, ESTIMATED)"
    # stderr is a pipe here: no progress bar rewriting its line
    assert "\r" not in proc.stderr and "[####" not in proc.stderr


def test_bench_cli_onnxruntime_runner_and_bad_batch(mlp, tmp_path) -> None:  # noqa: ANN001
    proc = _bench(
        str(mlp), "--runner", "onnxruntime", "--duration", "0.2", "--warmup", "0.05", "--no-energy"
    )
    assert proc.returncode == 0, proc.stderr
    assert "onnxruntime (CPUExecutionProvider)" in proc.stdout
    proc = _bench(str(mlp), "--batch", "0", "--duration", "0.2")
    assert proc.returncode == 2 and "--batch 0" in proc.stderr and "Traceback" not in proc.stderr


def test_warmup_by_count_and_time() -> None:
    calls = []
    run_benchmark(
        "w",
        lambda: calls.append(1),
        1,
        BenchConfig(warmup_s=0.0, warmup_iterations=7, iterations=3, measure_energy=False),
    )
    assert len(calls) == 7 + 3


def test_warmup_runs_on_the_timing_thread() -> None:
    """Per-thread first-call costs (torch.compile's guards, inference mode) belong to the
    warm-up: every call, warm-up and timed, runs on the one timing thread."""
    import threading

    threads: list[int] = []
    cfg = BenchConfig(warmup_s=0.0, warmup_iterations=3, iterations=4, measure_energy=False)
    run_benchmark("t", lambda: threads.append(threading.get_ident()), 1, cfg)
    assert len(threads) == 7 and len(set(threads)) == 1
    assert threads[0] != threading.get_ident()


@pytest.mark.parametrize("fail_at", [1, 5])  # in the warm-up, in the timed window
def test_errors_in_the_timing_thread_reach_the_caller(fail_at: int) -> None:
    calls = iter(range(100))

    def fn() -> None:
        if next(calls) == fail_at:
            raise RuntimeError("kernel failed")

    cfg = BenchConfig(warmup_s=0.0, warmup_iterations=3, iterations=10, measure_energy=False)
    with pytest.raises(RuntimeError, match="kernel failed"):
        run_benchmark("e", fn, 1, cfg)
