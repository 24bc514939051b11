"""Torch kernels for reductions (ReduceSum & co.), CPU and CUDA.

Empty-set reductions (a reduced axis of size 0) give the op's identity: 0 for sums, 1 for
products, -inf/+inf (or the integer extremes) for max/min, -inf for the log-sums.
"""

from __future__ import annotations

import math

import torch

from ecoinfer.kernels.torch_ops.registry import KernelContext, kernel
from ecoinfer.kernels.torch_ops.tensor import _widen

Tensor = torch.Tensor


def _axes(ctx: KernelContext, xs: list[Tensor | None]) -> list[int] | None:
    """Sorted axes to reduce, or None for the no-op case."""
    x = xs[0]
    axes = [int(a) for a in xs[1].reshape(-1).tolist()] if len(xs) > 1 and xs[1] is not None else []
    if not axes:
        return None if ctx.attr("noop_with_empty_axes", 0) else list(range(x.dim()))
    return sorted({a + x.dim() if a < 0 else a for a in axes})


def _identity(op: str, dt: torch.dtype) -> float | int | bool:
    if op == "ReduceProd":
        return 1
    if op in ("ReduceMax", "ReduceMin"):
        high = op == "ReduceMin"
        if dt == torch.bool:
            return high
        if dt.is_floating_point:
            return math.inf if high else -math.inf
        info = torch.iinfo(dt)
        return info.max if high else info.min
    if op in ("ReduceLogSum", "ReduceLogSumExp"):
        return -math.inf
    if op == "ReduceMean":
        return math.nan if dt.is_floating_point else 0
    return 0


def _filled(shape: list[int], op: str, dt: torch.dtype, device: torch.device) -> Tensor:
    if dt == torch.uint64 and op == "ReduceMin":
        return torch.full(shape, -1, dtype=torch.int64, device=device).view(dt)  # all ones = max
    value = _identity(op, dt)
    if dt in (torch.uint16, torch.uint32, torch.uint64):  # torch.full lacks these
        return torch.full(shape, value, dtype=torch.int64, device=device).to(dt)
    return torch.full(shape, value, dtype=dt, device=device)


def _float_work(x: Tensor) -> Tensor:
    # integer inputs of the float-valued reductions are computed in double, then cast back
    return x if x.is_floating_point() else x.to(torch.float64)


@kernel(
    [
        "ReduceSum",
        "ReduceMean",
        "ReduceMax",
        "ReduceMin",
        "ReduceProd",
        "ReduceL1",
        "ReduceL2",
        "ReduceLogSum",
        "ReduceLogSumExp",
        "ReduceSumSquare",
    ]
)
def _reduce(ctx: KernelContext, xs: list[Tensor | None]) -> list[Tensor]:
    x = xs[0]
    axes = _axes(ctx, xs)
    if axes is None:
        return [x]
    keep = bool(ctx.attr("keepdims", 1))
    op = ctx.node.op_type
    dt = x.dtype
    if x.dim() == 0:
        axes = []
    if any(x.shape[a] == 0 for a in axes):
        shape = [1 if k in axes else d for k, d in enumerate(x.shape)]
        if not keep:
            shape = [d for k, d in enumerate(x.shape) if k not in axes]
        return [_filled(shape, op, dt, x.device)]
    if not axes:  # a 0-D input: every reduction of one element is that element (up to the op)
        y = _reduce_nonempty(op, x.reshape(1), [0], False)
        return [y]
    return [_reduce_nonempty(op, x, axes, keep)]


def _reduce_nonempty(op: str, x: Tensor, axes: list[int], keep: bool) -> Tensor:
    dt = x.dtype
    if op in ("ReduceMax", "ReduceMin"):
        w, back = _widen(x, order=True)
        fn = torch.amax if op == "ReduceMax" else torch.amin
        return back(fn(w, dim=axes, keepdim=keep))
    if op in ("ReduceSum", "ReduceL1", "ReduceSumSquare", "ReduceProd"):
        w, back = _widen(x)
        if op == "ReduceL1" and dt not in (torch.uint8, torch.uint64):  # uint64 is viewed signed
            w = w.abs()
        elif op == "ReduceSumSquare":
            w = w * w
        if op == "ReduceProd":
            y = w
            for a in reversed(axes):  # torch.prod takes one dim at a time
                y = torch.prod(y, dim=a, keepdim=keep, dtype=w.dtype)
            return back(y)
        return back(torch.sum(w, dim=axes, keepdim=keep, dtype=w.dtype))
    if op == "ReduceMean":
        if x.is_floating_point():
            return torch.mean(x, dim=axes, keepdim=keep)
        # like the reference: the sum wraps in the input dtype, then truncating division
        w, back = _widen(x)
        total, _ = _widen(back(torch.sum(w, dim=axes, keepdim=keep, dtype=w.dtype)))
        count = math.prod(x.shape[a] for a in axes)
        return back(torch.div(total, count, rounding_mode="trunc"))
    w = _float_work(x)
    if op == "ReduceL2":
        y = torch.sqrt(torch.sum(w * w, dim=axes, keepdim=keep))
    elif op == "ReduceLogSum":
        y = torch.log(torch.sum(w, dim=axes, keepdim=keep))
    elif op == "ReduceLogSumExp":
        y = torch.logsumexp(w, dim=axes, keepdim=keep)
    else:
        raise NotImplementedError(op)
    return y.to(dt)
