"""GPU probe: the QKV projection and the attention in one kernel, against the pair of kernels
the engines run today, at BERT-base b64 (B 64, S 128, H 12, D 64, K 768).

Pairs: FP16, cuBLAS (F.linear) then the flash kernel on the packed QKV; FP8, the TMA GEMM on
codes writing QKV codes, then the flash kernel with the 8-bit Q.K^T dot writing Y codes. The
fused kernel (kernels/triton/qkv_attention.py) is timed over its configurations in both
forms. Everything is timed as the tuner times (CUDA-graph replay, inputs cycled through
copies that exceed twice the L2) and checked against float32 (relative L2).

    python bench/gpu_qkv_attention_probe.py [--out results.json] [--device cpu --batch 2]
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from gpu_tma_probe import rel  # noqa: E402
from qkv_attention_kernel import (  # noqa: E402
    QkvAttentionConfig,
    pack_heads,
    qkv_attention,
    qkv_attention_configs,
)

from ecoinfer.kernels.triton.attention import FlashConfig, flash_mha  # noqa: E402
from ecoinfer.kernels.triton.qgemm import quantize  # noqa: E402
from ecoinfer.kernels.triton.tma_gemm import TmaGemmConfig, tma_gemm  # noqa: E402
from ecoinfer.tune.autotune import cold_rotate_bytes, input_sets, measure  # noqa: E402

S, H, D, K = 128, 12, 64, 768


def sweep(esz: int) -> list[QkvAttentionConfig]:
    """The tuner's configurations, then K steps of 64-256 bytes, 2-5 stages where the shared
    memory holds them, one program per tile or one persistent program per SM."""
    out = qkv_attention_configs(esz)
    for kb in (64, 128, 256):
        for st in (2, 3, 4, 5):
            if st * (S + 3 * D) * kb > 200 * 1024:
                continue
            for p in (0, 1):
                c = QkvAttentionConfig(kb // esz, 8, st, p)
                if c not in out:
                    out.append(c)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--device", default="cuda")
    ap.add_argument(
        "--phases",
        action="store_true",
        help="instead of the sweep: a few fused configurations with and without the attention "
        "(the projection alone), each timed twice, and the pairs",
    )
    args = ap.parse_args()
    dev = torch.device(args.device)
    b_ = args.batch
    torch.manual_seed(0)
    gpu = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu"
    rotate = cold_rotate_bytes(dev)
    x = torch.randn(b_, S, K, device=dev, dtype=torch.float16)
    w = (torch.randn(3 * H * D, K, device=dev) / math.sqrt(K)).half()
    bias = (torch.randn(3 * H * D, device=dev) * 0.1).half()
    mask = torch.zeros(b_, 1, 1, S, device=dev, dtype=torch.float16)
    mask[::3, ..., S - 20 :] = torch.finfo(torch.float16).min
    qkv32 = x.float() @ w.float().t() + bias.float()
    heads = qkv32.view(b_, S, 3, H, D).permute(2, 0, 3, 1, 4)
    ref = F.scaled_dot_product_attention(*heads, attn_mask=mask.float(), scale=D**-0.5)
    ref = ref.transpose(1, 2).reshape(b_, S, H * D)
    scale = D**-0.5
    mha = dict(num_heads=H, head_size=D, packed=True, scale=scale, precision="float16")

    # FP8: per-tensor X scale, per-channel W scale, codes made once outside; QKV and Y codes
    # at per-tensor scales from the float results
    xs = (x.float().abs().amax() / 448.0).reshape(())
    xq = quantize(x, xs, "fp8e4m3", exact=True)
    ws = w.float().abs().amax(dim=1) / 448.0
    wq = (w.float() / ws[:, None]).clamp(-448, 448).to(torch.float8_e4m3fn)
    qs = (qkv32.abs().amax() / 448.0).reshape(())
    ys = (ref.abs().amax() / 448.0).reshape(())

    rows: list[dict] = []

    def timed(name: str, fn, ins: list, deq=None, check: bool = True, **meta) -> None:  # noqa: ANN001
        row = {"name": name, **meta}
        try:
            y = fn(ins).float()
            if deq is not None:
                y = y * deq
            if check:
                row["err"] = rel(y, ref)
            sets = input_sets(ins, rotate) if dev.type == "cuda" else None
            ms, _ = measure(fn, ins, dev, sets=sets)
            row["us"] = ms * 1e3
        except Exception as e:  # noqa: BLE001
            row["failed"] = f"{type(e).__name__}: {str(e)[:200]}"
        rows.append(row)
        print(row, flush=True)

    flash16 = [FlashConfig(64, 128, 4, 2, TMA=1), FlashConfig(64, 128, 4, 2),
               FlashConfig(64, 64, 4, 3, TMA=1)]  # fmt: skip
    for fc in flash16:
        timed("fp16 pair: cuBLAS + flash", lambda i, fc=fc: flash_mha(
            F.linear(i[0], w, bias), None, None, i[1], None, config=fc, **mha),
            [x, mask], flash=fc.as_dict())  # fmt: skip
        timed("fp16 flash alone", lambda i, fc=fc: flash_mha(
            i[0], None, None, i[1], None, config=fc, **mha),
            [qkv32.half().view(b_, S, -1), mask], flash=fc.as_dict())  # fmt: skip
    timed("fp16 cuBLAS QKV alone", lambda i: F.linear(i[0], w, bias), [x], check=False)
    wp, bp = pack_heads(w, H), pack_heads(bias, H)
    phases = ((True, "fused"), (False, "projection alone")) if args.phases else ((True, "fused"),)
    reps = 2 if args.phases else 1
    cfg16 = (
        [QkvAttentionConfig(64, 8, 3), QkvAttentionConfig(64, 8, 4)] if args.phases else sweep(2)
    )
    for qc in cfg16:
        for attn, what in phases:
            for _ in range(reps):
                timed(f"fp16 {what}", lambda i, qc=qc, attn=attn: qkv_attention(
                    i[0], wp, bp, i[1], batch=b_, seq=S, num_heads=H, head_size=D,
                    scale=scale, config=qc, attention=attn), [x, mask], check=attn,
                    cfg=qc.as_dict())  # fmt: skip

    qkw = dict(x_scale=xs, w_scale=ws, out_scale=qs)
    gemm8 = [TmaGemmConfig(128, 256, 128, 8, 8, 3, 1, EPI_TMA=1),
             TmaGemmConfig(128, 128, 128, 8, 4, 4, 1, EPI_TMA=1)]  # fmt: skip
    fl8 = dict(x_scale=qs, x_qtype="fp8e4m3", out_dtype=torch.float16, y_scale=ys,
               y_qtype="fp8e4m3")  # fmt: skip
    for gc in gemm8:
        for fc in (FlashConfig(64, 128, 4, 2, DOT8=1), FlashConfig(64, 64, 4, 3, DOT8=1)):
            timed("fp8 pair: TMA GEMM codes + flash DOT8", lambda i, gc=gc, fc=fc: flash_mha(
                tma_gemm(i[0], wq, bias, None, config=gc, **qkw).view(b_, S, -1),
                None, None, i[1], None, config=fc, **mha, **fl8),
                [xq.view(b_ * S, K), mask], deq=ys, gemm=gc.as_dict(), flash=fc.as_dict())  # fmt: skip
    wqp, wsp = pack_heads(wq.view(torch.uint8), H).view(wq.dtype), pack_heads(ws, H)
    cfg8 = (
        [QkvAttentionConfig(128, 8, 3), QkvAttentionConfig(64, 8, 4)] if args.phases else sweep(1)
    )
    for qc in cfg8:
        for attn, what in phases:
            for _ in range(reps):
                timed(f"fp8 {what}", lambda i, qc=qc, attn=attn: qkv_attention(
                    i[0], wqp, bp, i[1], batch=b_, seq=S, num_heads=H, head_size=D,
                    scale=scale, config=qc, x_scale=xs, w_scale_packed=wsp, y_scale=ys,
                    y_qtype="fp8e4m3", attention=attn), [xq.view(b_ * S, K), mask], deq=ys,
                    check=attn, cfg=qc.as_dict())  # fmt: skip

    if args.out:
        Path(args.out).write_text(json.dumps({"gpu": gpu, "B": b_, "rows": rows}, indent=1))
    print(f"\nQKV projection + attention on {gpu}, B={b_} S={S} H={H} D={D} K={K} (us)")
    for name in dict.fromkeys(r["name"] for r in rows):
        ok = [r for r in rows if r["name"] == name and "us" in r]
        if ok:
            best = min(ok, key=lambda r: r["us"])
            err = f"{best['err']:.1e}" if "err" in best else "-"
            extra = {k: v for k, v in best.items() if k in ("cfg", "gemm", "flash")}
            print(f"  {name:40s} {best['us']:8.2f}  err {err}  {extra}")
        else:
            print(f"  {name:40s} failed")


if __name__ == "__main__":
    main()
