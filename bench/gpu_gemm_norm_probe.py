"""GPU probe: the GEMM that ends a transformer block and the LayerNorm after it, as two kernels
(as the engines run them now) against one: the TMA GEMM whose last tile of each row block
normalizes the block's rows (tma_gemm's `norm` epilogue).

BERT-base b64 seq128: the attention output projection (K 768) and FFN-down (K 3072), N 768,
M 8192, each with bias and the residual, then LayerNorm over the 768 columns:
  * FP16: cuBLAS (F.linear) + SkipLayerNorm (the residual added in the norm), and the TMA GEMM
    with the residual in its epilogue + LayerNorm, against the TMA GEMM with the norm epilogue;
  * FP8: the TMA GEMM on codes with the residual + LayerNormCodes (float16 Y and FP8 codes),
    against the norm epilogue writing both.
Each TMA configuration is timed both ways, and the fused output compared bit for bit.
Each variant cycles through --sets independent input sets inside one CUDA graph, so that data
comes from memory as in an engine.

    python bench/gpu_gemm_norm_probe.py [--sets 4] [--out results.json] [--dry-run]
"""

# ruff: noqa: B023  (each closure runs within its loop iteration)
from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F  # noqa: N812
from ffn_probe import probe_args

from ecoinfer.kernels.triton.norms import RowConfig, layer_norm
from ecoinfer.kernels.triton.tma_gemm import NormEpilogue, tma_gemm, tma_gemm_configs

F8 = torch.float8_e4m3fn


def main() -> int:
    a = probe_args(__doc__)
    dry = a.dry_run
    s = max(1, a.sets)
    dev = torch.device("cpu" if dry else "cuda")
    gpu = "cpu (dry run)" if dry else torch.cuda.get_device_name(dev)
    torch.manual_seed(0)
    m, n = (128, 96) if dry else (64 * 128, 768)
    rc = RowConfig(2, 4)
    import ffn_probe  # noqa: PLC0415

    def us(fn: Callable[[], object]) -> float:
        return ffn_probe.FfnBlock.us(type("T", (), {"dry": dry})(), fn)  # type: ignore[arg-type]

    g = (torch.rand(n, device=dev) + 0.5).half()
    be = (torch.randn(n, device=dev) * 0.1).half()
    rows: list[dict] = []
    for name, k in (("attention-out", 64 if dry else 768), ("ffn-down", 128 if dry else 3072)):
        for prec in ("fp16", "fp8"):
            r = [torch.randn(m, n, device=dev).half() for _ in range(s)]
            b = (torch.randn(n, device=dev) * 0.1).half()
            if prec == "fp16":
                x = [torch.randn(m, k, device=dev).half() for _ in range(s)]
                w = (torch.randn(n, k, device=dev) * k**-0.5).half()
                qk: dict = {}
            else:
                x = [(torch.randn(m, k, device=dev) * 8).to(F8) for _ in range(s)]
                w = (torch.randn(n, k, device=dev) * 8).to(F8)
                qk = {"x_scale": torch.tensor(0.02, device=dev),
                      "w_scale": torch.full((n,), 0.1 * k**-0.5 / 8, device=dev)}  # fmt: skip
            ys = torch.tensor(0.02, device=dev)
            codes = [torch.empty(m, n, device=dev, dtype=F8) for _ in range(s)]
            row: dict = {"layer": name, "precision": prec, "m": m, "n": n, "k": k}

            def two(i: int, cfg) -> torch.Tensor:  # noqa: ANN001
                y = tma_gemm(x[i], w, b, r[i], config=cfg, **qk)
                if prec == "fp8":
                    return layer_norm(y, g, be, -1, 1e-12, rc, codes[i], ys, False)
                return layer_norm(y, g, be, -1, 1e-12, rc)

            esz = 2 if prec == "fp16" else 1
            tcfgs = tma_gemm_configs(m, n, k, esz, limit=6)
            t_two = {str(c.as_dict()): us(lambda c=c: [two(i, c) for i in range(s)]) / s
                     for c in tcfgs}  # fmt: skip
            best = min(t_two, key=t_two.__getitem__)
            row["tma_gemm_then_norm_us"] = t_two[best]
            row["tma_cfg"] = best
            if prec == "fp16":
                row["cublas_then_skipnorm_us"] = us(
                    lambda: [layer_norm(F.linear(x[i], w, b), g, be, -1, 1e-12, rc, skip=r[i])
                             for i in range(s)]) / s  # fmt: skip
            fused: dict = {}
            for cfg in tcfgs:
                cnt = torch.zeros(m, dtype=torch.int32, device=dev)  # left zero by each launch
                want = two(0, cfg)

                def one(i: int, c=cfg) -> torch.Tensor:  # noqa: ANN001
                    ne = NormEpilogue(g, be, 1e-12, ys if prec == "fp8" else None,
                                      codes[i] if prec == "fp8" else None, cnt)  # fmt: skip
                    return tma_gemm(x[i], w, b, r[i], config=c, norm=ne, **qk)

                try:
                    got = one(0)
                    t = us(lambda one=one: [one(i) for i in range(s)]) / s
                except Exception as e:  # noqa: BLE001  (a tile that does not compile)
                    fused[str(cfg.as_dict())] = f"failed: {type(e).__name__}: {str(e)[:120]}"
                    continue
                fused[str(cfg.as_dict())] = {
                    "us": t, "two_kernels_us": t_two[str(cfg.as_dict())],
                    "bit_identical": bool(torch.equal(got, want)),
                    "counters_zero": bool((cnt == 0).all())}  # fmt: skip
            row["fused"] = fused
            ok = {c: v["us"] for c, v in fused.items() if isinstance(v, dict)}
            row["fused_best_us"] = min(ok.values()) if ok else None
            rows.append(row)
            print(json.dumps(row), flush=True)
    out = {"gpu": gpu, "sets": s, "rows": rows}
    if a.out:
        Path(a.out).write_text(json.dumps(out, indent=1))
    print(f"GEMM + LayerNorm probe on {gpu}, BERT-base b64, {s} input sets (us per pair)")
    print(f"{'layer':15} {'prec':5} {'cuBLAS+SkipLN':>14} {'TMA+LN':>8} {'fused':>8}")
    for r_ in rows:
        cb = r_.get("cublas_then_skipnorm_us")
        fb = r_["fused_best_us"]
        print(f"{r_['layer']:15} {r_['precision']:5} {cb if cb is None else round(cb, 2)!s:>14} "
              f"{r_['tma_gemm_then_norm_us']:8.2f} {fb if fb is None else round(fb, 2)!s:>8}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
