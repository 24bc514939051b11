"""trtexec-like timing loop: warm-up, timed window with energy, latency statistics.

Every call is synchronised before its end time is read, so latency is what a request sees.
On CUDA, events around each call also give the GPU compute time, and the host time to
return from the call (before synchronising) is the enqueue time. The warm-up runs on the
timing thread itself, so per-thread first-call costs stay out of the window. Python's cyclic garbage
collector is paused during the timed window, as timeit does: a full collection over the
millions of objects torch and transformers keep alive takes tens of milliseconds, which
would land in whichever Python-driven peer happened to trigger it (reference counting still
frees every temporary at once).
"""

from __future__ import annotations

import gc
import statistics
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from ecoinfer.device import cpu_name
from ecoinfer.energy import EnergyReading, open_meter
from ecoinfer.errors import EnergyMeterError

CV_WARNING = 0.10  # coefficient of variation above which results are called noisy


@dataclass
class BenchConfig:
    warmup_s: float = 1.0
    warmup_iterations: int = 1  # the warm-up lasts warmup_s and at least this many calls
    duration_s: float = 3.0  # the energy window: NVML's counter needs at least ~3 s
    iterations: int | None = None  # run exactly this many timed calls instead of duration_s
    measure_energy: bool = True
    profile: bool = False
    declared_power_w: float | None = None
    streams: int = 1  # concurrent callers (threads; each gets its own CUDA stream)
    progress: bool = False  # a progress line on stderr while it runs
    # idle power measured once beforehand (e.g. by compare, before any peer heats the GPU);
    # None: measure it here, before the warm-up
    idle_power_w: float | None = None


@dataclass
class LatencyStats:
    n: int
    min_ms: float
    mean_ms: float
    median_ms: float
    p90_ms: float
    p95_ms: float
    p99_ms: float
    max_ms: float
    std_ms: float
    cv: float

    @staticmethod
    def of(times_s: list[float]) -> LatencyStats:
        a = np.asarray(times_s, dtype=np.float64) * 1e3
        if a.size == 0:
            return LatencyStats(0, *(float("nan"),) * 9)
        mean = float(a.mean())
        std = float(a.std(ddof=1)) if a.size > 1 else 0.0
        q = np.percentile(a, [50, 90, 95, 99])
        return LatencyStats(
            int(a.size),
            float(a.min()),
            mean,
            float(q[0]),
            float(q[1]),
            float(q[2]),
            float(q[3]),
            float(a.max()),
            std,
            std / mean if mean else 0.0,
        )


@dataclass
class BenchResult:
    name: str
    device: str
    batch: int
    latency: LatencyStats | None
    gpu_compute: LatencyStats | None = None
    enqueue: LatencyStats | None = None
    throughput_per_s: float = 0.0
    energy: EnergyReading | None = None
    j_per_inference: float | None = None
    j_per_inference_above_idle: float | None = None
    peak_memory_bytes: int | None = None
    profile: list[dict] | None = None
    warnings: list[str] = field(default_factory=list)
    skipped: str | None = None
    extra: dict = field(default_factory=dict)  # e.g. compile time, max error vs FP32

    @staticmethod
    def skip(name: str, device: str, batch: int, reason: str) -> BenchResult:
        return BenchResult(name, device, batch, None, skipped=reason)


def device_name(device: str) -> str:
    import torch  # noqa: PLC0415

    if device.startswith("cuda") and torch.cuda.is_available():
        return torch.cuda.get_device_name(torch.device(device))
    return cpu_name()


def _progress(label: str, done_s: float, total_s: float) -> None:
    frac = min(1.0, done_s / total_s) if total_s > 0 else 1.0
    bar = "#" * int(30 * frac)
    sys.stderr.write(f"\r{label:<28} [{bar:<30}] {done_s:5.1f}/{total_s:.1f} s")
    sys.stderr.flush()


def run_benchmark(
    name: str,
    fn: Callable[[], object],
    batch: int,
    config: BenchConfig | None = None,
    device: str = "cpu",
    profile_fn: Callable[[], list[dict]] | None = None,
) -> BenchResult:
    """Time `fn` (one inference call of `batch` items): warm-up, then a timed window.

    `profile_fn`, when given and config.profile is set, runs after the window and returns the
    per-layer table (it is kept out of the timed window: profiling adds synchronisation).
    """
    import torch  # noqa: PLC0415

    cfg = config or BenchConfig()
    cuda = device.startswith("cuda") and torch.cuda.is_available()
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    result = BenchResult(name, device_name(device), batch, None)
    result.extra["device_kind"] = "cuda" if cuda else "cpu"  # the report's projection reads it

    meter = None
    if cfg.measure_energy:
        try:
            meter = open_meter("cuda" if cuda else "cpu", declared_power_w=cfg.declared_power_w)
        except EnergyMeterError as e:  # e.g. no NVML: the timing is still worth having
            result.warnings.append(
                f"energy not measured: {e} (give --declared-power-w for an estimate)"
            )
    idle_w = cfg.idle_power_w
    if meter is not None and idle_w is None:
        idle_w = meter.idle_power_w(1.0)

    lat: list[float] = []
    enq: list[float] = []
    gpu: list[float] = []
    lock = threading.Lock()
    stop_at = [0.0]
    per_stream_iters = (
        None if cfg.iterations is None else max(1, cfg.iterations // max(1, cfg.streams))
    )

    n_threads = max(1, cfg.streams)
    warmed = threading.Barrier(n_threads + 1)  # every thread warm: the window can open
    go = threading.Barrier(n_threads + 1)  # the meter runs: time
    errors: list[BaseException] = []

    def warm_up() -> None:
        # compilation, allocator growth, cuDNN autotuning stay out of the numbers; on the
        # timing thread itself, so that per-thread first-call costs (torch.compile's, say)
        # are paid here and not by the first timed call
        t_end = time.perf_counter() + cfg.warmup_s
        done = 0
        while done < max(1, cfg.warmup_iterations) or time.perf_counter() < t_end:
            fn()
            sync()
            done += 1

    def loop(stream) -> None:  # noqa: ANN001
        ctx = torch.cuda.stream(stream) if stream is not None else _null()
        with ctx:
            try:
                warm_up()
            except BaseException as e:  # noqa: BLE001  (re-raised by the caller's thread)
                errors.append(e)
                warmed.abort()
                go.abort()
                return
            try:
                warmed.wait()
                go.wait()
            except threading.BrokenBarrierError:
                return
            try:
                timed()
            except BaseException as e:  # noqa: BLE001  (re-raised by the caller's thread)
                errors.append(e)

    last_end = [0.0]  # when the last timed call ended: the window's end, whoever waits

    def timed() -> None:
        k = 0
        while True:
            if per_stream_iters is not None:
                if k >= per_stream_iters:
                    break
            elif time.perf_counter() >= stop_at[0]:
                break
            if cuda:
                e0, e1 = (
                    torch.cuda.Event(enable_timing=True),
                    torch.cuda.Event(enable_timing=True),
                )
                e0.record()
            t0 = time.perf_counter()
            fn()
            t1 = time.perf_counter()
            if cuda:
                e1.record()
                e1.synchronize()
            t2 = time.perf_counter()
            with lock:
                lat.append(t2 - t0)
                enq.append(t1 - t0)
                if cuda:
                    gpu.append(e0.elapsed_time(e1) / 1e3)
                last_end[0] = max(last_end[0], t2)
            k += 1

    streams = [torch.cuda.Stream() if cuda else None for _ in range(n_threads)]
    threads = [threading.Thread(target=loop, args=(s,), daemon=True) for s in streams]
    for t in threads:
        t.start()
    try:
        warmed.wait()
    except threading.BrokenBarrierError:
        for t in threads:
            t.join()
        raise errors[0] from None
    try:
        sync()
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        if meter is not None:
            meter.start()
    except BaseException:
        go.abort()  # release the waiting threads
        raise
    gc_was_on = gc.isenabled()
    gc.disable()
    t_start = time.perf_counter()
    stop_at[0] = t_start + cfg.duration_s
    try:
        go.wait()
        if cfg.progress:
            for t in threads:  # a join with a timeout returns as soon as the thread ends
                while t.is_alive():
                    _progress(name, time.perf_counter() - t_start, cfg.duration_s)
                    t.join(0.2)
            sys.stderr.write("\n")
        for t in threads:
            t.join()
        sync()
        # the timed calls' own window: the progress display's waits used to count in it, which
        # under-reported throughput by up to 0.2 s per run (most in short --iterations runs)
        wall = (last_end[0] if last_end[0] > t_start else time.perf_counter()) - t_start
    finally:
        if gc_was_on:
            gc.enable()
    if errors:
        if meter is not None:
            meter.stop()
        raise errors[0]
    if meter is not None:
        reading = meter.stop()
        if idle_w is not None and reading.idle_power_w is None:
            reading.idle_power_w = idle_w
            reading.energy_above_idle_j = reading.energy_j - idle_w * reading.duration_s
        result.energy = reading
        if lat:
            n_inf = len(lat) * batch
            result.j_per_inference = reading.energy_j / n_inf
            if reading.energy_above_idle_j is not None:
                result.j_per_inference_above_idle = reading.energy_above_idle_j / n_inf
        result.warnings += reading.warnings

    result.latency = LatencyStats.of(lat)
    # per-call latencies for histograms; evenly thinned so a long run stays a small file
    step = max(1, len(lat) // 2000)
    result.extra["latencies_ms"] = [t * 1e3 for t in lat[::step]]
    result.enqueue = LatencyStats.of(enq)
    result.gpu_compute = LatencyStats.of(gpu) if cuda else None
    result.throughput_per_s = len(lat) * batch / wall if wall > 0 else 0.0
    result.peak_memory_bytes = int(torch.cuda.max_memory_allocated()) if cuda else None
    if result.latency.n > 2 and result.latency.cv > CV_WARNING:
        result.warnings.append(
            f"latency varies a lot (coefficient of variation {result.latency.cv:.0%}); "
            "other work on the machine? run longer (--duration) or check the profile"
        )
    if cfg.profile and profile_fn is not None:
        result.profile = profile_fn()
    return result


class _null:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *a: object) -> None:
        return None


def layer_table(times: dict[str, list[float]], ops: dict[str, str]) -> list[dict]:
    """Per-layer rows like trtexec's --dumpProfile: total, mean, median, % of the total."""
    total = sum(sum(v) for v in times.values()) or 1.0
    rows = []
    for layer, ts in times.items():
        s = sum(ts)
        rows.append(
            {
                "layer": layer,
                "op": ops.get(layer, ""),
                "calls": len(ts),
                "total_ms": s * 1e3,
                "mean_ms": s / len(ts) * 1e3,
                "median_ms": statistics.median(ts) * 1e3,
                "percent": 100.0 * s / total,
            }
        )
    rows.sort(key=lambda r: -r["total_ms"])
    return rows


def op_summary(rows: list[dict]) -> list[dict]:
    """layer_table rows summed per (op, tactic): where a run's time goes at a glance (e.g.
    "FusedGemm on cuBLAS: 2.9 of 3.7 ms"), largest first; % of the sum of layer medians."""
    groups: dict[tuple[str, str], dict] = {}
    for r in rows:
        key = (r.get("op", ""), r.get("tactic", "") or "")
        g = groups.setdefault(key, {"op": key[0], "tactic": key[1], "layers": 0, "median_ms": 0.0})
        g["layers"] += 1
        g["median_ms"] += r["median_ms"]
    total = sum(g["median_ms"] for g in groups.values()) or 1.0
    out = sorted(groups.values(), key=lambda g: -g["median_ms"])
    for g in out:
        g["percent"] = 100.0 * g["median_ms"] / total
    return out
