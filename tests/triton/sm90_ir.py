"""The sm_90 IR of one TMA GEMM launch, compiled on a machine without a GPU (as sm90_compile.py
does for every kernel test), for checks of what the compiler made of it.

    python sm90_ir.py   (TRITON_INTERPRET=0; prints {qtype: [pendings of each wgmma wait]})

In a pipelined Hopper K loop the wgmma of step k is still running while step k+1's tiles are
waited for: the loop's `warp_group_dot_wait` keeps one group in flight (pendings = 1). With
pendings = 0 every step waits for its own wgmma first. Triton 3.6 pipelines only float32
accumulators, so the INT8 kernel (int32 accumulator) runs its wgmmas one at a time.
"""

from __future__ import annotations

import json
import re
import sys
from typing import Any

import sm90_compile
import torch
from triton.compiler import compile
from triton.runtime.jit import JITFunction

_IR: dict[str, str] = {}


def _grab(self: JITFunction, *args: Any, grid: Any, warmup: bool, **kwargs: Any) -> None:
    _, src, options = sm90_compile._variant(self, args, kwargs)
    _IR[self.__name__] = compile(src, target=sm90_compile.TARGET, options=options).asm["ttgir"]


def tma_gemm_ttgir(qtype: str) -> str:
    """TTGIR of tma_gemm for a BERT-sized FFN-down tile (8-bit codes in, float16 out, a
    residual), 128 x 128 x 128 tiles, 8 warps, 4 stages, persistent: the tuner's usual pick."""
    JITFunction.run = _grab  # type: ignore[method-assign]
    sm90_compile.open_interpreter_gates()
    from ecoinfer.kernels.triton.qgemm import quantize  # noqa: PLC0415
    from ecoinfer.kernels.triton.tma_gemm import TmaGemmConfig, tma_gemm  # noqa: PLC0415

    m, k, n = 256, 512, 256
    s = torch.tensor(0.05)
    xq = quantize(torch.randn(m, k), s, qtype, exact=True)  # type: ignore[arg-type]
    wq = quantize(torch.randn(n, k), s, qtype, exact=True)  # type: ignore[arg-type]
    cfg = TmaGemmConfig(BLOCK_M=128, BLOCK_N=128, BLOCK_K=128, GROUP_M=8, num_warps=8,
                        num_stages=4, PERSISTENT=1, FAST_GELU=0, EPI_TMA=1, QUANT_X=0)  # fmt: skip
    _IR.clear()
    try:  # nothing runs: the host code after the (compile-only) launch may trip on that
        tma_gemm(xq, wq, None, torch.randn(m, n).half(), x_scale=s,
                 w_scale=torch.full((n,), 0.05), out_dtype=torch.float16, config=cfg)  # fmt: skip
    except Exception:  # noqa: BLE001, S110
        pass
    return _IR["_tma_gemm_kernel"]


def wgmma_waits(ttgir: str) -> list[int]:
    return [int(p) for p in re.findall(r"warp_group_dot_wait .*?pendings = (\d+)", ttgir)]


if __name__ == "__main__":
    json.dump({q: wgmma_waits(tma_gemm_ttgir(q)) for q in sys.argv[1:] or ["fp8e4m3", "int8"]},
              sys.stdout)  # fmt: skip
