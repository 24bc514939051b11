"""Registry of the torch reference implementation of every IR op."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from ecoinfer.ir.graph import Graph, Node

Tensor = torch.Tensor
KernelFn = Callable[["KernelContext", list[Tensor | None]], list[Tensor]]

_KERNELS: dict[tuple[str, str], KernelFn] = {}


def kernel(op_type: str | list[str], domain: str = "") -> Callable[[KernelFn], KernelFn]:
    def deco(fn: KernelFn) -> KernelFn:
        for name in [op_type] if isinstance(op_type, str) else op_type:
            _KERNELS[("" if domain == "ai.onnx" else domain, name)] = fn
        return fn

    return deco


def get_kernel(op_type: str, domain: str = "") -> KernelFn | None:
    import ecoinfer.kernels.torch_ops  # noqa: F401, PLC0415  (registers everything)

    return _KERNELS.get(("" if domain == "ai.onnx" else domain, op_type))


def kernel_ops() -> set[tuple[str, str]]:
    import ecoinfer.kernels.torch_ops  # noqa: F401, PLC0415

    return set(_KERNELS)


class KernelContext:
    """What a kernel sees besides its inputs: attributes with defaults, the node, the device."""

    def __init__(
        self,
        node: Node,
        attrs: dict[str, Any],
        device: torch.device,
        run_graph: Callable[[Graph, dict[str, Tensor]], list[Tensor]],
        opset: int,
    ):
        self.node = node
        self.attrs = attrs
        self.device = device
        self.run_graph = run_graph
        self.opset = opset

    def attr(self, name: str, default: Any = None) -> Any:
        return self.attrs.get(name, default)

    def n_out(self) -> int:
        return len(self.node.outputs)

    def want(self, k: int) -> bool:
        """Whether output k is requested (optional outputs may be omitted)."""
        return k < len(self.node.outputs) and self.node.outputs[k] != ""
