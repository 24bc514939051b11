"""GPU probe: does the layout of the packed QKV buffer bound BERT-base b64's attention?

The engine's attention reads Q, K and V out of the QKV GEMM's [B, S, 3*H*D] output, so a
(batch, head) program gathers 128 rows of D values each 3*H*D elements apart. This probe
times the same Triton flash attention (the same data, read through strides) on that layout
and on a head-major one, [B, 3, H, S, D], where each (batch, head) reads three contiguous
blocks, for FP16 and for FP8 codes in, codes out (the FP8 engine's form). If head-major is
much faster, the QKV GEMM's epilogue should write it. (On an H200 it was not: 21.5 vs 21.9
us in FP16, 17.2 vs 17.8 us in FP8, bench/results/attention_layout_probe_h200_2026-11-28n.json.)
With bench/_attention_before.py present (an earlier attention.py, written for one run), that
kernel is timed beside the current one on the engine's layout.

    python bench/gpu_attention_layout_probe.py [--out results.json]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gpu_tma_probe import bench, rel  # noqa: E402

from ecoinfer.kernels.triton.attention import FlashConfig, flash_attention  # noqa: E402

# an earlier version of the kernel module to time beside the current one (the file is
# written for one run: git show REV:ecoinfer/kernels/triton/attention.py > bench/_attention_before.py)
KERNELS = {"current": flash_attention}
try:
    from _attention_before import flash_attention as _before  # noqa: E402

    KERNELS["before"] = _before
except ImportError:
    pass

B, S, H, D = 64, 128, 12, 64
CFGS = [
    FlashConfig(128, 128, 4, 2),
    FlashConfig(64, 128, 4, 2),
    FlashConfig(128, 64, 4, 2),
]  # the best three of a wider sweep on an H200 (persistent variants were 1.5x slower)


def views(buf: torch.Tensor, head_major: bool) -> tuple[torch.Tensor, ...]:
    """Q, K, V as [B, H, S, D] views of one buffer in either layout."""
    if head_major:  # buf: [B, 3, H, S, D]
        return buf[:, 0], buf[:, 1], buf[:, 2]
    return tuple(  # buf: [B, S, 3*H*D]
        buf[..., i * H * D : (i + 1) * H * D].unflatten(-1, (H, D)).transpose(1, 2)
        for i in range(3)
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out")
    args = ap.parse_args()
    dev = torch.device("cuda")
    torch.manual_seed(0)
    gpu = torch.cuda.get_device_name(dev)
    packed = torch.randn(B, S, 3 * H * D, device=dev, dtype=torch.float16)
    # the same values head-major: [B, S, 3, H, D] -> [B, 3, H, S, D], made contiguous
    hm = packed.view(B, S, 3, H, D).permute(0, 2, 3, 1, 4).contiguous()
    mask = torch.zeros(B, 1, 1, S, device=dev, dtype=torch.float16)
    mask[::3, ..., S - 20 :] = torch.finfo(torch.float16).min
    q, k, v = views(packed, False)
    ref = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), attn_mask=mask.float())
    xs = torch.tensor(float(packed.abs().max()) / 448.0, device=dev)
    ys = torch.tensor(float(ref.abs().max()) / 448.0, device=dev)
    rows = []
    cases = [(kn, hm_, f8) for kn in KERNELS for hm_ in (False, True) for f8 in (False, True)]
    for kname, head_major, fp8 in cases:
        if kname != "current" and head_major:
            continue  # the earlier kernel on the engine's layout only
        buf = hm if head_major else packed
        src = (buf.float() / xs).to(torch.float8_e4m3fn) if fp8 else buf
        qq, kk, vv = views(src, head_major)
        odt = torch.float8_e4m3fn if fp8 else torch.float16
        out = torch.empty(B, S, H, D, device=dev, dtype=odt)
        o4 = out.transpose(1, 2)  # [B, H, S, D] view of the merged output
        kw = {"scale": D**-0.5}
        if fp8:
            kw.update(x_scale=xs, y_scale=ys)
        for cfg in CFGS:
            row = {"kernel": kname, "head_major": head_major, "fp8": fp8, "cfg": cfg.as_dict()}

            def run(c=cfg, a=(qq, kk, vv), o=o4, kw=kw, f=KERNELS[kname]):  # noqa: ANN001, ANN202
                return f(*a, mask, out=o, config=c, **kw)

            try:
                run()
                torch.cuda.synchronize()
                y = out.float() * (ys if fp8 else 1.0)
                row.update(err=rel(y.transpose(1, 2), ref), us=bench(run) * 1e3)
            except Exception as e:  # noqa: BLE001
                row["failed"] = f"{type(e).__name__}: {str(e)[:160]}"
            rows.append(row)
    if args.out:
        Path(args.out).write_text(json.dumps({"gpu": gpu, "rows": rows}, indent=1))
    print(f"attention layout probe on {gpu}, B={B} S={S} H={H} D={D} (us, CUDA-graph replay)")
    for kname, head_major, fp8 in cases:
        ok = [
            r
            for r in rows
            if (r["kernel"], r["head_major"], r["fp8"]) == (kname, head_major, fp8) and "us" in r
        ]
        if not ok:
            continue
        best = min(ok, key=lambda r: r["us"])
        name = f"{kname:8s} {'fp8 codes' if fp8 else 'fp16':9s} {'head-major' if head_major else 'packed':10s}"
        print(f"  {name}  best {best['us']:.1f} us  err {best['err']:.1e}  {best['cfg']}")
    for r in rows:
        if "failed" in r:
            print("  failed:", r)


if __name__ == "__main__":
    main()
