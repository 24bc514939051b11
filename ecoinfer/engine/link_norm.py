"""A LayerNormCodes whose float Y is only a QGemm's residual: Y rebuilt, not written.

In a quantized transformer block the norm between attention and the FFN writes two things:
its codes, which FFN-up reads (engine/link_codes.py), and its float Y, which only FFN-down
reads, as the residual it adds. Y is the larger of the two (float16 against 8-bit codes).
The norm can instead write two float32 numbers per row, its mean and 1/std, and FFN-down's
epilogue rebuilds Y from the norm's input X with the norm's own formula and rounding
(ecoinfer.QGemm's res_* inputs; tma_gemm's residual_norm): the same sum, and Y never goes to
memory. X stays alive until FFN-down instead of Y (the same size).

The builder (engine/builder.py) decides per pair by timing, as for the other links: it tunes
the norm without Y and the QGemm with the rebuilt residual on the plan's real inputs and keeps
the pair where their times sum to less than before.
"""

from __future__ import annotations

from dataclasses import dataclass

from ecoinfer.engine.link_codes import pair_positions
from ecoinfer.ir.graph import Graph, Node, Value, all_inputs
from ecoinfer.ir.ops.fused_quant import RES_NORM

RESIDUAL = 5  # QGemm(X, W_q, x_scale, w_scale, bias?, residual?, y_scale?, ...)


@dataclass(frozen=True)
class NormLink:
    producer: str  # the LayerNormCodes
    consumer: str  # the QGemm whose residual is the norm's Y


def candidates(graph: Graph) -> list[NormLink]:
    """Each LayerNormCodes (Y and codes, no statistics yet) whose Y one QGemm alone reads,
    as its residual only, and that is not a graph output."""
    reads: dict[str, list[Node]] = {}
    for n in graph.nodes:
        for x in set(all_inputs(n)):  # bodies' reads too: such a reader is no candidate
            reads.setdefault(x, []).append(n)
    outs = set(graph.output_names)
    found = []
    for n in graph.nodes:
        if n.op_type != "LayerNormCodes" or n.domain != "ecoinfer" or len(n.outputs) < 2:
            continue
        y = n.outputs[0]
        if not y or any(n.outputs[2:]) or y in outs or len(reads.get(y, [])) != 1:
            continue
        if len(n.inputs) > 4 and n.inputs[4]:
            continue  # a Skip (engine/link_skip_codes.py): Y is not LayerNorm(X)
        q = reads[y][0]
        ins = list(q.inputs)
        if q.op_type != "QGemm" or q.domain != "ecoinfer" or len(ins) <= RESIDUAL:
            continue
        if ins[RESIDUAL] != y or ins.count(y) != 1 or len(ins) > RES_NORM:
            continue
        found.append(NormLink(n.name, q.name))
    return found


def linked_norm(n: Node) -> Node:
    """The norm writing its codes and row statistics, not Y."""
    outs = ["", n.outputs[1], f"{n.name}_mean", f"{n.name}_inv_std"]
    return Node(n.op_type, list(n.inputs), outs, dict(n.attrs), n.name, n.domain)


def linked_gemm(q: Node, norm: Node) -> Node:
    """The QGemm adding LayerNorm(the norm's X), rebuilt from the norm's statistics."""
    ins = list(q.inputs) + [""] * (RES_NORM - len(q.inputs))
    ins[RESIDUAL] = norm.inputs[0]
    scale = norm.inputs[1]
    bias = norm.inputs[2] if len(norm.inputs) > 2 and norm.inputs[2] else ""
    ins += [f"{norm.name}_mean", f"{norm.name}_inv_std", scale, bias]
    while ins and not ins[-1]:
        ins.pop()
    return Node(q.op_type, ins, list(q.outputs), dict(q.attrs), q.name, q.domain)


def apply(graph: Graph, links: list[NormLink]) -> Graph:
    """`graph` with each linked norm and QGemm replaced (in place)."""
    if not links:
        return graph
    nodes, values = list(graph.nodes), dict(graph.values)
    try:
        for _, kn, kq in pair_positions(graph, links):
            norm = graph.nodes[kn]
            graph.nodes[kn] = linked_norm(norm)
            graph.nodes[kq] = linked_gemm(graph.nodes[kq], norm)
            x = graph.values.get(norm.inputs[0])
            rows = x.shape[:-1] if x is not None and x.shape is not None else None
            for name in graph.nodes[kn].outputs[2:]:
                graph.values[name] = Value(name, "float32", rows)
            graph.values.pop(norm.outputs[0], None)  # Y is no longer written
        graph.infer_shapes()
        graph.verify()
    except Exception:
        graph.nodes[:] = nodes  # all or nothing: the plan as it was
        graph.values.clear()
        graph.values.update(values)
        graph.infer_shapes()
        raise
    return graph
