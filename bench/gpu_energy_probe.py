"""GPU probe: energy per call of BERT-base b64's FP16 GEMM candidates under sustained load.

The builder picks the fastest candidate per layer, timed at full clock. An engine that runs
at the board's power limit (the BERT-base b64 FP16 engine on a 700 W H200 does, at 1700-1800
MHz) is bounded by its joules per call instead, so a slightly slower but more frugal kernel
could make it faster. This probe measures each candidate the way the engine runs it: CUDA
graphs of back-to-back calls replayed for --seconds (NVML's energy counter moves every ~0.1 s,
so a window of 4 s is good to about 2%), reporting us/call, mJ/call, mean power and SM clock.

    python bench/gpu_energy_probe.py [--seconds 4] [--limit 4] [--out results.json]

Candidates per GEMM: cuBLAS (F.linear, then the epilogue ops eager would run) and the TMA
GEMM's best-placed configurations (epilogue fused). Each is checked against a float32
reference first. Reads the GPU's counters only; changes no clock or power setting.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent
sys.path[:0] = [str(ROOT.parent), str(ROOT)]
from gpu_kernel_probe import GEMMS, M  # noqa: E402
from gpu_tma_probe import gemm_case, rel  # noqa: E402

from ecoinfer.energy import open_meter  # noqa: E402
from ecoinfer.kernels.triton.tma_gemm import TmaGemmConfig, tma_gemm, tma_gemm_configs  # noqa: E402

CALLS_PER_GRAPH = 20


def sustained(fn, seconds: float, meter) -> dict:  # noqa: ANN001
    """Replay a CUDA graph of CALLS_PER_GRAPH calls of fn for `seconds`: per-call time and
    energy from one NVML window."""
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(s)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        for _ in range(CALLS_PER_GRAPH):
            fn()
    t_end = time.perf_counter() + 1.0  # reach the steady clock and power first
    while time.perf_counter() < t_end:
        g.replay()
        torch.cuda.synchronize()
    meter.start()
    t0 = time.perf_counter()
    n = 0
    while time.perf_counter() - t0 < seconds:
        for _ in range(10):
            g.replay()
        n += 10
        torch.cuda.synchronize()
    wall = time.perf_counter() - t0
    r = meter.stop()
    calls = n * CALLS_PER_GRAPH
    clocks = sorted(x.sm_clock_mhz for x in r.samples if x.sm_clock_mhz)
    return {
        "us_per_call": wall / calls * 1e6,
        "mj_per_call": r.energy_j / calls * 1e3,
        "mean_power_w": r.mean_power_w,
        "sm_mhz_median": clocks[len(clocks) // 2] if clocks else None,
        "energy_method": r.method,
    }


def _tma_call(x, w, b, r, act: str, cfg: TmaGemmConfig):  # noqa: ANN001, ANN202
    return lambda: tma_gemm(x, w, b, r, activation=act, config=cfg)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=4.0)
    ap.add_argument("--limit", type=int, default=4, help="TMA configurations per GEMM")
    ap.add_argument("--out")
    a = ap.parse_args()
    dev = torch.device("cuda")
    meter = open_meter("cuda")
    print(f"{torch.cuda.get_device_name(dev)}, {a.seconds:g} s per candidate, M={M}")
    rows = []
    for tag, k, n, act, has_res in GEMMS:
        x, w, b, r, _, ref, eager = gemm_case(k, n, act, has_res, dev)
        cands = [("cublas+eager", eager)]
        for c in tma_gemm_configs(M, n, k, 2, 2, limit=a.limit + 2)[: a.limit]:
            cfg = TmaGemmConfig(**{**c.as_dict(), "EPI_TMA": 1, "FAST_GELU": int(act == "Gelu")})
            name = (
                f"tma {cfg.BLOCK_M}x{cfg.BLOCK_N}x{cfg.BLOCK_K} w{cfg.num_warps} s{cfg.num_stages}"
            )
            cands.append((name, _tma_call(x, w, b, r, act, cfg)))
        for name, fn in cands:
            try:
                err = rel(fn(), ref)
                if err > 1e-2:
                    print(f"  {tag:9s} {name:32s} wrong (rel L2 {err:.1e}), skipped")
                    continue
                m = sustained(fn, a.seconds, meter)
            except Exception as e:  # noqa: BLE001
                print(f"  {tag:9s} {name:32s} failed: {type(e).__name__}: {str(e)[:120]}")
                continue
            rows.append({"gemm": tag, "candidate": name, "rel_l2": err, **m})
            print(
                f"  {tag:9s} {name:32s} {m['us_per_call']:7.1f} us  {m['mj_per_call']:7.3f} mJ  "
                f"{m['mean_power_w']:5.0f} W  {m['sm_mhz_median'] or 0:5.0f} MHz",
                flush=True,
            )
    if a.out:
        Path(a.out).write_text(
            json.dumps({"device": torch.cuda.get_device_name(dev), "rows": rows}, indent=1)
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
