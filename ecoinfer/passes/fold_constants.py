"""Constant folding: evaluate nodes whose inputs are all known at build time.

Also folds shape computations: a small integer value whose contents shape inference knows
exactly (Shape of a tensor with fixed dims, arithmetic on it, ...) becomes a constant, even
when the tensor it came from has symbolic dims elsewhere.
"""

from __future__ import annotations

from collections import Counter

import torch

from ecoinfer.ir.dtypes import to_torch
from ecoinfer.ir.graph import Graph
from ecoinfer.ir.ops import get_schema
from ecoinfer.ir.pattern import remove_dead
from ecoinfer.kernels.torch_ops.registry import KernelContext, get_kernel
from ecoinfer.passes.registry import register_pass

# Ops never folded: control flow (bodies may be large), random ops.
_NEVER = frozenset(
    {
        "If",
        "Loop",
        "Scan",
        "RandomNormal",
        "RandomUniform",
        "RandomNormalLike",
        "RandomUniformLike",
        "Multinomial",
        "Bernoulli",
    }
)
# A folded result may not be much bigger than its inputs (Expand/Tile/ConstantOfShape can
# blow up a tiny constant into a huge weight); the engine computes those at run time.
_MAX_GROWTH = 4
_MAX_SMALL = 1 << 16


def _quantized_weight(graph: Graph, node) -> bool:  # noqa: ANN001
    """DequantizeLinear of a symmetric int8/float8 weight: left for fuse_quantized, so a model
    quantized by another tool keeps its quantized weights for the quantized kernels."""
    if node.op_type != "DequantizeLinear" or node.domain:
        return False
    w = graph.initializers.get(node.inputs[0])
    if w is None or w.dim() < 2 or w.dtype not in (torch.int8, torch.float8_e4m3fn):
        return False
    zp = graph.initializers.get(node.inputs[2]) if len(node.inputs) > 2 and node.inputs[2] else None
    return zp is None or not bool((zp.float() != 0).any())


def _fold_node(graph: Graph, node) -> list[torch.Tensor] | None:  # noqa: ANN001
    if node.op_type in _NEVER or any(isinstance(v, Graph) for v in node.attrs.values()):
        return None
    if _quantized_weight(graph, node):
        return None
    ins = [graph.initializers.get(i) if i else None for i in node.inputs]
    if node.op_type == "CastLike" and ins[0] is not None and ins[1] is None:
        # CastLike(const, x) reads only x's dtype, which inference knows
        target = graph.values.get(node.inputs[1])
        if target is None or target.dtype is None:
            return None
        return [ins[0].to(to_torch(target.dtype)).clone()] if ins[0].numel() <= _MAX_SMALL else None
    if any(i and t is None for i, t in zip(node.inputs, ins)):
        return None
    fn = get_kernel(node.op_type, node.domain)
    if fn is None:
        return None
    schema = get_schema(node.op_type, node.domain)
    ctx = KernelContext(
        node, {**schema.attrs, **node.attrs}, torch.device("cpu"), lambda g, f: [], graph.opset
    )
    try:
        with torch.inference_mode():
            outs = fn(ctx, ins)
    except Exception:  # noqa: BLE001  (leave it to run time, where errors name the node)
        return None
    in_size = sum(t.numel() for t in ins if t is not None)
    if any(o.numel() > max(_MAX_SMALL, _MAX_GROWTH * in_size) for o in outs):
        return None
    return [o.contiguous().clone() for o in outs]


def _shape_as_constant(graph: Graph, node) -> torch.Tensor | None:  # noqa: ANN001
    """Reshape/Expand whose target shape is computed at run time but known symbolically:
    the same target as a constant, using Reshape's 0 (copy this dim) / -1 and Expand's 1
    (keep this dim) for dims equal to the input's own symbolic dims."""
    if node.op_type not in ("Reshape", "Expand") or len(node.inputs) < 2:
        return None
    if node.inputs[1] in graph.initializers:
        return None
    sv = graph.values.get(node.inputs[1])
    xv = graph.values.get(node.inputs[0]) if node.inputs[0] not in graph.initializers else None
    if sv is None or sv.sym is None or xv is None or xv.shape is None:
        return None
    target, x = list(sv.sym), list(xv.shape)
    out: list[int] = []
    if node.op_type == "Reshape":
        literal_zero = any(d == 0 for d in target)
        if literal_zero and node.attrs.get("allowzero", 0):
            return None
        unknown = 0
        for k, d in enumerate(target):
            if isinstance(d, int):
                out.append(d)
            elif k < len(x) and d is not None and x[k] == d:
                out.append(0)  # copy the input's dim k
            else:
                out.append(-1)
                unknown += 1
        if unknown > 1 or (unknown == 1 and -1 in [d for d in target if isinstance(d, int)]):
            return None
    else:
        offset = len(target) - len(x)
        for k, d in enumerate(target):
            j = k - offset
            if isinstance(d, int):
                out.append(d)
            elif 0 <= j < len(x) and d is not None and x[j] == d:
                out.append(1)  # broadcasting keeps the input's dim
            else:
                return None
    return torch.tensor(out, dtype=torch.int64)


@register_pass(
    "fold_constants",
    level=1,
    doc="evaluate nodes whose inputs are constants; fold known shape values",
)
def fold_constants(graph: Graph) -> Counter[str]:
    counts: Counter[str] = Counter()
    changed = True
    while changed:
        changed = False
        graph.infer_shapes()
        keep = []
        outputs = set(graph.output_names)
        for node in graph.nodes:
            folded = _fold_node(graph, node)
            if folded is None:
                folded = _from_sym(graph, node)
                kind = "shape_values"
            else:
                kind = "nodes"
            if folded is None or len(folded) != len([o for o in node.outputs if o]):
                keep.append(node)
                continue
            for name, t in zip([o for o in node.outputs if o], folded):
                graph.initializers[name] = t
                if name not in outputs:
                    graph.values.pop(name, None)
            counts[kind] += 1
            changed = True
        graph.nodes = keep
        for node in graph.nodes:
            shape = _shape_as_constant(graph, node)
            if shape is not None:
                name = graph.fresh_name(f"{node.name or node.op_type}_shape")
                graph.initializers[name] = shape
                node.inputs[1] = name
                if node.op_type == "Reshape":
                    node.attrs["allowzero"] = 0  # 0 now means "copy"; no literal 0 is present
                counts["symbolic_shapes"] += 1
                changed = True
        if changed:
            remove_dead(graph)
    remove_dead(graph)
    return counts


def _from_sym(graph: Graph, node) -> list[torch.Tensor] | None:  # noqa: ANN001
    """A node whose single output's contents are known integers (shape arithmetic)."""
    if len(node.outputs) != 1 or node.op_type in _NEVER:
        return None
    v = graph.values.get(node.outputs[0])
    if v is None or v.sym is None or v.shape is None or len(v.shape) > 1 or v.dtype is None:
        return None
    if not all(isinstance(d, int) for d in v.sym):
        return None
    if v.dtype not in ("int64", "int32"):
        return None
    t = torch.tensor(list(v.sym), dtype=to_torch(v.dtype))
    if len(v.shape) == 0:
        if t.numel() != 1:
            return None
        t = t.reshape(())
    elif v.shape[0] != t.numel():
        return None
    return [t]
