"""Shape/dtype inference for elementwise ops: unary math, activations, binary with broadcasting."""

from __future__ import annotations

from ecoinfer.ir.ops.registry import InferContext, OutType, broadcast_shapes, op, same


@op(["Relu", "Abs", "Neg", "Exp", "Log", "Sqrt", "Tanh", "Sigmoid", "Erf"])
def _unary(ctx: InferContext) -> list[OutType]:
    return [same(ctx)]


@op(["Add", "Sub", "Mul", "Div"], inputs=(2, 2))
def _binary(ctx: InferContext) -> list[OutType]:
    return [OutType(ctx.dtype(0), broadcast_shapes(ctx, ctx.shape(0), ctx.shape(1)))]
