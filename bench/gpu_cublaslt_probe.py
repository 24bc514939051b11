"""GPU probe: ecoinfer's cuBLASLt FP8 GEMM (kernels/cublaslt.py: bias / GELU epilogues, FP8
codes or float16 out, fast accumulation) on BERT-base b64's four GEMMs, against the engine's
Triton TMA GEMM in the same form and torch._scaled_mm (fast accumulation, float16 out).

    python bench/gpu_cublaslt_probe.py [--out results.json]

Forms: QKV bias -> codes; FFN-up bias + GELU -> codes; attention-out and FFN-down bias ->
float16 (their residual moved into the norm, engine/link_skip_codes.py). Each row: relative
L2 error against float32 on the same codes (exact GELU; cuBLASLt's is the tanh form), the
timing (CUDA-graph replay over rotated inputs, as the tuner times) of every algorithm the
heuristic offers (up to cublaslt.HEURISTIC_REQUEST), with no workspace and with
cublaslt.WORKSPACE_BYTES of one (--workspace), and a saturation check: codes out with a y_scale 1000x too small must give
+-448, never NaN (the reference saturates).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from ecoinfer.kernels import cublaslt  # noqa: E402
from ecoinfer.kernels.triton.gemm import ACT_GELU_ERF  # noqa: E402
from ecoinfer.kernels.triton.qgemm import quantize  # noqa: E402
from ecoinfer.kernels.triton.tma_gemm import TmaGemmConfig, tma_gemm  # noqa: E402
from ecoinfer.kernels.triton.tma_tactics import _configs  # noqa: E402
from ecoinfer.tune.autotune import cold_rotate_bytes, input_sets, measure  # noqa: E402

F8 = torch.float8_e4m3fn
SHAPES = [  # name, K, N, activation, codes out
    ("qkv", 768, 2304, "", True),
    ("attn_out", 768, 768, "", False),
    ("ffn_up", 768, 3072, "Gelu", True),
    ("ffn_down", 3072, 768, "", False),
]


def rel(y: torch.Tensor, ref: torch.Tensor) -> float:
    return float((y.float() - ref).norm() / ref.norm().clamp_min(1e-30))


def probe(shape: tuple, m: int, dev: torch.device, rotate: int, workspaces: list[int],
          peers: bool) -> dict:  # fmt: skip
    name, k, n, act, codes = shape
    torch.manual_seed(0)
    x = torch.randn(m, k, device=dev, dtype=torch.float16)
    w = torch.randn(n, k, device=dev, dtype=torch.float16) / math.sqrt(k)
    b = torch.randn(n, device=dev, dtype=torch.float16) * 0.1
    xs = (x.float().abs().amax() / 448.0).reshape(1)
    ws = (w.float().abs().amax() / 448.0).reshape(1)
    xq = quantize(x, xs.reshape(()), "fp8e4m3", exact=True)
    wq = (w.float() / ws).clamp(-448, 448).to(F8)
    pre = (xq.float() * xs) @ (wq.float() * ws).t() + b.float()
    ref = torch.nn.functional.gelu(pre) if act else pre
    ys = (ref.abs().amax() / 448.0).reshape(1) if codes else None
    d_scale = (1.0 / ys) if ys is not None else None
    out = F8 if codes else torch.float16
    row: dict = {"K": k, "N": n, "act": act, "codes_out": codes}
    sets = input_sets([xq], rotate)
    for wsb in workspaces:
        tag = "lt" if wsb == 0 else "ltws"  # (keys without a workspace as in earlier runs)
        p = cublaslt.Problem(m, n, k, out, act, torch.float16, dev.index or 0, wsb)
        try:
            n_algos = cublaslt.plan(p).n_algos
        except cublaslt.CublasLtError as e:
            row[f"{tag}_failed"] = str(e)
            continue
        row["algos" if wsb == 0 else "algos_ws"] = n_algos
        for i in range(n_algos):

            def lt(xs_, i=i, wsb=wsb):  # noqa: ANN001, ANN202
                return cublaslt.fp8_gemm(xs_[0], wq, xs, ws, b, act, out, d_scale, i, wsb)

            try:
                y = lt([xq])
                torch.cuda.synchronize()
                row[f"{tag}{i}_err"] = rel(y.float() * ys if codes else y, ref)
                row[f"{tag}{i}_us"] = measure(lt, [xq], dev, sets=sets)[0] * 1e3
            except Exception as e:  # noqa: BLE001
                row[f"{tag}{i}_failed"] = f"{type(e).__name__}: {str(e)[:160]}"
    if codes:  # saturation: y_scale 1000x too small
        try:
            tiny = d_scale * 1000.0
            y = cublaslt.fp8_gemm(xq, wq, xs, ws, b, act, out, tiny, 0).float()
            torch.cuda.synchronize()
            row["saturation_nan"] = int(torch.isnan(y).sum())
            row["saturation_max"] = float(y.abs().max())
        except Exception as e:  # noqa: BLE001
            row["saturation_failed"] = f"{type(e).__name__}: {str(e)[:160]}"
    if not peers:
        return row
    # the engine's Triton TMA GEMM in this form (best of the tuner's configurations)
    gelu = (ACT_GELU_ERF, 0.0, 0.0) if act else None
    best = math.inf
    for c in [TmaGemmConfig(**c) for c in _configs(m, n, k, 1, gelu)]:

        def tma(xs_, c=c):  # noqa: ANN001, ANN202
            return tma_gemm(xs_[0], wq, b, None, activation=act, x_scale=xs.reshape(()),
                            w_scale=ws, out_scale=ys.reshape(()) if codes else None,
                            config=c)  # fmt: skip

        try:
            tma([xq])
            torch.cuda.synchronize()
            best = min(best, measure(tma, [xq], dev, sets=sets)[0] * 1e3)
        except Exception:  # noqa: BLE001, S112
            continue
    row["tma_us"] = best
    if not codes:

        def sm(xs_):  # noqa: ANN001, ANN202
            return torch._scaled_mm(xs_[0], wq.t(), xs.reshape(()), ws.reshape(()), bias=b,
                                    out_dtype=torch.float16, use_fast_accum=True)  # fmt: skip

        row["scaled_mm_fast_us"] = measure(sm, [xq], dev, sets=sets)[0] * 1e3
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out")
    ap.add_argument("--m", type=int, default=8192)
    ap.add_argument(
        "--workspace",
        default=f"0,{cublaslt.WORKSPACE_BYTES}",
        help="workspace sizes in bytes, comma-separated",
    )
    ap.add_argument("--no-peers", action="store_true", help="cuBLASLt only (no TMA/_scaled_mm)")
    args = ap.parse_args()
    workspaces = [int(v) for v in args.workspace.split(",")]
    dev = torch.device("cuda")
    rotate = cold_rotate_bytes(dev)
    res: dict = {"gpu": torch.cuda.get_device_name(dev), "torch": torch.__version__, "M": args.m}
    res["saturates"] = cublaslt.saturates(dev.index or 0)
    print("codes out saturate at 448:", res["saturates"], flush=True)
    for shape in SHAPES:
        res[shape[0]] = r = probe(shape, args.m, dev, rotate, workspaces, not args.no_peers)
        print(shape[0], {k: (round(v, 4) if isinstance(v, float) else v) for k, v in r.items()},
              flush=True)  # fmt: skip
        torch.cuda.empty_cache()
    if args.out:
        Path(args.out).write_text(json.dumps(res, indent=1))
    print(
        "\nGEMM       best cuBLASLt us (rank)  with workspace (rank)   TMA us   "
        "_scaled_mm fast us   err   saturation"
    )
    for name, *_ in SHAPES:
        r = res[name]
        lts = [r[f"lt{i}_us"] for i in range(r.get("algos", 0)) if f"lt{i}_us" in r]
        wss = [r[f"ltws{i}_us"] for i in range(r.get("algos_ws", 0)) if f"ltws{i}_us" in r]
        best = f"{min(lts):8.2f} ({lts.index(min(lts))})" if lts else "       -    "
        best_ws = f"{min(wss):8.2f} ({wss.index(min(wss))})" if wss else "       -    "
        err = r.get("lt0_err", float("nan"))
        sat = (
            f"nan={r['saturation_nan']} max={r['saturation_max']}" if "saturation_nan" in r else "-"
        )
        print(f"{name:10s} {best:>18s} {best_ws:>20s} {r.get('tma_us', math.nan):10.2f} "
              f"{r.get('scaled_mm_fast_us', math.nan):12.2f} {err:10.2e}   {sat}")  # fmt: skip


if __name__ == "__main__":
    main()
