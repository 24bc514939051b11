"""Triton ecoinfer.EmbedLayerNorm: k embedding lookups summed, then LayerNorm, in one kernel.

One program per ROWS output rows (BLOCK = next power of two of H, masked tail), the model of
norms.py's _layernorm_fwd: for each lookup the row's index is read through its broadcast
strides (stride 0 on broadcast dims), a negative index gets V added as ONNX Gather does, the
table row is accumulated in float32; mean, variance and 1/sqrt in float32, scale and bias,
one rounding to the tables' dtype on store. Up to MAX_LOOKUPS lookups (the unused pointer
arguments are dummies that the constexpr NUM compiles out).

An index out of range cannot raise inside a kernel: its lookup contributes a zero row. The
reference kernel raises; the engine runtime checks graph inputs that index tables before
it runs (ir/analysis.py index_table_sizes).

Importing this module registers the tactic "triton_embed_layernorm" (imported by
ecoinfer.kernels.triton.tactics).
"""

from __future__ import annotations

import math
from typing import Any

import torch
import triton
import triton.language as tl

from ecoinfer.ir.graph import Node
from ecoinfer.ir.ops.fused_embed import MAX_LOOKUPS
from ecoinfer.kernels.broadcast import broadcast_shape
from ecoinfer.kernels.triton.norms import (
    FLOATS,
    MAX_BLOCK,
    RowConfig,
    RunFn,
    _param,
    config_from,
    default_config,
    device_ok,
    layernorm_rows,
    next_pow2,
    row_block,
    row_configs,
)
from ecoinfer.kernels.triton.pdl import pdl_args, pdl_enter
from ecoinfer.tune.tactics import tactic

Tensor = torch.Tensor
_INDEX = (torch.int32, torch.int64)


# ------------------------------------------------------------------------------ kernel
@triton.jit
def _lookup(I, T, q, r, s0, s1, n_tab, cols, rmask, cmask, n_cols):
    """Rows table[ids[q, r]] in float32 (ids addressed through strides s0, s1); an index
    outside [-n_tab, n_tab) gives a zero row."""
    idx = tl.load(I + q * s0 + r * s1, mask=rmask, other=0).to(tl.int64)
    idx = tl.where(idx < 0, idx + n_tab, idx)
    ok = rmask & (idx >= 0) & (idx < n_tab)
    m = ok[:, None] & cmask[None, :]
    return tl.load(T + idx[:, None] * n_cols + cols[None, :], mask=m, other=0.0).to(tl.float32)


@triton.jit
def _embed_layernorm_fwd(
    Y,
    W,
    B,
    I0,
    T0,
    I1,
    T1,
    I2,
    T2,
    I3,
    T3,
    s00,
    s01,
    s10,
    s11,
    s20,
    s21,
    s30,
    s31,
    v0,
    v1,
    v2,
    v3,
    n_rows,
    n_cols,
    d1,
    eps,
    NUM: tl.constexpr,
    HAS_B: tl.constexpr,
    ROWS: tl.constexpr,
    BLOCK: tl.constexpr,
    PDL: tl.constexpr = False,
):
    pdl_enter(PDL)
    r64, cols, rmask, cmask, mask = row_block(n_rows, n_cols, ROWS, BLOCK)
    # output row -> (q, r) over the leading shape collapsed to [rows / d1, d1]
    q = r64 // d1
    r = r64 % d1
    x = _lookup(I0, T0, q, r, s00, s01, v0, cols, rmask, cmask, n_cols)
    if NUM > 1:
        x += _lookup(I1, T1, q, r, s10, s11, v1, cols, rmask, cmask, n_cols)
    if NUM > 2:
        x += _lookup(I2, T2, q, r, s20, s21, v2, cols, rmask, cmask, n_cols)
    if NUM > 3:
        x += _lookup(I3, T3, q, r, s30, s31, v3, cols, rmask, cmask, n_cols)
    y, _, _ = layernorm_rows(x, mask, cols, cmask, n_cols, eps, W, B, HAS_B)
    tl.store(Y + r64[:, None] * n_cols + cols[None, :], y.to(Y.dtype.element_ty), mask=mask)


# ------------------------------------------------------------------------------ launcher
def _ids_2d(ids: Tensor, lead: tuple[int, ...]) -> tuple[Tensor, int, int]:
    """(tensor, s0, s1): element (q, r) of the leading shape collapsed to [prod(lead[:-1]),
    lead[-1]] is at tensor + q*s0 + r*s1, broadcast dims having stride 0. Copied only when
    the leading dims but the last do not collapse into one stride."""
    t = ids.expand(lead) if lead else ids.reshape(())
    if len(lead) <= 1:
        return t, 0, (t.stride(0) if lead else 0)
    dims = [(n, s) for n, s in zip(lead[:-1], t.stride()[:-1]) if n != 1]
    if all(s == s_in * n_in for (_, s), (n_in, s_in) in zip(dims, dims[1:])):
        return t, (dims[-1][1] if dims else 0), t.stride(-1)
    t = t.contiguous()  # e.g. [B, 1, S] ids under a [B, X, S] output: not one stride
    return t, lead[-1], 1


def embed_layer_norm(
    ids: list[Tensor],
    tables: list[Tensor],
    scale: Tensor,
    bias: Tensor | None,
    eps: float = 1e-5,
    cfg: RowConfig | None = None,
) -> Tensor:
    """EmbedLayerNorm's Y: broadcast(ids shapes) + [H], in the tables' dtype."""
    k = len(ids)
    assert 1 <= k <= MAX_LOOKUPS and len(tables) == k
    n_cols = int(tables[0].shape[1])
    lead = broadcast_shape(*(tuple(i.shape) for i in ids))
    y = torch.empty(lead + (n_cols,), dtype=tables[0].dtype, device=tables[0].device)
    n_rows = math.prod(lead)
    if n_rows == 0:
        return y
    views = [_ids_2d(i, lead) for i in ids]
    tabs = [t.contiguous() for t in tables]
    pad = MAX_LOOKUPS - k  # dummies for the lookups NUM leaves out
    ptrs = [a for (t, _, _), tab in zip(views, tabs) for a in (t, tab)] + [
        views[0][0],
        tabs[0],
    ] * pad
    strides = [s for _, s0, s1 in views for s in (s0, s1)] + [0, 0] * pad
    sizes = [int(t.shape[0]) for t in tabs] + [1] * pad
    w = _param(scale, (n_cols,), n_cols)
    b = _param(bias, (n_cols,), n_cols) if bias is not None else w  # unused when no bias
    cfg = cfg or default_config(n_cols)
    _embed_layernorm_fwd[(triton.cdiv(n_rows, cfg.rows),)](
        y,
        w,
        b,
        *ptrs,
        *strides,
        *sizes,
        n_rows,
        n_cols,
        lead[-1] if lead else 1,
        float(eps),
        NUM=k,
        HAS_B=bias is not None,
        ROWS=cfg.rows,
        BLOCK=next_pow2(n_cols),
        num_warps=cfg.num_warps,
        **pdl_args(y.device),
    )
    return y


# ------------------------------------------------------------------------------ tactic
def _width(inputs: list) -> int | None:
    t = inputs[1] if len(inputs) > 1 else None
    return int(t.shape[1]) if t is not None and len(t.shape) == 2 else None


def make_embed_layernorm(
    node: Node, attrs: dict[str, Any], inputs: list, cfg: dict[str, Any], build: Any
) -> RunFn | None:
    """The run function, or None where the kernel does not apply: more lookups than
    MAX_LOOKUPS, non-float tables of several dtypes or widths, non-int32/int64 ids, ids
    that do not broadcast, scale/bias not along H, or H beyond MAX_BLOCK."""
    k = int(attrs.get("num_lookups") or 0)
    if not device_ok(build) or not 1 <= k <= MAX_LOOKUPS:
        return None
    if len(inputs) not in (2 * k + 1, 2 * k + 2) or any(i is None for i in inputs[: 2 * k + 1]):
        return None
    tables, ids = inputs[1 : 2 * k : 2], inputs[0 : 2 * k : 2]
    n_cols = _width(inputs)
    if n_cols is None or n_cols == 0 or next_pow2(n_cols) > MAX_BLOCK:
        return None
    dt = tables[0].dtype
    if dt not in FLOATS or any(len(t.shape) != 2 or t.dtype != dt for t in tables):
        return None
    if any(int(t.shape[1]) != n_cols for t in tables) or any(i.dtype not in _INDEX for i in ids):
        return None
    try:
        broadcast_shape(*(tuple(i.shape) for i in ids))
    except RuntimeError:
        return None
    params = [p for p in inputs[2 * k :] if p is not None]
    for p in params:
        if p.dtype not in FLOATS or math.prod(p.shape) not in (1, n_cols):
            return None
        try:
            if broadcast_shape(tuple(p.shape), (n_cols,)) != (n_cols,):
                return None
        except RuntimeError:
            return None
    eps = float(attrs.get("epsilon") if attrs.get("epsilon") is not None else 1e-5)
    rc = config_from(cfg, n_cols)
    has_bias = len(inputs) == 2 * k + 2 and inputs[-1] is not None

    def run(xs: list[Tensor | None]) -> list[Tensor]:
        scale = xs[2 * k]
        assert scale is not None
        return [
            embed_layer_norm(
                list(xs[0 : 2 * k : 2]),  # type: ignore[arg-type]
                list(xs[1 : 2 * k : 2]),  # type: ignore[arg-type]
                scale,
                xs[2 * k + 1] if has_bias else None,
                eps,
                rc,
            )
        ]

    return run


def configs(node: Node, attrs: dict[str, Any], inputs: list, build: Any) -> list[dict[str, Any]]:
    n_cols = _width(inputs)
    return row_configs(max(1, n_cols or 1))


tactic(
    "EmbedLayerNorm",
    name="triton_embed_layernorm",
    domain="ecoinfer",
    devices=("cuda",),
    dtypes=("float32", "float16", "bfloat16"),
    configs=configs,
    doc="k lookups summed and LayerNorm in one row kernel, float32 sum and statistics",
)(make_embed_layernorm)
