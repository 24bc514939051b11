"""GPU probe: flash attention with TMA tile loads and 8-bit Q.K^T dots, at BERT-base b64.

MultiHeadAttention reads Q, K and V out of the QKV GEMM's packed [B, S, 3*H*D] output. The
TMA configurations (FlashConfig.TMA) load each tile with one descriptor instruction instead
of per-thread address arithmetic; with FP8 codes in, DOT8 configurations also run Q.K^T as
an 8-bit dot on the codes. This probe times them all, for FP16 and for FP8 codes in and
codes out (the FP8 engine's form), over the tile configurations the tuner offers for this
shape, with the BERT padding mask, and checks each against SDPA in float32.

    python bench/gpu_attention_tma_probe.py [--out results.json]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from gpu_tma_probe import bench, rel  # noqa: E402

from ecoinfer.kernels.triton.attention import (  # noqa: E402
    FlashConfig,
    flash_configs,
    flash_mha,
    tma_flash_fits,
)
from ecoinfer.tune.autotune import cold_rotate_bytes, input_sets, measure  # noqa: E402

B, S, H, D = 64, 128, 12, 64


def _extra() -> list[FlashConfig]:
    """Persistent one-key-block tiles beyond flash_configs' own: BLOCK_M 128 on two warp
    groups, deeper tile pipelines, fewer programs per SM."""
    return [
        FlashConfig(bm, 128, w, st, 1, p)
        for bm, w in ((128, 8), (64, 4))
        for st in (2, 3)
        for p in (1, 2)
        if not (bm == 64 and st == 2)  # flash_configs offers these
    ]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out")
    ap.add_argument(
        "--extra",
        action="store_true",
        help="instead of the tuner's tiles: its usual picks and persistent whole-sequence "
        "tiles it does not offer (8 warps, more tile stages, 1-2 programs per SM)",
    )
    ap.add_argument(
        "--rotate",
        action="store_true",
        help="also time each configuration as the tuner does: inputs cycled through copies "
        "that exceed twice the L2, so they come from memory (column us_rotated)",
    )
    args = ap.parse_args()
    dev = torch.device("cuda")
    rotate = cold_rotate_bytes(dev) if args.rotate else 0
    torch.manual_seed(0)
    gpu = torch.cuda.get_device_name(dev)
    qkv = torch.randn(B, S, 3 * H * D, device=dev, dtype=torch.float16)
    mask = torch.zeros(B, 1, 1, S, device=dev, dtype=torch.float16)
    mask[::3, ..., S - 20 :] = torch.finfo(torch.float16).min
    heads = qkv.float().view(B, S, 3, H, D).permute(2, 0, 3, 1, 4)
    ref = F.scaled_dot_product_attention(*heads, attn_mask=mask.float(), scale=D**-0.5)
    ref = ref.transpose(1, 2).reshape(B, S, H * D)
    xs = torch.tensor(float(qkv.abs().max()) / 448.0, device=dev)
    ys = torch.tensor(float(ref.abs().max()) / 448.0, device=dev)
    codes = (qkv.float() / xs).to(torch.float8_e4m3fn)
    rows = []
    for fp8 in (False, True):
        src = codes if fp8 else qkv
        # the rotated input sets, made once per input kind
        sets = input_sets([src, mask], rotate) if rotate else None
        bases = flash_configs(S, S, D, torch.float16)
        if args.extra:  # the engines' usual picks, then the new tiles
            bases = [FlashConfig(64, 128, 4, 2), FlashConfig(64, 64, 4, 3), *_extra()]
        for base in bases:
            for tma, dot8 in ((0, 0), (1, 0), (0, 1), (1, 1)):
                if dot8 and not fp8:
                    continue  # DOT8 dots codes
                if args.extra and fp8 and not dot8:
                    continue  # the FP8 engines dot codes
                cfg = FlashConfig(**{**base.as_dict(), "TMA": tma, "DOT8": dot8})
                if tma and not tma_flash_fits(S, S, D, D, cfg):
                    continue  # flash_mha would load through pointers: not a TMA row
                kw: dict = dict(num_heads=H, head_size=D, packed=True, scale=D**-0.5,
                                precision="float16", config=cfg)  # fmt: skip
                if fp8:
                    kw.update(x_scale=xs, x_qtype="fp8e4m3", out_dtype=torch.float16)
                    kw.update(y_scale=ys, y_qtype="fp8e4m3")

                def run(src=src, kw=kw):  # noqa: ANN001, ANN202
                    return flash_mha(src, None, None, mask, None, **kw)

                row = {"fp8": fp8, "cfg": cfg.as_dict()}
                try:
                    y = run().float() * (ys if fp8 else 1.0)
                    torch.cuda.synchronize()
                    row.update(err=rel(y, ref), us=bench(run) * 1e3)
                    if sets is not None:

                        def run_xs(ins, kw=kw):  # noqa: ANN001, ANN202
                            return flash_mha(ins[0], None, None, ins[1], None, **kw)

                        ms, _ = measure(run_xs, [src, mask], dev, sets=sets)
                        row["us_rotated"] = ms * 1e3
                except Exception as e:  # noqa: BLE001
                    row["failed"] = f"{type(e).__name__}: {str(e)[:200]}"
                rows.append(row)
                print(row, flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps({"gpu": gpu, "rows": rows}, indent=1))
    print(f"flash attention TMA probe on {gpu}, B={B} S={S} H={H} D={D} (us, CUDA-graph replay)")
    for fp8 in (False, True):
        for tma, dot8 in ((0, 0), (1, 0), (0, 1), (1, 1)):
            ok = [
                r
                for r in rows
                if r["fp8"] == fp8
                and (r["cfg"]["TMA"], r["cfg"]["DOT8"]) == (tma, dot8)
                and "us" in r
            ]
            if ok:
                best = min(ok, key=lambda r: r["us"])
                print(f"  {'fp8 codes' if fp8 else 'fp16':9s} TMA={tma} DOT8={dot8}  best "
                      f"{best['us']:.1f} us  err {best['err']:.1e}  {best['cfg']}")  # fmt: skip


if __name__ == "__main__":
    main()
