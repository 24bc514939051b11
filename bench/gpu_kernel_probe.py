"""GPU probe: BERT-base b64 seq128's per-layer kernels, each variant timed in one process.

  gemm       the TMA GEMM's configurations with the pointer epilogue (EPI_TMA=0) and with
             Y stored / the residual loaded by TMA descriptors (EPI_TMA=1), fp16 and fp8
             codes in, against cuBLAS (F.linear + the epilogue ops eager would run), and
             fp8 writing codes;
  attention  Triton flash attention on the packed QKV buffer with BERT's [B, 1, 1, S]
             additive mask (loaded as one row) and with the same mask materialized as
             [B, 1, S, S] (the full-tile load every mask took before), over a config sweep;
             torch SDPA (efficient with the mask, flash without it: a lower bound);
  layernorm  the Triton LayerNorm's row configurations on [8192, 768];
  conv       ResNet-50 b128's stride-1 3x3 convolutions: cuDNN FP16 against the TMA implicit
             GEMM (FP16, FP8 codes in).
Every result is checked against a float32 reference (relative L2 error printed).

    python bench/gpu_kernel_probe.py [--out results.json] [--only gemm,attention,layernorm,conv]
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
import triton

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gpu_tma_probe import bench, fp8_case, gemm_case, rel  # noqa: E402

from ecoinfer.kernels.triton.attention import FlashConfig, flash_mha
from ecoinfer.kernels.triton.norms import RowConfig, layer_norm
from ecoinfer.kernels.triton.qgemm import quantize
from ecoinfer.kernels.triton.tma_gemm import TmaGemmConfig, tma_gemm, tma_gemm_configs

B, S, H, D = 64, 128, 12, 64
M = B * S
GEMMS = [  # (name, K, N, activation, residual)
    ("qkv", 768, 2304, "", False),
    ("attn_out", 768, 768, "", True),
    ("ffn_up", 768, 3072, "Gelu", False),
    ("ffn_down", 3072, 768, "", True),
]


def sweep(make, cfgs, ref, tol: float, check=None) -> list[dict]:  # noqa: ANN001
    """Each configuration checked (against ref within tol, or by check(y)), then timed."""
    rows = []
    for cfg in cfgs:
        try:
            y = make(cfg)
            torch.cuda.synchronize()
            if check is not None:
                err, ok = 0.0, bool(check(y))
            else:
                err = rel(y, ref)
                ok = err <= tol
            t = bench(lambda c=cfg: make(c)) if ok else math.inf
        except Exception as e:  # noqa: BLE001
            print(f"    {cfg}: failed {type(e).__name__}: {str(e)[:160]}")
            continue
        rows.append(
            {"cfg": cfg.as_dict() if hasattr(cfg, "as_dict") else vars(cfg), "ms": t, "err": err}
        )
    return sorted(rows, key=lambda r: r["ms"])


def gemm_probe(dev: torch.device) -> list[dict]:
    return [gemm_one(dev, *g) for g in GEMMS]


def gemm_one(dev: torch.device, tag: str, k: int, n: int, act: str, has_res: bool) -> dict:
    x, w, b, r, actf, ref, eager = gemm_case(k, n, act, has_res, dev)
    row = {"shape": tag, "M": M, "K": k, "N": n, "cublas_fp16_ms": bench(eager)}
    base = tma_gemm_configs(M, n, k, 2, 2, limit=6)
    if act == "Gelu":
        base = [TmaGemmConfig(**{**c.as_dict(), "FAST_GELU": 1}) for c in base]
    cfgs = [TmaGemmConfig(**{**c.as_dict(), "EPI_TMA": e}) for c in base for e in (0, 1)]
    res = sweep(lambda c: tma_gemm(x, w, b, r, activation=act, config=c), cfgs, ref, 1e-2)
    row["fp16"] = res
    # fp8 codes in (X quantized once outside), dequant + bias + act + residual fused
    xs, ws, xq, wq, qref = fp8_case(x, w, b, r, actf)
    base8 = tma_gemm_configs(M, n, k, 1, 2, limit=6)
    if act == "Gelu":
        base8 = [TmaGemmConfig(**{**c.as_dict(), "FAST_GELU": 1}) for c in base8]
    cfgs8 = [TmaGemmConfig(**{**c.as_dict(), "EPI_TMA": e}) for c in base8 for e in (0, 1)]
    row["fp8"] = sweep(
        lambda c: tma_gemm(xq, wq, b, r, activation=act, x_scale=xs, w_scale=ws, config=c),
        cfgs8,
        qref,
        1e-2,
    )
    row["quantize_x_ms"] = bench(lambda: quantize(x, xs, "fp8e4m3", exact=True))
    os_ = (qref.abs().amax() / 448.0).reshape(())
    # codes out, timed alone (checked once by dequantizing outside the timing)
    row["fp8_qout"] = sweep(
        lambda c: tma_gemm(
            xq, wq, b, r, activation=act, x_scale=xs, w_scale=ws, out_scale=os_, config=c
        ),
        cfgs8,
        None,
        0.0,
        check=lambda y: rel(y.float() * os_, qref) <= 6e-2,
    )
    wt1 = wq.t()
    ws1 = ws.max().reshape(())
    row["scaled_mm_fp8_gemm_only_ms"] = bench(
        lambda: torch._scaled_mm(xq, wt1, xs, ws1, bias=b, out_dtype=torch.float16)
    )
    keys = ("fp16", "fp8", "fp8_qout")
    best = {key: row[key][0] for key in keys if row[key]}
    print(
        f"{tag:9s} cuBLAS {row['cublas_fp16_ms'] * 1e3:6.1f} us | "
        + " | ".join(
            f"{key} {v['ms'] * 1e3:6.1f} us EPI_TMA={v['cfg']['EPI_TMA']}"
            for key, v in best.items()
        )
        + f" | quantize X {row['quantize_x_ms'] * 1e3:5.1f} us"
    )
    for key in keys:
        for e in (0, 1):
            bst = [v for v in row[key] if v["cfg"]["EPI_TMA"] == e]
            if bst:
                c = bst[0]["cfg"]
                print(
                    f"    {key:8s} EPI_TMA={e} best {bst[0]['ms'] * 1e3:6.1f} us "
                    f"{c['BLOCK_M']}x{c['BLOCK_N']}x{c['BLOCK_K']} w{c['num_warps']} "
                    f"s{c['num_stages']} P{c['PERSISTENT']}"
                )
    return row


def attention_probe(dev: torch.device) -> dict:
    qkv = torch.randn(B, S, 3 * H * D, device=dev, dtype=torch.float16)
    mask = torch.zeros(B, 1, 1, S, device=dev, dtype=torch.float16)
    mask[::3, ..., S - 20 :] = torch.finfo(torch.float16).min  # some padded rows
    full = mask.expand(B, 1, S, S).contiguous()
    q, k, v = (
        qkv[..., i * H * D : (i + 1) * H * D].unflatten(-1, (H, D)).transpose(1, 2)
        for i in range(3)
    )
    ref = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), attn_mask=mask.float())
    ref = ref.transpose(1, 2).reshape(B, S, H * D)
    cfgs = [
        FlashConfig(bm, bn, w, s)
        for bm in (64, 128)
        for bn in (64, 128)
        for w in (4, 8)
        for s in (1, 2, 3)
    ]
    # persistent programs walking the tiles, one key block each (the tile loop pipelined)
    cfgs += [
        FlashConfig(bm, 128, w, s, 1, p)
        for bm in (64, 128)
        for w in (4, 8)
        for s in (2, 3)
        for p in (1, 2, 4)
    ]
    kw = {"num_heads": H, "head_size": D, "packed": True, "scale": D**-0.5}
    res = {
        "row_mask": sweep(
            lambda c: flash_mha(qkv, None, None, mask, config=c, **kw), cfgs, ref, 1e-2
        ),
        "full_mask": sweep(
            lambda c: flash_mha(qkv, None, None, full, config=c, **kw), cfgs, ref, 1e-2
        ),
    }
    # Q, K and V as FP8 codes of one per-tensor scale (what a QKV QGemm writing codes hands
    # over): half the bytes read
    xs = torch.tensor(float(qkv.abs().max()) / 448.0, device=dev)
    codes = (qkv.float() / xs).to(torch.float8_e4m3fn)
    dq, dk, dv = (
        (codes.float() * xs)[..., i * H * D : (i + 1) * H * D].unflatten(-1, (H, D)).transpose(1, 2)
        for i in range(3)
    )
    ref8 = F.scaled_dot_product_attention(dq, dk, dv, attn_mask=mask.float())
    ref8 = ref8.transpose(1, 2).reshape(B, S, H * D)
    res["row_mask_fp8_codes"] = sweep(
        lambda c: flash_mha(codes, None, None, mask, config=c, x_scale=xs, **kw), cfgs, ref8, 1e-2
    )

    def sdpa(backend, m):
        from torch.nn.attention import sdpa_kernel  # noqa: PLC0415

        def f():
            with sdpa_kernel(backend):
                return F.scaled_dot_product_attention(q, k, v, attn_mask=m)

        return f

    from torch.nn.attention import SDPBackend  # noqa: PLC0415

    for name, be, m in (
        ("sdpa_efficient_mask", SDPBackend.EFFICIENT_ATTENTION, mask),
        ("sdpa_cudnn_mask", SDPBackend.CUDNN_ATTENTION, mask),
        ("sdpa_flash_nomask", SDPBackend.FLASH_ATTENTION, None),
    ):
        try:
            f = sdpa(be, m)
            f()
            res[name] = bench(f)
        except Exception as e:  # noqa: BLE001
            res[name] = f"failed: {type(e).__name__}: {str(e)[:120]}"
    for key in ("row_mask", "full_mask", "row_mask_fp8_codes"):
        for r in res[key][:3]:
            c = r["cfg"]
            print(f"attention {key:9s} {r['ms'] * 1e3:6.1f} us  {c}  err {r['err']:.1e}")
    for key in ("row_mask", "row_mask_fp8_codes"):
        for pers in (0, 1):
            best = [r for r in res[key] if r["cfg"]["PERSISTENT"] == pers][:1]
            for r in best:
                print(f"attention {key} PERSISTENT={pers} best {r['ms'] * 1e3:6.1f} us  {r['cfg']}")
    for key in ("sdpa_efficient_mask", "sdpa_cudnn_mask", "sdpa_flash_nomask"):
        v = res[key]
        print(f"attention {key:20s} " + (f"{v * 1e3:6.1f} us" if isinstance(v, float) else v))
    return res


def layernorm_probe(dev: torch.device) -> list[dict]:
    x = torch.randn(M, 768, device=dev, dtype=torch.float16)
    w = torch.randn(768, device=dev, dtype=torch.float16)
    b = torch.randn(768, device=dev, dtype=torch.float16)
    ref = F.layer_norm(x.float(), (768,), w.float(), b.float(), 1e-12)
    cfgs = [RowConfig(r, wp) for r in (1, 2, 4, 8, 16) for wp in (1, 2, 4, 8)]
    res = sweep(lambda c: layer_norm(x, w, b, -1, 1e-12, cfg=c), cfgs, ref, 1e-2)
    for r in res[:4]:
        print(f"layernorm {r['ms'] * 1e3:6.1f} us  {r['cfg']}")
    print(
        f"layernorm torch F.layer_norm {bench(lambda: F.layer_norm(x, (768,), w, b)) * 1e3:6.1f} us"
    )
    # LayerNormCodes (Y and the next GEMM's FP8 codes in one pass), the codes divided
    # exactly or by the reciprocal, against LayerNorm + the one-pass quantize it replaces
    ys = (ref.abs().amax() / 448.0).reshape(()).float()
    codes = torch.empty(M, 768, device=dev, dtype=torch.float8_e4m3fn)
    for exact in (True, False):
        rows = sweep(
            lambda c, e=exact: layer_norm(x, w, b, -1, 1e-12, c, codes, ys, e), cfgs[:12], ref, 1e-2
        )
        if rows:
            print(
                f"layernorm+codes exact={int(exact)} {rows[0]['ms'] * 1e3:6.1f} us  {rows[0]['cfg']}"
            )
            res.append({"codes_exact": exact, **rows[0]})
    best = RowConfig(**res[0]["cfg"])
    sep = bench(
        lambda: quantize(layer_norm(x, w, b, -1, 1e-12, cfg=best), ys, "fp8e4m3", exact=True)
    )
    print(f"layernorm then quantize pass {sep * 1e3:6.1f} us")
    res.append({"ln_then_quantize_ms": sep})
    return res


RESNET_3X3 = [(56, 64), (28, 128), (14, 256), (7, 512)]  # (H = W, C = Cout), batch 128


def conv_probe(dev: torch.device) -> list[dict]:
    """ResNet-50 b128's stride-1 3x3 convolutions (bias + ReLU): cuDNN FP16 channels-last
    against the TMA implicit GEMM in FP16 and FP8 on codes (plus the quantize pass)."""
    return [conv_one(dev, hw, c) for hw, c in RESNET_3X3]


def conv_one(dev: torch.device, hw: int, c: int) -> dict:
    from ecoinfer.kernels.triton.tma_gemm import ConvGeometry

    geo = ConvGeometry(3, 3, (1, 1, 1, 1))
    x = torch.randn(128, hw, hw, c, device=dev).half()
    w = (torch.randn(c, 3, 3, c, device=dev) / (9 * c) ** 0.5).half()
    b = (torch.randn(c, device=dev) * 0.1).half()
    xc = x.permute(0, 3, 1, 2)  # channels-last NCHW view
    wc = w.permute(0, 3, 1, 2).contiguous(memory_format=torch.channels_last)
    ref = F.relu(F.conv2d(xc.float(), wc.float(), b.float(), padding=1)).permute(0, 2, 3, 1)
    row = {"hw": hw, "c": c, "cudnn_fp16_ms": bench(lambda: F.relu(F.conv2d(xc, wc, b, padding=1)))}
    m = 128 * hw * hw  # K steps read one tap's c channels
    w2 = w.reshape(c, -1)
    row["fp16"] = sweep(
        lambda cfg: tma_gemm(x, w2, b, activation="Relu", config=cfg, conv=geo),
        tma_gemm_configs(m, c, c, 2, limit=6),
        ref,
        1e-2,
    )
    xs = (x.float().abs().amax() / 448.0).reshape(())
    ws = w2.float().abs().amax(dim=1) / 448.0
    wq = (w2.float() / ws[:, None]).clamp(-448, 448).to(torch.float8_e4m3fn)
    xq = quantize(x, xs, "fp8e4m3", exact=True)
    kw = {"x_scale": xs, "w_scale": ws, "out_dtype": torch.float16}
    row["fp8_codes"] = sweep(
        lambda cfg: tma_gemm(xq, wq, b, activation="Relu", config=cfg, conv=geo, **kw),
        tma_gemm_configs(m, c, c, 1, limit=6),
        ref,
        6e-2,
    )
    row["quantize_x_ms"] = bench(lambda: quantize(x, xs, "fp8e4m3", exact=True))
    best = " | ".join(
        f"{key} {row[key][0]['ms'] * 1e3:6.1f} us" if row[key] else f"{key} -"
        for key in ("fp16", "fp8_codes")
    )
    print(
        f"conv3x3 {hw:2d}x{hw:<2d} C={c:3d}  cuDNN {row['cudnn_fp16_ms'] * 1e3:6.1f} us | "
        f"{best} | quantize X {row['quantize_x_ms'] * 1e3:5.1f} us"
    )
    return row


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out")
    ap.add_argument("--only", default="gemm,attention,layernorm,conv")
    a = ap.parse_args()
    dev = torch.device("cuda")
    torch.manual_seed(0)
    result: dict = {
        "gpu": torch.cuda.get_device_name(),
        "torch": torch.__version__,
        "triton": triton.__version__,
    }
    only = a.only.split(",")
    if "layernorm" in only:
        result["layernorm"] = layernorm_probe(dev)
    if "attention" in only:
        result["attention"] = attention_probe(dev)
    if "gemm" in only:
        result["gemm"] = gemm_probe(dev)
    if "conv" in only:
        result["conv"] = conv_probe(dev)
    if a.out:
        with open(a.out, "w") as f:
            json.dump(result, f, indent=1, default=str)
    print(f"on {result['gpu']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
