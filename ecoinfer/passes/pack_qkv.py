"""Horizontal GEMM fusion: projections that read the same input become one wider GEMM.

    Y_i = act(A @ W_i + b_i),  i = 1..n    (same A, same K, same trans_b and activation,
                                             constant W_i and b_i, no residual)
    ==> Y = act(A @ [W_1 .. W_n] + [b_1 .. b_n]);  Y_1..Y_n = Split(Y, [N_1..N_n], axis=-1)

Each output column of a GEMM only depends on its own weight column and bias entry, and the
activation is elementwise, so the split pieces are the original outputs. This is the Q/K/V
packing of attention blocks (3 projections of the LayerNorm output), but any such group is
packed. Runs after fuse_gemm; plain MatMul(A, W const) nodes (fuse_gemm disabled) count too.
A member without a bias gets zeros (x + 0 = x).
"""

from __future__ import annotations

from collections import Counter

import torch

from ecoinfer.ir.graph import Graph, Node, Value
from ecoinfer.ir.pattern import remove_dead
from ecoinfer.passes.fuse_gemm import DOMAIN, fused_gemm
from ecoinfer.passes.fusion_util import dtype_of
from ecoinfer.passes.registry import register_pass


def _member(graph: Graph, n: Node) -> tuple | None:
    """The packing key of a GEMM that may join a group, or None."""
    if len(n.outputs) != 1 or not n.outputs[0]:
        return None
    if n.op_type == "MatMul" and not n.domain:
        trans_b, act, params, bias = 0, "", (), ""
    elif n.op_type == "FusedGemm" and n.domain == DOMAIN:
        ins = list(n.inputs) + [""] * (4 - len(n.inputs))
        if ins[3]:
            return None  # a residual differs per member
        trans_b = int(n.attrs.get("trans_b", 0))
        act = str(n.attrs.get("activation") or "")
        params = tuple(float(p) for p in n.attrs.get("activation_params") or [])
        bias = ins[2]
    else:
        return None
    w = graph.initializers.get(n.inputs[1])
    if w is None or w.dim() != 2 or not w.is_floating_point():
        return None
    if bias:
        b = graph.initializers.get(bias)
        if b is None or b.dim() != 1 or b.dtype != w.dtype:
            return None
    if dtype_of(graph, n.inputs[0]) != dtype_of(graph, n.inputs[1]):
        return None
    k = w.shape[1] if trans_b else w.shape[0]
    return (trans_b, act, params, w.dtype, int(k))


def _find_group(graph: Graph) -> list[Node] | None:
    for a, readers in graph.consumers().items():
        groups: dict[tuple, list[Node]] = {}
        seen: set[int] = set()
        for n in readers:
            if id(n) in seen or n.inputs[0] != a:
                continue
            seen.add(id(n))
            key = _member(graph, n)
            if key is not None:
                groups.setdefault(key, []).append(n)
        for members in groups.values():
            if len(members) >= 2:
                return members
    return None


def _pack(graph: Graph, members: list[Node]) -> None:
    first = members[0]
    trans_b = int(first.attrs.get("trans_b", 0)) if first.op_type == "FusedGemm" else 0
    ws = [graph.initializers[n.inputs[1]] for n in members]
    sizes = [int(w.shape[0] if trans_b else w.shape[1]) for w in ws]
    weight = torch.cat(ws, dim=0 if trans_b else 1).contiguous()
    biases = []
    for n, size, w in zip(members, sizes, ws):
        b = n.inputs[2] if n.op_type == "FusedGemm" and len(n.inputs) > 2 else ""
        biases.append(graph.initializers[b] if b else torch.zeros(size, dtype=w.dtype))
    has_bias = any(n.op_type == "FusedGemm" and len(n.inputs) > 2 and n.inputs[2] for n in members)

    base = first.name or "packed_gemm"
    w_name = graph.fresh_name(f"{base}_packed_weight")
    graph.initializers[w_name] = weight
    b_name = ""
    if has_bias:
        b_name = graph.fresh_name(f"{base}_packed_bias")
        graph.initializers[b_name] = torch.cat(biases).contiguous()
    split_name = graph.fresh_name(f"{base}_packed_split")
    graph.initializers[split_name] = torch.tensor(sizes, dtype=torch.int64)
    out = graph.fresh_name(f"{base}_packed")
    graph.values[out] = Value(out, dtype_of(graph, first.inputs[0]))

    attrs = dict(first.attrs) if first.op_type == "FusedGemm" else {}
    attrs["trans_b"] = trans_b
    gemm = fused_gemm(f"{base}_packed", first.inputs[0], w_name, out, b_name, "", attrs)
    split = Node(
        "Split",
        [out, split_name],
        [n.outputs[0] for n in members],
        {"axis": -1},
        name=f"{base}_packed_split",
    )
    # the pack goes where the first member was: A is ready there, every reader comes later
    ids = {id(n) for n in members}
    at = min(k for k, n in enumerate(graph.nodes) if id(n) in ids)
    rest = [n for n in graph.nodes if id(n) not in ids]
    graph.nodes = [*rest[:at], gemm, split, *rest[at:]]


@register_pass(
    "pack_qkv",
    level=2,
    doc="GEMMs sharing their input (Q/K/V projections) packed into one FusedGemm + Split",
)
def pack_qkv(graph: Graph) -> Counter[str]:
    counts: Counter[str] = Counter()
    while (group := _find_group(graph)) is not None:
        _pack(graph, group)
        counts["packs"] += 1
        counts["gemms_packed"] += len(group)
    if counts:
        remove_dead(graph)
        graph.infer_shapes()
    return counts
