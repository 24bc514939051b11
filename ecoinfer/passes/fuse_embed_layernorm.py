"""ecoinfer.EmbedLayerNorm from BERT-style embeddings.

    e_i = Gather(table_i, ids_i, axis=0)        (k in [2, MAX_LOOKUPS] lookups)
    s   = e_0 + e_1 + ... + e_{k-1}             (Add nodes, any association and order)
    y   = LayerNormalization(s, scale, bias?)   (over the last axis, float32 statistics)

becomes EmbedLayerNorm(ids_0, table_0, ..., scale, bias?, epsilon, num_lookups=k): one GPU
kernel instead of k gathers, an add and a norm. Only where it is exactly that computation:
every table a 2-D float initializer (not a graph input) of one dtype and one width H, ids
int32/int64, the LayerNorm over the last axis only with scale/bias constants along H of the
tables' dtype and stash_type=1, and every gather output and partial sum read by the chain
alone (a sum read elsewhere must stay). Runs before fuse_elementwise, which would take the Adds.
"""

from __future__ import annotations

from collections import Counter

import torch

from ecoinfer.ir.graph import Graph, Node
from ecoinfer.ir.ops.fused_embed import INDEX_DTYPES, MAX_LOOKUPS
from ecoinfer.ir.pattern import Match, Op, Rewriter, Rule, apply_rules
from ecoinfer.passes.fusion_util import dtype_of, param_for, shape_of
from ecoinfer.passes.registry import register_pass

_TABLE_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def _private(graph: Graph, value: str, reader: Node) -> bool:
    """`value` is read by `reader` alone (once) and is no graph output."""
    readers = graph.consumers().get(value, [])
    return (
        value not in graph.output_names
        and len(readers) == 1
        and readers[0] is reader
        and reader.inputs.count(value) == 1
    )


def _lookup(graph: Graph, n: Node) -> tuple[str, str] | None:
    """(ids, table) of a Gather that reads a row of a constant 2-D float table."""
    if n.op_type != "Gather" or n.domain or len(n.inputs) != 2 or len(n.outputs) != 1:
        return None
    table, ids = n.inputs
    t = graph.initializers.get(table)
    if t is None or table in graph.input_names or t.dim() != 2 or t.shape[1] == 0:
        return None  # a graph input may be overridden at run time: not a constant
    if t.dtype not in _TABLE_DTYPES or int(n.attrs.get("axis", 0)) not in (0, -2):
        return None
    if dtype_of(graph, ids) not in INDEX_DTYPES:
        return None
    return ids, table


def _leaves(graph: Graph, value: str, reader: Node) -> list[tuple[str, str]] | None:
    """The lookups summed into `value` (read by `reader`), left to right; None when `value`
    is not a private tree of Adds over qualifying Gathers."""
    prod = graph.producers().get(value)
    if prod is None or not _private(graph, value, reader):
        return None
    if prod.op_type == "Add" and not prod.domain and len(prod.inputs) == 2:
        out: list[tuple[str, str]] = []
        for x in prod.inputs:
            sub = _leaves(graph, x, prod)
            if sub is None or len(out) + len(sub) > MAX_LOOKUPS:
                return None
            out += sub
        return out
    found = _lookup(graph, prod)
    return None if found is None else [found]


def _fuse(m: Match, rw: Rewriter) -> list[Node] | None:
    ln = m.root
    g = m.graph
    if any(o for o in ln.outputs[1:]) or not 2 <= len(ln.inputs) <= 3 or not ln.inputs[1]:
        return None  # Mean / InvStdDev requested: they are not the fused op's outputs
    if int(ln.attrs.get("stash_type", 1)) != 1:
        return None
    x = ln.inputs[0]
    found = _leaves(g, x, ln)
    if found is None or len(found) < 2:
        return None
    tables = [g.initializers[t] for _, t in found]
    dt, width = tables[0].dtype, int(tables[0].shape[1])
    if any(t.dtype != dt or int(t.shape[1]) != width for t in tables):
        return None
    ranks = [shape_of(g, ids) for ids, _ in found]
    if any(r is None for r in ranks):
        return None
    rank = max(len(r) for r in ranks) + 1  # type: ignore[arg-type]
    axis = int(ln.attrs.get("axis", -1))
    if (axis + rank if axis < 0 else axis) != rank - 1:
        return None  # normalized over more than H
    params = []
    for k, name in enumerate(ln.inputs[1:]):
        if not name:
            continue
        c = g.initializers.get(name)
        if c is None or name in g.input_names or c.dtype != dt:
            return None
        p = param_for(c, [width], rank)
        if p is None:
            return None
        same = tuple(c.shape) == (width,)
        params.append(name if same else rw.const(f"{name}_{'scale' if k == 0 else 'bias'}", p))
    if not params:
        return None  # LayerNormalization's scale is required
    inputs = [v for pair in found for v in pair] + params
    attrs = {"epsilon": float(ln.attrs.get("epsilon", 1e-5)), "num_lookups": len(found)}
    name = ln.name or "EmbedLayerNorm"
    return [Node("EmbedLayerNorm", inputs, [ln.outputs[0]], attrs, name, "ecoinfer")]


def _rule(lookups: Counter[str]) -> Rule:
    def rewrite(m: Match, rw: Rewriter) -> list[Node] | None:
        out = _fuse(m, rw)
        if out is not None:
            lookups["lookups"] += int(out[0].attrs["num_lookups"])
        return out

    # LayerNorm(Gather(T0, i0) + Gather(T1, i1) + ..., s, b) ==> EmbedLayerNorm(i0, T0, i1, T1, ..., s, b)
    return Rule(
        "embed_layernorm",
        Op("LayerNormalization", any_inputs=True, name="ln"),
        rewrite,
        "summed embedding lookups + LayerNorm over H ==> EmbedLayerNorm",
    )


@register_pass(
    "fuse_embed_layernorm",
    level=2,
    doc="ecoinfer.EmbedLayerNorm from Gather (2-D tables) + Add + LayerNormalization",
)
def fuse_embed_layernorm(graph: Graph) -> Counter[str]:
    lookups: Counter[str] = Counter()
    return apply_rules(graph, [_rule(lookups)]) + lookups
