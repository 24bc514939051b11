"""A target for Nsight Compute: the FP8 BERT-base b64 engine's attention and LayerNormCodes
kernels in the configurations its tuner picked (session 21), a few calls each, so that

    ncu --clock-control none -k regex:'_flash_fwd|_layernorm_fwd' -c 4 \\
        --section SpeedOfLight --section MemoryWorkloadAnalysis --section Occupancy \\
        --section WarpStateStats --section LaunchStats python bench/ncu_bert_kernels.py [which]

reports where each kernel's time goes (memory throughput against the compute pipes, stall
reasons, occupancy). Also prints each kernel's CUDA-event time over rotated inputs. `which`
(attention, layernorm_codes) runs only that kernel; `sweep` times a few attention tiles and the norm
over its row configurations instead (no ncu). Register caps on the attention (ptxas maxnreg
128/96/80 on the 64 x 128 tile, which holds 114) were tried once this way (run s22b): none
was faster (96: 22.3 us against 16.8; 80 and below do not compile).

Shapes: B 64, S 128, H 12, D 64: QKV codes [64, 128, 2304] float8_e4m3fn, a key-padding
additive mask [64, 1, 1, 128]; the norm over 8192 x 768 float16 with its residual (Skip),
writing Y and FP8 codes.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from ecoinfer.kernels.triton.attention import FlashConfig, flash_mha  # noqa: E402
from ecoinfer.kernels.triton.norms import RowConfig, layer_norm  # noqa: E402
from ecoinfer.tune.autotune import cold_rotate_bytes, input_sets, measure  # noqa: E402

B, S, H, D = 64, 128, 12, 64
F8 = torch.float8_e4m3fn
cfg = FlashConfig(64, 128, 4, 2, DOT8=1)  # the kernels' configurations (sweep changes them)
rc = RowConfig(4, 4)  # (attn and norm in main read these two at each call)


def sweep(attn, a_in, norm, n_in, dev, rotate) -> None:  # noqa: ANN001
    global cfg, rc
    name = torch.cuda.get_device_name(dev)
    a_sets, n_sets = input_sets(a_in, rotate), input_sets(n_in, rotate)
    for tile in ((64, 128, 4, 2), (128, 128, 4, 2), (128, 128, 8, 2), (64, 64, 4, 3)):
        cfg = FlashConfig(*tile, DOT8=1)
        us = measure(attn, a_in, dev, sets=a_sets)[0] * 1e3
        print(f"attention {tile} {us:8.2f} us  ({name})", flush=True)
    for rows in (1, 2, 4, 8):
        for warps in (2, 4, 8):
            rc = RowConfig(rows, warps)
            us = measure(norm, n_in, dev, sets=n_sets)[0] * 1e3
            print(f"layernorm_codes rows={rows} warps={warps} {us:8.2f} us", flush=True)


def main() -> None:
    dev = torch.device("cuda")
    torch.manual_seed(0)
    qkv = (torch.randn(B, S, 3 * H * D, device=dev) * 8).clamp(-448, 448).to(F8)
    mask = torch.zeros(B, 1, 1, S, device=dev, dtype=torch.float16)
    mask[: B // 2, ..., S - 24 :] = -10000.0
    xs = torch.tensor([0.05], device=dev)
    ys = torch.tensor([0.02], device=dev)

    def attn(a: list) -> torch.Tensor:
        return flash_mha(a[0], None, None, a[1], None, num_heads=H, head_size=D, packed=True,
                         precision="float16", config=cfg, y_scale=ys, y_qtype="fp8e4m3",
                         x_scale=xs, x_qtype="fp8e4m3", out_dtype=torch.float16,
                         scale=D**-0.5)  # fmt: skip

    x = torch.randn(B * S, H * D, device=dev, dtype=torch.float16)
    skip = torch.randn_like(x)
    w = torch.rand(H * D, device=dev, dtype=torch.float16) + 0.5
    b = torch.randn(H * D, device=dev, dtype=torch.float16) * 0.1

    def norm(a: list) -> torch.Tensor:
        codes = torch.empty(a[0].shape, dtype=F8, device=dev)
        return layer_norm(a[0], w, b, -1, 1e-12, rc, codes, ys, False, skip=a[1])

    rotate = cold_rotate_bytes(dev)
    which = sys.argv[1] if len(sys.argv) > 1 else ""
    if which == "sweep":
        sweep(attn, [qkv, mask], norm, [x, skip], dev, rotate)
        return
    for name, fn, inp in (("attention", attn, [qkv, mask]), ("layernorm_codes", norm, [x, skip])):
        if which and name != which:
            continue
        for _ in range(2):  # (what ncu profiles: -c counts these and the timing's launches)
            fn(inp)
        torch.cuda.synchronize()
        us = measure(fn, inp, dev, sets=input_sets(inp, rotate))[0] * 1e3
        print(f"{name:16s} {us:8.2f} us  ({torch.cuda.get_device_name(dev)})", flush=True)


if __name__ == "__main__":
    main()
