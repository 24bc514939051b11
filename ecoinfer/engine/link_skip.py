"""Residual adds moved from a GEMM's epilogue into the LayerNormalization that follows it.

Transformer blocks end in `LayerNorm(A @ W + b + skip)`; fuse_gemm puts the skip add in the
FusedGemm's epilogue. Where the GEMM runs on a library tactic (cuBLAS) that epilogue is a
separate elementwise pass: reading Y and the skip and writing Y again, before the norm reads
Y once more. Folded into the norm (ecoinfer.SkipLayerNorm, as onnxruntime's
SkipLayerNormalization and TensorRT's skip-layernorm plugin do) that pass disappears: the
norm reads the skip beside Y, and the GEMM runs with bias only.

Where the GEMM's own kernel adds the skip in its epilogue (the TMA GEMM does, at almost no
cost) moving it may not pay, so the builder (engine/builder.py) decides per pair by timing,
as it does for code links (engine/link_codes.py): it tunes the GEMM without the skip and the
SkipLayerNorm and keeps the pair only where their times sum to less.
"""

from __future__ import annotations

from dataclasses import dataclass

from ecoinfer.engine.link_codes import rewrite_pairs
from ecoinfer.ir.graph import Graph, Node

RESIDUAL = 3  # FusedGemm(A, B, bias?, residual?)


@dataclass(frozen=True)
class SkipLink:
    producer: str  # the FusedGemm's name
    consumer: str  # the LayerNormalization's name
    skip: str  # the residual value, now the SkipLayerNorm's input 1


def _is_ln(n: Node) -> bool:
    return n.op_type == "LayerNormalization" and not n.domain


def holds(p: Node, readers: list[Node], graph_outputs: set[str]) -> bool:
    """Whether the builder keeps p's inputs (until its reader is tuned) for a skip link: a
    FusedGemm with a residual whose Y one LayerNormalization alone reads (and that is not a
    graph output)."""
    return (
        p.domain == "ecoinfer"
        and p.op_type == "FusedGemm"
        and len(p.inputs) > RESIDUAL
        and bool(p.inputs[RESIDUAL])
        and len(readers) == 1
        and _is_ln(readers[0])
        and bool(p.outputs)
        and p.outputs[0] not in graph_outputs
    )


def candidate(p: Node | None, c: Node, held: set[str]) -> SkipLink | None:
    """The link p -> c if c is a LayerNormalization (Y only) of the held FusedGemm p's Y."""
    if p is None or p.name not in held or not _is_ln(c) or not c.inputs:
        return None
    if c.inputs[0] != p.outputs[0] or any(c.outputs[1:]) or not c.outputs[0]:
        return None
    if c.inputs[0] == p.inputs[RESIDUAL]:
        return None
    return SkipLink(p.name, c.name, p.inputs[RESIDUAL])


def same_shape_sum(graph: Graph, x: str, residual: str, y: str) -> bool:
    """Whether Y = GEMM(X) + residual adds two tensors of Y's own shape, as the graph declares
    them (symbolic dims compared by name), so the norm can take the residual as its Skip: a
    broadcast residual, or one whose dims are named otherwise, stays in the GEMM."""
    vx, vr, vy = (graph.values.get(n) for n in (x, residual, y))
    if vx is None or vr is None or vy is None:
        return False
    if vx.shape is None or vr.shape is None or vy.shape is None or vr.dtype != vy.dtype:
        return False
    return tuple(vr.shape) == tuple(vy.shape) and tuple(vx.shape[:-1]) == tuple(vy.shape[:-1])


def without_inputs_from(p: Node, k: int) -> Node:
    """p with its inputs k.. removed (and the empty ones then trailing): a GEMM without its
    residual (and what follows it)."""
    ins = list(p.inputs[:k])
    while ins and not ins[-1]:
        ins.pop()
    return Node(p.op_type, ins, list(p.outputs), dict(p.attrs), p.name, p.domain)


def linked_producer(p: Node) -> Node:
    """The FusedGemm without its residual (trailing empty inputs dropped)."""
    return without_inputs_from(p, RESIDUAL)


def linked_consumer(c: Node, link: SkipLink) -> Node:
    ins = list(c.inputs) + [""] * (3 - len(c.inputs))
    inputs = [ins[0], link.skip, ins[1]] + ([ins[2]] if ins[2] else [])
    attrs = {"axis": c.attrs.get("axis", -1), "epsilon": c.attrs.get("epsilon", 1e-5)}
    return Node("SkipLayerNorm", inputs, [c.outputs[0]], attrs, c.name, "ecoinfer")


def apply(graph: Graph, links: list[SkipLink]) -> Graph:
    """`graph` with each linked pair's nodes replaced (in place)."""
    return rewrite_pairs(graph, links, lambda p, _: linked_producer(p), linked_consumer)
