"""GPU probe: the TMA GEMM (kernels/triton/tma_gemm.py) against cuBLAS on BERT-base's GEMMs.

For each of BERT-base b64 seq128's four GEMMs (M = 8192) it times, CUDA-graph replayed:
  fp16  cuBLAS F.linear (+ GELU / residual as separate ops, what eager does), the TMA kernel
        with the epilogue fused (every configuration; best kept);
  fp8   torch._scaled_mm on codes (per-tensor scales, bias fused, fp16 out; nothing else),
        the TMA kernel on codes with the dequantize+bias+act+residual epilogue, and with
        the requantize epilogue (fp8 codes out);
  int8  torch._int_mm (int32 out, nothing else) and the TMA kernel on int8 codes;
  the one-pass Triton quantize of X (what a layer pays when its producer writes float).
Each result is checked against a float32 reference (relative L2 error printed).

    python bench/gpu_tma_probe.py [--out results.json]
    python bench/gpu_tma_probe.py --check      # correctness only (every config, small shapes)
"""

from __future__ import annotations

import argparse
import json
import math
import time

import torch
import torch.nn.functional as F
import triton

from ecoinfer.kernels.triton.qgemm import quantize
from ecoinfer.kernels.triton.tma_gemm import tma_gemm, tma_gemm_configs

SHAPES = [  # (name, K, N, activation, residual)
    ("qkv", 768, 2304, "", False),
    ("attn_out", 768, 768, "", True),
    ("ffn_up", 768, 3072, "Gelu", False),
    ("ffn_down", 3072, 768, "", True),
]
M = 8192


def bench(fn) -> float:
    try:
        return float(triton.testing.do_bench_cudagraph(fn, rep=60, return_mode="median"))
    except Exception:  # noqa: BLE001
        return float(triton.testing.do_bench(fn, warmup=10, rep=60, return_mode="median"))


def rel(y: torch.Tensor, ref: torch.Tensor) -> float:
    return float((y.float() - ref).norm() / ref.norm().clamp_min(1e-30))


VARIANT: dict[str, int] = {}  # --variant KEY=V: set on every configuration tried
OPTS = {"int8": True}


def best_tma(make, m, n, k, in_bytes, out_bytes, ref):
    best = (math.inf, None, None)
    cfgs = tma_gemm_configs(m, n, k, in_bytes, out_bytes, limit=6)
    for cfg in dict.fromkeys(type(c)(**{**c.as_dict(), **VARIANT}) for c in cfgs):
        try:
            y = make(cfg)
            torch.cuda.synchronize()
            err = rel(y, ref) if ref is not None else 0.0
            t = bench(lambda c=cfg: make(c))
        except Exception as e:  # noqa: BLE001
            print(f"    {cfg}: failed {type(e).__name__}: {str(e)[:160]}")
            continue
        if t < best[0]:
            best = (t, cfg, err)
    return best


def gemm_case(k: int, n: int, act: str, has_res: bool, dev: torch.device):  # noqa: ANN201
    """One BERT GEMM's float16 operands (M rows): (x, w, b, r, actf, float32 reference,
    eager), eager being what PyTorch runs: F.linear, then the activation and residual ops."""
    x = torch.randn(M, k, device=dev, dtype=torch.float16)
    w = torch.randn(n, k, device=dev, dtype=torch.float16) / math.sqrt(k)
    b = torch.randn(n, device=dev, dtype=torch.float16) * 0.1
    r = torch.randn(M, n, device=dev, dtype=torch.float16) if has_res else None
    actf = F.gelu if act == "Gelu" else (lambda t: t)
    ref = actf(x.float() @ w.float().t() + b.float())
    if r is not None:
        ref = ref + r.float()

    def eager():
        y = actf(F.linear(x, w, b))
        return y + r if r is not None else y

    return x, w, b, r, actf, ref, eager


def fp8_case(x, w, b, r, actf):  # noqa: ANN001, ANN201
    """FP8 codes of the case: per-tensor X scale, per-channel W scale, codes made once
    outside; (xs, ws, xq, wq, float32 reference on the dequantized codes)."""
    xs = (x.float().abs().amax() / 448.0).reshape(())
    ws = w.float().abs().amax(dim=1) / 448.0
    xq = quantize(x, xs, "fp8e4m3", exact=True)
    wq = (w.float() / ws[:, None]).clamp(-448, 448).to(torch.float8_e4m3fn)
    qref = actf((xq.float() * xs) @ (wq.float() * ws[:, None]).t() + b.float())
    if r is not None:
        qref = qref + r.float()
    return xs, ws, xq, wq, qref


def probe(tag: str, k: int, n: int, act: str, has_res: bool, dev: torch.device) -> dict:
    flops = 2 * M * n * k
    x, w, b, r, actf, ref, eager = gemm_case(k, n, act, has_res, dev)

    row = {"shape": tag, "M": M, "K": k, "N": n, "act": act, "residual": has_res}
    row["cublas_fp16_ms"] = bench(eager)
    row["cublas_fp16_err"] = rel(eager(), ref)
    row["cublas_fp16_gemm_only_ms"] = bench(lambda: F.linear(x, w, b))
    t, cfg, err = best_tma(
        lambda c: tma_gemm(x, w, b, r, activation=act, config=c), M, n, k, 2, 2, ref
    )
    row.update(tma_fp16_ms=t, tma_fp16_err=err, tma_fp16_cfg=cfg and cfg.as_dict())

    # 8-bit: per-tensor X scale, per-channel W scale (fp8), codes made once outside
    xs, ws, xq, wq, qref = fp8_case(x, w, b, r, actf)
    ws1 = (w.float().abs().amax() / 448.0).reshape(())
    wq1 = (w.float() / ws1).clamp(-448, 448).to(torch.float8_e4m3fn)
    wt1 = wq1.t()
    row["scaled_mm_fp8_gemm_only_ms"] = bench(
        lambda: torch._scaled_mm(xq, wt1, xs, ws1, bias=b, out_dtype=torch.float16)
    )
    row["quantize_x_ms"] = bench(lambda: quantize(x, xs, "fp8e4m3", exact=True))
    t, cfg, err = best_tma(
        lambda c: tma_gemm(xq, wq, b, r, activation=act, x_scale=xs, w_scale=ws, config=c),
        M,
        n,
        k,
        1,
        2,
        qref,
    )
    row.update(tma_fp8_ms=t, tma_fp8_err=err, tma_fp8_cfg=cfg and cfg.as_dict())
    os_ = (qref.abs().amax() / 448.0).reshape(())
    t, cfg, _ = best_tma(
        lambda c: tma_gemm(
            xq, wq, b, r, activation=act, x_scale=xs, w_scale=ws, out_scale=os_, config=c
        ),
        M,
        n,
        k,
        1,
        1,
        None,
    )
    yq = tma_gemm(xq, wq, b, r, activation=act, x_scale=xs, w_scale=ws, out_scale=os_)
    row.update(
        tma_fp8_qout_ms=t,
        tma_fp8_qout_err=rel(yq.float() * os_, qref),
        tma_fp8_qout_cfg=cfg and cfg.as_dict(),
    )

    # int8
    xs8 = (x.float().abs().amax() / 127.0).reshape(())
    ws8 = w.float().abs().amax(dim=1) / 127.0
    xi = quantize(x, xs8, "int8", exact=True)
    wi = (w.float() / ws8[:, None]).round().clamp(-128, 127).to(torch.int8)
    iref = actf((xi.float() * xs8) @ (wi.float() * ws8[:, None]).t() + b.float())
    if r is not None:
        iref = iref + r.float()
    if not OPTS["int8"]:
        return row
    wit = wi.t()
    row["int_mm_gemm_only_ms"] = bench(lambda: torch._int_mm(xi, wit))
    t, cfg, err = best_tma(
        lambda c: tma_gemm(xi, wi, b, r, activation=act, x_scale=xs8, w_scale=ws8, config=c),
        M,
        n,
        k,
        1,
        2,
        iref,
    )
    row.update(tma_int8_ms=t, tma_int8_err=err, tma_int8_cfg=cfg and cfg.as_dict())
    for key in list(row):
        if key.endswith("_ms") and row[key] == row[key] and row[key] != math.inf:
            row[key.replace("_ms", "_tflops")] = flops / (row[key] * 1e-3) / 1e12
    return row


def check(dev: torch.device) -> int:
    """Every proposed configuration (plus FAST_GELU) of each kind on a ragged problem with a
    K tail, against float references: the compiled kernels, which the tests cannot run."""
    torch.manual_seed(0)
    bad = 0
    m, n, k = 300, 200, 208
    for dt in (torch.float16, torch.bfloat16, torch.float8_e4m3fn, torch.int8):
        esz = 1 if dt in (torch.float8_e4m3fn, torch.int8) else 2
        x = torch.randn(m, k, device=dev)
        w = torch.randn(n, k, device=dev) / math.sqrt(k)
        b = torch.randn(n, device=dev) * 0.1
        r = torch.randn(m, n, device=dev)
        kw: dict = {}
        if esz == 1:
            qmax = 127.0 if dt == torch.int8 else 448.0
            qtype = "int8" if dt == torch.int8 else "fp8e4m3"
            xs = (x.abs().amax() / qmax).reshape(())
            ws = w.abs().amax(dim=1) / qmax
            xq = quantize(x, xs, qtype, exact=True)
            wv = w / ws[:, None]
            wq = (wv.round() if dt == torch.int8 else wv).clamp(-qmax, qmax).to(dt)
            xf, wf = xq.float() * xs, wq.float() * ws[:, None]
            kw = {"x_scale": xs, "w_scale": ws, "out_dtype": torch.float16}
            xin, win, bin_, rin = xq, wq, b.half(), r.half()
        else:
            xin, win, bin_, rin = x.to(dt), w.to(dt), b.to(dt), r.to(dt)
            xf, wf = xin.float(), win.float()
        ref = F.gelu(xf @ wf.t() + bin_.float()) + rin.float()
        cfgs = tma_gemm_configs(m, n, k, esz, limit=12) + tma_gemm_configs(8192, 4096, 4096, esz)
        for c in dict.fromkeys(
            cfgs + [type(c)(**{**c.as_dict(), "FAST_GELU": 1}) for c in cfgs[:2]]
        ):
            y = tma_gemm(xin, win, bin_, rin, activation="Gelu", config=c, **kw)
            err = rel(y, ref)
            ok = err <= (2e-3 if dt != torch.bfloat16 else 1.5e-2)
            bad += not ok
            print(f"{'ok  ' if ok else 'FAIL'} {str(dt):22} {c.as_dict()} rel {err:.2e}")
        if esz == 2:  # W as [K, N]
            y = tma_gemm(xin, win.t().contiguous(), bin_, rin, w_kn=True, activation="Gelu")
            ok = rel(y, ref) <= (2e-3 if dt != torch.bfloat16 else 1.5e-2)
            bad += not ok
            print(f"{'ok  ' if ok else 'FAIL'} {str(dt):22} W [K, N] rel {rel(y, ref):.2e}")
        else:  # codes out
            os_ = (ref.abs().amax() / 100.0).reshape(())
            yq = tma_gemm(
                xin, win, bin_, rin, activation="Gelu", out_scale=os_, out_qtype=qtype, **kw
            )
            want = quantize(ref, os_, qtype, exact=True).float()
            # float8 codes near zero are finer than the summation-order difference: compare
            # codes by relative error (int8: at most one code apart)
            d = (yq.float() - want).abs()
            ok = float(d.max()) <= 1 if dt == torch.int8 else rel(yq, want) <= 2e-2
            bad += not ok
            print(f"{'ok  ' if ok else 'FAIL'} {str(dt):22} codes out")
            # float16 X quantized in the kernel's registers (QUANT_X configurations)
            xh = x.half()
            qref = (quantize(xh, kw["x_scale"], qtype, exact=True).float() * kw["x_scale"]) @ wf.t()
            qref = F.gelu(qref + bin_.float()) + rin.float()
            for c in (
                tma_gemm_configs(m, n, k, 1, x_bytes=2)[:3]
                + tma_gemm_configs(8192, 4096, 4096, 1, x_bytes=2)[:3]
            ):
                y = tma_gemm(xh, win, bin_, rin, activation="Gelu", config=c, **kw)
                err = rel(y, qref)
                ok = err <= 2e-3
                bad += not ok
                print(
                    f"{'ok  ' if ok else 'FAIL'} {str(dt):22} X float16 {c.as_dict()} rel {err:.2e}"
                )
    bad += check_conv(dev)
    print(f"{bad} failure(s)")
    return 1 if bad else 0


def check_conv(dev: torch.device) -> int:
    """The implicit-GEMM 3x3 convolution (ConvGeometry) compiled: float16, and 8-bit W with
    X as codes or quantized in registers, against F.conv2d on the same values."""
    from ecoinfer.kernels.triton.tma_gemm import ConvGeometry

    bad = 0
    n, h, wd, c, cout = 2, 14, 14, 64, 96
    x = torch.randn(n, h, wd, c, device=dev).half()
    w = (torch.randn(cout, 3, 3, c, device=dev) / (9 * c) ** 0.5).half()
    b = (torch.randn(cout, device=dev) * 0.1).half()
    geo = ConvGeometry(3, 3, (1, 1, 1, 1))

    def ref_of(xf: torch.Tensor, wf: torch.Tensor) -> torch.Tensor:
        y = F.conv2d(xf.permute(0, 3, 1, 2), wf.permute(0, 3, 1, 2), b.float(), padding=1)
        return F.relu(y).permute(0, 2, 3, 1)

    cases = [("float16", x, w.reshape(cout, -1), {}, ref_of(x.float(), w.float()))]
    for qtype, dt, qmax in (("int8", torch.int8, 127.0), ("fp8e4m3", torch.float8_e4m3fn, 448.0)):
        xs = (x.float().abs().amax() / qmax).reshape(())
        ws = w.float().reshape(cout, -1).abs().amax(dim=1) / qmax
        wv = w.float().reshape(cout, -1) / ws[:, None]
        wq = (wv.round() if dt == torch.int8 else wv).clamp(-qmax, qmax).to(dt)
        xq = quantize(x, xs, qtype, exact=True)
        wf = (wq.float() * ws[:, None]).reshape(cout, 3, 3, c)
        ref = ref_of(xq.float() * xs, wf)
        kw = {"x_scale": xs, "w_scale": ws, "out_dtype": torch.float16}
        cases += [(f"{qtype} codes", xq, wq, kw, ref), (f"{qtype} quant_x", x, wq, kw, ref)]
    for name, xin, win, kw, ref in cases:
        esz = 2 if name == "float16" else 1
        xb = 2 if "quant_x" in name else 0
        for cfg in tma_gemm_configs(n * h * wd, cout, 9 * c, esz, x_bytes=xb)[:4]:
            y = tma_gemm(xin, win, b, activation="Relu", config=cfg, conv=geo, **kw)
            err = rel(y, ref)
            ok = err <= 2e-3
            bad += not ok
            print(f"{'ok  ' if ok else 'FAIL'} conv 3x3 {name:16} {cfg.as_dict()} rel {err:.2e}")
    return bad


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="")
    ap.add_argument("--check", action="store_true")
    ap.add_argument("--variant", action="append", default=[], help="KEY=V on every config")
    ap.add_argument("--only", default="", help="comma-separated shape names")
    ap.add_argument("--no-int8", action="store_true")
    args = ap.parse_args()
    for kv in args.variant:
        key, val = kv.split("=")
        VARIANT[key] = int(val)
    OPTS["int8"] = not args.no_int8
    dev = torch.device("cuda")
    if args.check:
        raise SystemExit(check(dev))
    name = torch.cuda.get_device_name(dev)
    print(f"{name}, torch {torch.__version__}, triton {triton.__version__}")
    torch.manual_seed(0)
    rows = []
    t0 = time.time()
    for tag, k, n, act, has_res in SHAPES:
        if args.only and tag not in args.only.split(","):
            continue
        row = probe(tag, k, n, act, has_res, dev)
        rows.append(row)
        print(json.dumps(row))
    out = {"gpu": name, "torch": torch.__version__, "triton": triton.__version__, "rows": rows}
    if args.out:
        with open(args.out, "w") as f:
            json.dump(out, f, indent=1)
    print(f"\n{name}: ms per GEMM, M={M} ({time.time() - t0:.0f} s)")
    cols = [
        "cublas_fp16",
        "cublas_fp16_gemm_only",
        "tma_fp16",
        "scaled_mm_fp8_gemm_only",
        "tma_fp8",
        "tma_fp8_qout",
        "int_mm_gemm_only",
        "tma_int8",
        "quantize_x",
    ]
    print("shape      " + " ".join(f"{c[:14]:>14}" for c in cols))
    for row in rows:
        print(
            f"{row['shape']:<10} " + " ".join(f"{row.get(c + '_ms', math.nan):14.4f}" for c in cols)
        )


if __name__ == "__main__":
    main()
