"""Common-subexpression elimination: identical nodes on identical inputs are computed once."""

from __future__ import annotations

from collections import Counter

import torch

from ecoinfer.ir.graph import Graph
from ecoinfer.ir.pattern import remove_dead, replace_all_uses
from ecoinfer.passes.registry import register_pass

_SMALL = 1 << 12


def _key_attr(v: object) -> object:
    if isinstance(v, torch.Tensor):
        return (
            "tensor",
            str(v.dtype),
            tuple(v.shape),
            tuple(v.reshape(-1).tolist()) if v.numel() <= _SMALL else id(v),
        )
    if isinstance(v, list):
        return tuple(_key_attr(x) for x in v)
    if isinstance(v, Graph):
        return ("graph", id(v))  # subgraphs are never considered equal
    return v


@register_pass("cse", level=1, doc="compute identical nodes (and identical small constants) once")
def cse(graph: Graph) -> Counter[str]:
    counts: Counter[str] = Counter()
    outputs = set(graph.output_names)
    # identical small constants -> one
    seen_const: dict[object, str] = {}
    for name in list(graph.initializers):
        t = graph.initializers[name]
        if t.numel() > _SMALL or name in outputs:
            continue
        key = (str(t.dtype), tuple(t.shape), tuple(t.reshape(-1).tolist()))
        if key in seen_const:
            replace_all_uses(graph, name, seen_const[key])
            counts["constants"] += 1
        else:
            seen_const[key] = name
    seen: dict[object, list[str]] = {}
    for node in list(graph.nodes):
        if any(isinstance(v, Graph) for v in node.attrs.values()) or node.op_type.startswith(
            "Random"
        ):
            continue
        key = (
            node.domain,
            node.op_type,
            tuple(node.inputs),
            len(node.outputs),
            tuple(sorted((k, _key_attr(v)) for k, v in node.attrs.items())),
        )
        prev = seen.get(key)
        if prev is None:
            seen[key] = node.outputs
            continue
        if any(o in outputs for o in node.outputs):
            continue  # a graph output keeps its own producer
        for old, new in zip(node.outputs, prev):
            if old:
                replace_all_uses(graph, old, new)
        counts["nodes"] += 1
    remove_dead(graph)
    return counts
