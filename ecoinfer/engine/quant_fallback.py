"""A quantized layer stays in float where float is faster, as TensorRT does by default.

For every ecoinfer.QGemm / QConv the builder also times its float twin: the FusedGemm /
FusedConv reading the unquantized X with the layer's float weight as it was before
quantization (in the layer's precision), as TensorRT runs a layer it did not quantize. Where
that weight is not known (a model that came with its own Q/DQ layers) or cannot be matched to
the codes, the twin uses the dequantized weight (W_q * w_scale). When the fastest float
tactic beats the fastest quantized one, the layer runs in float: apply() puts the twin into
the plan in place of the quantized node (same name, same outputs). That only makes the engine
faster and more accurate; the build report lists each such layer with both times and whether
its weight is the original. `BuildConfig.quant_fallback` (CLI `--obey-precision` turns it
off) chooses; by default it is on for GPU builds and off on the CPU, where the quantized
layers exist to emulate the GPU's arithmetic exactly.
"""

from __future__ import annotations

import itertools
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
    weight: torch.Tensor  # in the layer's float dtype, on the build device
    original: bool = False  # the float weight from before quantization (else dequantized)


# a float weight matches the codes when the codes' dequantized values are within this relative
# L2 error of it (INT8 per channel ~1%, FP8 E4M3 ~3%; a wrong layout is ~140%)
_MATCH_REL_ERR = 0.1


def match_original(original: torch.Tensor | None, dequantized: torch.Tensor) -> torch.Tensor | None:
    """`original` laid out like `dequantized` (the codes' layout: a GEMM's [N, K], a
    convolution's, possibly permuted) if some permutation of its axes gives that shape and
    values the codes quantize, else None."""
    if original is None or original.numel() != dequantized.numel() or original.dim() > 5:
        return None
    ref = dequantized.float()
    o = original.to(ref.device, torch.float32)
    norm = float(ref.norm()) or 1.0
    best, err = None, _MATCH_REL_ERR
    for perm in itertools.permutations(range(o.dim())):
        cand = o.permute(perm)
        if tuple(cand.shape) != tuple(ref.shape):
            continue
        e = float((cand - ref).norm()) / norm
        if e < err:
            best, err = cand, e
    return None if best is None else best.contiguous()


def float_twin(
    node: Node,
    env: dict[str, torch.Tensor],
    dtype: torch.dtype,
    original: torch.Tensor | None = None,
) -> Twin:
    """The FusedGemm/FusedConv computing `node` without quantization; `env` holds its
    constant inputs (W_q, w_scale); `original`, the layer's float weight before quantization
    where known."""
    x, wq_name, _xs, ws_name, *rest = node.inputs
    w = dequant_weight(env[wq_name], env[ws_name], dtype)  # as the reference kernel does
    kind = "dequantized"
    matched = match_original(original, w)
    if matched is not None:
        w, kind = matched.to(w.device, dtype), "float"
    wname = f"{wq_name}_{kind}_{dtypes.from_torch(dtype)}"
    attrs = {k: v for k, v in node.attrs.items() if k != "qtype"}
    if node.op_type == "QGemm":
        attrs["trans_b"] = 1  # W_q is [N, K]
    twin = Node(QUANTIZED_OPS[node.op_type], [x, wname, *rest], list(node.outputs), attrs,
                node.name, "ecoinfer")  # fmt: skip
    return Twin(twin, wname, w, matched is not None)


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
