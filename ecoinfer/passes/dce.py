"""Dead-code elimination: nodes whose outputs nobody reads, and weights nobody uses."""

from __future__ import annotations

from collections import Counter

from ecoinfer.ir.graph import Graph
from ecoinfer.ir.pattern import remove_dead
from ecoinfer.passes.registry import register_pass


@register_pass("dce", level=1, doc="remove nodes whose outputs are never read, and unused weights")
def dce(graph: Graph) -> Counter[str]:
    n_init = len(graph.initializers)
    removed = remove_dead(graph)
    return Counter({"nodes_removed": removed, "weights_removed": n_init - len(graph.initializers)})
