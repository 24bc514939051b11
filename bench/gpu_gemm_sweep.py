"""GPU probe: BERT-base b64's four GEMMs, in the form the FP8 engine (or with --fp16 the FP16
engine) runs them, over a wider configuration space than the tuner's (tma_gemm_configs),
timed as the tuner times (CUDA-graph replay, inputs cycled through copies that exceed twice
the L2).

    python bench/gpu_gemm_sweep.py [--fp16] [--narrow] [--seconds 100] [--out results.json]

FP8 forms: codes in everywhere; QKV writes codes (the attention reads them), the attention
output adds the float16 residual, FFN-up applies GELU (tanh form, hardware tanh) and writes
codes, FFN-down adds the residual. FP16 forms: the same in float16 with float16 out, and
cuBLAS (F.linear, GELU by torch._addmm_activation, the residual added after) timed beside
them. Swept, after the tuner's own configurations: two programs per SM (PERSISTENT=2) for
tiles small enough to let two blocks share an SM, each also with one; then (unless
--narrow) the tuner's tiles with K steps of 64, 128 and 256 bytes' worth of K, 2-5 stages
where they fit, GROUP_M 4/8/16 (one stage count). Each configuration is checked against the
tuner's first one (relative L2 of the outputs).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from gpu_tma_probe import fp8_case  # noqa: E402

from ecoinfer.kernels.triton.gemm import ACT_GELU_ERF  # noqa: E402
from ecoinfer.kernels.triton.tma_gemm import _SMEM_LIMIT, TmaGemmConfig, tma_gemm  # noqa: E402
from ecoinfer.kernels.triton.tma_tactics import _configs  # noqa: E402
from ecoinfer.tune.autotune import cold_rotate_bytes, input_sets, measure  # noqa: E402

M = 8192
SHAPES = [  # (name, K, N, activation, residual, codes out)
    ("qkv", 768, 2304, "", False, True),
    ("attn_out", 768, 768, "", True, False),
    ("ffn_up", 768, 3072, "Gelu", False, True),
    ("ffn_down", 3072, 768, "", True, False),
]
TILES = ((128, 256, 8), (128, 128, 8), (256, 128, 8), (128, 128, 4), (64, 256, 4))


# two programs per SM (PERSISTENT=2): tiles whose registers and shared memory let two blocks
# share an SM (sm_90 compile, 4 warps: FP8 128x128x128 with 2-3 stages and the pointer
# epilogue needs 255 registers and 74-107 KB; FP16 128x128x64 with GELU, 3 stages, 184
# registers and 107 KB), so one program's epilogue overlaps the other's K loop. K steps in
# bytes of one row (128: 128 codes or 64 halves)
TWO_PER_SM = (  # (BM, BN, K bytes, warps, stages, EPI_TMA)
    (128, 128, 128, 4, 2, 0),
    (128, 128, 128, 4, 3, 0),
    (128, 128, 128, 4, 2, 1),
    (128, 64, 128, 4, 3, 0),
    (128, 64, 128, 4, 3, 1),
    (64, 128, 128, 4, 3, 1),
)


def sweep_configs(
    m: int, n: int, k: int, gelu: bool, esz: int, wide: bool = True
) -> tuple[list[TmaGemmConfig], int]:
    """(configurations, how many of them lead the list as the tuner's own) for operands of
    esz bytes: the tuner's, the two-programs-per-SM ones (each also with one program per
    SM), then with `wide` the tile / K step / stage / GROUP_M grid."""
    act = (ACT_GELU_ERF, 0.0, 0.0) if gelu else None
    out = [TmaGemmConfig(**c) for c in _configs(m, n, k, esz, act)]
    n_tuner = len(out)
    fast = {"FAST_GELU": 1} if gelu else {}
    for bm, bn, kb, w, st, epi in TWO_PER_SM:
        for per_sm in (2, 1):
            c = TmaGemmConfig(bm, bn, kb // esz, 8, w, st, per_sm, EPI_TMA=epi, **fast)
            if c not in out:
                out.append(c)
    if not wide:
        return out, n_tuner
    for bm, bn, w in TILES:
        for kb in (64, 128, 256):
            bk = kb // esz
            if bk > k:
                continue
            stage = (bm + bn) * kb
            for s in (2, 3, 4, 5):
                if s * stage + bm * bn * 2 > _SMEM_LIMIT:
                    continue
                for g in (8,) if (kb, s) != (128, 3) else (4, 8, 16):
                    c = TmaGemmConfig(bm, bn, bk, g, w, s, 1, **fast)
                    if c not in out:
                        out.append(c)
    return out, n_tuner


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out")
    ap.add_argument(
        "--seconds", type=float, default=100.0, help="per GEMM: stop starting new configurations"
    )
    ap.add_argument("--fp16", action="store_true", help="the FP16 engine's forms, not FP8's")
    ap.add_argument(
        "--narrow",
        action="store_true",
        help="only the tuner's configurations and the two-programs-per-SM ones",
    )
    ap.add_argument("--m", type=int, default=M, help="rows (BERT-base b64 seq128: 8192)")
    ap.add_argument(
        "--device", default="cuda", help="cpu: a smoke test under TRITON_INTERPRET=1 (small --m)"
    )
    args = ap.parse_args()
    dev = torch.device(args.device)
    m = args.m
    torch.manual_seed(0)
    rotate = cold_rotate_bytes(dev)
    gpu = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu"
    result: dict = {"gpu": gpu, "M": m, "fp16": args.fp16, "shapes": {}}
    for name, k, n, act, has_res, codes_out in SHAPES:
        x = torch.randn(m, k, device=dev, dtype=torch.float16)
        w = torch.randn(n, k, device=dev, dtype=torch.float16) / math.sqrt(k)
        b = torch.randn(n, device=dev, dtype=torch.float16) * 0.1
        r = torch.randn(m, n, device=dev, dtype=torch.float16) if has_res else None
        if args.fp16:
            xin = x

            def run(xs_, c, act=act, b=b, w=w):  # noqa: ANN001, ANN202
                return tma_gemm(xs_[0], w, b, xs_[1], activation=act, config=c)

            def cublas(xs_, act=act, b=b, w=w):  # noqa: ANN001, ANN202
                if act == "Gelu":
                    y = torch._addmm_activation(b, xs_[0], w.t(), use_gelu=True)
                else:
                    y = torch.nn.functional.linear(xs_[0], w, b)
                return y + xs_[1] if xs_[1] is not None else y

        else:
            xs, ws, xin, wq, _ = fp8_case(x, w, b, r, lambda t: t)  # codes, as the probe makes
            os_ = torch.tensor(0.02, device=dev) if codes_out else None
            cublas = None

            def run(xs_, c, act=act, b=b, wq=wq, ws=ws, xs=xs, os_=os_):  # noqa: ANN001, ANN202
                return tma_gemm(xs_[0], wq, b, xs_[1], activation=act, x_scale=xs,
                                w_scale=ws, out_scale=os_, config=c)  # fmt: skip

        sets = input_sets([xin, r], rotate)
        rows = []
        ref = None
        t_end = time.time() + args.seconds
        esz = 2 if args.fp16 else 1
        cfgs, n_tuner = sweep_configs(m, n, k, act == "Gelu", esz, wide=not args.narrow)
        for c in cfgs:
            if time.time() > t_end:
                break
            row = {"cfg": c.as_dict()}
            try:
                y = run([xin, r], c).float()
                if dev.type == "cuda":
                    torch.cuda.synchronize()
                if ref is None:
                    ref = y
                row["err_vs_first"] = float((y - ref).norm() / ref.norm().clamp_min(1e-30))
                ms, _ = measure(lambda xs_, c=c: run(xs_, c), [xin, r], dev, sets=sets)
                row["us"] = ms * 1e3
            except Exception as e:  # noqa: BLE001
                row["failed"] = f"{type(e).__name__}: {str(e)[:160]}"
            rows.append(row)
        ok = sorted((r_ for r_ in rows if "us" in r_), key=lambda r_: r_["us"])
        result["shapes"][name] = {"K": k, "N": n, "rows": rows}
        if cublas is not None:
            ms, _ = measure(cublas, [xin, r], dev, sets=sets)
            result["shapes"][name]["cublas_us"] = ms * 1e3
            print(f"{name}: cuBLAS (GEMM, activation and residual as torch runs them) "
                  f"{ms * 1e3:.2f} us")  # fmt: skip
        first = next((r_ for r_ in rows if "us" in r_), None)
        print(f"{name}: {len(rows)} configs, tuner's first {first and round(first['us'], 2)} us")
        for r_ in ok[:5]:
            c = r_["cfg"]
            print(f"   {r_['us']:7.2f} us  err {r_['err_vs_first']:.1e}  {c['BLOCK_M']}x"
                  f"{c['BLOCK_N']}x{c['BLOCK_K']} w{c['num_warps']} s{c['num_stages']} "
                  f"g{c['GROUP_M']} p{c['PERSISTENT']} epi{c['EPI_TMA']}", flush=True)  # fmt: skip
        tuned = set(cfgs[:n_tuner])
        best_tuned = min((r_["us"] for r_ in ok if TmaGemmConfig(**r_["cfg"]) in tuned),
                         default=math.inf)  # fmt: skip
        print(f"   best of the tuner's own: {best_tuned:.2f} us")
        del x, w, r, xin, sets
        if dev.type == "cuda":
            torch.cuda.empty_cache()
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
