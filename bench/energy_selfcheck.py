"""Self-check of the NVML energy meter on a real GPU (H100/H200).

Idles 2 s (idle power), measures how often the energy counter moves, warms a matmul loop
for 1 s (so the ~1 s averaged power readings have caught up with the load), then measures
~4 s of it and prints the counter energy next to the power-sampling integral and their
ratio. A 1 s window follows to show the short-window warning. Exit status 0 when the two
methods agree within 15%, 1 when they don't, 2 when there is no GPU.

    python bench/energy_selfcheck.py [--gpu 0] [--seconds 4]

Reads only: it never changes clocks or power limits.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout

AGREEMENT = 0.15  # counter vs sampling, on a window of steady load


def _matmul_loop(torch, a, b, seconds: float) -> int:  # noqa: ANN001 - torch passed in
    """Back-to-back matmuls for `seconds`; synchronises so the GPU work ends inside it."""
    calls = 0
    t_end = time.perf_counter() + seconds
    while time.perf_counter() < t_end:
        for _ in range(8):  # enqueue a few per check so the GPU never waits on Python
            torch.matmul(a, b)
        calls += 8
        torch.cuda.synchronize()
    return calls


def _counter_update_period_s(meter, seconds: float) -> float | None:  # noqa: ANN001
    """Median time between changes of the energy counter, polled every ~1 ms."""
    changes: list[float] = []
    last = meter.read_counter_mj()
    t_end = time.perf_counter() + seconds
    while time.perf_counter() < t_end:
        now = meter.read_counter_mj()
        if now != last:
            changes.append(time.perf_counter())
            last = now
        time.sleep(0.001)
    gaps = [b - a for a, b in zip(changes, changes[1:])]
    return statistics.median(gaps) if gaps else None


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gpu", type=int, default=0, help="CUDA device index")
    ap.add_argument("--seconds", type=float, default=4.0, help="measured window")
    ap.add_argument("--size", type=int, default=8192, help="square matmul size (fp16)")
    args = ap.parse_args()

    import torch

    if not torch.cuda.is_available():
        print("no CUDA GPU: nothing to check")
        return 2
    from ecoinfer.energy import open_meter

    dev = torch.device(f"cuda:{args.gpu}")
    meter = open_meter(f"cuda:{args.gpu}")
    print(f"device: {meter.device} (torch: {torch.cuda.get_device_name(dev)})")
    print(f"method: {meter.method}, sample interval {meter.sample_interval_s * 1000:.0f} ms")
    try:
        import pynvml

        print(f"driver: {pynvml.nvmlSystemGetDriverVersion()}")
    except Exception as err:  # noqa: BLE001 - informational only
        print(f"driver: unknown ({err})")

    idle_w = meter.idle_power_w(2.0)
    print(f"idle power: {idle_w:.1f} W over 2 s ({len(meter.last_idle_samples)} samples)")

    a = torch.randn(args.size, args.size, device=dev, dtype=torch.float16)
    b = torch.randn(args.size, args.size, device=dev, dtype=torch.float16)
    _matmul_loop(torch, a, b, 1.0)  # warm-up: kernels chosen, clocks and power ramped
    if meter.has_counter:
        period_s = _counter_update_period_s(meter, 0.5)  # load stops, so it may idle here
        print(
            "counter update period (median, 0.5 s after load): "
            + ("no change seen" if period_s is None else f"{period_s * 1000:.0f} ms")
        )
        _matmul_loop(torch, a, b, 1.0)  # ramp up again

    meter.start()
    calls = _matmul_loop(torch, a, b, args.seconds)
    r = meter.stop()
    flops = 2 * args.size**3 * calls
    print(
        f"\nwindow: {r.duration_s:.3f} s, {calls} matmuls, {flops / r.duration_s / 1e12:.0f} TFLOP/s"
    )
    print(f"primary ({r.method}): {r.energy_j:.1f} J, mean {r.mean_power_w:.1f} W")
    print(f"above idle: {r.energy_above_idle_j:.1f} J")
    print(
        f"GPU utilisation (mean): {r.gpu_util_pct if r.gpu_util_pct is None else round(r.gpu_util_pct, 1)} %"
    )
    powers = [s.power_w for s in r.samples if s.power_w is not None]
    clocks = [s.sm_clock_mhz for s in r.samples if s.sm_clock_mhz is not None]
    temps = [s.temp_c for s in r.samples if s.temp_c is not None]
    gaps = [q.t_s - p.t_s for p, q in zip(r.samples, r.samples[1:])]
    print(
        f"samples: {len(r.samples)}, median gap {statistics.median(gaps) * 1000:.1f} ms, "
        f"power {min(powers):.0f}-{max(powers):.0f} W, SM clock {min(clocks):.0f}-{max(clocks):.0f} "
        f"MHz, temp {min(temps):.0f}-{max(temps):.0f} C"
        if powers and clocks and temps and gaps
        else f"samples: {len(r.samples)}"
    )
    ok = True
    sampling_j = r.alt.get("nvml_power_sampling_j")
    if r.method == "nvml_counter" and sampling_j is not None and r.energy_j > 0:
        ratio = sampling_j / r.energy_j
        ok = abs(ratio - 1.0) <= AGREEMENT
        print(
            f"counter {r.energy_j:.1f} J vs sampling {sampling_j:.1f} J: ratio {ratio:.3f} "
            f"-> {'OK' if ok else 'CHECK'} (within {AGREEMENT:.0%} expected)"
        )
    else:
        print(f"no counter/sampling comparison (method {r.method}, alt {r.alt})")
    for w in r.warnings:
        print(f"warning: {w}")

    meter.start()
    _matmul_loop(torch, a, b, 1.0)
    short = meter.stop()
    print(
        f"\n1 s window: {short.method} {short.energy_j:.1f} J, "
        f"sampling {short.alt.get('nvml_power_sampling_j', float('nan')):.1f} J"
    )
    for w in short.warnings:
        print(f"warning: {w}")
    meter.close()
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
