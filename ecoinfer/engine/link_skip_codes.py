"""A quantized GEMM's residual add moved into the LayerNormCodes that reads its output.

In an INT8/FP8 transformer block the attention-output and FFN-down projections are
ecoinfer.QGemm nodes that add the residual in their epilogue, and a LayerNormCodes normalizes
the sum (and writes the next layer's codes). With the add moved into the norm (its Skip
input, summed in float32 as SkipLayerNorm does) the bytes moved stay the same (the GEMM no
longer reads the residual; the norm does), but the GEMM is then a plain GEMM with a bias,
which a library can run in one call: on an H200, cuBLASLt FP8 with fast accumulation
(quant_tactics' fp8_scaled_mm) and the norm with the skip took 25.3 against 27.5 us (attention
output) and 43.1 against 48.5 us (FFN-down) for the engine's Triton GEMM with the residual
and the norm without (BERT-base b64, bench/results/cublas_fp8_probe_h200_2026-11-29s21a.json).

This is link_skip.py's move for the quantized ops. It runs on the plan after the code links
(engine/link_codes.py, which make the LayerNormCodes), and the builder keeps each pair only
where the two rewritten nodes, tuned on the plan's real inputs, take less time than before.
"""

from __future__ import annotations

from dataclasses import dataclass

from ecoinfer.engine.link_codes import rewrite_pairs
from ecoinfer.engine.link_skip import same_shape_sum, without_inputs_from
from ecoinfer.ir.graph import Graph, Node, all_inputs

RESIDUAL = 5  # QGemm(X, W_q, x_scale, w_scale, bias?, residual?, y_scale?, res_*?)
SKIP = 4  # LayerNormCodes(X, Scale, B?, y_scale, Skip?)


@dataclass(frozen=True)
class SkipCodesLink:
    producer: str  # the QGemm
    consumer: str  # the LayerNormCodes
    skip: str  # the residual value, now the norm's Skip input


def _is(n: Node, op: str) -> bool:
    return n.op_type == op and n.domain == "ecoinfer"


def candidates(graph: Graph) -> list[SkipCodesLink]:
    """Each QGemm adding a residual (float out, no rebuilt residual) whose Y one
    LayerNormCodes alone reads, as its X, where that norm has no Skip and writes no row
    statistics, and Y is not a graph output."""
    reads: dict[str, int] = {}
    for n in graph.nodes:
        for x in set(all_inputs(n)):  # bodies' reads count too: such a Y is read elsewhere
            reads[x] = reads.get(x, 0) + 1
    producer = graph.producers()
    outs = set(graph.output_names)
    found = []
    for c in graph.nodes:
        if not _is(c, "LayerNormCodes") or not c.inputs or any(c.outputs[2:]):
            continue
        if len(c.inputs) > SKIP and c.inputs[SKIP]:
            continue
        y = c.inputs[0]
        p = producer.get(y)
        if p is None or not _is(p, "QGemm") or y in outs or reads.get(y, 0) != 1:
            continue
        ins = list(p.inputs)
        if len(ins) <= RESIDUAL or not ins[RESIDUAL] or any(ins[RESIDUAL + 1 :]):
            continue  # no residual, or codes out / a rebuilt residual
        if ins[RESIDUAL] == y or c.inputs.count(y) != 1:
            continue
        if not same_shape_sum(graph, ins[0], ins[RESIDUAL], y):
            continue  # a broadcast residual (or dims named otherwise) stays in the GEMM
        found.append(SkipCodesLink(p.name, c.name, ins[RESIDUAL]))
    return found


def linked_producer(p: Node) -> Node:
    """The QGemm without its residual (trailing empty inputs dropped; candidates have none
    after it)."""
    return without_inputs_from(p, RESIDUAL)


def linked_consumer(c: Node, link: SkipCodesLink) -> Node:
    """The LayerNormCodes of X + Skip."""
    ins = (list(c.inputs) + [""] * SKIP)[:SKIP] + [link.skip]
    return Node(c.op_type, ins, list(c.outputs), dict(c.attrs), c.name, c.domain)


def apply(graph: Graph, links: list[SkipCodesLink]) -> Graph:
    """`graph` with each linked pair's nodes replaced (in place)."""
    return rewrite_pairs(graph, links, lambda p, _: linked_producer(p), linked_consumer)
