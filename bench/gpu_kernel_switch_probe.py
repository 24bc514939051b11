"""GPU probe: where does a kernel lose time in an engine that it does not lose when the tuner
times it alone? BERT-base b64 FP8 FFN block: LayerNormCodes -> FFN-up (GELU, codes out) ->
FFN-down (+ residual), the configurations the tuner picked on an H200.

In session 13 the tuned times of the FP8 engine's kernels (each timed over rotating inputs,
the same kernel back to back) summed to 1.96 ms, the engine ran 2.20 ms, and every kernel,
even a 3.5 us one, took 2-4 us longer in the engine profile. Three ways of running the same
three kernels tell the causes apart:

    alone        each kernel back to back with itself (what the tuner times), summed
    alternating  the three kernels in turn on independent data: nothing reads what the
                 kernel before it wrote, but every launch switches kernel (code, launch
                 set-up, tail of a different kernel)
    chained      as in the engine: each kernel reads what the one before it wrote

alternating - alone is the cost of switching kernels; chained - alternating that of reading
fresh data. Each is timed with programmatic dependent launch (PDL) on and off, over --sets
rotating input sets (so inputs come from memory), in CUDA graphs.

    python bench/gpu_kernel_switch_probe.py [--sets 4] [--out results.json] [--dry-run]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import triton

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from ecoinfer.kernels.triton.norms import RowConfig, layer_norm  # noqa: E402
from ecoinfer.kernels.triton.pdl import pdl_scope  # noqa: E402
from ecoinfer.kernels.triton.tma_gemm import TmaGemmConfig, tma_gemm  # noqa: E402

F8 = torch.float8_e4m3fn
DRY = [False]  # --dry-run: tiny shapes on the CPU interpreter, to check the script itself
# the tuner's picks in session 13's FP8 BERT-base build (run x)
UP = TmaGemmConfig(BLOCK_M=256, BLOCK_N=128, BLOCK_K=128, GROUP_M=8, num_warps=8,
                   num_stages=3, PERSISTENT=1, FAST_GELU=1)  # fmt: skip
DOWN = TmaGemmConfig(BLOCK_M=128, BLOCK_N=128, BLOCK_K=128, GROUP_M=8, num_warps=4,
                     num_stages=4, PERSISTENT=1)  # fmt: skip
SMALL = TmaGemmConfig(BLOCK_M=32, BLOCK_N=32, BLOCK_K=32, num_warps=4, num_stages=2)


def us(fn: Callable[[], object]) -> float:
    if DRY[0]:
        t0 = time.perf_counter()
        fn()
        return 1e6 * (time.perf_counter() - t0)
    return 1e3 * float(triton.testing.do_bench_cudagraph(fn, rep=80, return_mode="median"))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sets", type=int, default=4)
    ap.add_argument("--out")
    ap.add_argument("--dry-run", action="store_true", help="tiny shapes, CPU interpreter")
    a = ap.parse_args()
    DRY[0] = a.dry_run
    M, H, F = (64, 64, 128) if a.dry_run else (64 * 128, 768, 3072)  # noqa: N806
    up_cfg, down_cfg = (SMALL, SMALL) if a.dry_run else (UP, DOWN)
    dev = torch.device("cpu" if a.dry_run else "cuda")
    torch.manual_seed(0)
    gpu = "cpu (dry run)" if a.dry_run else torch.cuda.get_device_name(dev)
    s = max(2, a.sets)
    gamma = (torch.rand(H, device=dev) + 0.5).half()
    beta = (torch.randn(H, device=dev) * 0.1).half()
    ys = torch.tensor(0.01, device=dev)
    mid_scale = torch.tensor(0.02, device=dev)
    w_up = (torch.randn(F, H, device=dev) * 8).to(F8)
    w_dn = (torch.randn(H, F, device=dev) * 8).to(F8)
    ws_up = torch.full((F,), 1e-3, device=dev)
    ws_dn = torch.full((H,), 1e-3, device=dev)
    b_up = torch.zeros(F, device=dev).half()
    b_dn = torch.zeros(H, device=dev).half()
    rc = RowConfig(2, 2)
    hs = [(torch.randn(M, H, device=dev) * 2).half() for _ in range(s)]  # the norms' inputs
    codes = [torch.empty(M, H, device=dev, dtype=F8) for _ in range(s)]

    def ln(i: int) -> torch.Tensor:
        return layer_norm(hs[i], gamma, beta, -1, 1e-12, rc, codes[i], ys, False)

    def up(c: torch.Tensor) -> torch.Tensor:
        return tma_gemm(c, w_up, b_up, activation="Gelu", x_scale=ys, w_scale=ws_up,
                        out_scale=mid_scale, config=up_cfg)  # fmt: skip

    def down(mid: torch.Tensor, res: torch.Tensor) -> torch.Tensor:
        return tma_gemm(mid, w_dn, b_dn, res, x_scale=mid_scale, w_scale=ws_dn, config=down_cfg)

    # each set's data made once: the alternating runs read these, never a fresh output
    ys_ = [ln(i) for i in range(s)]
    mids = [up(codes[i]) for i in range(s)]

    def alone() -> dict[str, float]:
        return {
            "ln": us(lambda: [ln(i) for i in range(s)]) / s,
            "up": us(lambda: [up(codes[i]) for i in range(s)]) / s,
            "down": us(lambda: [down(mids[i], ys_[i]) for i in range(s)]) / s,
        }

    def alternating() -> None:
        for i in range(s):  # set i for the norm, the next sets for the GEMMs: no reader
            ln(i)  # of a fresh output, but a different kernel at every launch
            up(codes[(i + 1) % s])
            down(mids[(i + 2) % s], ys_[(i + 2) % s])

    def chained() -> None:
        for i in range(s):
            y = ln(i)
            down(up(codes[i]), y)

    rows = {}
    for pdl in (True, False):
        with pdl_scope(pdl):
            al = alone()
            r = {**{f"alone_{k}_us": v for k, v in al.items()}, "alone_sum_us": sum(al.values())}
            r["alternating_us"] = us(alternating) / s
            r["chained_us"] = us(chained) / s
        rows["pdl_on" if pdl else "pdl_off"] = r
        print(json.dumps({"pdl": pdl, **r}), flush=True)
    out = {"gpu": gpu, "sets": s, "up_cfg": up_cfg.as_dict(), "down_cfg": down_cfg.as_dict(),
           **rows}  # fmt: skip
    if a.out:
        Path(a.out).write_text(json.dumps(out, indent=1))
    print(
        f"Kernel switch probe on {gpu}, BERT-base b64 FP8 FFN block, {s} input sets (us per block)"
    )
    print(
        f"  {'PDL':<5} {'alone (sum)':>12} {'alternating':>12} {'chained':>10} {'switch':>8} {'fresh data':>11}"
    )
    for k, r in rows.items():
        sw = r["alternating_us"] - r["alone_sum_us"]
        fresh = r["chained_us"] - r["alternating_us"]
        print(f"  {k[4:]:<5} {r['alone_sum_us']:>12.2f} {r['alternating_us']:>12.2f} "
              f"{r['chained_us']:>10.2f} {sw:>+8.2f} {fresh:>+11.2f}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
