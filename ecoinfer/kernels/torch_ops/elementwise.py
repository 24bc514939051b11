"""Torch kernels for elementwise ops."""

from __future__ import annotations

import torch

from ecoinfer.kernels.torch_ops.registry import KernelContext, kernel

_UNARY = {
    "Relu": torch.relu,
    "Abs": torch.abs,
    "Neg": torch.neg,
    "Exp": torch.exp,
    "Log": torch.log,
    "Sqrt": torch.sqrt,
    "Tanh": torch.tanh,
    "Sigmoid": torch.sigmoid,
    "Erf": torch.erf,
}


@kernel(list(_UNARY))
def _unary(ctx: KernelContext, xs: list[torch.Tensor | None]) -> list[torch.Tensor]:
    return [_UNARY[ctx.node.op_type](xs[0])]


@kernel(["Add", "Sub", "Mul"])
def _arith(ctx: KernelContext, xs: list[torch.Tensor | None]) -> list[torch.Tensor]:
    a, b = xs
    fn = {"Add": torch.add, "Sub": torch.sub, "Mul": torch.mul}[ctx.node.op_type]
    return [fn(a, b)]


@kernel("Div")
def _div(ctx: KernelContext, xs: list[torch.Tensor | None]) -> list[torch.Tensor]:
    a, b = xs
    if a.is_floating_point():
        return [torch.div(a, b)]
    return [torch.div(a, b, rounding_mode="trunc")]
