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

import json
import sys
from pathlib import Path

from ffn_probe import ffn_block, probe_args

from ecoinfer.kernels.triton.norms import RowConfig
from ecoinfer.kernels.triton.pdl import pdl_scope
from ecoinfer.kernels.triton.tma_gemm import TmaGemmConfig

# the tuner's picks in session 13's FP8 BERT-base build (run x)
UP = TmaGemmConfig(BLOCK_M=256, BLOCK_N=128, BLOCK_K=128, GROUP_M=8, num_warps=8,
                   num_stages=3, PERSISTENT=1, FAST_GELU=1)  # fmt: skip
DOWN = TmaGemmConfig(BLOCK_M=128, BLOCK_N=128, BLOCK_K=128, GROUP_M=8, num_warps=4,
                     num_stages=4, PERSISTENT=1)  # fmt: skip
SMALL = TmaGemmConfig(BLOCK_M=32, BLOCK_N=32, BLOCK_K=32, num_warps=4, num_stages=2)


def main() -> int:
    a = probe_args(__doc__)
    s = max(2, a.sets)
    b = ffn_block(s, a.dry_run, RowConfig(2, 2))
    up_cfg, down_cfg = (SMALL, SMALL) if a.dry_run else (UP, DOWN)
    us, codes = b.us, b.codes

    def up(c):  # noqa: ANN001, ANN202
        return b.up(c, up_cfg)

    def down(mid, res):  # noqa: ANN001, ANN202
        return b.down(mid, res, down_cfg)

    # each set's data made once: the alternating runs read these, never a fresh output
    ys_ = [b.ln(i) for i in range(s)]
    mids = [up(codes[i]) for i in range(s)]

    def alone() -> dict[str, float]:
        return {
            "ln": us(lambda: [b.ln(i) for i in range(s)]) / s,
            "up": us(lambda: [up(codes[i]) for i in range(s)]) / s,
            "down": us(lambda: [down(mids[i], ys_[i]) for i in range(s)]) / s,
        }

    def alternating() -> None:
        for i in range(s):  # set i for the norm, the next sets for the GEMMs: no reader
            b.ln(i)  # of a fresh output, but a different kernel at every launch
            up(codes[(i + 1) % s])
            down(mids[(i + 2) % s], ys_[(i + 2) % s])

    def chained() -> None:
        for i in range(s):
            y = b.ln(i)
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
    out = {"gpu": b.gpu, "sets": s, "up_cfg": up_cfg.as_dict(), "down_cfg": down_cfg.as_dict(),
           **rows}  # fmt: skip
    if a.out:
        Path(a.out).write_text(json.dumps(out, indent=1))
    print(
        f"Kernel switch probe on {b.gpu}, BERT-base b64 FP8 FFN block, {s} input sets (us per block)"
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
