"""Do the tuner's short timings rank GEMM tactics as a power-capped engine sees them?

    python bench/gpu_sustained_probe.py [--top 5] [--seconds 3] [--out F.json] [--dry-run]

The tuner times each candidate for a few milliseconds, at whatever clock the GPU runs while
it is cool. The FP16 BERT-base b64 engine replays at the 700 W limit, where the SM clock
drops to ~1650 MHz: a tactic that draws more power per unit of work then slows down more.
For BERT-base b64's four FP16 GEMMs (QKV, attention output + residual, FFN-up + GELU,
FFN-down + residual, as the engine's FusedGemm layers), every tactic and configuration is
timed as the tuner times it (rotated inputs, CUDA graph); the `--top` fastest, then, one
after the other, run back to back for `--seconds` (CUDA-graph replays of 20 calls on rotating
inputs, after a 0.5 s warm-up) with NVML's energy counter and clock sampled: ms per call, J
per call and SM MHz under sustained load. If the sustained ranking differs from the burst
one, the tuner is choosing by the wrong clock.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import threading
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from ecoinfer.ir.graph import Node  # noqa: E402
from ecoinfer.ir.ops import get_schema  # noqa: E402
from ecoinfer.tune.autotune import cold_rotate_bytes, input_sets, measure  # noqa: E402
from ecoinfer.tune.tactics import BuildInfo, TensorInfo, tactics_for  # noqa: E402

# (name, K, N, activation, residual): BERT-base's GEMMs at batch 64, sequence 128
GEMMS = [
    ("qkv", 768, 2304, "", False),
    ("attn_out", 768, 768, "", True),
    ("ffn_up", 768, 3072, "Gelu", False),
    ("ffn_down", 3072, 768, "", True),
]


def _nvml():  # noqa: ANN202
    import pynvml  # noqa: PLC0415

    pynvml.nvmlInit()
    return pynvml, pynvml.nvmlDeviceGetHandleByIndex(torch.cuda.current_device())


def sustained(fn, sets, seconds: float, nv) -> dict:  # noqa: ANN001
    """ms and J per call, median SM MHz, over `seconds` of back-to-back graph replays."""
    pynvml, h = nv
    g = torch.cuda.CUDAGraph()
    calls = 20
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for k in range(3):
            fn(sets[k % len(sets)])
    torch.cuda.current_stream().wait_stream(s)
    with torch.cuda.graph(g):
        for k in range(calls):
            fn(sets[k % len(sets)])
    end = time.perf_counter() + 0.5
    while time.perf_counter() < end:
        g.replay()
    torch.cuda.synchronize()
    clocks: list[int] = []
    stop = threading.Event()

    def sample() -> None:
        while not stop.wait(0.025):
            clocks.append(pynvml.nvmlDeviceGetClockInfo(h, pynvml.NVML_CLOCK_SM))

    th = threading.Thread(target=sample)
    e0 = pynvml.nvmlDeviceGetTotalEnergyConsumption(h)
    t0 = time.perf_counter()
    th.start()
    n = 0
    while time.perf_counter() - t0 < seconds:
        for _ in range(10):
            g.replay()
        n += 10 * calls
        torch.cuda.synchronize()
    t1 = time.perf_counter()
    e1 = pynvml.nvmlDeviceGetTotalEnergyConsumption(h)
    stop.set()
    th.join()
    return {
        "ms": 1e3 * (t1 - t0) / n,
        "j": (e1 - e0) / 1e3 / n,
        "watts": (e1 - e0) / 1e3 / (t1 - t0),
        "sm_mhz": statistics.median(clocks) if clocks else None,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--top", type=int, default=5)
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--out")
    ap.add_argument("--dry-run", action="store_true", help="list the candidates only (CPU)")
    a = ap.parse_args()
    dev = torch.device("cuda" if not a.dry_run else "cpu")
    m = 64 * 128 if not a.dry_run else 64
    gpu = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu (dry run)"
    nv = _nvml() if dev.type == "cuda" else None
    torch.manual_seed(0)
    results = []
    for name, k, n, act, res in GEMMS:
        x = torch.randn(m, k, device=dev).half()
        w = (torch.randn(k, n, device=dev) / k**0.5).half()
        b = (torch.randn(n, device=dev) * 0.1).half()
        r = torch.randn(m, n, device=dev).half() if res else None
        xs = [x, w, b] + ([r] if res else [])
        node = Node("FusedGemm", ["x", "w", "b"] + (["r"] if res else []), ["y"],
                    {"activation": act}, name, "ecoinfer")  # fmt: skip
        attrs = {**get_schema("FusedGemm", "ecoinfer").attrs, **node.attrs}
        infos = [TensorInfo(tuple(t.shape), t.dtype, i in (1, 2)) for i, t in enumerate(xs)]
        build = BuildInfo(dev, "float16", {"w": w, "b": b})
        sets = input_sets(xs, cold_rotate_bytes(dev))
        cands = []
        for spec in tactics_for("FusedGemm", "ecoinfer", dev.type, "float16"):
            for cfg in spec.configs(node, attrs, infos, build) if spec.configs else [{}]:
                label = spec.name + (str(sorted(cfg.items())) if cfg else "")
                try:
                    fn = spec.make(node, attrs, infos, dict(cfg), build)
                    if fn is None:
                        continue
                    t = measure(fn, xs, dev, sets=sets)[0] if dev.type == "cuda" else 0.0
                except Exception as e:  # noqa: BLE001
                    print(f"  {name} {label}: {type(e).__name__}")
                    continue
                cands.append((t, label, fn))
        cands.sort(key=lambda c: c[0])
        print(f"{name}: {len(cands)} candidates", flush=True)
        if nv is None:
            continue
        for burst, label, fn in cands[: a.top]:
            sus = sustained(fn, sets, a.seconds, nv)
            row = {"gemm": name, "tactic": label, "burst_ms": burst, **sus}
            results.append(row)
            print(f"  {label[:90]:90s} burst {burst:.4f} ms  sustained {sus['ms']:.4f} ms "
                  f"{sus['j'] * 1e3:.3f} mJ {sus['watts']:.0f} W {sus['sm_mhz']} MHz", flush=True)  # fmt: skip
    if a.out:
        Path(a.out).write_text(json.dumps({"gpu": gpu, "rows": results}, indent=1))
    print(f"GPU: {gpu}")
    for name, *_ in GEMMS:
        rows = [r for r in results if r["gemm"] == name]
        if not rows:
            continue
        by_burst = min(rows, key=lambda r: r["burst_ms"])
        by_sus = min(rows, key=lambda r: r["ms"])
        by_j = min(rows, key=lambda r: r["j"])
        print(f"{name:9s} burst pick {by_burst['tactic'][:40]:40s} sustained {by_burst['ms']:.4f} ms; "
              f"sustained pick {by_sus['tactic'][:40]:40s} {by_sus['ms']:.4f} ms; "
              f"fewest J {by_j['tactic'][:40]} {by_j['j'] * 1e3:.3f} mJ")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
