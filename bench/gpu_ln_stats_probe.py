"""GPU probe: a LayerNorm that writes only its codes and row statistics, the GEMM after it
rebuilding the norm's Y as its residual (BERT-base b64 seq128, FP8 FFN block).

In the FP8 engine each LayerNormCodes writes Y in float16 (12.6 MB at b64) and its FP8 codes
(6.3 MB); the codes feed FFN-up, and Y is read only as FFN-down's residual. With
`layer_norm(..., stats=, write_y=False)` the norm writes the codes and two float32 numbers per
row instead, and `tma_gemm(..., residual=<the norm's input>, residual_norm=...)` rebuilds Y in
FFN-down's epilogue (same float32 operations, same rounding). This probe times the block
LN -> FFN-up (GELU, codes out) -> FFN-down (+ residual) both ways, per kernel and as one
sequence cycling through --sets independent inputs (so that data comes from HBM as in an
engine), over the TMA configurations the tuner would try, and checks that FFN-down's output is
the same bit for bit.

    python bench/gpu_ln_stats_probe.py [--sets 4] [--out results.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
import triton

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from ecoinfer.kernels.triton.norms import RowConfig, layer_norm  # noqa: E402
from ecoinfer.kernels.triton.tma_gemm import tma_gemm, tma_gemm_configs  # noqa: E402

F8 = torch.float8_e4m3fn
DRY = [False]  # --dry-run: tiny shapes on the CPU interpreter, to check the script itself


def us(fn) -> float:  # noqa: ANN001
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
    dev = torch.device("cpu" if a.dry_run else "cuda")
    torch.manual_seed(0)
    gpu = "cpu (dry run)" if a.dry_run else torch.cuda.get_device_name(dev)
    s = max(1, a.sets)
    hs = [(torch.randn(M, H, device=dev) * 2).half() for _ in range(s)]  # LN inputs
    gamma = (torch.rand(H, device=dev) + 0.5).half()
    beta = (torch.randn(H, device=dev) * 0.1).half()
    ys = torch.tensor(0.01, device=dev)
    w_up = (torch.randn(F, H, device=dev) * 8).to(F8)
    w_dn = (torch.randn(H, F, device=dev) * 8).to(F8)
    ws_up = torch.full((F,), 1e-3, device=dev)
    ws_dn = torch.full((H,), 1e-3, device=dev)
    b_up = torch.zeros(F, device=dev).half()
    b_dn = torch.zeros(H, device=dev).half()
    mid_scale = torch.tensor(0.02, device=dev)
    rc = RowConfig(2, 4)
    codes = [torch.empty(M, H, device=dev, dtype=F8) for _ in range(s)]
    stats = [(torch.empty(M, device=dev), torch.empty(M, device=dev)) for _ in range(s)]

    def ln_full(i: int) -> torch.Tensor:
        return layer_norm(hs[i], gamma, beta, -1, 1e-12, rc, codes[i], ys, False)

    def ln_stats(i: int) -> torch.Tensor:
        return layer_norm(hs[i], gamma, beta, -1, 1e-12, rc, codes[i], ys, False,
                          stats=stats[i], write_y=False)  # fmt: skip

    def up(i: int, cfg) -> torch.Tensor:  # noqa: ANN001
        return tma_gemm(codes[i], w_up, b_up, activation="Gelu", x_scale=ys, w_scale=ws_up,
                        out_scale=mid_scale, config=cfg)  # fmt: skip

    def down(mid: torch.Tensor, res: torch.Tensor, cfg, norm=None) -> torch.Tensor:  # noqa: ANN001
        return tma_gemm(mid, w_dn, b_dn, res, x_scale=mid_scale, w_scale=ws_dn, config=cfg,
                        residual_norm=norm)  # fmt: skip

    up_cfg = tma_gemm_configs(M, F, H, 1, 1, limit=4)
    dn_cfgs = tma_gemm_configs(M, H, F, 1, 2, limit=4)
    y0 = ln_full(0)
    ln_stats(0)
    best_up = min(up_cfg, key=lambda c: us(lambda c=c: up(0, c)))
    mids = [up(i, best_up) for i in range(s)]
    rows: list[dict] = []
    same = True
    for cfg in dn_cfgs:
        want = down(mids[0], y0, cfg)
        got = down(mids[0], hs[0], cfg, (*stats[0], gamma, beta))
        same = same and bool(torch.equal(got, want))
        diff = float((got.float() - want.float()).abs().max())
        row = {"cfg": cfg.as_dict(), "bit_identical": bool(torch.equal(got, want)),
               "max_abs_diff": diff,
               "down_residual_y_us": us(lambda c=cfg: down(mids[0], y0, c)),
               "down_residual_norm_us": us(lambda c=cfg: down(mids[0], hs[0], c, (*stats[0], gamma, beta)))}  # fmt: skip

        def block_full(c=cfg) -> None:  # noqa: ANN001
            for i in range(s):  # each kernel reads what the one before wrote
                y = ln_full(i)
                down(up(i, best_up), y, c)

        def block_stats(c=cfg) -> None:  # noqa: ANN001
            for i in range(s):
                ln_stats(i)
                down(up(i, best_up), hs[i], c, (*stats[i], gamma, beta))

        row["block_full_us"] = us(block_full) / s
        row["block_stats_us"] = us(block_stats) / s
        rows.append(row)
        print(json.dumps(row), flush=True)
    ln = {"ln_full_us": us(lambda: [ln_full(i) for i in range(s)]) / s,
          "ln_stats_us": us(lambda: [ln_stats(i) for i in range(s)]) / s}  # fmt: skip
    out = {"gpu": gpu, "sets": s, "ffn_up_cfg": best_up.as_dict(), **ln, "rows": rows,
           "bit_identical": same}  # fmt: skip
    if a.out:
        Path(a.out).write_text(json.dumps(out, indent=1))
    print(f"LayerNorm stats probe on {gpu}, BERT-base b64 FP8 FFN block, {s} input sets (us)")
    print(
        f"  LayerNormCodes: Y + codes {ln['ln_full_us']:.2f}, codes + stats {ln['ln_stats_us']:.2f}"
    )
    bf = min(r["block_full_us"] for r in rows)
    bs = min(r["block_stats_us"] for r in rows)
    print(f"  LN -> FFN-up -> FFN-down: Y written {bf:.2f}, rebuilt {bs:.2f} ({bs / bf - 1:+.1%})")
    print(f"  FFN-down outputs bit-identical in every configuration: {same}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
