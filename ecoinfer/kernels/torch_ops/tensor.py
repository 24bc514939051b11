"""Torch kernels for tensor ops: reshaping, slicing, gather/scatter, index and shape ops.

Kernels run on CPU and CUDA alike; data stays on the input's device. torch lacks most
kernels for uint16/32/64 and float8, so pure data movement views them as same-size signed
ints (_movable) and arithmetic/ordering widens them (_widen).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from ecoinfer.device import host_checks_allowed
from ecoinfer.errors import IndexOutOfRangeError
from ecoinfer.ir import dtypes
from ecoinfer.kernels.broadcast import broadcast_shape
from ecoinfer.kernels.torch_ops.registry import KernelContext, kernel

Tensor = torch.Tensor
_Xs = list[Tensor | None]

_SIGNED_SAME_SIZE = {
    torch.uint16: torch.int16,
    torch.uint32: torch.int32,
    torch.uint64: torch.int64,
}
_FLOAT8 = {
    getattr(torch, n)
    for n in ("float8_e4m3fn", "float8_e4m3fnuz", "float8_e5m2", "float8_e5m2fnuz")
    if hasattr(torch, n)
}
_I64_MIN = -(2**63)


# ---------------------------------------------------------------------------- dtype helpers
def _movable(x: Tensor) -> Tensor:
    """x viewed as a dtype every indexing kernel supports (same bits, same size)."""
    if x.dtype in _SIGNED_SAME_SIZE:
        return x.view(_SIGNED_SAME_SIZE[x.dtype])
    if x.dtype in _FLOAT8:
        return x.view(torch.int8)
    return x


def _restore(y: Tensor, dtype: torch.dtype) -> Tensor:
    return y if y.dtype == dtype else y.view(dtype)


def _widen(x: Tensor, order: bool = False) -> tuple[Tensor, Callable[[Tensor], Tensor]]:
    """x in a dtype torch can do arithmetic (order=False) or comparisons (order=True) on,
    with the function that turns a result back into x's dtype."""
    dt = x.dtype
    if dt == torch.bool:
        return x.to(torch.int64), lambda y: y != 0
    if dt in (torch.uint16, torch.uint32):
        return x.to(torch.int64), lambda y: y.to(dt)
    if dt == torch.uint64:
        v = x.view(torch.int64)
        if order:  # flipping the sign bit maps unsigned order onto signed order
            return v ^ _I64_MIN, lambda y: (y ^ _I64_MIN).view(dt)
        return v, lambda y: y.view(dt)  # two's complement wraps like uint64
    if dt in _FLOAT8:
        return x.to(torch.float32), lambda y: y.to(dt)
    return x, lambda y: y


def _norm_axis(axis: int, rank: int) -> int:
    return axis + rank if axis < 0 else axis


def _ints(t: Tensor | None) -> list[int] | None:
    return None if t is None else [int(v) for v in t.reshape(-1).tolist()]


# ---------------------------------------------------------------------------- index checks
def _range_error(
    ctx: KernelContext, pos: int, value: int, n: int, axis: int
) -> IndexOutOfRangeError:
    name = ctx.node.inputs[pos] if pos < len(ctx.node.inputs) else f"#{pos}"
    valid = f"[{-n}, {n - 1}]" if n > 0 else "none (the axis is empty)"
    return IndexOutOfRangeError(
        f"{ctx.node.label()}: input '{name}' holds index {value}, out of range for axis {axis} "
        f"of size {n} (valid: {valid})"
    )


def _check_index(ctx: KernelContext, idx: Tensor, n: int, pos: int, axis: int) -> None:
    """Raise IndexOutOfRangeError if any index is outside [-n, n-1] (one device sync)."""
    if idx.numel() == 0:
        return
    if not host_checks_allowed(idx):
        # no host sync inside a CUDA-graph capture: the engine runtime checks the graph
        # inputs that index tables before it copies them into the captured buffers
        return
    lo, hi = torch.stack([idx.min(), idx.max()]).tolist()
    if lo < -n:
        raise _range_error(ctx, pos, int(lo), n, axis)
    if hi >= n:
        raise _range_error(ctx, pos, int(hi), n, axis)


def _fix_negative(idx: Tensor, n: int | Tensor) -> Tensor:
    idx = idx.to(torch.int64)
    return torch.where(idx < 0, idx + n, idx)


# ---------------------------------------------------------------------------- simple
@kernel("Identity")
def _identity(ctx: KernelContext, xs: _Xs) -> list[Tensor]:
    return [xs[0]]


@kernel("Shape")
def _shape(ctx: KernelContext, xs: _Xs) -> list[Tensor]:
    x = xs[0]
    r = x.dim()
    start, end = ctx.attr("start", 0), ctx.attr("end", r)
    start = min(max(start + r if start < 0 else start, 0), r)
    end = min(max(end + r if end < 0 else end, 0), r)
    return [torch.tensor(list(x.shape)[start:end], dtype=torch.int64, device=x.device)]


@kernel("Size")
def _size(ctx: KernelContext, xs: _Xs) -> list[Tensor]:
    return [torch.tensor(xs[0].numel(), dtype=torch.int64, device=xs[0].device)]


@kernel("Reshape")
def _reshape(ctx: KernelContext, xs: _Xs) -> list[Tensor]:
    x, shape = xs[0], _ints(xs[1])
    if not ctx.attr("allowzero", 0):
        shape = [x.shape[k] if d == 0 else d for k, d in enumerate(shape)]  # 0 copies the input dim
    return [x.reshape(shape)]


@kernel("Transpose")
def _transpose(ctx: KernelContext, xs: _Xs) -> list[Tensor]:
    x = xs[0]
    perm = ctx.attr("perm") or list(range(x.dim()))[::-1]
    return [x.permute(perm)]


@kernel("Flatten")
def _flatten(ctx: KernelContext, xs: _Xs) -> list[Tensor]:
    x = xs[0]
    axis = _norm_axis(ctx.attr("axis", 1), x.dim())
    return [x.reshape(math.prod(x.shape[:axis]), math.prod(x.shape[axis:]))]


@kernel("Squeeze")
def _squeeze(ctx: KernelContext, xs: _Xs) -> list[Tensor]:
    x = xs[0]
    axes = _ints(xs[1]) if len(xs) > 1 else None
    if axes is None:
        return [x.squeeze()]
    return [x.squeeze(tuple(_norm_axis(a, x.dim()) for a in axes))]


@kernel("Unsqueeze")
def _unsqueeze(ctx: KernelContext, xs: _Xs) -> list[Tensor]:
    x, axes = xs[0], _ints(xs[1]) or []
    r = x.dim() + len(axes)
    for a in sorted(_norm_axis(a, r) for a in axes):  # ascending: each lands at its final place
        x = x.unsqueeze(a)
    return [x]


@kernel("Expand")
def _expand(ctx: KernelContext, xs: _Xs) -> list[Tensor]:
    x, shape = xs[0], _ints(xs[1])
    out = broadcast_shape(tuple(x.shape), tuple(shape))
    return [x.expand(out)]


@kernel("Tile")
def _tile(ctx: KernelContext, xs: _Xs) -> list[Tensor]:
    x, reps = xs[0], _ints(xs[1])
    if not reps:
        return [x.clone()]
    return [_restore(_movable(x).repeat(reps), x.dtype)]


@kernel("Concat")
def _concat(ctx: KernelContext, xs: _Xs) -> list[Tensor]:
    ts = [t for t in xs if t is not None]
    axis = _norm_axis(ctx.attr("axis"), ts[0].dim())
    dt = ts[0].dtype
    return [_restore(torch.cat([_movable(t) for t in ts], axis), dt)]


@kernel("Split")
def _split(ctx: KernelContext, xs: _Xs) -> list[Tensor]:
    x = xs[0]
    axis = _norm_axis(ctx.attr("axis", 0), x.dim())
    sizes = _ints(xs[1]) if len(xs) > 1 else None
    if sizes is None:
        d = x.shape[axis]
        parts = ctx.attr("num_outputs") or ctx.n_out()
        chunk = -(-d // parts)
        sizes = [min(chunk, max(d - k * chunk, 0)) for k in range(parts)]
    return list(torch.split(x, sizes, axis))


@kernel("Slice")
def _slice(ctx: KernelContext, xs: _Xs) -> list[Tensor]:
    x = xs[0]
    starts, ends = _ints(xs[1]) or [], _ints(xs[2]) or []
    axes = _ints(xs[3]) if len(xs) > 3 else None
    steps = _ints(xs[4]) if len(xs) > 4 else None
    axes = axes if axes is not None else list(range(len(starts)))
    steps = steps if steps is not None else [1] * len(starts)
    index: list[slice] = [slice(None)] * x.dim()
    backwards = []
    for a, s, e, st in zip(axes, starts, ends, steps):
        a = _norm_axis(a, x.dim())
        # Python's slice clamping is exactly ONNX's (negative ends, huge values, steps)
        start, stop, step = slice(s, e, st).indices(x.shape[a])
        if step > 0:
            index[a] = slice(start, stop, step)
        else:
            backwards.append((a, torch.arange(start, stop, step, device=x.device)))
    y = x[tuple(index)]
    for a, ids in backwards:
        y = _restore(torch.index_select(_movable(y), a, ids), x.dtype)
    return [y]


# ---------------------------------------------------------------------------- gather / scatter
@kernel("Gather")
def _gather(ctx: KernelContext, xs: _Xs) -> list[Tensor]:
    x, idx = xs[0], xs[1]
    axis = _norm_axis(ctx.attr("axis", 0), x.dim())
    n = x.shape[axis]
    _check_index(ctx, idx, n, 1, axis)
    ids = _fix_negative(idx, n)
    y = torch.index_select(_movable(x), axis, ids.reshape(-1))
    y = y.reshape(tuple(x.shape[:axis]) + tuple(idx.shape) + tuple(x.shape[axis + 1 :]))
    return [_restore(y, x.dtype)]


@kernel("GatherElements")
def _gather_elements(ctx: KernelContext, xs: _Xs) -> list[Tensor]:
    x, idx = xs[0], xs[1]
    axis = _norm_axis(ctx.attr("axis", 0), x.dim())
    n = x.shape[axis]
    _check_index(ctx, idx, n, 1, axis)
    y = torch.gather(_movable(x), axis, _fix_negative(idx, n))
    return [_restore(y, x.dtype)]


def _nd_linear(ctx: KernelContext, idx: Tensor, dims: tuple[int, ...], first_axis: int) -> Tensor:
    """Check (…, k) index tuples against dims, then flatten them to linear offsets."""
    k = len(dims)
    if k == 0:
        return torch.zeros(idx.shape[:-1], dtype=torch.int64, device=idx.device)
    idx = idx.to(torch.int64)
    # per-dim arithmetic with Python ints: no host->device copies, so it can be captured
    # in a CUDA graph (the check itself syncs, and is skipped while capturing: the engine
    # runtime validates its index inputs before replaying)
    if idx.numel() and host_checks_allowed(idx):
        for j, n in enumerate(dims):
            c = idx[..., j]
            bad = (c < -n) | (c >= n)
            if bool(bad.any()):
                pos = bad.reshape(-1).nonzero()[0].item()
                raise _range_error(ctx, 1, int(c.reshape(-1)[pos]), n, first_axis + j)
    lin = None
    stride = 1
    for j in range(k - 1, -1, -1):
        c = idx[..., j]
        c = torch.where(c < 0, c + dims[j], c)
        lin = c * stride if lin is None else lin + c * stride
        stride *= dims[j]
    return lin


@kernel("GatherND")
def _gather_nd(ctx: KernelContext, xs: _Xs) -> list[Tensor]:
    x, idx = xs[0], xs[1]
    b = ctx.attr("batch_dims", 0)
    k = idx.shape[-1]
    batch = tuple(x.shape[:b])
    nb = math.prod(batch)
    dims = tuple(x.shape[b : b + k])
    rest = tuple(x.shape[b + k :])
    lin = _nd_linear(ctx, idx, dims, b).reshape(nb, -1)  # (batch, m)
    data = _movable(x).reshape((nb, math.prod(dims)) + rest)
    rows = torch.arange(nb, device=x.device).unsqueeze(1)
    y = data[rows, lin]  # (batch, m, *rest)
    return [_restore(y.reshape(tuple(idx.shape[:-1]) + rest), x.dtype)]


_REDUCE = {"add": "sum", "mul": "prod", "max": "amax", "min": "amin"}


@kernel(["ScatterElements", "Scatter"])
def _scatter_elements(ctx: KernelContext, xs: _Xs) -> list[Tensor]:
    x, idx, upd = xs[0], xs[1], xs[2]
    axis = _norm_axis(ctx.attr("axis", 0), x.dim())
    n = x.shape[axis]
    _check_index(ctx, idx, n, 1, axis)
    ids = _fix_negative(idx, n)
    red = ctx.attr("reduction", "none")
    if red == "none":
        y = _movable(x).scatter(axis, ids, _movable(upd))
        return [_restore(y, x.dtype)]
    xw, back = _widen(x, order=red in ("max", "min"))
    uw, _ = _widen(upd, order=red in ("max", "min"))
    return [back(xw.scatter_reduce(axis, ids, uw, reduce=_REDUCE[red], include_self=True))]


@kernel("ScatterND")
def _scatter_nd(ctx: KernelContext, xs: _Xs) -> list[Tensor]:
    x, idx, upd = xs[0], xs[1], xs[2]
    k = idx.shape[-1]
    dims = tuple(x.shape[:k])
    rest = tuple(x.shape[k:])
    lin = _nd_linear(ctx, idx, dims, 0).reshape(-1)
    flat = (math.prod(dims),) + rest
    red = ctx.attr("reduction", "none")
    if red == "none":
        y = _movable(x).reshape(flat).clone()
        y[lin] = _movable(upd).reshape((lin.numel(),) + rest)
        return [_restore(y, x.dtype).reshape(x.shape)]
    xw, back = _widen(x.reshape(flat), order=red in ("max", "min"))
    uw, _ = _widen(upd.reshape((lin.numel(),) + rest), order=red in ("max", "min"))
    where = lin.reshape((-1,) + (1,) * len(rest)).expand(uw.shape)
    y = xw.scatter_reduce(0, where, uw, reduce=_REDUCE[red], include_self=True)
    return [back(y).reshape(x.shape)]


# ---------------------------------------------------------------------------- constants
@kernel("ConstantOfShape")
def _constant_of_shape(ctx: KernelContext, xs: _Xs) -> list[Tensor]:
    shape = _ints(xs[0]) or []
    value = ctx.attr("value")
    if value is None:
        value = torch.zeros((), dtype=torch.float32)
    v = _movable(value.reshape(()).to(xs[0].device))
    return [_restore(v.expand(shape).contiguous(), value.dtype)]


@kernel("Range")
def _range(ctx: KernelContext, xs: _Xs) -> list[Tensor]:
    start, limit, delta = xs[0], xs[1], xs[2]
    dt, dev = start.dtype, start.device
    if not start.is_floating_point():
        a, b, d = (int(t.reshape(-1)[0]) for t in (start, limit, delta))
        return [torch.arange(a, b, d, dtype=torch.int64, device=dev).to(dt)]
    a, b, d = (float(t.reshape(-1)[0]) for t in (start, limit, delta))
    n = max(math.ceil((b - a) / d), 0)
    # like numpy's arange: start + i * delta in double, then rounded to the dtype; a stash
    # type asks low-precision ranges to be computed in float32 instead
    stash = ctx.attr("stash_type")
    work = torch.float32 if stash == 1 and dt in (torch.float16, torch.bfloat16) else torch.float64
    i = torch.arange(n, dtype=work, device=dev)
    return [
        (torch.tensor(a, dtype=work, device=dev) + i * torch.tensor(d, dtype=work, device=dev)).to(
            dt
        )
    ]


@kernel("EyeLike")
def _eye_like(ctx: KernelContext, xs: _Xs) -> list[Tensor]:
    x = xs[0]
    n, m = x.shape
    code = ctx.attr("dtype")
    dt = dtypes.to_torch(dtypes.from_onnx(code)) if code is not None else x.dtype
    k = ctx.attr("k", 0)
    cols = torch.arange(m, device=x.device)
    rows = torch.arange(n, device=x.device)
    mask = (cols.unsqueeze(0) - rows.unsqueeze(1)) == k
    return [mask.to(dt)]


@kernel("Trilu")
def _trilu(ctx: KernelContext, xs: _Xs) -> list[Tensor]:
    x = xs[0]
    k = _ints(xs[1])[0] if len(xs) > 1 and xs[1] is not None else 0
    n, m = x.shape[-2], x.shape[-1]
    diff = torch.arange(m, device=x.device).unsqueeze(0) - torch.arange(
        n, device=x.device
    ).unsqueeze(1)
    mask = diff >= k if ctx.attr("upper", 1) else diff <= k
    mv = _movable(x)
    return [
        _restore(torch.where(mask, mv, torch.zeros((), dtype=mv.dtype, device=x.device)), x.dtype)
    ]


@kernel("OneHot")
def _one_hot(ctx: KernelContext, xs: _Xs) -> list[Tensor]:
    idx, depth, values = xs[0], xs[1], xs[2]
    d = int(depth.reshape(-1)[0])
    ids = idx.to(torch.int64)  # float indices truncate, as in the reference
    ids = torch.where(ids < 0, ids + d, ids)
    r = ids.dim() + 1
    axis = _norm_axis(ctx.attr("axis", -1), r)
    ar = torch.arange(d, device=idx.device).reshape([d if k == axis else 1 for k in range(r)])
    mask = ids.unsqueeze(axis) == ar
    v = _movable(values.reshape(-1))
    return [_restore(torch.where(mask, v[1], v[0]), values.dtype)]


# ---------------------------------------------------------------------------- data dependent
@kernel("NonZero")
def _nonzero(ctx: KernelContext, xs: _Xs) -> list[Tensor]:
    x = xs[0]
    nz = x != 0 if x.dtype not in _FLOAT8 else x.to(torch.float32) != 0
    return [torch.nonzero(nz).T.contiguous()]


@kernel("Compress")
def _compress(ctx: KernelContext, xs: _Xs) -> list[Tensor]:
    x, cond = xs[0], xs[1]
    axis = ctx.attr("axis")
    if axis is None:
        x, axis = x.reshape(-1), 0
    axis = _norm_axis(axis, x.dim())
    keep = cond.reshape(-1)[: x.shape[axis]] != 0
    ids = torch.nonzero(keep).reshape(-1)
    return [_restore(torch.index_select(_movable(x), axis, ids), x.dtype)]


@kernel("Unique")
def _unique(ctx: KernelContext, xs: _Xs) -> list[Tensor]:
    x = xs[0]
    axis = ctx.attr("axis")
    if axis is None:
        src, axis = x.reshape(-1), 0
    else:
        src, axis = x, _norm_axis(axis, x.dim())
    work, back = _widen(src, order=True)
    y, inv, counts = torch.unique(
        work, sorted=True, return_inverse=True, return_counts=True, dim=axis
    )
    y = back(y)
    n, u = src.shape[axis], counts.numel()
    inv = inv.reshape(-1)
    pos = torch.arange(n, device=x.device)
    first = torch.full((u,), n, dtype=torch.int64, device=x.device)
    first = first.scatter_reduce(0, inv, pos, reduce="amin", include_self=True)
    if not ctx.attr("sorted", 1):  # order by first occurrence instead
        order = torch.argsort(first)
        rank = torch.empty_like(order)
        rank[order] = torch.arange(u, device=x.device)
        y = _restore(torch.index_select(_movable(y), axis, order), y.dtype)
        first, counts, inv = first[order], counts[order], rank[inv]
    return [y, first, inv, counts.to(torch.int64)][: ctx.n_out()]


# ---------------------------------------------------------------------------- index ops
@kernel("TopK")
def _topk(ctx: KernelContext, xs: _Xs) -> list[Tensor]:
    x = xs[0]
    k = _ints(xs[1])[0]
    axis = _norm_axis(ctx.attr("axis", -1), x.dim())
    work, _ = _widen(x, order=True)
    # a stable full sort gives ties in index order, like the reference (torch.topk doesn't)
    _, idx = torch.sort(work, dim=axis, descending=bool(ctx.attr("largest", 1)), stable=True)
    idx = idx.narrow(axis, 0, k)
    vals = _restore(torch.gather(_movable(x), axis, idx), x.dtype)
    return [vals, idx]


@kernel(["ArgMax", "ArgMin"])
def _argmax(ctx: KernelContext, xs: _Xs) -> list[Tensor]:
    x = xs[0]
    axis = _norm_axis(ctx.attr("axis", 0), x.dim())
    keep = bool(ctx.attr("keepdims", 1))
    fn = torch.argmax if ctx.node.op_type == "ArgMax" else torch.argmin
    work, _ = _widen(x, order=True)
    if ctx.attr("select_last_index", 0):
        # first hit in the flipped tensor is the last in the original
        return [x.shape[axis] - 1 - fn(work.flip(axis), dim=axis, keepdim=keep)]
    return [fn(work, dim=axis, keepdim=keep)]


@kernel(["CumSum", "CumProd"])
def _cumulative(ctx: KernelContext, xs: _Xs) -> list[Tensor]:
    x = xs[0]
    axis = _norm_axis(_ints(xs[1])[0], x.dim())
    work, back = _widen(x)
    if ctx.attr("reverse", 0):
        work = work.flip(axis)
    prod = ctx.node.op_type == "CumProd"
    y = (torch.cumprod if prod else torch.cumsum)(work, axis, dtype=work.dtype)
    n = y.shape[axis]
    if ctx.attr("exclusive", 0) and n:
        # shift by one: element i gets the total of the elements before it
        first = (
            torch.ones_like(y.narrow(axis, 0, 1))
            if prod
            else torch.zeros_like(y.narrow(axis, 0, 1))
        )
        y = torch.cat([first, y.narrow(axis, 0, n - 1)], axis)
    if ctx.attr("reverse", 0):
        y = y.flip(axis)
    return [back(y)]


@kernel("ReverseSequence")
def _reverse_sequence(ctx: KernelContext, xs: _Xs) -> list[Tensor]:
    x, lens = xs[0], xs[1].to(torch.int64)
    b = _norm_axis(ctx.attr("batch_axis", 1), x.dim())
    t = _norm_axis(ctx.attr("time_axis", 0), x.dim())
    steps = torch.arange(x.shape[t], device=x.device).unsqueeze(0)  # (1, T)
    ln = lens.reshape(-1, 1)  # (B, 1)
    src = torch.where(steps < ln, ln - 1 - steps, steps)  # (B, T): where each step reads from
    if b > t:
        src = src.T
    view = [1] * x.dim()
    view[b], view[t] = x.shape[b], x.shape[t]
    src = src.reshape(view).expand(x.shape)
    return [_restore(torch.gather(_movable(x), t, src), x.dtype)]
