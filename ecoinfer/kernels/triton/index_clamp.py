"""Triton kernel of the runtime's index guard (engine/index_guard.py): one launch per index
input clamps it into [-n, n-1] into a new tensor and sets that input's int32 flag when some
index was outside.

The torch form of the same guard is four kernels per input (clamp, compare, any, or into the
flag); inside a BERT engine's CUDA graph those tiny kernels ran one after another ahead of
the first layer. The flag is only ever set (several programs may store 1 at once), cleared
by the host side after it reported the input.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

Tensor = torch.Tensor
BLOCK = 1024
INDEX_DTYPES = (torch.int32, torch.int64)


@triton.jit
def _clamp_flag(X, Y, F, n_elem, lo, hi, BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    m = offs < n_elem
    x = tl.load(X + offs, mask=m, other=0)
    y = tl.minimum(tl.maximum(x, lo), hi)
    tl.store(Y + offs, y, mask=m)
    bad = tl.max((x != y).to(tl.int32), axis=0)
    if bad > 0:
        tl.store(F, 1)


def fits(x: Tensor) -> bool:
    """Inputs the kernel takes: contiguous int32/int64 (anything else: the torch form)."""
    return x.dtype in INDEX_DTYPES and x.is_contiguous() and x.numel() > 0


def clamp_flag(x: Tensor, n: int, flag: Tensor) -> Tensor:
    """x clamped into [-n, n-1] (a new tensor); flag (one int32 element) set to 1 if any
    index of x was outside. Only device work: capturable in a CUDA graph."""
    y = torch.empty_like(x)
    grid = (triton.cdiv(x.numel(), BLOCK),)
    _clamp_flag[grid](x, y, flag, x.numel(), -n, n - 1, BLOCK=BLOCK)
    return y
