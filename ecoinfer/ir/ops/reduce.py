"""Shape/dtype inference for reductions (ReduceSum & co., axes as an optional input)."""

from __future__ import annotations

from ecoinfer.ir.graph import Dim
from ecoinfer.ir.ops.registry import InferContext, OutType, dim_mul, numel, op

REDUCE_OPS = [
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


def _flops(ctx: InferContext, outs: list[OutType | None]) -> int | None:
    n = numel(ctx.shape(0))
    return n if isinstance(n, int) else None


def reduced_axes(ctx: InferContext, rank: int) -> list[int] | None:
    """Axes to reduce (sorted, non-negative); [] means none (noop); None when unknown."""
    if ctx.has(1):
        axes = ctx.ints(1)
        if axes is None:
            return None
    else:
        axes = []
    if not axes:
        return [] if ctx.attr("noop_with_empty_axes", 0) else list(range(rank))
    out = sorted({ctx.norm_axis(a, rank) for a in axes})
    if len(out) != len(axes):
        raise ctx.fail(f"axes {axes} repeat an axis")
    return out


@op(REDUCE_OPS, inputs=(1, 2), attrs={"keepdims": 1, "noop_with_empty_axes": 0}, flops=_flops)
def _reduce(ctx: InferContext) -> list[OutType]:
    dt = ctx.dtype(0)
    s = ctx.shape(0)
    if s is None:
        return [OutType(dt, None)]
    axes = reduced_axes(ctx, len(s))
    keep = ctx.attr("keepdims", 1)
    if axes is None:
        return [OutType(dt, tuple(None for _ in s) if keep else None)]
    if keep:
        out = tuple(1 if k in axes else d for k, d in enumerate(s))
    else:
        out = tuple(d for k, d in enumerate(s) if k not in axes)
    sym = None
    src = ctx.sym(0)
    # ReduceProd/ReduceSum of a shape vector (e.g. the element count of a reshape)
    if (
        src is not None
        and len(s) == 1
        and axes == [0]
        and ctx.node.op_type in ("ReduceProd", "ReduceSum")
    ):
        acc: Dim = 1 if ctx.node.op_type == "ReduceProd" else 0
        for d in src:
            if ctx.node.op_type == "ReduceProd":
                acc = dim_mul(acc, d)
            else:
                acc = acc + d if isinstance(acc, int) and isinstance(d, int) else None
        if acc is not None:
            sym = (acc,)
    return [OutType(dt, out, sym=sym)]
