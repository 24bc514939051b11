"""Triton Softmax / LogSoftmax over the last axis, accumulated in float32.

One row (or several short rows) per program, BLOCK = next power of two of the row length,
masked tails read as -inf. A row of only -inf gives NaN, as the reference (and ONNX) does.
Other axes keep the reference tactic (the optimizer's graphs put softmax on the last axis).
"""

from __future__ import annotations

from typing import Any

import torch
import triton
import triton.language as tl

from ecoinfer.ir.graph import Node
from ecoinfer.kernels.triton.norms import (
    FLOATS,
    MAX_BLOCK,
    RowConfig,
    RunFn,
    as_rows,
    config_from,
    default_config,
    device_ok,
    next_pow2,
    norm_axis,
    row_block,
    row_configs,
)
from ecoinfer.kernels.triton.pdl import pdl_args, pdl_enter

Tensor = torch.Tensor


@triton.jit
def _softmax_fwd(
    X,
    Y,
    n_rows,
    n_cols,
    stride_x,
    LOG: tl.constexpr,
    ROWS: tl.constexpr,
    BLOCK: tl.constexpr,
    PDL: tl.constexpr = False,
):
    pdl_enter(PDL)
    r64, cols, rmask, cmask, mask = row_block(n_rows, n_cols, ROWS, BLOCK)
    x = tl.load(X + r64[:, None] * stride_x + cols[None, :], mask=mask, other=0.0)
    # the tail reads -inf (exp gives 0); rows past the end stay finite (no NaN work)
    x = tl.where(cmask[None, :], x.to(tl.float32), float("-inf"))
    m = tl.max(x, axis=1)
    t = x - m[:, None]
    e = tl.exp(t)
    s = tl.sum(e, axis=1)
    if LOG:
        y = t - tl.log(s)[:, None]
    else:
        y = e / s[:, None]
    tl.store(Y + r64[:, None] * n_cols + cols[None, :], y.to(Y.dtype.element_ty), mask=mask)


def softmax(x: Tensor, log: bool = False, cfg: RowConfig | None = None) -> Tensor:
    """softmax (or log_softmax) of x over its last axis, in x's dtype."""
    y = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    if x.numel() == 0:
        return y
    n_cols = x.shape[-1] if x.dim() else 1
    x2 = as_rows(x, n_cols)
    n_rows = x2.shape[0]
    cfg = cfg or default_config(n_cols)
    _softmax_fwd[(triton.cdiv(n_rows, cfg.rows),)](
        x2,
        y,
        n_rows,
        n_cols,
        x2.stride(0),
        LOG=log,
        ROWS=cfg.rows,
        BLOCK=next_pow2(n_cols),
        num_warps=cfg.num_warps,
        **pdl_args(x2.device),
    )
    return y


def _row_len(node: Node, attrs: dict[str, Any], inputs: list, build: Any) -> int | None:
    if not device_ok(build) or not inputs or inputs[0] is None:
        return None
    x = inputs[0]
    if x.dtype not in FLOATS or len(x.shape) == 0:
        return None
    if norm_axis(attrs.get("axis"), len(x.shape)) != len(x.shape) - 1:
        return None  # only the last axis
    n = int(x.shape[-1])
    return n if 0 < n and next_pow2(n) <= MAX_BLOCK else None


def make_softmax(
    node: Node, attrs: dict[str, Any], inputs: list, cfg: dict[str, Any], build: Any
) -> RunFn | None:
    n = _row_len(node, attrs, inputs, build)
    if n is None:
        return None
    log = node.op_type == "LogSoftmax"
    rc = config_from(cfg, n)

    def run(xs: list[Tensor | None]) -> list[Tensor]:
        x = xs[0]
        assert x is not None
        return [softmax(x, log, rc)]

    return run


def softmax_configs(
    node: Node, attrs: dict[str, Any], inputs: list, build: Any
) -> list[dict[str, Any]]:
    x = inputs[0] if inputs else None
    if x is None or len(x.shape) == 0:
        return [{}]
    return row_configs(max(1, int(x.shape[-1])))
