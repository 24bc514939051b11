"""A quantized layer stays in float where float is faster, as TensorRT does by default.

For every ecoinfer.QGemm / QConv the builder also times its float twin: the FusedGemm /
FusedConv with the dequantized weight (W_q * w_scale, in the layer's precision) reading the
unquantized X. When the fastest float tactic beats the fastest quantized one, the layer runs
in float: apply() puts the twin into the plan in place of the quantized node (same name,
same outputs). That only makes the engine faster and more accurate; the build report lists
each such layer with both times. `BuildConfig.quant_fallback` (CLI `--obey-precision` turns
it off) chooses; by default it is on for GPU builds and off on the CPU, where the quantized
layers exist to emulate the GPU's arithmetic exactly.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ecoinfer.ir import dtypes
from ecoinfer.ir.graph import Graph, Node, Value
from ecoinfer.kernels.torch_ops.fused_quant import dequant_weight

QUANTIZED_OPS = {"QGemm": "FusedGemm", "QConv": "FusedConv"}


def is_quantized(node: Node) -> bool:
    return node.domain == "ecoinfer" and node.op_type in QUANTIZED_OPS


@dataclass
class Twin:
    """The float layer that can replace one quantized node."""

    node: Node
    weight_name: str
    weight: torch.Tensor  # dequantized, in the layer's float dtype, on the build device


def float_twin(node: Node, env: dict[str, torch.Tensor], dtype: torch.dtype) -> Twin:
    """The FusedGemm/FusedConv computing `node` without quantization; `env` holds its
    constant inputs (W_q, w_scale)."""
    x, wq_name, _xs, ws_name, *rest = node.inputs
    w = dequant_weight(env[wq_name], env[ws_name], dtype)  # as the reference kernel does
    wname = f"{wq_name}_dequantized_{dtypes.from_torch(dtype)}"
    attrs = {k: v for k, v in node.attrs.items() if k != "qtype"}
    if node.op_type == "QGemm":
        attrs["trans_b"] = 1  # W_q is [N, K]
    twin = Node(QUANTIZED_OPS[node.op_type], [x, wname, *rest], list(node.outputs), attrs,
                node.name, "ecoinfer")  # fmt: skip
    return Twin(twin, wname, w)


def prefer_float(quantized_ms: float | None, float_ms: float | None) -> bool:
    """Float wins only when both were timed and float is strictly faster."""
    return quantized_ms is not None and float_ms is not None and float_ms < quantized_ms


def apply(graph: Graph, twins: dict[str, Twin]) -> Graph:
    """`graph` with each named quantized node replaced by its float twin (in place)."""
    if not twins:
        return graph
    freed: set[str] = set()
    for k, n in enumerate(graph.nodes):
        t = twins.get(n.name)
        if t is None or not is_quantized(n):
            continue
        graph.nodes[k] = t.node
        graph.initializers[t.weight_name] = t.weight.detach().cpu().contiguous()
        graph.values[t.weight_name] = Value(
            t.weight_name, dtypes.from_torch(t.weight.dtype), tuple(t.weight.shape)
        )
        freed.update(n.inputs[1:4])
    used = {i for n in graph.nodes for i in n.inputs if i} | set(graph.output_names)
    for name in freed - used:
        graph.initializers.pop(name, None)  # the int8/FP8 weight and scales nothing reads now
        graph.values.pop(name, None)
    graph.infer_shapes()
    graph.verify()
    return graph
