"""Runs a pipeline of passes on a copy of the graph, checking each pass kept the contract."""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field

from ecoinfer.errors import EcoinferError, GraphError
from ecoinfer.ir.graph import Graph, Node, Value
from ecoinfer.passes.registry import PassInfo, pipeline


@dataclass
class OptimizeConfig:
    level: int = 2  # 0 none, 1 cleanups, 2 + fusions, 3 + layout and aggressive fusions
    debug: bool = False  # verify() after every pass, naming the pass that broke the graph
    disable: tuple[str, ...] = ()  # pass names to skip
    only: tuple[str, ...] = ()  # if given, run just these passes (in pipeline order)


@dataclass
class PassReport:
    name: str
    nodes_before: int
    nodes_after: int
    counts: Counter[str] = field(default_factory=Counter)
    seconds: float = 0.0


def clone_graph(graph: Graph) -> Graph:
    """A copy whose nodes, values and weight table can change without touching the original.

    Weight tensors are shared: passes never modify a tensor in place, they add new ones.
    """

    def node(n: Node) -> Node:
        attrs = {k: clone_graph(v) if isinstance(v, Graph) else v for k, v in n.attrs.items()}
        return Node(n.op_type, list(n.inputs), list(n.outputs), attrs, n.name, n.domain)

    g = Graph(
        name=graph.name,
        inputs=[Value(v.name, v.dtype, v.shape, v.sym) for v in graph.inputs],
        outputs=[Value(v.name, v.dtype, v.shape, v.sym) for v in graph.outputs],
        nodes=[node(n) for n in graph.nodes],
        initializers=dict(graph.initializers),
        values={k: Value(v.name, v.dtype, v.shape, v.sym) for k, v in graph.values.items()},
        opsets=dict(graph.opsets),
        metadata=dict(graph.metadata),
        outer_scope=graph.outer_scope,
    )
    return g


def _signature(graph: Graph) -> list[tuple[str, str | None, tuple | None]]:
    return [
        (o.name, graph.values.get(o.name, o).dtype, graph.values.get(o.name, o).shape)
        for o in graph.outputs
    ]


def optimize(graph: Graph, config: OptimizeConfig | None = None) -> tuple[Graph, list[PassReport]]:
    """Optimize a copy of `graph` at config.level; returns it with a report per pass."""
    cfg = config or OptimizeConfig()
    g = clone_graph(graph)
    before = _signature(g)
    reports: list[PassReport] = []
    for p in pipeline(cfg.level):
        if p.name in cfg.disable or (cfg.only and p.name not in cfg.only):
            continue
        reports.append(run_pass(g, p, cfg.debug, before))
    return g, reports


def run_pass(g: Graph, p: PassInfo, debug: bool, signature: list | None = None) -> PassReport:
    n0 = len(g.nodes)
    t0 = time.perf_counter()
    counts = p.fn(g)
    g.infer_shapes()
    dt = time.perf_counter() - t0
    if debug:
        try:
            g.verify()
        except EcoinferError as e:
            raise GraphError(f"pass '{p.name}' broke the graph: {e}") from e
    if signature is not None:
        after = _signature(g)
        for (name, dt0, s0), (_, dt1, s1) in zip(signature, after):
            if dt0 != dt1 or (s0 is not None and s1 is not None and len(s0) != len(s1)):
                raise GraphError(
                    f"pass '{p.name}' changed output '{name}' from {dt0}{list(s0 or [])} to "
                    f"{dt1}{list(s1 or [])}; this is a bug in the pass (run with --opt-level 1 to avoid it)"
                )
    return PassReport(p.name, n0, len(g.nodes), Counter(counts), dt)
