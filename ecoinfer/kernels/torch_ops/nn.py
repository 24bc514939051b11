"""Torch kernels for NN ops: convolution, pooling, normalization, matmul-likes, Resize, Pad,
Dropout, DepthToSpace/SpaceToDepth and Attention.

Every kernel runs on the inputs' device and returns the input dtype. FP32 results must stay
within ~1e-5 of onnxruntime, so no reduced-precision path is taken: TF32 is switched off
around CUDA GEMMs/convolutions, and half-precision inputs are normalized/averaged in float32.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence

import torch
import torch.nn.functional as F

from ecoinfer.errors import ExecutionError
from ecoinfer.ir import dtypes
from ecoinfer.ir.ops.nn import (
    STASH_DTYPES,
    conv_transpose_geometry,
    resolve_pads,
    window_out,
    window_params,
)
from ecoinfer.kernels.torch_flags import tf32
from ecoinfer.kernels.torch_ops.registry import KernelContext, kernel

Tensor = torch.Tensor
_HALF = (torch.float16, torch.bfloat16)


# ---------------------------------------------------------------------- helpers
@contextlib.contextmanager
def exact_fp32(t: Tensor) -> Iterator[None]:
    """No TF32 in CUDA matmuls/convolutions inside the block (cuDNN allows it by default)."""
    if not t.is_cuda:
        yield
        return
    with tf32(False):
        yield


def _acc_dtype(t: Tensor) -> torch.dtype:
    """Accumulation dtype: float32 for half types, the dtype itself otherwise."""
    return torch.float32 if t.dtype in _HALF else t.dtype


def _torch_pads(begins: Sequence[int], ends: Sequence[int]) -> list[int]:
    """F.pad's order: last dim first, (begin, end) pairs."""
    out: list[int] = []
    for b, e in zip(reversed(list(begins)), reversed(list(ends))):
        out += [int(b), int(e)]
    return out


def _bcast_param(p: Tensor, rank: int) -> Tensor:
    """A per-channel parameter of shape (C, ...) laid out against (N, C, spatial...)."""
    return p.reshape(1, *p.shape, *([1] * (rank - 1 - p.dim())))


def matmul(a: Tensor, b: Tensor) -> Tensor:
    """torch.matmul for every ONNX numeric type."""
    if a.is_floating_point():
        with exact_fp32(a):
            return torch.matmul(a, b)
    if a.is_cuda:
        # CUDA has no integer GEMM: doubles are exact up to 2**53
        return torch.matmul(a.double(), b.double()).round().to(a.dtype)
    if a.dtype in (torch.int64, torch.int32):
        return torch.matmul(a, b)
    return torch.matmul(a.long(), b.long()).to(a.dtype)  # wraps like the C types


def _host_ints(t: Tensor | None) -> list[int] | None:
    # shape-defining inputs (pads, sizes...) must be known on the host
    if t is None or t.numel() == 0:
        return None
    return [int(v) for v in t.reshape(-1).tolist()]


# ---------------------------------------------------------------------- convolution
_CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}
_CONV_T = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}


@kernel("Conv")
def _conv(ctx: KernelContext, xs: list[Tensor | None]) -> list[Tensor]:
    x, w = xs[0], xs[1]
    b = xs[2] if len(xs) > 2 else None
    assert x is not None and w is not None
    nd = x.dim() - 2
    fn = _CONV.get(nd)
    if fn is None:
        raise ExecutionError(
            f"{ctx.node.label()}: Conv over {nd} spatial dims is not supported (1-3)"
        )
    kernel_shape = [int(k) for k in w.shape[2:]]
    strides, dil, pads, auto_pad = window_params(ctx.attrs, nd, kernel_shape)
    begins, ends = [], []
    for i in range(nd):
        pb, pe = resolve_pads(
            x.shape[2 + i], kernel_shape[i], strides[i], dil[i], pads[i], pads[nd + i], auto_pad
        )
        begins.append(pb)
        ends.append(pe)
    if begins != ends:
        x = F.pad(x, _torch_pads(begins, ends))
        begins = [0] * nd
    with exact_fp32(x):
        y = fn(x, w, b, strides, begins, dil, int(ctx.attr("group")))
    return [y]


@kernel("ConvTranspose")
def _conv_transpose(ctx: KernelContext, xs: list[Tensor | None]) -> list[Tensor]:
    x, w = xs[0], xs[1]
    b = xs[2] if len(xs) > 2 else None
    assert x is not None and w is not None
    nd = x.dim() - 2
    fn = _CONV_T.get(nd)
    if fn is None:
        raise ExecutionError(
            f"{ctx.node.label()}: ConvTranspose over {nd} spatial dims is not supported (1-3)"
        )
    kernel_shape = [int(k) for k in w.shape[2:]]
    strides, dil, pads, auto_pad = window_params(ctx.attrs, nd, kernel_shape)
    outpad = list(ctx.attr("output_padding") or [0] * nd)
    out_shape = ctx.attr("output_shape")
    if out_shape and len(out_shape) == nd + 2:
        out_shape = out_shape[2:]
    begins, ends, outs = conv_transpose_geometry(
        list(x.shape[2:]),
        kernel_shape,
        strides,
        dil,
        pads,
        outpad,
        [int(v) for v in out_shape] if out_shape else None,
        auto_pad,
    )
    group = int(ctx.attr("group"))
    simple = (
        begins == ends
        and min(begins, default=0) >= 0
        and all(0 <= outpad[i] < max(strides[i], dil[i]) for i in range(nd))
        and all(
            outs[i]
            == strides[i] * (x.shape[2 + i] - 1)
            + (kernel_shape[i] - 1) * dil[i]
            + 1
            + outpad[i]
            - 2 * begins[i]
            for i in range(nd)
        )
    )
    with exact_fp32(x):
        if simple:
            return [fn(x, w, b, strides, begins, outpad, group, dil)]
        y = fn(x, w, None, strides, 0, 0, group, dil)
    # crop (negative) or zero-extend to the ONNX output window
    spec = []
    for i in reversed(range(nd)):
        full = y.shape[2 + i]
        spec += [-begins[i], outs[i] + begins[i] - full]
    y = F.pad(y, spec)
    if b is not None:
        y = y + _bcast_param(b, y.dim())
    return [y]


# ---------------------------------------------------------------------- pooling
class _PoolGeom:
    def __init__(self, ctx: KernelContext, x: Tensor):
        self.kernel = [int(k) for k in ctx.attr("kernel_shape")]
        nd = self.nd = len(self.kernel)
        if x.dim() != nd + 2:
            raise ExecutionError(
                f"{ctx.node.label()}: kernel_shape {self.kernel} needs a rank-{nd + 2} input, "
                f"got {list(x.shape)}"
            )
        self.strides, self.dil, pads, auto_pad = window_params(ctx.attrs, nd, self.kernel)
        ceil_mode = bool(ctx.attr("ceil_mode"))
        self.sizes = [int(s) for s in x.shape[2:]]
        self.begins: list[int] = []
        self.ends: list[int] = []
        self.outs: list[int] = []
        self.extra: list[int] = []  # padding past the end that ceil_mode windows reach into
        for i in range(nd):
            k, s, d = self.kernel[i], self.strides[i], self.dil[i]
            pb, pe = resolve_pads(self.sizes[i], k, s, d, pads[i], pads[nd + i], auto_pad)
            o = window_out(self.sizes[i], k, s, d, pads[i], pads[nd + i], auto_pad, ceil_mode)
            assert isinstance(o, int)
            if o <= 0:
                raise ExecutionError(
                    f"{ctx.node.label()}: kernel {self.kernel} does not fit input {list(x.shape)}"
                )
            need = (o - 1) * s + (k - 1) * d + 1
            self.begins.append(pb)
            self.ends.append(pe)
            self.outs.append(o)
            self.extra.append(max(0, need - (self.sizes[i] + pb + pe)))
        self.ceil_mode = ceil_mode

    @property
    def symmetric(self) -> bool:
        """Pads torch's pooling functions take: equal on both sides, at most half the kernel."""
        return self.begins == self.ends and all(
            self.begins[i] <= self.kernel[i] // 2 for i in range(self.nd)
        )

    def pad(self, x: Tensor, value: float, extra_value: float | None = None) -> Tensor:
        ends = [e + x_ for e, x_ in zip(self.ends, self.extra)]
        if extra_value is None or extra_value == value or not any(self.extra):
            return F.pad(x, _torch_pads(self.begins, ends), value=value)
        x = F.pad(x, _torch_pads(self.begins, self.ends), value=value)
        return F.pad(x, _torch_pads([0] * self.nd, self.extra), value=extra_value)

    def windows(self, xp: Tensor) -> Tensor:
        """[N, C, *outs, K] view of the windows of a padded tensor."""
        for i in range(self.nd):
            k, s, d = self.kernel[i], self.strides[i], self.dil[i]
            xp = xp.unfold(2 + i, (k - 1) * d + 1, s)
            if d > 1:
                xp = xp[..., ::d]
            xp = xp.narrow(2 + i, 0, self.outs[i])
        return xp.flatten(-self.nd)


_MAXPOOL = {1: F.max_pool1d, 2: F.max_pool2d, 3: F.max_pool3d}
_AVGPOOL = {1: F.avg_pool1d, 2: F.avg_pool2d, 3: F.avg_pool3d}


def _fill_low(dtype: torch.dtype) -> float:
    if dtype.is_floating_point:
        return -math.inf
    if dtype == torch.bool:
        return 0
    return int(torch.iinfo(dtype).min)


def _plane_to_onnx_index(
    idx: Tensor, sizes: list[int], channels_before: Tensor, storage_order: int
) -> Tensor:
    """Index within one (n, c) plane, row-major -> ONNX Indices (whole tensor, either order)."""
    if storage_order == 1 and len(sizes) > 1:
        coords = []
        rest = idx
        for s in reversed(sizes):
            coords.append(rest % s)
            rest = rest // s
        coords.reverse()
        col = torch.zeros_like(idx)
        for c, s in zip(reversed(coords), reversed(sizes)):
            col = col * s + c
        idx = col
    return idx + channels_before * math.prod(sizes)


@kernel("MaxPool")
def _max_pool(ctx: KernelContext, xs: list[Tensor | None]) -> list[Tensor]:
    x = xs[0]
    assert x is not None
    g = _PoolGeom(ctx, x)
    want_idx = ctx.want(1)
    storage = int(ctx.attr("storage_order") or 0)
    n, c = x.shape[0], x.shape[1]
    plane = torch.arange(n * c, device=x.device).reshape(n, c, *([1] * g.nd))
    fast = _MAXPOOL.get(g.nd)
    if fast is not None and g.symmetric and x.is_floating_point():
        r = fast(x, g.kernel, g.strides, g.begins, g.dil, g.ceil_mode, return_indices=want_idx)
        y = r[0] if want_idx else r
        if list(y.shape[2:]) == g.outs:
            if not want_idx:
                return [y]
            return [y, _plane_to_onnx_index(r[1], g.sizes, plane, storage)]
    win = g.windows(g.pad(x, _fill_low(x.dtype)))
    y = win.amax(-1)
    if not want_idx:
        return [y]
    arg = win.argmax(-1)
    # window offset -> input coordinates -> row-major plane index
    coords = []
    rest = arg
    for i in reversed(range(g.nd)):
        coords.append(rest % g.kernel[i])
        rest = rest // g.kernel[i]
    coords.reverse()
    flat = torch.zeros_like(arg)
    for i in range(g.nd):
        shape = [1] * (2 + g.nd)
        shape[2 + i] = g.outs[i]
        o = torch.arange(g.outs[i], device=x.device).reshape(shape)
        pos = o * g.strides[i] + coords[i] * g.dil[i] - g.begins[i]
        flat = flat * g.sizes[i] + pos
    return [y, _plane_to_onnx_index(flat, g.sizes, plane, storage)]


def _avg_windows(g: _PoolGeom, x: Tensor, include_pad: bool) -> tuple[Tensor, Tensor]:
    """(window sums, element counts) for averaging-style pools, in the accumulation dtype."""
    win = g.windows(g.pad(x, 0.0))
    ones = torch.ones([1, 1, *g.sizes], dtype=x.dtype, device=x.device)
    count = g.windows(g.pad(ones, 1.0 if include_pad else 0.0, extra_value=0.0)).sum(-1)
    return win.sum(-1), count


@kernel("AveragePool")
def _avg_pool(ctx: KernelContext, xs: list[Tensor | None]) -> list[Tensor]:
    x = xs[0]
    assert x is not None
    g = _PoolGeom(ctx, x)
    include = bool(ctx.attr("count_include_pad"))
    fast = _AVGPOOL.get(g.nd)
    if (
        fast is not None
        and g.symmetric
        and all(d == 1 for d in g.dil)
        and x.dtype in (torch.float32, torch.float64)
    ):
        y = fast(x, g.kernel, g.strides, g.begins, g.ceil_mode, include)
        if list(y.shape[2:]) == g.outs:
            return [y]
    s, count = _avg_windows(g, x.to(_acc_dtype(x)), include)
    return [(s / count).to(x.dtype)]


@kernel("LpPool")
def _lp_pool(ctx: KernelContext, xs: list[Tensor | None]) -> list[Tensor]:
    x = xs[0]
    assert x is not None
    g = _PoolGeom(ctx, x)
    p = float(ctx.attr("p"))
    xa = x.to(_acc_dtype(x)).abs()
    s = g.windows(g.pad(xa.pow(p) if p != 2 else xa * xa, 0.0)).sum(-1)
    y = s.sqrt() if p == 2 else s.pow(1.0 / p)
    return [y.to(x.dtype)]


@kernel("GlobalAveragePool")
def _global_avg(ctx: KernelContext, xs: list[Tensor | None]) -> list[Tensor]:
    x = xs[0]
    assert x is not None
    dims = list(range(2, x.dim()))
    return [x.to(_acc_dtype(x)).mean(dims, keepdim=True).to(x.dtype) if dims else x]


@kernel("GlobalMaxPool")
def _global_max(ctx: KernelContext, xs: list[Tensor | None]) -> list[Tensor]:
    x = xs[0]
    assert x is not None
    dims = list(range(2, x.dim()))
    return [x.amax(dims, keepdim=True) if dims else x]


@kernel("GlobalLpPool")
def _global_lp(ctx: KernelContext, xs: list[Tensor | None]) -> list[Tensor]:
    x = xs[0]
    assert x is not None
    dims = list(range(2, x.dim()))
    p = float(ctx.attr("p"))
    xa = x.to(_acc_dtype(x)).abs()
    y = xa.pow(p).sum(dims, keepdim=True).pow(1.0 / p)
    return [y.to(x.dtype)]


# ---------------------------------------------------------------------- normalization
@kernel("BatchNormalization")
def _batch_norm(ctx: KernelContext, xs: list[Tensor | None]) -> list[Tensor]:
    x, scale, bias, mean, var = xs[:5]
    assert x is not None and scale is not None and bias is not None
    assert mean is not None and var is not None
    eps = float(ctx.attr("epsilon"))
    training = bool(ctx.attr("training_mode")) or (ctx.opset < 14 and ctx.n_out() > 1)
    if training:
        dims = [0, *range(2, x.dim())]
        xf = x.to(_acc_dtype(x))
        bm = xf.mean(dims)
        bv = xf.var(dims, unbiased=False)
        y = (xf - _bcast_param(bm, x.dim())) * torch.rsqrt(_bcast_param(bv, x.dim()) + eps)
        y = y * _bcast_param(scale, x.dim()) + _bcast_param(bias, x.dim())
        mom = float(ctx.attr("momentum"))
        run_mean = (mean * mom + bm * (1 - mom)).to(mean.dtype)
        run_var = (var * mom + bv * (1 - mom)).to(var.dtype)
        return [y.to(x.dtype), run_mean, run_var, bm.to(mean.dtype), bv.to(var.dtype)]
    params = (scale, bias, mean, var)
    if all(p.dim() == 1 and p.dtype == x.dtype for p in params) and x.dim() >= 2:
        # same formulation as onnxruntime: x * (scale / sqrt(var + eps)) + shift
        return [F.batch_norm(x, mean, var, scale, bias, False, 0.0, eps)]
    cdt = _acc_dtype(x)
    r = x.dim()
    inv = scale.to(cdt) / torch.sqrt(var.to(cdt) + eps)
    shift = bias.to(cdt) - mean.to(cdt) * inv
    y = x.to(cdt) * _bcast_param(inv, r) + _bcast_param(shift, r)
    return [y.to(x.dtype)]


def _stage_dtype(ctx: KernelContext, x: Tensor) -> torch.dtype:
    """Stage-one precision from stash_type, never below the input's own precision."""
    want = dtypes.to_torch(STASH_DTYPES.get(int(ctx.attr("stash_type") or 1), "float32"))
    if x.dtype == torch.float64 or want == torch.float64:
        return torch.float64
    return want if want in _HALF and x.dtype == want else torch.float32


@kernel("InstanceNormalization")
def _instance_norm(ctx: KernelContext, xs: list[Tensor | None]) -> list[Tensor]:
    x, scale, bias = xs[:3]
    assert x is not None and scale is not None and bias is not None
    eps = float(ctx.attr("epsilon"))
    dims = list(range(2, x.dim()))
    xf = x.to(_acc_dtype(x))
    mean = xf.mean(dims, keepdim=True)
    var = xf.var(dims, unbiased=False, keepdim=True)
    y = (xf - mean) * torch.rsqrt(var + eps)
    y = y * _bcast_param(scale.to(xf.dtype), x.dim()) + _bcast_param(bias.to(xf.dtype), x.dim())
    return [y.to(x.dtype)]


@kernel("LayerNormalization")
def _layer_norm(ctx: KernelContext, xs: list[Tensor | None]) -> list[Tensor]:
    x, scale = xs[0], xs[1]
    bias = xs[2] if len(xs) > 2 else None
    assert x is not None and scale is not None
    r = x.dim()
    axis = int(ctx.attr("axis"))
    axis = axis + r if axis < 0 else axis
    eps = float(ctx.attr("epsilon"))
    norm_shape = list(x.shape[axis:])
    want_stats = ctx.want(1) or ctx.want(2)
    if (
        not want_stats
        and x.dtype in (torch.float32, torch.float64)
        and list(scale.shape) == norm_shape
        and scale.dtype == x.dtype
        and (bias is None or (list(bias.shape) == norm_shape and bias.dtype == x.dtype))
    ):
        return [F.layer_norm(x, norm_shape, scale, bias, eps)]
    cdt = _stage_dtype(ctx, x)
    dims = list(range(axis, r))
    xf = x.to(cdt)
    mean = xf.mean(dims, keepdim=True)
    d = xf - mean
    inv = torch.rsqrt((d * d).mean(dims, keepdim=True) + eps)
    y = (d * inv).to(x.dtype) * scale
    if bias is not None:
        y = y + bias
    stash = dtypes.to_torch(STASH_DTYPES.get(int(ctx.attr("stash_type") or 1), "float32"))
    return [y.to(x.dtype), mean.to(stash), inv.to(stash)]


@kernel("RMSNormalization")
def _rms_norm(ctx: KernelContext, xs: list[Tensor | None]) -> list[Tensor]:
    x, scale = xs[0], xs[1]
    assert x is not None and scale is not None
    r = x.dim()
    axis = int(ctx.attr("axis"))
    axis = axis + r if axis < 0 else axis
    cdt = _stage_dtype(ctx, x)
    xf = x.to(cdt)
    ms = (xf * xf).mean(list(range(axis, r)), keepdim=True)
    # Normalized goes back to X's type; Y takes the type of scale (ONNX's V)
    y = (xf * torch.rsqrt(ms + float(ctx.attr("epsilon")))).to(x.dtype)
    return [y.to(scale.dtype) * scale]


@kernel("GroupNormalization")
def _group_norm(ctx: KernelContext, xs: list[Tensor | None]) -> list[Tensor]:
    x, scale, bias = xs[:3]
    assert x is not None and scale is not None and bias is not None
    g = int(ctx.attr("num_groups"))
    n, c = x.shape[0], x.shape[1]
    cdt = _stage_dtype(ctx, x)
    xf = x.to(cdt).reshape(n, g, -1)
    mean = xf.mean(-1, keepdim=True)
    var = xf.var(-1, unbiased=False, keepdim=True)
    y = ((xf - mean) * torch.rsqrt(var + float(ctx.attr("epsilon")))).reshape(x.shape)
    if scale.numel() == g and g != c:  # opset-18 form: one scale/bias per group
        scale = scale.repeat_interleave(c // g)
        bias = bias.repeat_interleave(c // g)
    y = y.to(x.dtype) * _bcast_param(scale, x.dim()) + _bcast_param(bias, x.dim())
    return [y]


@kernel("LRN")
def _lrn(ctx: KernelContext, xs: list[Tensor | None]) -> list[Tensor]:
    x = xs[0]
    assert x is not None
    size = int(ctx.attr("size"))
    alpha, beta, bias = float(ctx.attr("alpha")), float(ctx.attr("beta")), float(ctx.attr("bias"))
    xf = x.to(_acc_dtype(x))
    sq = (xf * xf).movedim(1, -1)
    lo, hi = (size - 1) // 2, math.ceil((size - 1) / 2)
    s = F.pad(sq, [lo, hi]).unfold(-1, size, 1).sum(-1).movedim(-1, 1)
    return [(xf / (bias + (alpha / size) * s).pow(beta)).to(x.dtype)]


@kernel("LpNormalization")
def _lp_norm(ctx: KernelContext, xs: list[Tensor | None]) -> list[Tensor]:
    x = xs[0]
    assert x is not None
    p = int(ctx.attr("p"))
    axis = int(ctx.attr("axis"))
    xf = x.to(_acc_dtype(x))
    if p == 1:
        norm = xf.abs().sum(axis, keepdim=True)
    elif p == 2:
        norm = (xf * xf).sum(axis, keepdim=True).sqrt()
    else:
        raise ExecutionError(f"{ctx.node.label()}: p must be 1 or 2, got {p}")
    y = torch.where(norm == 0, torch.zeros((), dtype=xf.dtype, device=x.device), xf / norm)
    return [y.to(x.dtype)]


@kernel("MeanVarianceNormalization")
def _mvn(ctx: KernelContext, xs: list[Tensor | None]) -> list[Tensor]:
    x = xs[0]
    assert x is not None
    axes = [int(a) for a in ctx.attr("axes")]
    xf = x.to(_acc_dtype(x))
    mean = xf.mean(axes, keepdim=True)
    d = xf - mean
    std = (d * d).mean(axes, keepdim=True).sqrt()
    return [(d / (std + 1e-9)).to(x.dtype)]


# ---------------------------------------------------------------------- matmul family
@kernel("MatMul")
def _matmul(ctx: KernelContext, xs: list[Tensor | None]) -> list[Tensor]:
    a, b = xs[0], xs[1]
    assert a is not None and b is not None
    return [matmul(a, b)]


@kernel("Gemm")
def _gemm(ctx: KernelContext, xs: list[Tensor | None]) -> list[Tensor]:
    a, b = xs[0], xs[1]
    c = xs[2] if len(xs) > 2 else None
    assert a is not None and b is not None
    if ctx.attr("transA"):
        a = a.t()
    if ctx.attr("transB"):
        b = b.t()
    alpha, beta = float(ctx.attr("alpha")), float(ctx.attr("beta"))
    y = matmul(a, b)
    if alpha != 1.0:
        y = y * alpha
    if c is not None and beta != 0.0:
        y = y + (c if beta == 1.0 else c * beta)
    return [y.to(a.dtype)]


@kernel("Einsum")
def _einsum(ctx: KernelContext, xs: list[Tensor | None]) -> list[Tensor]:
    ts = [t for t in xs if t is not None]
    eq = str(ctx.attr("equation")).replace(" ", "")
    dt = ts[0].dtype
    if dt == torch.bfloat16 or dt == torch.float16 and not ts[0].is_cuda:
        # accumulate in float32 like the ONNX reference does for bfloat16
        return [torch.einsum(eq, *[t.float() for t in ts]).to(dt)]
    if not ts[0].is_floating_point():
        if ts[0].is_cuda:
            return [torch.einsum(eq, *[t.double() for t in ts]).round().to(dt)]
        return [torch.einsum(eq, *[t.long() for t in ts]).to(dt)]
    with exact_fp32(ts[0]):
        return [torch.einsum(eq, *ts)]


# ---------------------------------------------------------------------- attention
def _safe_softmax(x: Tensor) -> Tensor:
    """Softmax over the last axis whose all -inf rows come out as zeros, not NaN."""
    m = x.amax(-1, keepdim=True)
    zero = torch.zeros((), dtype=x.dtype, device=x.device)
    e = torch.exp(x - torch.where(torch.isneginf(m), zero, m))
    s = e.sum(-1, keepdim=True)
    return e / torch.where(s == 0, torch.ones((), dtype=x.dtype, device=x.device), s)


def _bias_where(allowed: Tensor, dtype: torch.dtype) -> Tensor:
    z = torch.zeros((), dtype=dtype, device=allowed.device)
    return torch.where(allowed, z, torch.full((), -math.inf, dtype=dtype, device=allowed.device))


def _causal_or_window(
    base: Tensor, offset: int | Tensor, left: int, right: int, causal: bool
) -> Tensor:
    """Adds the bottom-right aligned causal and/or sliding-window bias to base."""
    sq, t = base.shape[-2], base.shape[-1]
    dev = base.device
    i = torch.arange(sq, device=dev).reshape(sq, 1)
    j = torch.arange(t, device=dev).reshape(1, t)
    per_batch = isinstance(offset, Tensor)
    pos = i + offset.reshape(-1, 1, 1) if per_batch else i + int(offset)  # type: ignore[union-attr]
    diff = pos - j
    if causal:
        allowed = diff >= 0
    else:
        allowed = torch.ones_like(diff, dtype=torch.bool)
        if left >= 0:
            allowed = allowed & (diff <= left)
        if right >= 0:
            allowed = allowed & (-diff <= right)
    bias = _bias_where(allowed, base.dtype)
    if per_batch:
        bias = bias.reshape(bias.shape[0], 1, sq, t)
    return base + bias


@kernel("Attention")
def _attention(ctx: KernelContext, xs: list[Tensor | None]) -> list[Tensor]:
    xs = list(xs) + [None] * (7 - len(xs))
    q, k, v, mask, past_k, past_v, nonpad = xs[:7]
    assert q is not None and k is not None and v is not None
    dt = q.dtype
    dev = q.device
    rank3 = q.dim() == 3
    b = q.shape[0]
    hq_attr, hkv_attr = ctx.attr("q_num_heads"), ctx.attr("kv_num_heads")
    if rank3:
        if hq_attr is None or hkv_attr is None:
            raise ExecutionError(
                f"{ctx.node.label()}: 3-D inputs need q_num_heads and kv_num_heads"
            )
        hq, hkv = int(hq_attr), int(hkv_attr)
        q = q.reshape(b, q.shape[1], hq, -1).transpose(1, 2)
        k = k.reshape(b, k.shape[1], hkv, -1).transpose(1, 2)
        v = v.reshape(b, v.shape[1], hkv, -1).transpose(1, 2)
    hq = q.shape[1]
    scale_attr = ctx.attr("scale")
    scale = float(scale_attr) if scale_attr is not None else 1.0 / math.sqrt(q.shape[3])
    # Q and K are each scaled by sqrt(scale), rounded to the input type, like the ONNX function
    sc = torch.tensor(math.sqrt(scale), dtype=dt, device=dev)
    if past_k is not None:
        k = torch.cat([past_k, k], dim=2)
    if past_v is not None:
        v = torch.cat([past_v, v], dim=2)
    present_k, present_v = k, v
    sq, t = q.shape[2], k.shape[2]
    left, right = int(ctx.attr("left_window_size")), int(ctx.attr("right_window_size"))
    windowed = left >= 0 or right >= 0
    causal = bool(ctx.attr("is_causal"))

    if mask is not None and mask.shape[-1] < t:
        fill = False if mask.dtype == torch.bool else -math.inf
        mask = F.pad(mask, [0, t - mask.shape[-1]], value=fill)
    if mask is not None and mask.dtype == torch.bool:
        mask = _bias_where(mask, dt)
    zeros = torch.zeros((sq, t), dtype=dt, device=dev)
    if past_k is None and nonpad is not None:
        offset: int | Tensor = nonpad.reshape(-1).to(torch.int64) - sq
    else:
        offset = past_k.shape[2] if past_k is not None else 0
    bias = zeros if mask is None else zeros + mask
    if causal:
        bias = _causal_or_window(bias, offset, -1, -1, True)
    if windowed:
        bias = _causal_or_window(zeros + bias, offset, left, right, False)
    if nonpad is not None:
        valid = torch.arange(t, device=dev).reshape(1, t) < nonpad.reshape(-1, 1).to(torch.int64)
        bias = bias + _bias_where(valid, dt).reshape(b, 1, 1, t)

    hkv = k.shape[1]
    if hq != hkv and hq % hkv == 0:
        k = k.repeat_interleave(hq // hkv, dim=1)
        v = v.repeat_interleave(hq // hkv, dim=1)
    qk = matmul(q * sc, (k * sc).transpose(-1, -2))
    softcap = float(ctx.attr("softcap") or 0.0)
    if softcap > 0:
        qk = torch.tanh(qk / softcap) * softcap
    scores = qk + bias
    mode = int(ctx.attr("qk_matmul_output_mode") or 0)
    qk_out = scores if mode == 2 else qk
    prec = ctx.attr("softmax_precision")
    if prec is not None:
        scores = scores.to(dtypes.to_torch(dtypes.from_onnx(int(prec))))
    probs = _safe_softmax(scores)
    # rows where every key is masked out give zeros (decided on the bias, not the scores)
    all_masked = torch.isneginf(bias.amax(-1, keepdim=True))
    probs = torch.where(all_masked, torch.zeros((), dtype=probs.dtype, device=dev), probs)
    if mode == 3:
        qk_out = probs
    probs = probs.to(dt)
    y = matmul(probs, v)
    if rank3:
        y = y.transpose(1, 2).reshape(b, sq, -1)
    return [y, present_k, present_v, qk_out.to(dt)]


# ---------------------------------------------------------------------- resize
def _resize_coeffs(mode: str, ratio: Tensor, scale: float, a: float, antialias: bool) -> Tensor:
    """[out, taps] interpolation weights for ratios in (0, 1] (float64)."""
    r = ratio.unsqueeze(1)
    if mode == "linear":
        if not antialias:
            return torch.cat([1 - r, r], dim=1)
        s = min(scale, 1.0)
        start = int(math.floor(-1 / s) + 1)
        taps = torch.arange(start, 2 - start, dtype=torch.float64, device=ratio.device)
        c = (1 - ((taps - r) * s).abs()).clamp(0, 1)
        return c / c.sum(1, keepdim=True)
    # cubic
    if not antialias:
        r1, r2 = r + 1, 1 - r
        return torch.cat(
            [
                ((a * r1 - 5 * a) * r1 + 8 * a) * r1 - 4 * a,
                ((a + 2) * r - (a + 3)) * r * r + 1,
                ((a + 2) * r2 - (a + 3)) * r2 * r2 + 1,
                ((a * (r2 + 1) - 5 * a) * (r2 + 1) + 8 * a) * (r2 + 1) - 4 * a,
            ],
            dim=1,
        )
    s = min(scale, 1.0)
    start = int(math.floor(-2 / s) + 1)
    taps = torch.arange(start, 2 - start, dtype=torch.float64, device=ratio.device)
    x = (s * (taps - r)).abs()
    near = ((a + 2) * x - (a + 3)) * x * x + 1
    far = ((a * x - 5 * a) * x + 8 * a) * x - 4 * a
    c = torch.where(x <= 1, near, torch.where(x < 2, far, torch.zeros_like(x)))
    return c / c.sum(1, keepdim=True)


def _resize_axis(
    y: Tensor,
    axis: int,
    out_n: int,
    scale: float,
    roi: tuple[float, float, float] | None,
    attrs: dict,
) -> Tensor:
    """Resize one axis. roi is (end - start, start * (n - 1), (end - start) * (n - 1) / 2),
    each rounded in the roi tensor's dtype like the ONNX reference, so ties round alike."""
    in_n = y.shape[axis]
    dev = y.device
    ctm = attrs["coordinate_transformation_mode"]
    o = torch.arange(out_n, dtype=torch.float64, device=dev)
    out_f = scale * in_n  # the ONNX reference uses the unrounded output length here
    if ctm == "half_pixel":
        x = (o + 0.5) / scale - 0.5
    elif ctm == "half_pixel_symmetric":
        offset = in_n / 2 * (1 - out_n / out_f)
        x = offset + (o + 0.5) / scale - 0.5
    elif ctm == "pytorch_half_pixel":
        x = (o + 0.5) / scale - 0.5 if out_n > 1 else torch.zeros_like(o)
    elif ctm == "align_corners":
        x = o * (in_n - 1) / (out_f - 1) if out_f != 1 else torch.zeros_like(o)
    elif ctm == "asymmetric":
        x = o / scale
    elif ctm == "tf_crop_and_resize":
        width, start, middle = roi if roi is not None else (1.0, 0.0, (in_n - 1) / 2)
        if out_f == 1:
            x = torch.full_like(o, middle)
        else:
            x = o * width * (in_n - 1) / (out_f - 1)
        x = x + start
    else:
        raise ExecutionError(f"Resize: unknown coordinate_transformation_mode '{ctm}'")
    mode = attrs["mode"]
    if mode == "nearest":
        nm = attrs["nearest_mode"]
        if nm == "round_prefer_floor":
            idx = torch.ceil(x - 0.5)
        elif nm == "round_prefer_ceil":
            idx = torch.floor(x + 0.5)
        elif nm == "floor":
            idx = torch.floor(x)
        elif nm == "ceil":
            idx = torch.ceil(x)
        else:
            raise ExecutionError(f"Resize: unknown nearest_mode '{nm}'")
        out = y.index_select(axis, idx.clamp(0, in_n - 1).to(torch.int64))
    elif mode in ("linear", "cubic"):
        xf = torch.floor(x)
        is_int = x == xf
        ratio = torch.where(is_int, torch.ones_like(x), x - xf)
        coeffs = _resize_coeffs(
            mode, ratio, scale, float(attrs["cubic_coeff_a"]), bool(attrs["antialias"])
        )
        n = coeffs.shape[1]
        if n % 2 == 0:
            first = torch.where(is_int, -(n // 2), -(n // 2) + 1)
        else:
            first = torch.where(x - xf <= 0.5, -((n - 1) // 2), -((n - 1) // 2) + 1)
        idx = xf.to(torch.int64).unsqueeze(1) + first.unsqueeze(1) + torch.arange(n, device=dev)
        if attrs["exclude_outside"]:
            coeffs = torch.where((idx < 0) | (idx >= in_n), torch.zeros_like(coeffs), coeffs)
            tot = coeffs.sum(1, keepdim=True)
            coeffs = coeffs / torch.where(tot == 0, torch.ones_like(tot), tot)
        g = y.index_select(axis, idx.clamp(0, in_n - 1).reshape(-1))
        g = g.reshape(*y.shape[:axis], out_n, n, *y.shape[axis + 1 :])
        w = coeffs.to(y.dtype).reshape(*([1] * axis), out_n, n, *([1] * (y.dim() - axis - 1)))
        out = (g * w).sum(axis + 1)
    else:
        raise ExecutionError(f"Resize: unknown mode '{mode}'")
    if ctm == "tf_crop_and_resize":
        bad = ((x < 0) | (x > in_n - 1)).reshape(
            *([1] * axis), out_n, *([1] * (y.dim() - axis - 1))
        )
        fill = torch.tensor(float(attrs["extrapolation_value"]), dtype=out.dtype, device=dev)
        out = torch.where(bad, fill, out)
    return out


@kernel("Resize")
def _resize(ctx: KernelContext, xs: list[Tensor | None]) -> list[Tensor]:
    xs = list(xs) + [None] * (4 - len(xs))
    x, roi_t, scales_t, sizes_t = xs[:4]
    assert x is not None
    r = x.dim()
    attrs = ctx.attrs
    axes = [a + r if a < 0 else a for a in (ctx.attr("axes") or range(r))]
    in_sizes = [int(s) for s in x.shape]
    scales: dict[int, float] = {}
    outs: dict[int, int] = {}
    sizes = _host_ints(sizes_t)
    if sizes is not None:
        if len(sizes) != len(axes):
            raise ExecutionError(
                f"{ctx.node.label()}: sizes has {len(sizes)} values for {len(axes)} axes"
            )
        policy = ctx.attr("keep_aspect_ratio_policy")
        if policy in ("not_larger", "not_smaller"):
            ratios = [sizes[i] / in_sizes[a] for i, a in enumerate(axes)]
            s = min(ratios) if policy == "not_larger" else max(ratios)
            for a in axes:
                scales[a] = s
                outs[a] = int(s * in_sizes[a] + 0.5)
        else:
            for i, a in enumerate(axes):
                scales[a] = sizes[i] / in_sizes[a]
                outs[a] = sizes[i]
    elif scales_t is not None and scales_t.numel() > 0:
        sc = [float(v) for v in scales_t.double().reshape(-1).tolist()]
        if len(sc) != len(axes):
            raise ExecutionError(
                f"{ctx.node.label()}: scales has {len(sc)} values for {len(axes)} axes"
            )
        for i, a in enumerate(axes):
            scales[a] = sc[i]
            outs[a] = int(math.floor(sc[i] * in_sizes[a]))
    else:
        raise ExecutionError(f"{ctx.node.label()}: needs scales or sizes")
    rois: dict[int, tuple[float, float, float]] = {}
    trivial: dict[int, bool] = {}
    if ctx.attr("coordinate_transformation_mode") == "tf_crop_and_resize" and roi_t is not None:
        rt = roi_t.detach().reshape(-1).cpu()
        if not rt.is_floating_point():
            rt = rt.double()
        n = rt.numel() // 2
        roi_axes = axes if n == len(axes) else list(range(r))
        for i, a in enumerate(roi_axes):
            r0, r1 = rt[i], rt[n + i]
            m = in_sizes[a] - 1
            rois[a] = (float(r1 - r0), float(r0 * m), float((r1 - r0) * m / 2))
            trivial[a] = math.isclose(float(r0), 0.0) and math.isclose(float(r1), 1.0)
    mode = ctx.attr("mode")
    if mode == "nearest":
        y = x
    else:
        cdt = (
            torch.float64
            if x.dtype == torch.float64 or not x.is_floating_point()
            else torch.float32
        )
        y = x.to(cdt)
    for a in axes:
        roi = rois.get(a)
        if outs[a] == in_sizes[a] and math.isclose(scales[a], 1.0) and trivial.get(a, True):
            continue
        if outs[a] == 0:
            shape = list(y.shape)
            shape[a] = 0
            y = y.new_empty(shape)
            continue
        y = _resize_axis(y, a, outs[a], scales[a], roi, attrs)
    if y.dtype != x.dtype:
        if not x.is_floating_point():
            info = torch.iinfo(x.dtype)
            y = y.round().clamp(info.min, info.max)
        y = y.to(x.dtype)
    return [y]


# ---------------------------------------------------------------------- pad
def _pad_index(n: int, pb: int, pe: int, mode: str, dev: torch.device) -> Tensor:
    """Source index for every output position along one axis (edge/reflect/wrap)."""
    j = torch.arange(-pb, n + pe, device=dev)
    if mode == "edge":
        return j.clamp(0, n - 1)
    if mode == "wrap":
        return torch.remainder(j, n)
    if n == 1:
        return torch.zeros_like(j)
    period = 2 * (n - 1)
    j = torch.remainder(j, period)
    return torch.where(j > n - 1, period - j, j)


@kernel("Pad")
def _pad(ctx: KernelContext, xs: list[Tensor | None]) -> list[Tensor]:
    xs = list(xs) + [None] * (4 - len(xs))
    x, pads_t, value, axes_t = xs[:4]
    assert x is not None
    r = x.dim()
    pads = _host_ints(pads_t) or []
    axes = _host_ints(axes_t) if axes_t is not None else list(range(r))
    assert axes is not None
    axes = [a + r if a < 0 else a for a in axes]
    if len(pads) != 2 * len(axes):
        raise ExecutionError(
            f"{ctx.node.label()}: pads has {len(pads)} values for {len(axes)} axes (2 per axis)"
        )
    mode = ctx.attr("mode") or "constant"
    n = len(axes)
    begins, ends = [0] * r, [0] * r
    for i, a in enumerate(axes):
        begins[a], ends[a] = pads[i], pads[n + i]
    # negative pads crop first
    for a in range(r):
        if begins[a] < 0 or ends[a] < 0:
            lo, hi = max(0, -begins[a]), max(0, -ends[a])
            x = x.narrow(a, lo, x.shape[a] - lo - hi)
            begins[a], ends[a] = max(0, begins[a]), max(0, ends[a])
    if not any(begins) and not any(ends):
        return [x]
    if mode == "constant":
        shape = [x.shape[a] + begins[a] + ends[a] for a in range(r)]
        out = x.new_empty(shape)
        if value is not None and value.numel() > 0:
            out.fill_(value.reshape(()).to(x.dtype))
        else:
            out.fill_(0)
        out[tuple(slice(begins[a], begins[a] + x.shape[a]) for a in range(r))] = x
        return [out]
    for a in range(r):
        if begins[a] or ends[a]:
            if x.shape[a] == 0:
                raise ExecutionError(f"{ctx.node.label()}: cannot {mode}-pad an empty axis {a}")
            x = x.index_select(a, _pad_index(x.shape[a], begins[a], ends[a], mode, x.device))
    return [x]


# ---------------------------------------------------------------------- misc
@kernel("Dropout")
def _dropout(ctx: KernelContext, xs: list[Tensor | None]) -> list[Tensor]:
    xs = list(xs) + [None] * (3 - len(xs))
    x, ratio_t, training_t = xs[:3]
    assert x is not None
    mask_dtype = torch.bool if ctx.opset >= 10 else x.dtype
    # training_mode is a runtime flag: reading it is the one host sync this op needs
    training = training_t is not None and bool(training_t.reshape(-1)[0].item())
    ratio = float(ratio_t.reshape(-1)[0].item()) if training and ratio_t is not None else 0.5
    if not training or ratio == 0.0:
        outs = [x]
        if ctx.want(1):
            outs.append(torch.ones(x.shape, dtype=mask_dtype, device=x.device))
        return outs
    gen = None
    seed = ctx.attr("seed")
    if seed is not None:
        gen = torch.Generator(device=x.device)
        gen.manual_seed(int(seed))
    keep = torch.rand(x.shape, generator=gen, device=x.device) >= ratio
    y = (x * keep / (1.0 - ratio)).to(x.dtype)
    return [y, keep.to(mask_dtype)]


@kernel("DepthToSpace")
def _depth_to_space(ctx: KernelContext, xs: list[Tensor | None]) -> list[Tensor]:
    x = xs[0]
    assert x is not None
    bs = int(ctx.attr("blocksize"))
    n, c, h, w = x.shape
    if (ctx.attr("mode") or "DCR") == "DCR":
        t = x.reshape(n, bs, bs, c // (bs * bs), h, w).permute(0, 3, 4, 1, 5, 2)
    else:
        t = x.reshape(n, c // (bs * bs), bs, bs, h, w).permute(0, 1, 4, 2, 5, 3)
    return [t.reshape(n, c // (bs * bs), h * bs, w * bs)]


@kernel("SpaceToDepth")
def _space_to_depth(ctx: KernelContext, xs: list[Tensor | None]) -> list[Tensor]:
    x = xs[0]
    assert x is not None
    bs = int(ctx.attr("blocksize"))
    n, c, h, w = x.shape
    t = x.reshape(n, c, h // bs, bs, w // bs, bs)
    if (ctx.attr("mode") or "DCR") == "DCR":
        t = t.permute(0, 3, 5, 1, 2, 4)
    else:
        t = t.permute(0, 1, 3, 5, 2, 4)
    return [t.reshape(n, c * bs * bs, h // bs, w // bs)]
