"""GPU A/B: the same engine files with programmatic dependent launch (PDL) on and off.

    python bench/gpu_pdl_ab.py ENGINE [ENGINE ...] --model bert-base --batch 64 [--rounds 2]
        [--json FILE]

Every Triton kernel of an engine is launched with PDL on Hopper (kernels/triton/pdl.py): it may
be scheduled while the kernel ahead of it finishes and waits on the GPU before touching memory.
ECOINFER_PDL=0 launches them as before. This script loads each engine once and runs it through
fresh execution contexts (each captures its own CUDA graph) with the switch on and off, in
alternating rounds, timing each with the benchmark harness (throughput, GPU compute median,
J/inference from NVML), and checks that both give the same outputs bit for bit: PDL changes
when a kernel starts, never what it computes. Reads the GPU's counters; changes no setting.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from cold_start import _feeds  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("engines", nargs="+")
    ap.add_argument("--model", default="bert-base")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--device", default="cuda", help="cpu: a dry run of the script itself")
    ap.add_argument("--json")
    a = ap.parse_args()

    import torch  # noqa: PLC0415

    from ecoinfer.bench.harness import BenchConfig, run_benchmark  # noqa: PLC0415
    from ecoinfer.engine.builder import load_engine  # noqa: PLC0415

    cuda = a.device == "cuda"
    gpu = torch.cuda.get_device_name() if cuda else "cpu"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    feeds = {k: torch.from_numpy(v).to(a.device) for k, v in _feeds(a.model, a.batch).items()}
    rows: list[dict] = []
    for path in a.engines:
        engine = load_engine(path, a.device)
        ref: dict | None = None
        for rnd in range(a.rounds):
            for pdl in ("1", "0"):
                os.environ["ECOINFER_PDL"] = pdl
                ctx = engine.create_context()
                out = ctx.run(feeds, as_torch=True)  # plan, warm-up, capture (PDL read here)
                sync()
                out = {k: v.clone() for k, v in out.items()}
                if ref is None:
                    ref = out
                same = all(torch.equal(out[k], ref[k]) for k in ref)
                res = run_benchmark(
                    f"{Path(path).name} PDL={pdl}",
                    lambda ctx=ctx: ctx.run(feeds, as_torch=True),
                    a.batch,
                    BenchConfig(duration_s=a.seconds),
                    device=a.device,
                )
                gc = res.gpu_compute.median_ms if res.gpu_compute else None
                row = {"engine": Path(path).name, "round": rnd, "pdl": pdl == "1", "gpu": gpu,
                       "throughput_per_s": res.throughput_per_s, "gpu_compute_median_ms": gc,
                       "j_per_inference": res.j_per_inference, "same_outputs": same}  # fmt: skip
                rows.append(row)
                print(json.dumps(row), flush=True)
                del ctx
    os.environ.pop("ECOINFER_PDL", None)
    if a.json:
        Path(a.json).write_text(json.dumps(rows, indent=1))
    print(f"PDL A/B on {gpu}, {a.model} b{a.batch} (throughput/s; GPU compute median ms; J/inf)")
    for path in a.engines:
        name = Path(path).name
        for pdl in (True, False):
            r = [x for x in rows if x["engine"] == name and x["pdl"] == pdl]
            tp = max(x["throughput_per_s"] for x in r)
            gc = min(x["gpu_compute_median_ms"] or 0 for x in r)
            j = min(x["j_per_inference"] or 0 for x in r)
            ok = all(x["same_outputs"] for x in r)
            print(f"  {name:32s} PDL={'on ' if pdl else 'off'} best {tp:9.0f}/s  {gc:.3f} ms  "
                  f"{j:.4f} J  same outputs: {ok}")  # fmt: skip
    return 0 if all(x["same_outputs"] for x in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
