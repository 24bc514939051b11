"""Quantized layers that hand each other codes instead of float tensors.

A quantized layer C (ecoinfer.QGemm or QConv) starts by quantizing its input with its
constant x_scale. When that input is the output of another quantized layer P (QGemm or
QConv) of the same qtype, or of an ecoinfer.MultiHeadAttention, and nothing else reads it,
P can write the codes itself: P
gets y_scale = C's x_scale and its output becomes codes, and C reads codes (its out_dtype
attribute keeps Y's float dtype). A LayerNormalization, whose Y usually has other readers
too (a residual), becomes an ecoinfer.LayerNormCodes writing Y and, in the same pass, C's
codes as a second output. Links chain: a layer that reads codes can write the next one's.

That saves writing P's float output, reading it back and C's quantize pass; in BERT-base at
b64 the FFN-up -> FFN-down pair passes 8192x3072 values this way, and attention hands its
output to the output projection (TensorRT does the same when it fuses a requantize into the
producer's epilogue).

The arithmetic is the reference's up to rounding order: the linked P rounds its float32
result straight to codes where the unlinked pair rounds it to Y's dtype first, so a code can
differ by one where the value sits on a rounding boundary (the tuner's tolerance covers it).

A packed ecoinfer.MultiHeadAttention with an x_scale (FP8 builds quantize attention's QKV,
quant/quantize.py) is a consumer too: the QKV projection writes the codes and attention
reads half the bytes (BERT-base b64 on an H200: 17.6 instead of 21.9 us a layer, probe).

The builder (engine/builder.py) decides per pair by timing: it tunes both linked nodes and
keeps the link only when the pair's tactics are faster linked than unlinked.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ecoinfer.ir.graph import Graph, Node, Value
from ecoinfer.ir.ops.fused_quant import CODES_Y_SCALE, QTYPES


@dataclass(frozen=True)
class Link:
    producer: str  # node names
    consumer: str
    y_scale: str  # the consumer's x_scale initializer, now also the producer's y_scale
    out_dtype: str  # the float dtype the consumer computes Y in (its X's dtype before)
    qtype: str = "int8"  # the codes' qtype (the consumer's)
    codes_value: str = ""  # a LayerNormalization producer: the new codes output's name


# where each producer op takes its y_scale input (LayerNormalization: as LayerNormCodes)
Y_SCALE_INPUT = {
    "QGemm": CODES_Y_SCALE["QGemm"],
    "QConv": CODES_Y_SCALE["QConv"],
    "MultiHeadAttention": CODES_Y_SCALE["MultiHeadAttention"],
    "LayerNormalization": CODES_Y_SCALE["LayerNormCodes"],
}


def _is_ln(n: Node) -> bool:
    return n.op_type == "LayerNormalization" and not n.domain


def can_produce(n: Node) -> bool:
    """Whether `n` is an op that can write the next layer's codes."""
    ops = ("QGemm", "QConv", "MultiHeadAttention")
    return (n.domain == "ecoinfer" and n.op_type in ops) or _is_ln(n)


def holds(n: Node, readers: int) -> bool:
    """Whether the builder should keep n's inputs for a link: a producer whose output has
    one reader, or a LayerNormalization (Y only) read by anything."""
    if _is_ln(n):
        return readers >= 1 and sum(1 for o in n.outputs if o) == 1 and bool(n.outputs[0])
    return can_produce(n) and readers == 1


def link_pays(unlinked_ms: float, linked_ms: float) -> bool:
    """A link is kept only where the pair's timed tactics are strictly faster linked."""
    return linked_ms < unlinked_ms


def _is_quantized(n: Node) -> bool:
    return n.domain == "ecoinfer" and n.op_type in ("QGemm", "QConv")


# where each consumer op takes its x_scale input
X_SCALE_INPUT = {"QGemm": 2, "QConv": 2, "MultiHeadAttention": 6}


def is_consumer(n: Node) -> bool:
    """Whether `n` quantizes its input 0 with a constant x_scale (so it can read codes): a
    QGemm / QConv, or a packed MultiHeadAttention with an x_scale."""
    if _is_quantized(n):
        return True
    k = X_SCALE_INPUT["MultiHeadAttention"]
    return (
        n.domain == "ecoinfer"
        and n.op_type == "MultiHeadAttention"
        and len(n.inputs) > k
        and bool(n.inputs[k])
    )


def consumer_qtype(n: Node) -> str:
    if n.op_type == "MultiHeadAttention":
        return str(n.attrs.get("x_qtype") or "")
    return str(n.attrs.get("qtype", "int8"))


def candidate(
    graph: Graph, consumer: Node, producer: Node | None, x_dtype: str, readers: int
) -> Link | None:
    """The link producer -> consumer, if the pair qualifies: a QGemm / QConv consumer
    reading float X with a constant x_scale, and a producer that `holds`: a QGemm / QConv of
    the same qtype or a MultiHeadAttention whose output only the consumer reads (not a graph
    output, not written as codes already), or a LayerNormalization, whose Y keeps its other
    readers."""
    if producer is None or not (can_produce(producer) and is_consumer(consumer)):
        return None
    qtype = consumer_qtype(consumer)
    if consumer.op_type == "MultiHeadAttention" and not _is_quantized(producer):
        return None  # QKV codes come from the QKV projection
    if _is_quantized(producer) and str(producer.attrs.get("qtype", "int8")) != qtype:
        return None
    y = producer.outputs[0]
    if consumer.inputs[0] != y or not holds(producer, readers):
        return None
    if _is_ln(producer):  # Y stays for its other readers; the codes are a second output
        codes = f"{y}_codes"
        if x_dtype not in ("float16", "bfloat16", "float32") or codes in graph.values:
            return None
        xs_name = consumer.inputs[X_SCALE_INPUT[consumer.op_type]]
        if xs_name not in graph.initializers:
            return None
        return Link(producer.name, consumer.name, xs_name, x_dtype, qtype, codes)
    if y in graph.output_names:
        return None
    k = Y_SCALE_INPUT[producer.op_type]
    if len(producer.inputs) > k and producer.inputs[k]:
        return None  # already writes codes
    if x_dtype not in ("float16", "bfloat16", "float32"):
        return None  # the consumer already reads codes
    xs_name = consumer.inputs[X_SCALE_INPUT[consumer.op_type]]
    if xs_name not in graph.initializers:
        return None
    return Link(producer.name, consumer.name, xs_name, x_dtype, qtype)


def linked_producer(p: Node, link: Link) -> Node:
    if _is_ln(p):
        ins = (list(p.inputs) + ["", ""])[:3]
        attrs = {"axis": p.attrs.get("axis", -1), "epsilon": p.attrs.get("epsilon", 1e-5),
                 "qtype": link.qtype}  # fmt: skip
        return Node("LayerNormCodes", [*ins, link.y_scale], [p.outputs[0], link.codes_value],
                    attrs, p.name, "ecoinfer")  # fmt: skip
    k = Y_SCALE_INPUT[p.op_type]
    ins = list(p.inputs) + [""] * (k - len(p.inputs))
    attrs = dict(p.attrs)
    if p.op_type == "MultiHeadAttention":
        attrs["y_qtype"] = link.qtype
    # inputs after y_scale stay (an attention's x_scale: it may read codes and write codes)
    rest = ins[k + 1 :]
    return Node(p.op_type, [*ins[:k], link.y_scale, *rest], list(p.outputs), attrs, p.name,
                p.domain)  # fmt: skip


def linked_consumer(c: Node, link: Link) -> Node:
    ins = list(c.inputs)
    if link.codes_value:
        ins[0] = link.codes_value
    return Node(c.op_type, ins, list(c.outputs), {**c.attrs, "out_dtype": link.out_dtype},
                c.name, c.domain)  # fmt: skip


def pair_positions(graph: Graph, links: list) -> list[tuple[Any, int, int]]:
    """(link, producer's index, consumer's index) of each link (a Link or link_skip's
    SkipLink: anything naming a producer and a consumer) whose two nodes are in `graph`."""
    by_name = {n.name: k for k, n in enumerate(graph.nodes)}
    out = []
    for link in links:
        kp, kc = by_name.get(link.producer), by_name.get(link.consumer)
        if kp is not None and kc is not None:
            out.append((link, kp, kc))
    return out


def rewrite_pairs(
    graph: Graph,
    links: list,
    producer: Callable[[Node, Any], Node],
    consumer: Callable[[Node, Any], Node],
) -> Graph:
    """`graph` (in place) with each link's producer and consumer replaced by producer(node,
    link) and consumer(node, link), its shapes inferred again and checked (link_skip's and
    link_skip_codes' moves, which add or retype no value)."""
    if not links:
        return graph
    before = list(graph.nodes)
    try:
        for link, kp, kc in pair_positions(graph, links):
            graph.nodes[kp] = producer(graph.nodes[kp], link)
            graph.nodes[kc] = consumer(graph.nodes[kc], link)
        graph.infer_shapes()
        graph.verify()
    except Exception:
        graph.nodes[:] = before  # all or nothing: the plan as it was
        graph.infer_shapes()
        raise
    return graph


def apply(graph: Graph, links: list[Link]) -> Graph:
    """`graph` with each linked pair's nodes replaced (in place), the value between them
    retyped to codes."""
    if not links:
        return graph
    for link, kp, kc in pair_positions(graph, links):
        p, c = graph.nodes[kp], graph.nodes[kc]
        graph.nodes[kp] = linked_producer(p, link)
        graph.nodes[kc] = linked_consumer(c, link)
        if link.codes_value:  # a new output beside Y
            y = graph.values.get(p.outputs[0])
            shape = y.shape if y is not None else None
            graph.values[link.codes_value] = Value(link.codes_value, QTYPES[link.qtype], shape)
            continue
        v = graph.values.get(p.outputs[0])
        if v is not None:
            v.dtype = QTYPES[link.qtype]
    graph.infer_shapes()
    graph.verify()
    return graph
