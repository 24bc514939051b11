"""Run convolution chains channels-last (NHWC), with Transposes only where a chain meets
the rest of the graph.

A region is a connected set of layout-convertible nodes holding at least one FusedConv:
FusedConv (gets layout="NHWC", its weight becomes [M, k..., C/group]), MaxPool/AveragePool
(become ecoinfer.MaxPool/AveragePool with layout="NHWC"), Global*Pool (become ReduceMean/
ReduceMax over the spatial axes), Reduce* over constant axes (axes renumbered), Concat (axis
renumbered) and elementwise ops (layout-agnostic once every operand is permuted alike:
constant operands are permuted at build time, scalars are left alone). Values entering a
region from outside get Transpose(perm=[0, 2, ..., 1]); values leaving it get the inverse
Transpose under their original name, so readers outside and graph outputs are unchanged.
An entering value that is itself Transpose(y, inverse perm) reads y directly, and
back-to-back Transposes the rewrite creates are merged or dropped.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import torch

from ecoinfer.ir.graph import Graph, Node, Value, all_inputs
from ecoinfer.ir.ops.fused_conv import permute_shape, to_first, to_last
from ecoinfer.ir.pattern import Any_, Match, Op, Rewriter, Rule, apply_rules, remove_dead
from ecoinfer.passes.registry import register_pass

DOMAIN = "ecoinfer"
MIN_CONVS = 2  # convs a region needs to be converted even when it costs two or more Transposes
UNARY = {
    "Relu", "Sigmoid", "Tanh", "HardSigmoid", "HardSwish", "LeakyRelu", "Elu", "Selu",
    "Gelu", "Swish", "Softplus", "Softsign", "Mish", "Exp", "Log", "Neg", "Abs", "Sqrt",
    "Reciprocal", "Erf", "Floor", "Ceil", "Round", "Sign", "Identity", "Cast", "Clip",
    "Sin", "Cos", "Not", "IsNaN", "IsInf", "ThresholdedRelu", "Celu", "Shrink",
}  # fmt: skip
NARY = {"Add", "Sub", "Mul", "Div", "Pow", "Max", "Min", "Sum", "Mean", "PRelu", "Where",
        "Equal", "Less", "Greater", "LessOrEqual", "GreaterOrEqual", "And", "Or", "Xor", "Mod",
        "BitShift"}  # fmt: skip
REDUCE = {"ReduceMean", "ReduceMax", "ReduceMin", "ReduceSum", "ReduceProd", "ReduceL1",
          "ReduceL2", "ReduceSumSquare", "ReduceLogSumExp"}  # fmt: skip


@dataclass
class _Plan:
    rank: int
    layout_inputs: list[int]  # inputs read channels-last (transposed in from outside)
    const_inputs: list[int] = field(default_factory=list)  # broadcast constants to permute
    nhwc_out: bool = True  # output 0 is channels-last


def _shape(g: Graph, name: str) -> tuple | None:
    if name in g.initializers:
        return tuple(g.initializers[name].shape)
    v = g.values.get(name)
    return v.shape if v else None


def _operand(g: Graph, name: str, rank: int) -> str | None:
    """How an elementwise operand follows a channels-last region: "layout" (a rank-`rank`
    value, permuted), "const" (a constant, aligned and permuted at build time), "scalar"
    (all dims 1: layout does not matter), or None (cannot follow)."""
    if not name:
        return "scalar"
    if name in g.initializers:
        t = g.initializers[name]
        if t.numel() == 1 and t.dim() <= rank:
            return "scalar"
        return "const" if t.dim() <= rank else None
    s = _shape(g, name)
    if s is None:
        return None
    if len(s) == rank:
        return "layout"
    return "scalar" if len(s) < rank and all(d == 1 for d in s) else None


def _plan(g: Graph, n: Node) -> _Plan | None:
    """Whether (and how) node n can run channels-last; None keeps it NCHW."""
    if not n.inputs or not n.inputs[0]:
        return None
    x = _shape(g, n.inputs[0])
    if x is None or len(x) < 3:
        return None
    r = len(x)
    outs = [o for o in n.outputs[1:] if o]
    if outs:
        return None  # secondary outputs (MaxPool's indices) have their own layout
    if n.domain == DOMAIN:
        if n.op_type != "FusedConv" or n.attrs.get("layout", "NCHW") != "NCHW":
            return None
        w = g.initializers.get(n.inputs[1])
        if w is None or w.dim() != r or n.inputs[0] in g.initializers:
            return None
        plan = _Plan(r, [0])
        if len(n.inputs) > 3 and n.inputs[3]:
            kind = _operand(g, n.inputs[3], r)
            if kind is None:
                return None
            if kind == "layout":
                plan.layout_inputs.append(3)
            elif kind == "const":
                plan.const_inputs.append(3)
        return plan
    if n.domain not in ("", "ai.onnx"):
        return None
    if n.op_type in ("MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool"):
        return _Plan(r, [0])
    if n.op_type in REDUCE:
        axes = _reduce_axes(g, n, r)
        if axes is None:
            return None
        if n.attrs.get("keepdims", 1):
            return _Plan(r, [0])
        # keepdims=0 over exactly the spatial axes gives [N, C] either way: a plain output
        return _Plan(r, [0], nhwc_out=False) if sorted(axes) == list(range(2, r)) else None
    if n.op_type == "Concat":
        if not all(_operand(g, i, r) == "layout" for i in n.inputs):
            return None
        return _Plan(r, list(range(len(n.inputs))))
    if n.op_type in UNARY:
        if any(_operand(g, i, r) != "scalar" for i in n.inputs[1:]):
            return None
        return _Plan(r, [0])
    if n.op_type in NARY:
        kinds = [_operand(g, i, r) for i in n.inputs]
        if any(k is None for k in kinds) or "layout" not in kinds:
            return None
        return _Plan(
            r,
            [k for k, kind in enumerate(kinds) if kind == "layout"],
            [k for k, kind in enumerate(kinds) if kind == "const"],
        )
    return None


def _reduce_axes(g: Graph, n: Node, r: int) -> list[int] | None:
    if len(n.inputs) < 2 or n.inputs[1] not in g.initializers:
        return None  # all axes (or run-time axes): not worth it
    axes = [int(a) for a in g.initializers[n.inputs[1]].reshape(-1).tolist()]
    if not axes or any(not -r <= a < r for a in axes):
        return None
    return [a % r for a in axes]


class _Find:
    def __init__(self) -> None:
        self.parent: dict[int, int] = {}

    def find(self, a: int) -> int:
        while self.parent.get(a, a) != a:
            a = self.parent[a]
        return a

    def union(self, a: int, b: int) -> None:
        self.parent[self.find(a)] = self.find(b)


def _regions(g: Graph, plans: dict[int, _Plan]) -> list[list[Node]]:
    producers = g.producers()
    uf = _Find()
    for n in g.nodes:
        p = plans.get(id(n))
        if p is None:
            continue
        for i in p.layout_inputs:
            src = producers.get(n.inputs[i])
            sp = plans.get(id(src)) if src is not None else None
            if sp is not None and sp.nhwc_out and sp.rank == p.rank:
                uf.union(id(n), id(src))
    groups: dict[int, list[Node]] = {}
    for n in g.nodes:
        if id(n) in plans:
            groups.setdefault(uf.find(id(n)), []).append(n)
    return [
        nodes
        for nodes in groups.values()
        if any(n.op_type == "FusedConv" and n.domain == DOMAIN for n in nodes)
    ]


class _Converter:
    def __init__(self, g: Graph, plans: dict[int, _Plan], counts: Counter[str]):
        self.g = g
        self.plans = plans
        self.counts = counts
        self.rw = Rewriter(g)
        self.producers = g.producers()
        self.new_nodes: list[Node] = []
        self.entering: dict[str, str] = {}  # NCHW value -> its channels-last copy
        self.permuted: dict[tuple[str, int], str] = {}  # constant -> permuted constant

    def _nchw_reads(self, region: list[Node]) -> set[str]:
        """Values read in NCHW: by nodes outside the region (subgraphs included), by region
        nodes at inputs that do not follow the layout, and graph outputs."""
        reads = set(self.g.output_names)
        inside = {id(n) for n in region}
        for m in self.g.nodes:
            if id(m) in inside:
                lay = set(self.plans[id(m)].layout_inputs)
                reads.update(i for k, i in enumerate(m.inputs) if k not in lay)
            else:
                reads.update(all_inputs(m))
        return reads

    def convert(self, region: list[Node]) -> None:
        g = self.g
        nchw_reads = self._nchw_reads(region)  # before any input is renamed
        renamed: dict[str, tuple[str, int]] = {}  # channels-last outputs of the region
        for n in region:
            p = self.plans[id(n)]
            if p.nhwc_out:
                old = n.outputs[0]
                v = g.values.get(old, Value(old))
                new = self.rw.value(f"{old}_nhwc")
                g.values[new] = Value(new, v.dtype, permute_shape(v.shape, to_last(p.rank)))
                renamed[old] = (new, p.rank)
        for n in region:
            p = self.plans[id(n)]
            for i in p.layout_inputs:
                src = n.inputs[i]
                n.inputs[i] = renamed[src][0] if src in renamed else self._enter(src, p.rank)
            for i in p.const_inputs:
                n.inputs[i] = self._permuted_const(n.inputs[i], p.rank)
            self._relayout(n, p)
            if p.nhwc_out:
                n.outputs[0] = renamed[n.outputs[0]][0]
        # values still read in NCHW go back to it under their own name
        for old, (new, rank) in renamed.items():
            if old in nchw_reads:
                self.new_nodes.append(
                    Node("Transpose", [new], [old], {"perm": to_first(rank)}, f"{old}_to_nchw")
                )
                self.counts["transposes"] += 1
        self.counts["regions"] += 1
        self.counts["nodes"] += len(region)

    def cost(self, region: list[Node]) -> int:
        """How many Transposes converting `region` would add (none are added here)."""
        made = {n.outputs[0] for n in region if self.plans[id(n)].nhwc_out}
        entering = set()
        for n in region:
            for i in self.plans[id(n)].layout_inputs:
                src = n.inputs[i]
                if src in made or src in self.g.initializers or self._cancels(src) is not None:
                    continue
                entering.add(src)
        return len(entering) + len(made & self._nchw_reads(region))

    def _cancels(self, src: str) -> str | None:
        """y when src = Transpose(y, channels-last -> NCHW), else None."""
        prod = self.producers.get(src)
        v = self.g.values.get(src)
        if prod is None or v is None or v.shape is None:
            return None
        if prod.op_type != "Transpose" or prod.domain:
            return None
        return (
            prod.inputs[0] if list(prod.attrs.get("perm") or []) == to_first(len(v.shape)) else None
        )

    def _enter(self, src: str, rank: int) -> str:
        if src in self.entering:
            return self.entering[src]
        g = self.g
        if src in g.initializers:
            out = self._permuted_const(src, rank)
        elif (y := self._cancels(src)) is not None:
            out = y  # Transpose(y, to NCHW) then back to channels-last is y
            self.counts["cancelled"] += 1
        else:
            v = g.values.get(src, Value(src))
            out = self.rw.value(f"{src}_nhwc")
            g.values[out] = Value(out, v.dtype, permute_shape(v.shape, to_last(rank)))
            self.new_nodes.append(
                Node("Transpose", [src], [out], {"perm": to_last(rank)}, f"{src}_to_nhwc")
            )
            self.counts["transposes"] += 1
        self.entering[src] = out
        return out

    def _permuted_const(self, name: str, rank: int) -> str:
        key = (name, rank)
        if key not in self.permuted:
            t = self.g.initializers[name]
            t = t.reshape((1,) * (rank - t.dim()) + tuple(t.shape)).permute(to_last(rank))
            self.permuted[key] = self.rw.const(f"{name}_nhwc", t.contiguous())
        return self.permuted[key]

    def _relayout(self, n: Node, p: _Plan) -> None:
        """Make node n compute on channels-last operands what it computed on NCHW ones."""
        r = p.rank
        # NCHW = NHWC.permute(to_first(r)): NCHW axis a is channels-last axis to_first(r)[a]
        new_axis = dict(enumerate(to_first(r)))
        if n.op_type == "FusedConv":
            w = n.inputs[1]
            key = (w, -1)
            if key not in self.permuted:
                t = self.g.initializers[w].permute(to_last(r)).contiguous()  # OIHW -> OHWI
                self.permuted[key] = self.rw.const(f"{w}_ohwi", t)
            n.inputs[1] = self.permuted[key]
            n.attrs["layout"] = "NHWC"
        elif n.op_type in ("MaxPool", "AveragePool"):
            n.domain = DOMAIN
            n.attrs["layout"] = "NHWC"
            n.outputs = n.outputs[:1]
        elif n.op_type in ("GlobalAveragePool", "GlobalMaxPool"):
            n.op_type = "ReduceMean" if n.op_type == "GlobalAveragePool" else "ReduceMax"
            axes = self.rw.const(f"{n.name or 'pool'}_axes", torch.tensor(list(range(1, r - 1))))
            n.inputs = [n.inputs[0], axes]
            n.attrs = {"keepdims": 1}
        elif n.op_type in REDUCE:
            axes = sorted(new_axis[a] for a in _reduce_axes(self.g, n, r) or [])
            n.inputs[1] = self.rw.const(f"{n.inputs[1]}_nhwc", torch.tensor(axes))
        elif n.op_type == "Concat":
            n.attrs["axis"] = new_axis[int(n.attrs.get("axis", 0)) % r]


def _merge_transposes(m: Match, rw: Rewriter) -> list[Node] | str | None:
    inner = m.nodes["t1"].attrs.get("perm")
    outer = m.root.attrs.get("perm")
    if inner is None or outer is None:
        return None
    perm = [inner[p] for p in outer]
    if perm == sorted(perm):
        return m.values["x"]
    return [Node("Transpose", [m.values["x"]], list(m.root.outputs), {"perm": perm}, m.root.name)]


# Transpose(Transpose(x, p1), p2) ==> Transpose(x, p1[p2]), or x when that is the identity
# (the inner one may have other readers: it stays for them)
CLEANUP = [
    Rule(
        "cancelled",
        Op("Transpose", Op("Transpose", Any_("x"), name="t1", shared=True)),
        _merge_transposes,
    )
]


@register_pass(
    "nhwc_layout",
    level=3,
    doc="run conv chains channels-last (NHWC); Transposes only at the chains' boundaries",
)
def nhwc_layout(graph: Graph) -> Counter[str]:
    counts: Counter[str] = Counter()
    plans = {}
    for n in graph.nodes:
        p = _plan(graph, n)
        if p is not None:
            plans[id(n)] = p
    regions = _regions(graph, plans)
    if not regions:
        return counts
    conv = _Converter(graph, plans, counts)
    for region in regions:
        n_conv = sum(n.op_type == "FusedConv" for n in region)
        # a lone conv is only worth it when the layout change costs at most one Transpose
        # (e.g. a model that transposes an NHWC input itself); chains always are
        if n_conv < MIN_CONVS and conv.cost(region) > 1:
            counts["regions_skipped"] += 1
            continue
        conv.convert(region)
    if not conv.new_nodes and not counts["regions"]:
        return counts
    graph.nodes.extend(conv.new_nodes)
    graph.toposort()
    counts.update(apply_rules(graph, CLEANUP))
    remove_dead(graph)  # the NCHW weights and Transposes nobody reads any more
    return counts
