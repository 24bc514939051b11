"""Triton LayerNormalization and RMSNormalization over the trailing axes.

One row (or several short rows) per program, BLOCK = next power of two of the row length,
masked tails; statistics in float32 whatever the input dtype, one rounding on store. The
normalized axes [axis, rank) are flattened into one row, as ONNX defines the op.

Also the plumbing the softmax kernels share (row configs, row views).

TRITON_INTERPRET=1 (the CI tests, on CPU tensors) must be set before `triton` is first
imported in the process: Triton decides at import whether its own library functions
(tl.sum, tl.max...) are interpreted.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import triton
import triton.language as tl

from ecoinfer.ir.graph import Node
from ecoinfer.kernels.broadcast import broadcast_shape
from ecoinfer.kernels.triton.gemm import interpreting
from ecoinfer.kernels.triton.pdl import pdl_args, pdl_enter
from ecoinfer.kernels.triton.qgemm import QCODE_OF, QTYPES, quantize_block, soft_fp8

Tensor = torch.Tensor
RunFn = Callable[[list[Tensor | None]], list[Tensor]]

MAX_BLOCK = 16384  # a row is held in registers in one pass; longer rows keep the reference
FLOATS = frozenset({torch.float32, torch.float16, torch.bfloat16})


# ------------------------------------------------------------------------------ plumbing
def next_pow2(n: int) -> int:
    return 1 << max(0, (int(n) - 1).bit_length())


@dataclass(frozen=True)
class RowConfig:
    rows: int  # rows per program
    num_warps: int


def default_config(n_cols: int) -> RowConfig:
    """Rows per program so that a program holds ~2K elements; warps by elements held."""
    block = next_pow2(n_cols)
    rows = max(1, min(16, 2048 // block))
    elems = rows * block
    if elems <= 256:
        warps = 1
    elif elems <= 512:
        warps = 2
    elif elems <= 2048:
        warps = 4
    elif elems < 8192:
        warps = 8
    else:
        warps = 16
    return RowConfig(rows, warps)


def row_configs(n_cols: int) -> list[dict[str, int]]:
    """Tuning candidates: the heuristic, one row per program (spreads few rows over more
    SMs), twice the warps (long rows) and half the warps (on an H200, LayerNorm over 768
    fp16 columns took 5.8 us with 2 warps against 6.8 us with the heuristic's 4), twice the
    rows (more bytes in flight per program, for inputs that come from memory) and one row
    with half the warps."""
    base = default_config(n_cols)
    cands = [
        base,
        RowConfig(1, base.num_warps),
        RowConfig(base.rows, min(16, base.num_warps * 2)),
        RowConfig(base.rows, max(1, base.num_warps // 2)),
        RowConfig(min(16, base.rows * 2), base.num_warps),
        RowConfig(1, max(1, base.num_warps // 2)),
    ]
    out: list[dict[str, int]] = []
    for c in cands:
        d = {"rows": c.rows, "num_warps": c.num_warps}
        if d not in out:
            out.append(d)
    return out


def config_from(cfg: dict[str, Any], n_cols: int) -> RowConfig:
    base = default_config(n_cols)
    return RowConfig(int(cfg.get("rows", base.rows)), int(cfg.get("num_warps", base.num_warps)))


def device_ok(build: Any) -> bool:
    """Triton runs CUDA tensors, and CPU tensors only under the interpreter (tests)."""
    dev = torch.device(getattr(build, "device", "cuda"))
    return dev.type == "cuda" or interpreting()


def as_rows(x: Tensor, n_cols: int) -> Tensor:
    """x viewed as [rows, n_cols] with unit column stride (copied only when it must be)."""
    x2 = x.reshape(-1, n_cols)
    if n_cols > 1 and x2.stride(1) != 1:
        x2 = x2.contiguous()
    return x2


def norm_axis(axis: Any, rank: int, default: int = -1) -> int:
    a = default if axis is None else int(axis)
    return a + rank if a < 0 else a


def _wanted_outputs(node: Node) -> int:
    return sum(1 for o in node.outputs if o)


def _param(t: Tensor, norm_shape: tuple[int, ...], n_cols: int) -> Tensor:
    """Scale/bias as a contiguous [n_cols] vector (broadcast to the normalized shape)."""
    if t.numel() != n_cols:
        t = t.expand(norm_shape)
    return t.reshape(n_cols).contiguous()


# ------------------------------------------------------------------------------ kernels
@triton.jit
def row_block(n_rows, n_cols, ROWS: tl.constexpr, BLOCK: tl.constexpr):
    """This program's ROWS x BLOCK tile of a row kernel: (rows as int64, columns, row mask,
    column mask, tile mask)."""
    rows = tl.program_id(0) * ROWS + tl.arange(0, ROWS)
    cols = tl.arange(0, BLOCK)
    rmask = rows < n_rows
    cmask = cols < n_cols
    return rows.to(tl.int64), cols, rmask, cmask, rmask[:, None] & cmask[None, :]


@triton.jit
def layernorm_stats(x, mask, n_cols, eps):
    """(x - mean, mean, 1/sqrt(var + eps)) of the float32 rows x (zero past n_cols)."""
    mean = tl.sum(x, axis=1) / n_cols
    d = tl.where(mask, x - mean[:, None], 0.0)
    var = tl.sum(d * d, axis=1) / n_cols
    inv = 1.0 / tl.sqrt(var + eps)
    return d, mean, inv


@triton.jit
def norm_affine(d, inv, w, b, HAS_B: tl.constexpr):
    """LayerNorm's Y from the centred rows d, their 1/std and the float32 scale (and bias)
    along the columns. The one formula for the norm kernels and for the GEMM epilogue that
    rebuilds Y from X and the row statistics (tma_gemm's residual_norm): the same float32
    operations in the same order, so both round Y alike."""
    y = d * inv[:, None]
    if HAS_B:  # an explicit fma: left to the compiler, the two kernels contracted differently
        return tl.fma(y, w[None, :], b[None, :])
    return y * w[None, :]


@triton.jit
def layernorm_rows(x, mask, cols, cmask, n_cols, eps, W, B, HAS_B: tl.constexpr):
    """LayerNorm of the float32 rows x (zero past n_cols): mean, variance and 1/sqrt in
    float32, then scale (and bias) loaded along the columns. Returns (Y, mean, 1/std)."""
    d, mean, inv = layernorm_stats(x, mask, n_cols, eps)
    w = tl.load(W + cols, mask=cmask, other=0.0).to(tl.float32)
    b = w
    if HAS_B:
        b = tl.load(B + cols, mask=cmask, other=0.0).to(tl.float32)
    return norm_affine(d, inv, w, b, HAS_B), mean, inv


@triton.jit
def _layernorm_fwd(
    X,
    S,
    W,
    B,
    Y,
    C,
    YS,
    n_rows,
    n_cols,
    stride_x,
    stride_s,
    eps,
    HAS_B: tl.constexpr,
    HAS_SKIP: tl.constexpr,
    QOUT: tl.constexpr,
    EXACT: tl.constexpr,
    SOFT_FP8: tl.constexpr,
    ROWS: tl.constexpr,
    BLOCK: tl.constexpr,
    PDL: tl.constexpr = False,
    MEAN=None,
    INV=None,
    STATS: tl.constexpr = False,
    WRITE_Y: tl.constexpr = True,
):
    pdl_enter(PDL)
    r64, cols, rmask, cmask, mask = row_block(n_rows, n_cols, ROWS, BLOCK)
    x = tl.load(X + r64[:, None] * stride_x + cols[None, :], mask=mask, other=0.0)
    x = x.to(tl.float32)
    if HAS_SKIP:  # SkipLayerNorm: the residual add, in float32, before the statistics
        sk = tl.load(S + r64[:, None] * stride_s + cols[None, :], mask=mask, other=0.0)
        x = x + sk.to(tl.float32)
    y, mean, inv = layernorm_rows(x, mask, cols, cmask, n_cols, eps, W, B, HAS_B)
    yr = y.to(Y.dtype.element_ty)
    if WRITE_Y:
        tl.store(Y + r64[:, None] * n_cols + cols[None, :], yr, mask=mask)
    if STATS:  # the row statistics, from which a reader rebuilds Y (tma_gemm residual_norm)
        tl.store(MEAN + r64, mean, mask=rmask)
        tl.store(INV + r64, inv, mask=rmask)
    if QOUT >= 0:  # codes of the stored Y for a quantized reader (LayerNormCodes)
        y_scale = tl.load(YS).to(tl.float32)
        q = quantize_block(yr.to(tl.float32), 1.0 / y_scale, y_scale, QOUT, EXACT, SOFT_FP8)
        tl.store(C + r64[:, None] * n_cols + cols[None, :], q, mask=mask)


@triton.jit
def _rmsnorm_fwd(
    X,
    W,
    Y,
    n_rows,
    n_cols,
    stride_x,
    eps,
    ROWS: tl.constexpr,
    BLOCK: tl.constexpr,
    PDL: tl.constexpr = False,
):
    pdl_enter(PDL)
    r64, cols, rmask, cmask, mask = row_block(n_rows, n_cols, ROWS, BLOCK)
    x = tl.load(X + r64[:, None] * stride_x + cols[None, :], mask=mask, other=0.0)
    x = x.to(tl.float32)
    ms = tl.sum(x * x, axis=1) / n_cols
    inv = 1.0 / tl.sqrt(ms + eps)
    w = tl.load(W + cols, mask=cmask, other=0.0).to(tl.float32)
    y = x * inv[:, None] * w[None, :]
    tl.store(Y + r64[:, None] * n_cols + cols[None, :], y.to(Y.dtype.element_ty), mask=mask)


# ------------------------------------------------------------------------------ launchers
def layer_norm(
    x: Tensor,
    scale: Tensor,
    bias: Tensor | None,
    axis: int = -1,
    eps: float = 1e-5,
    cfg: RowConfig | None = None,
    codes: Tensor | None = None,
    y_scale: Tensor | None = None,
    exact: bool = True,
    skip: Tensor | None = None,
    stats: tuple[Tensor, Tensor] | None = None,
    write_y: bool = True,
) -> Tensor:
    """ONNX LayerNormalization's Y (dtype of x), normalizing axes [axis, rank); with
    `codes` (int8 / float8_e4m3fn, x's shape, dense) and y_scale, also quant(Y / y_scale)
    into `codes` in the same pass (ecoinfer.LayerNormCodes). exact: Y / y_scale divided
    exactly (the quantize pass's rounding), else multiplied by 1 / y_scale as the GEMM
    epilogues do (a code on a rounding boundary may differ by one). skip (x's shape): the
    norm of x + skip, summed in float32 (ecoinfer.SkipLayerNorm). stats: float32 [rows]
    tensors (mean, inv_std) the kernel also writes, from which tma_gemm's residual_norm
    rebuilds Y bit for bit; with write_y False (codes or stats wanted), Y itself is not
    written and an empty tensor is returned in its place."""
    axis = norm_axis(axis, x.dim())
    norm_shape = tuple(x.shape[axis:])
    n_cols = math.prod(norm_shape)
    if not write_y and codes is None and stats is None:
        raise ValueError("layer_norm: write_y=False needs codes or stats to write")
    y = torch.empty(x.shape if write_y else (0,), dtype=x.dtype, device=x.device)
    if x.numel() == 0:
        return y
    x2 = as_rows(x, n_cols)
    n_rows = x2.shape[0]
    if stats is not None and any(
        t.dtype != torch.float32 or t.numel() != n_rows or not t.is_contiguous() for t in stats
    ):
        raise ValueError(f"layer_norm: stats must be two contiguous float32 [{n_rows}] tensors")
    s2 = as_rows(skip, n_cols) if skip is not None else x2
    w = _param(scale, norm_shape, n_cols)
    b = _param(bias, norm_shape, n_cols) if bias is not None else w  # unused when no bias
    cfg = cfg or default_config(n_cols)
    grid = (triton.cdiv(n_rows, cfg.rows),)
    y_arg = y if write_y else x2  # (not written: WRITE_Y)
    _layernorm_fwd[grid](
        x2,
        s2,
        w,
        b,
        y_arg,
        codes if codes is not None else y_arg,
        y_scale if y_scale is not None else w,
        n_rows,
        n_cols,
        x2.stride(0),
        s2.stride(0),
        float(eps),
        HAS_B=bias is not None,
        HAS_SKIP=skip is not None,
        QOUT=QCODE_OF[codes.dtype] if codes is not None else -1,
        EXACT=exact,
        SOFT_FP8=soft_fp8(x),
        ROWS=cfg.rows,
        BLOCK=next_pow2(n_cols),
        num_warps=cfg.num_warps,
        **pdl_args(x2.device),
        MEAN=stats[0] if stats is not None else w,
        INV=stats[1] if stats is not None else w,
        STATS=stats is not None,
        WRITE_Y=write_y,
    )
    return y


def rms_norm(
    x: Tensor, scale: Tensor, axis: int = -1, eps: float = 1e-5, cfg: RowConfig | None = None
) -> Tensor:
    """ONNX RMSNormalization's Y (dtype of scale, as the reference's ONNX type V)."""
    axis = norm_axis(axis, x.dim())
    norm_shape = tuple(x.shape[axis:])
    n_cols = math.prod(norm_shape)
    y = torch.empty(x.shape, dtype=scale.dtype, device=x.device)
    if x.numel() == 0:
        return y
    x2 = as_rows(x, n_cols)
    n_rows = x2.shape[0]
    w = _param(scale, norm_shape, n_cols)
    cfg = cfg or default_config(n_cols)
    grid = (triton.cdiv(n_rows, cfg.rows),)
    _rmsnorm_fwd[grid](
        x2,
        w,
        y,
        n_rows,
        n_cols,
        x2.stride(0),
        float(eps),
        ROWS=cfg.rows,
        BLOCK=next_pow2(n_cols),
        num_warps=cfg.num_warps,
        **pdl_args(x2.device),
    )
    return y


# ------------------------------------------------------------------------------ tactics
def _row_len(x_shape: tuple[int, ...], axis: int) -> int:
    return math.prod(int(d) for d in x_shape[axis:])


def _params_fit(inputs: list, axis: int, n_params: int) -> bool:
    """Scale (and bias) broadcast to the normalized shape without growing it."""
    norm_shape = tuple(int(d) for d in inputs[0].shape[axis:])
    for p in inputs[1:n_params]:
        if p is None:
            continue
        try:
            if broadcast_shape(tuple(p.shape), norm_shape) != norm_shape:
                return False
        except RuntimeError:
            return False
    return True


def _axis_and_row(
    node: Node, attrs: dict[str, Any], inputs: list, build: Any, n_params: int
) -> tuple[int, int] | None:
    """(axis, row length) where a norm kernel applies, else None."""
    if not device_ok(build) or _wanted_outputs(node) != 1 or not node.outputs[0]:
        return None  # Mean / InvStdDev outputs requested: the reference computes them
    if len(inputs) < 2 or inputs[0] is None or inputs[1] is None:
        return None
    if any(i is not None and i.dtype not in FLOATS for i in inputs):
        return None
    x = inputs[0]
    if len(x.shape) == 0:
        return None
    axis = norm_axis(attrs.get("axis"), len(x.shape))
    if not 0 <= axis < len(x.shape) or not _params_fit(inputs, axis, n_params):
        return None
    n_cols = _row_len(x.shape, axis)
    if n_cols == 0 or next_pow2(n_cols) > MAX_BLOCK:
        return None
    return axis, n_cols


def _layernorm_setup(
    ln: Node, attrs: dict[str, Any], inputs: list, cfg: dict[str, Any], build: Any
) -> tuple[int, float, RowConfig] | None:
    """(axis, epsilon, row config) where the LayerNorm row kernel takes `ln` on inputs
    (X, Scale, B?), else None."""
    found = _axis_and_row(ln, attrs, inputs, build, 3)
    if found is None:
        return None
    axis, n_cols = found
    eps = float(attrs.get("epsilon") if attrs.get("epsilon") is not None else 1e-5)
    return axis, eps, config_from(cfg, n_cols)


def make_layernorm(
    node: Node, attrs: dict[str, Any], inputs: list, cfg: dict[str, Any], build: Any
) -> RunFn | None:
    setup = _layernorm_setup(node, attrs, inputs, cfg, build)
    if setup is None:
        return None
    axis, eps, rc = setup
    has_bias = len(inputs) > 2 and inputs[2] is not None

    def run(xs: list[Tensor | None]) -> list[Tensor]:
        xt, scale = xs[0], xs[1]
        assert xt is not None and scale is not None
        bias = xs[2] if has_bias and len(xs) > 2 else None
        return [layer_norm(xt, scale, bias, axis, eps, rc)]

    return run


def make_layernorm_codes(
    node: Node, attrs: dict[str, Any], inputs: list, cfg: dict[str, Any], build: Any
) -> RunFn | None:
    """ecoinfer.LayerNormCodes: Y and its codes in one pass."""
    qtype = str(attrs.get("qtype") or "")
    if qtype not in QTYPES or len(inputs) < 4 or inputs[3] is None or len(node.outputs) < 2:
        return None
    if inputs[3].dtype != torch.float32 or tuple(inputs[3].shape) not in ((), (1,)):
        return None
    sk = inputs[4] if len(inputs) > 4 else None  # Skip: the norm of X + Skip
    if sk is not None and (
        tuple(sk.shape) != tuple(inputs[0].shape) or sk.dtype != inputs[0].dtype
    ):
        return None
    # (the same row kernel as LayerNormalization's; Y may be omitted: statistics instead)
    ln = Node("LayerNormalization", list(node.inputs[:3]), [node.outputs[0] or "y"], {},
              node.name)  # fmt: skip
    setup = _layernorm_setup(ln, attrs, list(inputs[:3]), cfg, build)
    if setup is None:
        return None
    axis, eps, rc = setup
    exact = bool(cfg.get("exact", 1))
    has_bias = inputs[2] is not None
    qdt = QTYPES[qtype]
    # Mean / InvStdDev wanted (a QGemm rebuilds Y from them), over the last axis only; Y
    # itself may then be omitted
    want_stats = any(node.outputs[2:4])
    write_y = bool(node.outputs[0])
    if want_stats and (axis != len(inputs[0].shape) - 1 or sk is not None):
        return None

    def run(xs: list[Tensor | None]) -> list[Tensor]:
        xt, scale, ys = xs[0], xs[1], xs[3]
        assert xt is not None and scale is not None and ys is not None
        codes = torch.empty(xt.shape, dtype=qdt, device=xt.device)
        rows = xt.shape[:-1]
        stats = None
        if want_stats:  # (mean, 1/std)
            stats = (torch.empty(rows, dtype=torch.float32, device=xt.device),
                     torch.empty(rows, dtype=torch.float32, device=xt.device))  # fmt: skip
        skip = xs[4] if sk is not None else None
        y = layer_norm(xt, scale, xs[2] if has_bias else None, axis, eps, rc, codes,
                       ys.float(), exact, skip=skip, stats=stats, write_y=write_y)  # fmt: skip
        return [y, codes, *stats] if stats is not None else [y, codes]

    return run


def make_skip_layernorm(
    node: Node, attrs: dict[str, Any], inputs: list, cfg: dict[str, Any], build: Any
) -> RunFn | None:
    """ecoinfer.SkipLayerNorm(X, Skip, Scale, B?): the row kernel reading X and Skip."""
    if len(inputs) < 3 or inputs[0] is None or inputs[1] is None:
        return None
    x, sk = inputs[0], inputs[1]
    if tuple(sk.shape) != tuple(x.shape) or sk.dtype != x.dtype:
        return None
    ln = Node("LayerNormalization", [node.inputs[0], *node.inputs[2:4]], [node.outputs[0]],
              {}, node.name)  # fmt: skip
    setup = _layernorm_setup(ln, attrs, [x, *inputs[2:4]], cfg, build)
    if setup is None:
        return None
    axis, eps, rc = setup
    has_bias = len(inputs) > 3 and inputs[3] is not None

    def run(xs: list[Tensor | None]) -> list[Tensor]:
        xt, skip, scale = xs[0], xs[1], xs[2]
        assert xt is not None and skip is not None and scale is not None
        bias = xs[3] if has_bias else None
        return [layer_norm(xt, scale, bias, axis, eps, rc, skip=skip)]

    return run


def make_rmsnorm(
    node: Node, attrs: dict[str, Any], inputs: list, cfg: dict[str, Any], build: Any
) -> RunFn | None:
    found = _axis_and_row(node, attrs, inputs, build, 2)
    if found is None:
        return None
    axis, n_cols = found
    eps = float(attrs.get("epsilon") if attrs.get("epsilon") is not None else 1e-5)
    rc = config_from(cfg, n_cols)

    def run(xs: list[Tensor | None]) -> list[Tensor]:
        xt, scale = xs[0], xs[1]
        assert xt is not None and scale is not None
        return [rms_norm(xt, scale, axis, eps, rc)]

    return run


def norm_configs(
    node: Node, attrs: dict[str, Any], inputs: list, build: Any
) -> list[dict[str, Any]]:
    x = inputs[0] if inputs else None
    if x is None or len(x.shape) == 0:
        return [{}]
    axis = norm_axis(attrs.get("axis"), len(x.shape))
    if not 0 <= axis < len(x.shape):
        return [{}]
    return row_configs(max(1, _row_len(x.shape, axis)))


def codes_configs(
    node: Node, attrs: dict[str, Any], inputs: list, build: Any
) -> list[dict[str, Any]]:
    """LayerNormCodes: each row configuration with the codes divided exactly and by the
    reciprocal (the exact division may cost the pass its memory speed; the tuner times both
    and checks them against the reference like any tactic)."""
    return [{**c, "exact": e} for c in norm_configs(node, attrs, inputs, build) for e in (1, 0)]
