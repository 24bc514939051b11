"""Torch reference kernels of fused ops in the "ecoinfer" domain."""

from __future__ import annotations

import torch

from ecoinfer.kernels.torch_ops.registry import KernelContext, kernel

Tensor = torch.Tensor


@kernel("FusedElementwise", domain="ecoinfer")
def _fused_elementwise(ctx: KernelContext, xs: list[Tensor | None]) -> list[Tensor]:
    # the reference semantics are the body's: run it with the existing torch kernels
    body = ctx.attr("body")
    return ctx.run_graph(body, dict(zip(body.input_names, xs)))
