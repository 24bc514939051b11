"""broadcast_masks: an attention mask that cannot vary over query rows is computed as one row.

Exported BERT-family models build their padding mask as [B, 1, Sq, Sk]: transformers'
mask utilities AND the key-padding mask [B, 1, 1, Sk] with a query-position term such as
`arange(Sq)[:, None] >= 0`, which is true everywhere but has Sq rows. The graph then
materializes Sq identical rows, and every attention layer reads the full [Sq, Sk] tile.

The attention ops broadcast their masks, so a mask that is the same for every query row may
be given as one row ([..., 1, Sk]). This pass proves that, and rewrites:

  * a tensor is *row-invariant* when its extent on axis -2 is 1 (or its rank is below 2),
    when it is a comparison whose result the value bounds decide (every element the same),
    or when an elementwise op computes it from row-invariant inputs only;
  * value bounds: constants (their min and max), Range with constant start and step (all
    values >= start for a positive step, <= start for a negative one), through
    Unsqueeze/Squeeze/Reshape/Expand/Identity/Flatten and numeric Casts;
  * a row-invariant mask of an ecoinfer Attention / MultiHeadAttention with more than one
    row is recomputed as a row: its elementwise cone is copied with each decided comparison
    replaced by a one-element constant, so every input of the copy has one row. The original
    cone stays for any other reader, and is dropped otherwise.

A causal mask (arange(Sq)[:, None] >= arange(Sk)[None, :]) is not decided by the bounds and
is left alone, as is every mask the proof does not cover.
"""

from __future__ import annotations

import math
from collections import Counter

import torch

from ecoinfer.ir.dtypes import to_torch
from ecoinfer.ir.graph import Graph, Node, Value
from ecoinfer.ir.pattern import remove_dead
from ecoinfer.passes.fusion_util import shape_of
from ecoinfer.passes.registry import register_pass

ELEMENTWISE = frozenset(
    {
        "Abs",
        "Add",
        "And",
        "Cast",
        "Div",
        "Equal",
        "Greater",
        "GreaterOrEqual",
        "Less",
        "LessOrEqual",
        "Max",
        "Min",
        "Mul",
        "Neg",
        "Not",
        "Or",
        "Sub",
        "Where",
        "Xor",
    }
)
VALUE_PRESERVING = frozenset({"Unsqueeze", "Squeeze", "Reshape", "Expand", "Identity", "Flatten"})
NUMERIC_CASTS = frozenset({"float32", "float64", "int64", "int32"})
# (domain, op) -> the mask inputs (additive, boolean keep) of the attention ops
MASK_INPUTS = {("ecoinfer", "MultiHeadAttention"): (3, 4), ("ecoinfer", "Attention"): (3, 4)}


class _Proof:
    def __init__(self, graph: Graph) -> None:
        self.g = graph
        self.prod = graph.producers()
        self.decided_memo: dict[str, bool | None] = {}
        self.invariant_memo: dict[str, bool] = {}

    def scalar(self, name: str) -> float | None:
        t = self.g.initializers.get(name)
        if t is None or t.numel() != 1 or t.dtype == torch.bool:
            return None
        return float(t.reshape(-1)[0])

    def bounds(self, name: str, depth: int = 0) -> tuple[float, float] | None:
        """(lowest, highest) value of the tensor, where provable."""
        t = self.g.initializers.get(name)
        if t is not None:
            if t.numel() == 0 or t.dtype == torch.bool or t.is_complex():
                return None
            lo, hi = float(t.min()), float(t.max())
            return None if math.isnan(lo) or math.isnan(hi) else (lo, hi)
        n = self.prod.get(name)
        if n is None or n.domain or depth > 32 or not n.inputs:
            return None
        if n.op_type in VALUE_PRESERVING:
            return self.bounds(n.inputs[0], depth + 1)
        if n.op_type == "Cast":
            v = self.g.values.get(n.outputs[0])
            if v is None or v.dtype not in NUMERIC_CASTS:
                return None
            return self.bounds(n.inputs[0], depth + 1)
        if n.op_type == "Range" and len(n.inputs) == 3:
            start, step = self.scalar(n.inputs[0]), self.scalar(n.inputs[2])
            if start is None or step is None or step == 0:
                return None
            return (start, math.inf) if step > 0 else (-math.inf, start)
        return None

    def decided(self, name: str) -> bool | None:
        """The one value of a comparison that the bounds decide, else None."""
        if name in self.decided_memo:
            return self.decided_memo[name]
        out = None
        n = self.prod.get(name)
        if n is not None and not n.domain and len(n.inputs) == 2:
            a, b = self.bounds(n.inputs[0]), self.bounds(n.inputs[1])
            if a is not None and b is not None:
                (alo, ahi), (blo, bhi) = a, b
                if n.op_type == "GreaterOrEqual":
                    out = True if alo >= bhi else False if ahi < blo else None
                elif n.op_type == "Greater":
                    out = True if alo > bhi else False if ahi <= blo else None
                elif n.op_type == "LessOrEqual":
                    out = True if ahi <= blo else False if alo > bhi else None
                elif n.op_type == "Less":
                    out = True if ahi < blo else False if alo >= bhi else None
        self.decided_memo[name] = out
        return out

    def one_row(self, name: str) -> bool:
        shape = shape_of(self.g, name)
        return shape is not None and (len(shape) < 2 or shape[-2] == 1)

    def invariant(self, name: str, depth: int = 0) -> bool:
        if name in self.invariant_memo:
            return self.invariant_memo[name]
        ok = self.one_row(name) or self.decided(name) is not None
        if not ok:
            n = self.prod.get(name)
            ok = (
                n is not None
                and not n.domain
                and n.op_type in ELEMENTWISE
                and len(n.outputs) == 1
                and depth < 64
                and all(self.invariant(i, depth + 1) for i in n.inputs if i)
            )
        self.invariant_memo[name] = ok
        return ok


def _row_copy(g: Graph, proof: _Proof, name: str, memo: dict[str, str], new: list[Node]) -> str:
    """The name of a one-row tensor equal to every row of row-invariant `name`."""
    if name in memo:
        return memo[name]
    if proof.one_row(name):
        memo[name] = name
        return name
    v = g.values.get(name)
    d = proof.decided(name)
    if d is not None:
        shape = shape_of(g, name) or ()
        dtype = v.dtype if v is not None and v.dtype else "bool"
        c = g.fresh_name(f"{name}_row")
        g.initializers[c] = torch.full([1] * len(shape), d, dtype=to_torch(dtype))
        memo[name] = c
        return c
    n = proof.prod[name]
    ins = [_row_copy(g, proof, i, memo, new) if i else "" for i in n.inputs]
    out = g.fresh_name(f"{name}_row")
    g.values[out] = Value(out, v.dtype if v is not None else None)
    label = f"{n.name}_row" if n.name else ""
    new.append(Node(n.op_type, ins, [out], dict(n.attrs), label, n.domain))
    memo[name] = out
    return out


@register_pass(
    "broadcast_masks",
    level=2,
    doc="an attention mask that is the same for every query row is computed as one row",
)
def broadcast_masks(graph: Graph) -> Counter[str]:
    counts: Counter[str] = Counter()
    proof = _Proof(graph)
    memo: dict[str, str] = {}
    new: list[Node] = []
    for n in graph.nodes:
        for i in MASK_INPUTS.get((n.domain, n.op_type), ()):
            m = n.inputs[i] if i < len(n.inputs) else ""
            if not m or proof.one_row(m) or (shape_of(graph, m) is None):
                continue
            if not proof.invariant(m):
                continue
            row = _row_copy(graph, proof, m, memo, new)
            if row != m:
                n.inputs[i] = row
                counts["masks"] += 1
    if new:
        graph.nodes.extend(new)
        graph.toposort()
        remove_dead(graph)  # the full-size cone, unless something else reads it
    return counts
