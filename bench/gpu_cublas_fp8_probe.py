"""GPU probe: cuBLASLt FP8 (torch._scaled_mm) with and without fast accumulation against the
FP8 engine's Triton TMA GEMM, on BERT-base b64's four GEMMs, timed as the tuner times (CUDA
graph replay, inputs cycled through copies that exceed twice the L2).

    python bench/gpu_cublas_fp8_probe.py [--out results.json] [--m 8192]

Why: Triton compiles FP8 dots on sm_90 with fast accumulation (no periodic promotion of the
wgmma sums: max_num_imprecise_acc_default = 2**30), while the engine's `fp8_scaled_mm` tactic
calls cuBLASLt with use_fast_accum=False, so the two were never compared on equal terms.

Forms, all on FP8 codes in (per-tensor X and W scales for cuBLAS, as FP8 builds quantize
weights per tensor):
- `tma`: the engine's form, best of the tuner's own configurations (QKV and FFN-up write
  codes, FFN-up applies GELU, attention-out and FFN-down add the float16 residual);
- `cublas_f16[_fast]`: _scaled_mm with bias, float16 out;
- `cublas_f8[_fast]`: _scaled_mm with bias and scale_result, FP8 codes out (QKV's form; for
  FFN-up without the GELU, so only a bound);
- for attention-out and FFN-down also the chains with the LayerNormCodes after them:
  `tma + layernorm_codes` (the engine today) against `cublas_fast + skip_layernorm_codes` (the
  residual added by the norm instead of the GEMM's epilogue).
Each row carries its relative L2 error against a float32 reference on the same codes.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from gpu_gemm_sweep import SHAPES  # noqa: E402

from ecoinfer.kernels.triton.gemm import ACT_GELU_ERF  # noqa: E402
from ecoinfer.kernels.triton.norms import layer_norm, row_configs  # noqa: E402
from ecoinfer.kernels.triton.qgemm import quantize  # noqa: E402
from ecoinfer.kernels.triton.tma_gemm import TmaGemmConfig, tma_gemm  # noqa: E402
from ecoinfer.kernels.triton.tma_tactics import _configs  # noqa: E402
from ecoinfer.tune.autotune import cold_rotate_bytes, input_sets, measure  # noqa: E402

F8 = torch.float8_e4m3fn


def rel(y: torch.Tensor, ref: torch.Tensor) -> float:
    return float((y.float() - ref).norm() / ref.norm().clamp_min(1e-30))


def best(fns: list, xs: list, dev: torch.device, sets: list) -> tuple[float, int]:
    """(us, index) of the fastest callable."""
    out = []
    for i, f in enumerate(fns):
        try:
            f(xs)
            if dev.type == "cuda":
                torch.cuda.synchronize()
            ms, _ = measure(f, xs, dev, sets=sets)
            out.append((ms * 1e3, i))
        except Exception as e:  # noqa: BLE001
            print(f"   config {i} failed: {type(e).__name__}: {str(e)[:120]}")
    return min(out) if out else (math.inf, -1)


def probe_shape(shape: tuple, m: int, dev: torch.device, rotate: int) -> dict:
    """One GEMM's rows (see the module doc)."""
    name, k, n, act, has_res, codes_out = shape
    ln_w = torch.ones(n, device=dev, dtype=torch.float16)
    ln_b = torch.zeros(n, device=dev, dtype=torch.float16)
    x = torch.randn(m, k, device=dev, dtype=torch.float16)
    w = torch.randn(n, k, device=dev, dtype=torch.float16) / math.sqrt(k)
    b = torch.randn(n, device=dev, dtype=torch.float16) * 0.1
    r = torch.randn(m, n, device=dev, dtype=torch.float16) if has_res else None
    xs_ = (x.float().abs().amax() / 448.0).reshape(())
    ws_ = (w.float().abs().amax() / 448.0).reshape(())
    xq = quantize(x, xs_, "fp8e4m3", exact=True)
    wq = (w.float() / ws_).clamp(-448, 448).to(F8)
    wt = wq.t()
    ref = (xq.float() * xs_) @ (wq.float() * ws_).t() + b.float()
    if act == "Gelu":
        ref_act = torch.nn.functional.gelu(ref)
    else:
        ref_act = ref
    if r is not None:
        ref_act = ref_act + r.float()
    os_ = (ref_act.abs().amax() / 448.0).reshape(()) if codes_out else None
    row: dict = {"K": k, "N": n}
    sets = input_sets([xq, r], rotate)
    gelu = (ACT_GELU_ERF, 0.0, 0.0) if act == "Gelu" else None
    cfgs = [TmaGemmConfig(**c) for c in _configs(m, n, k, 1, gelu)]
    ws_vec = ws_.expand(n).contiguous()

    def tma(xs, c):  # noqa: ANN001, ANN202
        return tma_gemm(xs[0], wq, b, xs[1], activation=act, x_scale=xs_, w_scale=ws_vec,
                        out_scale=os_, config=c)  # fmt: skip

    t, i = best([lambda xs, c=c: tma(xs, c) for c in cfgs], [xq, r], dev, sets)
    y = tma([xq, r], cfgs[i])
    row["tma_us"] = t
    row["tma_err"] = rel(y.float() * os_ if os_ is not None else y, ref_act)
    row["tma_cfg"] = cfgs[i].as_dict()
    for fast in (False, True):
        tag = "_fast" if fast else ""

        def f16(xs, fast=fast):  # noqa: ANN001, ANN202
            return torch._scaled_mm(xs[0], wt, xs_, ws_, bias=b, out_dtype=torch.float16,
                                    use_fast_accum=fast)  # fmt: skip

        try:
            y = f16([xq, r])
            row[f"cublas_f16{tag}_err"] = rel(y, ref)
            row[f"cublas_f16{tag}_us"] = measure(f16, [xq, r], dev, sets=sets)[0] * 1e3
        except Exception as e:  # noqa: BLE001
            row[f"cublas_f16{tag}_failed"] = f"{type(e).__name__}: {str(e)[:160]}"
        if os_ is None:
            continue
        inv = (1.0 / os_).reshape(())
        for with_bias in (True, False):

            def f8(xs, fast=fast, with_bias=with_bias, inv=inv):  # noqa: ANN001, ANN202
                return torch._scaled_mm(xs[0], wt, xs_, ws_, bias=b if with_bias else None,
                                        scale_result=inv, out_dtype=F8,
                                        use_fast_accum=fast)  # fmt: skip

            key = f"cublas_f8{tag}" + ("" if with_bias else "_nobias")
            try:
                y = f8([xq, r])
                row[f"{key}_err"] = rel(y.float() * os_, ref if with_bias else ref - b.float())
                row[f"{key}_us"] = measure(f8, [xq, r], dev, sets=sets)[0] * 1e3
                break
            except Exception as e:  # noqa: BLE001
                row[f"{key}_failed"] = f"{type(e).__name__}: {str(e)[:160]}"
    if r is not None:  # the chain with the norm after it
        ys = torch.tensor(0.05, device=dev)
        lcfgs = row_configs(n)
        from ecoinfer.kernels.triton.norms import config_from  # noqa: PLC0415

        def chain_now(xs, c, lc):  # noqa: ANN001, ANN202
            h = tma(xs, c)
            codes = torch.empty(h.shape, dtype=F8, device=dev)
            return layer_norm(h, ln_w, ln_b, -1, 1e-12, config_from(lc, n), codes, ys,
                              False)  # fmt: skip

        def chain_cublas(xs, lc):  # noqa: ANN001, ANN202
            h = torch._scaled_mm(xs[0], wt, xs_, ws_, bias=b, out_dtype=torch.float16,
                                 use_fast_accum=True)  # fmt: skip
            codes = torch.empty(h.shape, dtype=F8, device=dev)
            return layer_norm(h, ln_w, ln_b, -1, 1e-12, config_from(lc, n), codes, ys,
                              False, skip=xs[1])  # fmt: skip

        c = cfgs[i]
        t_now, _ = best([lambda xs, lc=lc: chain_now(xs, c, lc) for lc in lcfgs], [xq, r],
                        dev, sets)  # fmt: skip
        t_cub, j = best([lambda xs, lc=lc: chain_cublas(xs, lc) for lc in lcfgs], [xq, r],
                        dev, sets)  # fmt: skip
        y1 = chain_now([xq, r], c, lcfgs[0])
        y2 = chain_cublas([xq, r], lcfgs[0])
        row["chain_tma_ln_us"] = t_now
        row["chain_cublas_skipln_us"] = t_cub
        row["chain_y_rel_diff"] = rel(y2, y1.float())
    print(name, {kk: (round(v, 2) if isinstance(v, float) and kk.endswith("us") else v)
                 for kk, v in row.items() if not kk.endswith("cfg")}, flush=True)  # fmt: skip
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out")
    ap.add_argument("--m", type=int, default=8192)
    ap.add_argument("--device", default="cuda", help="cpu: a smoke test (TRITON_INTERPRET=1)")
    args = ap.parse_args()
    dev = torch.device(args.device)
    m = args.m
    torch.manual_seed(0)
    rotate = cold_rotate_bytes(dev)
    gpu = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu"
    res: dict = {"gpu": gpu, "torch": torch.__version__, "M": m}
    for shape in SHAPES:
        res[shape[0]] = probe_shape(shape, m, dev, rotate)
        if dev.type == "cuda":
            torch.cuda.empty_cache()
    if args.out:
        Path(args.out).write_text(json.dumps(res, indent=1))
    print("\nGEMM        tma_us  cublas_f16  cublas_f16_fast  cublas_f8_fast  chain now/cublas")
    for name, *_ in SHAPES:
        r_ = res[name]

        def g(key: str, r_: dict = r_) -> str:
            v = r_.get(key)
            return f"{v:8.2f}" if isinstance(v, float) else "       -"

        print(f"{name:10s} {g('tma_us')} {g('cublas_f16_us')} {g('cublas_f16_fast_us')} "
              f"{g('cublas_f8_fast_us')} {g('chain_tma_ln_us')} {g('chain_cublas_skipln_us')}")  # fmt: skip


if __name__ == "__main__":
    main()
