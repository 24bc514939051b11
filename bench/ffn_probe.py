"""What the FFN-block probes share (gpu_ln_stats_probe.py, gpu_kernel_switch_probe.py): their
command line, their timer, and BERT-base b64's FP8 FFN block (LayerNormCodes -> FFN-up with
GELU, codes out -> FFN-down with the residual) on random data, `sets` input sets of it.
--dry-run makes it tiny, on the CPU interpreter, to check a script without a GPU."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import triton

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from ecoinfer.kernels.triton.norms import RowConfig, layer_norm  # noqa: E402
from ecoinfer.kernels.triton.tma_gemm import TmaGemmConfig, tma_gemm  # noqa: E402

F8 = torch.float8_e4m3fn


def probe_args(doc: str) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=doc.splitlines()[0])
    ap.add_argument("--sets", type=int, default=4)
    ap.add_argument("--out")
    ap.add_argument("--dry-run", action="store_true", help="tiny shapes, CPU interpreter")
    return ap.parse_args()


@dataclass
class FfnBlock:
    dry: bool
    dev: torch.device
    gpu: str
    rc: RowConfig
    hs: list[torch.Tensor]  # the norms' inputs, one per set
    codes: list[torch.Tensor]  # the norms' FP8 codes, one per set
    gamma: torch.Tensor
    beta: torch.Tensor
    ys: torch.Tensor  # the codes' scale
    w_up: torch.Tensor
    w_dn: torch.Tensor
    ws_up: torch.Tensor
    ws_dn: torch.Tensor
    b_up: torch.Tensor
    b_dn: torch.Tensor
    mid_scale: torch.Tensor  # FFN-up's output codes' scale

    def us(self, fn: Callable[[], object]) -> float:
        """Median microseconds of fn, replayed from a CUDA graph (one timed call on a dry run)."""
        if self.dry:
            t0 = time.perf_counter()
            fn()
            return 1e6 * (time.perf_counter() - t0)
        return 1e3 * float(triton.testing.do_bench_cudagraph(fn, rep=80, return_mode="median"))

    def ln(self, i: int, **kw: object) -> torch.Tensor:
        """LayerNormCodes of set i: Y returned, codes into self.codes[i]."""
        return layer_norm(self.hs[i], self.gamma, self.beta, -1, 1e-12, self.rc, self.codes[i],
                          self.ys, False, **kw)  # type: ignore[arg-type]  # fmt: skip

    def up(self, c: torch.Tensor, cfg: TmaGemmConfig) -> torch.Tensor:
        return tma_gemm(c, self.w_up, self.b_up, activation="Gelu", x_scale=self.ys,
                        w_scale=self.ws_up, out_scale=self.mid_scale, config=cfg)  # fmt: skip

    def down(self, mid: torch.Tensor, res: torch.Tensor, cfg: TmaGemmConfig,
             norm: tuple | None = None) -> torch.Tensor:  # fmt: skip
        return tma_gemm(mid, self.w_dn, self.b_dn, res, x_scale=self.mid_scale,
                        w_scale=self.ws_dn, config=cfg, residual_norm=norm)  # fmt: skip


def ffn_block(sets: int, dry: bool, rc: RowConfig) -> FfnBlock:
    m, h, f = (64, 64, 128) if dry else (64 * 128, 768, 3072)
    dev = torch.device("cpu" if dry else "cuda")
    torch.manual_seed(0)
    gpu = "cpu (dry run)" if dry else torch.cuda.get_device_name(dev)
    hs = [(torch.randn(m, h, device=dev) * 2).half() for _ in range(sets)]
    gamma = (torch.rand(h, device=dev) + 0.5).half()
    beta = (torch.randn(h, device=dev) * 0.1).half()
    ys = torch.tensor(0.01, device=dev)
    w_up = (torch.randn(f, h, device=dev) * 8).to(F8)
    w_dn = (torch.randn(h, f, device=dev) * 8).to(F8)
    return FfnBlock(
        dry, dev, gpu, rc, hs, [torch.empty(m, h, device=dev, dtype=F8) for _ in range(sets)],
        gamma, beta, ys, w_up, w_dn, torch.full((f,), 1e-3, device=dev),
        torch.full((h,), 1e-3, device=dev), torch.zeros(f, device=dev).half(),
        torch.zeros(h, device=dev).half(), torch.tensor(0.02, device=dev),
    )  # fmt: skip
