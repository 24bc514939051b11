"""Quantized layers that hand each other codes instead of float tensors.

A quantized layer C (ecoinfer.QGemm) starts by quantizing its input with its constant
x_scale. When that input is the output of another quantized layer P of the same qtype, or of
an ecoinfer.MultiHeadAttention, and nothing else reads it, P can write the codes itself: P
gets y_scale = C's x_scale and its output becomes codes, and C reads codes (its out_dtype
attribute keeps Y's float dtype).
That saves writing P's float output, reading it back and C's quantize pass; in BERT-base at
b64 the FFN-up -> FFN-down pair passes 8192x3072 values this way, and attention hands its
output to the output projection (TensorRT does the same
when it fuses a requantize into the producer's epilogue).

The arithmetic is the reference's up to rounding order: the linked P rounds its float32
result straight to codes where the unlinked pair rounds it to Y's dtype first, so a code can
differ by one where the value sits on a rounding boundary (the tuner's tolerance covers it).

The builder (engine/builder.py) decides per pair by timing: it tunes both linked nodes and
keeps the link only when the pair's tactics are faster linked than unlinked.
"""

from __future__ import annotations

from dataclasses import dataclass

from ecoinfer.ir.graph import Graph, Node
from ecoinfer.ir.ops.fused_quant import QTYPES


@dataclass(frozen=True)
class Link:
    producer: str  # node names
    consumer: str
    y_scale: str  # the consumer's x_scale initializer, now also the producer's y_scale
    out_dtype: str  # the float dtype the consumer computes Y in (its X's dtype before)
    qtype: str = "int8"  # the codes' qtype (the consumer's)


# where each producer op takes its y_scale input
Y_SCALE_INPUT = {"QGemm": 6, "MultiHeadAttention": 5}


def can_produce(n: Node) -> bool:
    """Whether `n` is an op that can write the next layer's codes."""
    return n.domain == "ecoinfer" and n.op_type in Y_SCALE_INPUT


def link_pays(unlinked_ms: float, linked_ms: float) -> bool:
    """A link is kept only where the pair's timed tactics are strictly faster linked."""
    return linked_ms < unlinked_ms


def _is_qgemm(n: Node) -> bool:
    return n.domain == "ecoinfer" and n.op_type == "QGemm"


def candidate(
    graph: Graph, consumer: Node, producer: Node | None, x_dtype: str, readers: int
) -> Link | None:
    """The link producer -> consumer, if the pair qualifies: a QGemm consumer, a QGemm
    producer of the same qtype or a MultiHeadAttention, the producer's first output read by
    the consumer alone (as X) and not a graph output, a constant x_scale, and neither of
    them linked already."""
    if producer is None or not (can_produce(producer) and _is_qgemm(consumer)):
        return None
    qtype = str(consumer.attrs.get("qtype", "int8"))
    if _is_qgemm(producer) and str(producer.attrs.get("qtype", "int8")) != qtype:
        return None
    y = producer.outputs[0]
    if consumer.inputs[0] != y or readers != 1 or y in graph.output_names:
        return None
    k = Y_SCALE_INPUT[producer.op_type]
    if len(producer.inputs) > k and producer.inputs[k]:
        return None  # already writes codes
    if x_dtype not in ("float16", "bfloat16", "float32"):
        return None  # the consumer already reads codes
    xs_name = consumer.inputs[2]
    if xs_name not in graph.initializers:
        return None
    return Link(producer.name, consumer.name, xs_name, x_dtype, qtype)


def linked_producer(p: Node, link: Link) -> Node:
    k = Y_SCALE_INPUT[p.op_type]
    ins = list(p.inputs) + [""] * (k - len(p.inputs))
    attrs = dict(p.attrs)
    if p.op_type == "MultiHeadAttention":
        attrs["y_qtype"] = link.qtype
    return Node(p.op_type, [*ins[:k], link.y_scale], list(p.outputs), attrs, p.name, p.domain)


def linked_consumer(c: Node, link: Link) -> Node:
    return Node(c.op_type, list(c.inputs), list(c.outputs),
                {**c.attrs, "out_dtype": link.out_dtype}, c.name, c.domain)  # fmt: skip


def apply(graph: Graph, links: list[Link]) -> Graph:
    """`graph` with each linked pair's nodes replaced (in place), the value between them
    retyped to codes."""
    if not links:
        return graph
    by_name = {n.name: k for k, n in enumerate(graph.nodes)}
    for link in links:
        kp, kc = by_name.get(link.producer), by_name.get(link.consumer)
        if kp is None or kc is None:
            continue
        p, c = graph.nodes[kp], graph.nodes[kc]
        graph.nodes[kp] = linked_producer(p, link)
        graph.nodes[kc] = linked_consumer(c, link)
        v = graph.values.get(p.outputs[0])
        if v is not None:
            v.dtype = QTYPES[link.qtype]
    graph.infer_shapes()
    graph.verify()
    return graph
