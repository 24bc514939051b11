"""Absorb the head split and merge around a fused Attention into one MultiHeadAttention node.

    # Attention(T(R(q)), T(R(k)), T(R(v)), m) -> Transpose -> Reshape
    #   ==>  MultiHeadAttention(q, k, v, m)            R: [B,S,H*D] -> [B,S,H,D], T: (0,2,1,3)
    # and when q, k, v are the three outputs of one Split of a packed QKV projection:
    #   ==>  MultiHeadAttention(qkv, "", "", m, packed=1)

Runs after pack_qkv, so the projection GEMM writes [B, S, 3*hidden] and the attention reads
it in place: per layer the Split, three Reshape/Transpose pairs and the merge disappear.
"""

from __future__ import annotations

from collections import Counter

from ecoinfer.ir.graph import Graph, Node
from ecoinfer.ir.pattern import remove_dead
from ecoinfer.passes.registry import register_pass

_BHSD = [0, 2, 1, 3]  # [B,S,H,D] <-> [B,H,S,D]
_BHDS = [0, 2, 3, 1]  # [B,S,H,D] -> [B,H,D,S] (K already transposed)


def _only_reader(graph: Graph, readers: dict, value: str) -> Node | None:
    r = readers.get(value, [])
    return r[0] if len(r) == 1 and value not in graph.output_names else None


def _same(a: object, b: object) -> bool:
    return a is not None and a == b


def _split_heads(graph: Graph, prods: dict, readers: dict, value: str, perm: list[int]):  # noqa: ANN202
    """value = Transpose(Reshape(x, [B,S,H,D]), perm) -> (x, H, D), or None."""
    t = prods.get(value)
    if t is None or t.op_type != "Transpose" or t.domain or t.attrs.get("perm") != perm:
        return None
    if _only_reader(graph, readers, value) is None:
        return None
    r = prods.get(t.inputs[0])
    if (
        r is None
        or r.op_type != "Reshape"
        or r.domain
        or _only_reader(graph, readers, r.outputs[0]) is None
    ):
        return None
    x = r.inputs[0]
    xs, rs = graph.value(x).shape, graph.value(r.outputs[0]).shape
    if xs is None or rs is None or len(xs) != 3 or len(rs) != 4:
        return None
    h, d = rs[2], rs[3]
    if not (isinstance(h, int) and isinstance(d, int)) or xs[-1] != h * d:
        return None
    if not (_same(xs[0], rs[0]) and _same(xs[1], rs[1])):
        return None
    return x, h, d


@register_pass(
    "fuse_attention_heads",
    level=2,
    doc="move the head split/merge Reshape+Transpose (and a packed-QKV Split) into one MultiHeadAttention node",
)
def fuse_attention_heads(graph: Graph) -> Counter[str]:
    counts: Counter[str] = Counter()
    for att in [n for n in graph.nodes if n.domain == "ecoinfer" and n.op_type == "Attention"]:
        prods, readers = graph.producers(), graph.consumers()
        t_out = _only_reader(graph, readers, att.outputs[0])
        if t_out is None or t_out.op_type != "Transpose" or t_out.attrs.get("perm") != _BHSD:
            continue
        r_out = _only_reader(graph, readers, t_out.outputs[0])
        if r_out is None or r_out.op_type != "Reshape":
            continue
        kt = bool(att.attrs.get("k_transposed", 0))
        q = _split_heads(graph, prods, readers, att.inputs[0], _BHSD)
        k = _split_heads(graph, prods, readers, att.inputs[1], _BHDS if kt else _BHSD)
        v = _split_heads(graph, prods, readers, att.inputs[2], _BHSD)
        if q is None or k is None or v is None or not (q[1] == k[1] == v[1]) or q[2] != k[2]:
            continue
        h, d, dv = q[1], q[2], v[2]
        att_shape = graph.value(att.outputs[0]).shape
        out_shape = graph.value(r_out.outputs[0]).shape
        if att_shape is None or out_shape is None or len(out_shape) != 3 or len(att_shape) != 4:
            continue
        if not (
            _same(out_shape[0], att_shape[0])
            and _same(out_shape[1], att_shape[2])
            and out_shape[2] == h * dv
        ):
            continue
        masks = list(att.inputs[3:5])
        attrs = {k2: v2 for k2, v2 in att.attrs.items() if k2 != "k_transposed"}
        attrs.update(num_heads=h, head_size=d)
        inputs = [q[0], k[0], v[0]]
        split = prods.get(q[0])
        if (
            split is not None
            and split.op_type == "Split"
            and not split.domain
            and split.outputs == inputs
            and all(_only_reader(graph, readers, o) is not None for o in inputs)
            and graph.value(split.inputs[0]).rank == 3
            and split.attrs.get("axis", 0) in (-1, 2)
        ):
            inputs = [split.inputs[0], "", ""]
            attrs["packed"] = 1
            counts["packed_qkv"] += 1
        while masks and masks[-1] == "":
            masks.pop()
        mha = Node(
            "MultiHeadAttention", inputs + masks, list(r_out.outputs), attrs, att.name, "ecoinfer"
        )
        at = next(i for i, n in enumerate(graph.nodes) if n is att)
        graph.nodes[at] = mha
        graph.nodes = [n for n in graph.nodes if n is not r_out]
        remove_dead(graph)
        counts["attention"] += 1
    return counts
