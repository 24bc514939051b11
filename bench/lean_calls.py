"""Call latency of one engine file through both runtimes, numpy in and out, same process.

    python bench/lean_calls.py ENGINE --model bert-base --batch 64 [--seconds 3] [--json F]

The torch runtime (ecoinfer.load_engine) and the torch-free one (ecoinfer.lean) run the same
recorded kernels; each call copies the inputs to the GPU, replays the CUDA graph and copies
the outputs back. Alternating rounds, median per call; the outputs are compared too.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cold_start import _feeds  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("engine")
    ap.add_argument("--model", default="bert-base")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--json")
    a = ap.parse_args()
    import numpy as np  # noqa: PLC0415
    import torch  # noqa: PLC0415

    from ecoinfer.engine.builder import load_engine  # noqa: PLC0415
    from ecoinfer.lean import load  # noqa: PLC0415

    feeds = _feeds(a.model, a.batch)
    full, lean = load_engine(a.engine), load(a.engine)
    ref, got = full.run(feeds), lean.run(feeds)
    same = all(np.array_equal(ref[k], got[k]) for k in ref)
    err = max(
        float(
            np.linalg.norm(got[k].astype(np.float64) - ref[k]) / max(np.linalg.norm(ref[k]), 1e-30)
        )
        for k in ref
    )
    times: dict[str, list[float]] = {"torch runtime": [], "torch-free runtime": []}
    runners = {"torch runtime": full.run, "torch-free runtime": lean.run}
    for r in runners.values():  # warm-up: graphs captured
        for _ in range(3):
            r(feeds)
    end = time.perf_counter() + a.seconds
    while time.perf_counter() < end:
        for name, r in runners.items():
            t = time.perf_counter()
            for _ in range(10):
                r(feeds)
            times[name].append((time.perf_counter() - t) / 10)
    gpu = torch.cuda.get_device_name()
    res = {k: statistics.median(v) * 1e3 for k, v in times.items()}
    print(f"{Path(a.engine).name} on {gpu}, batch {a.batch}, numpy in/out, median ms per call:")
    for k, v in res.items():
        print(f"  {k:20s} {v:8.3f} ms  ({a.batch / v * 1e3:,.0f} inferences/s)")
    print(f"  outputs bit-identical: {same} (max rel. L2 {err:.1e})")
    if a.json:
        Path(a.json).write_text(
            json.dumps({"gpu": gpu, "engine": a.engine, "ms": res, "bit_identical": same,
                        "max_rel_l2": err}, indent=1)
        )  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
