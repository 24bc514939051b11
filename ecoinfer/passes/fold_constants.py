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


def _fold_node(graph: Graph, node) -> list[torch.Tensor] | None:  # noqa: ANN001
    if node.op_type in _NEVER or any(isinstance(v, Graph) for v in node.attrs.values()):
        return None
    ins = [graph.initializers.get(i) if i else None for i in node.inputs]
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
