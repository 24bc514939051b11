"""Fuse chains and small DAGs of elementwise ops into one ecoinfer.FusedElementwise node.

    # f_n(... f_2(f_1(x, a), b) ...) with every intermediate read only inside the chain
    #   ==>  FusedElementwise{body: f_1 .. f_n}(x, a, b, ...)

Runs last among the fusions, over whatever the pattern fusions (LayerNorm, GELU, attention,
GEMM/conv epilogues) left: residual adds, mask computations, scale-and-shift, leftover
activation chains. The GPU engine generates one kernel per fused node; the torch kernel runs
the body with the reference kernels, so results are bit-identical to the unfused graph.

Grouping (greedy, producer into consumer): walk nodes from last to first; an unfused
elementwise node starts a group (its root) and pulls in the elementwise producers of its
group's inputs whose every reader is already in the group and that are not graph outputs.
So only the root's outputs leave the group, intermediates never escape (a value also read
elsewhere, or a graph output, splits the chain), and the group cannot create a cycle (every
member is an ancestor of the root and only the root has readers outside). Groups of one op
are left alone.

The body is closed (reads nothing from the outer graph): external values become body inputs
x0, x1, ... in first-use order; scalar constants (one element) are copied into the body as
initializers c0, c1, ... (a code generator emits them as literals); larger constants stay
outer weights passed as inputs. Body outputs are y0, ...; intermediates keep their names.

Not fused: ops of other domains (already fused ops), non-elementwise ops (the chain stops
there), values of unknown dtype or rank, strings, and small integer tensors whose contents
are known symbolically (shape arithmetic stays on the host, where Reshape can read it).
"""

from __future__ import annotations

from collections import Counter

from ecoinfer.ir.dtypes import from_torch
from ecoinfer.ir.graph import Graph, Node, Value
from ecoinfer.ir.pattern import remove_dead
from ecoinfer.passes.registry import register_pass

# elementwise ops (with numpy broadcasting where they take several inputs); data, not code
UNARY = frozenset(
    {
        "Exp", "Log", "Sqrt", "Reciprocal", "Floor", "Ceil", "Round", "Sin", "Cos", "Tan",
        "Asin", "Acos", "Atan", "Sinh", "Cosh", "Asinh", "Acosh", "Atanh", "Erf", "Tanh",
        "Sigmoid", "Softplus", "Softsign", "HardSwish", "Mish", "Abs", "Neg", "Sign", "Relu",
        "Not", "BitwiseNot", "IsNaN", "IsInf", "LeakyRelu", "Elu", "Celu", "Selu",
        "HardSigmoid", "ThresholdedRelu", "Gelu", "Swish", "Shrink", "Cast", "CastLike",
    }
)  # fmt: skip
NARY = frozenset(
    {
        "Add", "Sub", "Mul", "Div", "Mod", "Pow", "PRelu", "Equal", "Greater", "Less",
        "GreaterOrEqual", "LessOrEqual", "And", "Or", "Xor", "BitwiseAnd", "BitwiseOr",
        "BitwiseXor", "BitShift", "Max", "Min", "Sum", "Mean", "Where", "Clip",
    }
)  # fmt: skip
ELEMENTWISE = UNARY | NARY

MIN_GROUP = 2  # a single op is already one kernel


def _typed(v: Value | None) -> bool:
    return v is not None and v.dtype not in (None, "string") and v.shape is not None


def _fusible(graph: Graph, n: Node) -> bool:
    if (n.domain or "") not in ("", "ai.onnx") or n.op_type not in ELEMENTWISE:
        return False
    if len(n.outputs) != 1 or not n.outputs[0]:
        return False
    out = graph.values.get(n.outputs[0])
    if not _typed(out) or out.sym is not None:  # type: ignore[union-attr]
        return False  # unknown types, or shape arithmetic (keeps its symbolic contents)
    for i in n.inputs:
        if i and i not in graph.initializers and not _typed(graph.values.get(i)):
            return False
    return True


def _groups(graph: Graph) -> list[list[Node]]:
    """Groups of >= MIN_GROUP nodes, each in topological order with its root last."""
    producers = graph.producers()
    consumers = graph.consumers()
    outputs = set(graph.output_names)
    fusible = {id(n) for n in graph.nodes if _fusible(graph, n)}
    order = {id(n): k for k, n in enumerate(graph.nodes)}
    group_of: dict[int, int] = {}
    groups: list[list[Node]] = []
    for root in reversed(graph.nodes):
        if id(root) not in fusible or id(root) in group_of:
            continue
        gid = len(groups)
        members = [root]
        group_of[id(root)] = gid
        stack = [root]
        while stack:
            n = stack.pop()
            for v in n.inputs:
                p = producers.get(v)
                if p is None or id(p) not in fusible or id(p) in group_of or v in outputs:
                    continue
                # every reader inside the group: the intermediate never escapes (a reader
                # added later re-checks this producer, so DAGs join once all readers are in)
                if all(group_of.get(id(c)) == gid for c in consumers.get(v, [])):
                    group_of[id(p)] = gid
                    members.append(p)
                    stack.append(p)
        members.sort(key=lambda m: order[id(m)])
        groups.append(members)
    return [g for g in groups if len(g) >= MIN_GROUP]


def _fresh(base: str, taken: set[str]) -> str:
    name, k = base, 0
    while name in taken:
        k += 1
        name = f"{base}_{k}"
    taken.add(name)
    return name


def _build(graph: Graph, members: list[Node], node_name: str) -> Node | None:
    """The FusedElementwise node replacing `members` (root last), or None to leave them."""
    root = members[-1]
    made = {o for m in members for o in m.outputs}
    # body names must not shadow outer names (ONNX scoping)
    taken = set(graph.values) | set(graph.initializers) | set(graph.input_names) | made
    ext: dict[str, str] = {}  # outer value -> body input name
    consts: dict[str, str] = {}  # outer scalar weight -> body initializer name
    for m in members:
        for i in m.inputs:
            if not i or i in made or i in ext or i in consts:
                continue
            t = graph.initializers.get(i)
            if t is not None and t.numel() == 1:
                consts[i] = _fresh(f"c{len(consts)}", taken)
            else:
                ext[i] = _fresh(f"x{len(ext)}", taken)
    if all(i in graph.initializers for i in ext):
        return None  # all inputs constant: constant folding's business, not a kernel
    outs = {o: _fresh(f"y{k}", taken) for k, o in enumerate(root.outputs)}
    rename = {**ext, **consts, **outs}

    body = Graph(name="fused_" + "_".join(m.op_type for m in members)[:120])
    body.opsets = dict(graph.opsets)
    for outer, inner in ext.items():
        v = graph.values.get(outer)
        if v is None:  # a weight
            t = graph.initializers[outer]
            v = Value(outer, from_torch(t.dtype), tuple(t.shape))
        body.inputs.append(Value(inner, v.dtype, v.shape))
    for outer, inner in consts.items():
        body.initializers[inner] = graph.initializers[outer]  # shared: passes never mutate
    for m in members:
        body.nodes.append(
            Node(
                m.op_type,
                [rename.get(i, i) for i in m.inputs],
                [rename.get(o, o) for o in m.outputs],
                dict(m.attrs),
                m.name,
                m.domain,
            )
        )
        for o in m.outputs:
            v = graph.values.get(o)
            if v is not None:
                body.values[rename.get(o, o)] = Value(rename.get(o, o), v.dtype, v.shape)
    body.values.update({v.name: Value(v.name, v.dtype, v.shape) for v in body.inputs})
    body.outputs = [Value(outs[o], body.values[outs[o]].dtype, body.values[outs[o]].shape)
                    for o in root.outputs]  # fmt: skip
    return Node(
        "FusedElementwise",
        list(ext),
        list(root.outputs),
        {"body": body},
        node_name,
        "ecoinfer",
    )


@register_pass(
    "fuse_elementwise",
    level=2,
    doc="chains of elementwise ops (intermediates read nowhere else) -> one FusedElementwise",
)
def fuse_elementwise(graph: Graph) -> Counter[str]:
    counts: Counter[str] = Counter()
    graph.toposort()
    node_names = {n.name for n in graph.nodes}
    for members in _groups(graph):
        fused = _build(graph, members, _fresh("fused_elementwise", node_names))
        if fused is None:
            continue
        root = members[-1]
        gone = {id(m) for m in members[:-1]}
        graph.nodes = [fused if n is root else n for n in graph.nodes if id(n) not in gone]
        for m in members[:-1]:
            for o in m.outputs:
                graph.values.pop(o, None)
        counts["fused_nodes"] += 1
        counts["ops_fused"] += len(members)
    # scalar weights now copied into bodies and read nowhere else
    remove_dead(graph)
    return counts


def wrap_single_elementwise(graph: Graph) -> Counter[str]:
    """Every elementwise op left alone by fuse_elementwise becomes a FusedElementwise of one
    op, under its own name: its Triton tactic then applies. For lean builds, whose engines
    must launch nothing but Triton kernels (a lone Cast otherwise runs torch's kernel)."""
    counts: Counter[str] = Counter()
    out = []
    for n in graph.nodes:
        fused = _build(graph, [n], n.name) if _fusible(graph, n) else None
        out.append(fused if fused is not None else n)
        if fused is not None:
            counts["wrapped"] += 1
    graph.nodes = out
    remove_dead(graph)
    return counts
