"""Pattern matcher and rewrite engine. Rules are data: (pattern, rewrite) pairs with a comment.

A pattern is a small tree of `Op` nodes over `Any_` / `Const` leaves:

    # Conv(x, W) -> BN  ==>  Conv(x, W*s) + (b-m)*s + beta
    Rule("fold_bn", Op("BatchNormalization", Op("Conv", Any_("x"), Const("w"), name="conv"),
                       Const("scale"), Const("bias"), Const("mean"), Const("var"), name="bn"),
         rewrite_fn)

Matching starts at a root node and walks producers upwards. Inner Op patterns only match
values with exactly one consumer that are not graph outputs (so a fused intermediate is never
needed elsewhere), unless built with `shared=True`. A leaf name bound twice must bind the same
value. `Add`/`Mul`/... try both input orders. The rewrite gets the Match and returns the nodes
that replace the root (they must write the root's outputs), or None to decline: a rule that
cannot prove its rewrite safe declines and the graph is left alone.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import torch

from ecoinfer.ir.graph import Graph, Node, Value

COMMUTATIVE = frozenset({"Add", "Mul", "Max", "Min", "Sum", "And", "Or", "Xor", "Equal"})


@dataclass(frozen=True)
class Pattern:
    pass


@dataclass(frozen=True)
class Any_(Pattern):
    """Any value (graph input, weight or node output); bound under `name`."""

    name: str | None = None
    where: Callable[[Match, str], bool] | None = None


@dataclass(frozen=True)
class Const(Pattern):
    """A value known at build time (an initializer); bound under `name`."""

    name: str | None = None
    where: Callable[[torch.Tensor], bool] | None = None


@dataclass(frozen=True, init=False)
class Op(Pattern):
    """A node of one of `op_types` whose inputs match `inputs` (all of them, in order)."""

    op_types: tuple[str, ...]
    inputs: tuple[Pattern, ...] | None
    name: str | None
    attrs: tuple[tuple[str, Any], ...]
    shared: bool
    where: Callable[[Match, Node], bool] | None
    domain: str

    def __init__(
        self,
        op_type: str | Iterable[str],
        *inputs: Pattern,
        name: str | None = None,
        attrs: dict[str, Any] | None = None,
        shared: bool = False,
        any_inputs: bool = False,
        where: Callable[[Match, Node], bool] | None = None,
        domain: str = "",
    ):
        types = (op_type,) if isinstance(op_type, str) else tuple(op_type)
        object.__setattr__(self, "op_types", types)
        object.__setattr__(self, "inputs", None if any_inputs else tuple(inputs))
        object.__setattr__(self, "name", name)
        object.__setattr__(self, "attrs", tuple(sorted((attrs or {}).items())))
        object.__setattr__(self, "shared", shared)
        object.__setattr__(self, "where", where)
        object.__setattr__(self, "domain", domain)


@dataclass
class Match:
    graph: Graph
    root: Node
    nodes: dict[str, Node] = field(default_factory=dict)  # named Op patterns
    values: dict[str, str] = field(default_factory=dict)  # named leaves -> value names
    matched: list[Node] = field(default_factory=list)  # every node of the match, root last

    def const(self, name: str) -> torch.Tensor:
        return self.graph.initializers[self.values[name]]

    def value(self, name: str) -> Value:
        return self.graph.value(self.values[name])

    def attr(self, node: str, key: str, default: Any = None) -> Any:
        return self.nodes[node].attrs.get(key, default)


# A rewrite returns the nodes replacing the root, a value name the root's output is
# equal to (an alias: the root disappears and its readers read that value), or None.
RewriteFn = Callable[[Match, "Rewriter"], "list[Node] | str | None"]


@dataclass(frozen=True)
class Rule:
    name: str
    pattern: Op
    rewrite: RewriteFn
    doc: str = ""  # the algebra, one line


class Rewriter:
    """What a rewrite function may do besides returning nodes: add weights, make names."""

    def __init__(self, graph: Graph):
        self.graph = graph

    def const(self, base: str, tensor: torch.Tensor) -> str:
        name = self.graph.fresh_name(base)
        self.graph.initializers[name] = tensor
        self.graph.values.pop(name, None)
        return name

    def value(self, base: str, like: Value | None = None) -> str:
        name = self.graph.fresh_name(base)
        self.graph.values[name] = Value(
            name, like.dtype if like else None, like.shape if like else None
        )
        return name


class _Matcher:
    def __init__(self, graph: Graph):
        self.graph = graph
        self.producers = graph.producers()
        self.consumers = graph.consumers()
        self.outputs = set(graph.output_names)

    def single_use(self, value: str) -> bool:
        return len(self.consumers.get(value, [])) == 1 and value not in self.outputs

    def match(self, pat: Op, node: Node) -> Match | None:
        m = Match(self.graph, node)
        return m if self._node(pat, node, m) else None

    def _node(self, pat: Op, node: Node, m: Match) -> bool:
        if node.op_type not in pat.op_types or (node.domain or "") != pat.domain:
            return False
        for key, want in pat.attrs:
            if node.attrs.get(key) != want:
                return False
        if pat.name is not None:
            if pat.name in m.nodes and m.nodes[pat.name] is not node:
                return False
            m.nodes[pat.name] = node
        if pat.inputs is not None:
            ins = list(node.inputs)
            while ins and ins[-1] == "":
                ins.pop()
            if len(ins) != len(pat.inputs):
                return False
            orders = [ins]
            if node.op_type in COMMUTATIVE and len(ins) == 2:
                orders.append(ins[::-1])
            for order in orders:
                snap = (dict(m.nodes), dict(m.values), list(m.matched))
                if all(self._input(p, v, m) for p, v in zip(pat.inputs, order)):
                    break
                m.nodes, m.values, m.matched = snap
            else:
                return False
        if pat.where is not None and not pat.where(m, node):
            return False
        m.matched.append(node)
        return True

    def _input(self, pat: Pattern, value: str, m: Match) -> bool:
        if isinstance(pat, Any_):
            return self._bind(pat.name, value, m) and (pat.where is None or pat.where(m, value))
        if isinstance(pat, Const):
            t = self.graph.initializers.get(value)
            if t is None or (pat.where is not None and not pat.where(t)):
                return False
            return self._bind(pat.name, value, m)
        assert isinstance(pat, Op)
        prod = self.producers.get(value)
        if prod is None:
            return False
        if not pat.shared and not self.single_use(value):
            return False
        return self._node(pat, prod, m)

    @staticmethod
    def _bind(name: str | None, value: str, m: Match) -> bool:
        if name is None:
            return True
        if name in m.values:
            return m.values[name] == value
        m.values[name] = value
        return True


def apply_rules(graph: Graph, rules: list[Rule], max_rounds: int = 50) -> Counter[str]:
    """Apply rules until none fires (a fixpoint). Returns how often each rule rewrote."""
    counts: Counter[str] = Counter()
    for _ in range(max_rounds):
        fired = False
        for rule in rules:
            while _apply_once(graph, rule):
                counts[rule.name] += 1
                fired = True
        if not fired:
            break
    return counts


def _apply_once(graph: Graph, rule: Rule) -> bool:
    matcher = _Matcher(graph)
    for node in list(graph.nodes):
        m = matcher.match(rule.pattern, node)
        if m is None:
            continue
        new = rule.rewrite(m, Rewriter(graph))
        if new is None:
            continue
        if isinstance(new, str):
            if not alias_output(graph, m.root, new):
                continue
        else:
            replace_nodes(graph, m.root, new)
        remove_dead(graph)
        return True
    return False


def alias_output(graph: Graph, root: Node, value: str) -> bool:
    """Make readers of root's (single) output read `value` instead; False if that's unsafe.

    A graph output keeps its name: then the producer of `value` is renamed to write it, which
    is only safe when `value` has no other reader and is not a graph input or weight.
    """
    old = root.outputs[0]
    if old in graph.output_names:
        prod = graph.producers().get(value)
        readers = graph.consumers().get(value, [])
        if prod is None or len(readers) != 1 or value in graph.output_names:
            return False
        prod.outputs = [old if o == value else o for o in prod.outputs]
        graph.nodes = [n for n in graph.nodes if n is not root]
        graph.values.pop(value, None)
        return True
    replace_all_uses(graph, old, value)
    graph.nodes = [n for n in graph.nodes if n is not root]
    graph.values.pop(old, None)
    return True


def replace_all_uses(graph: Graph, old: str, new: str) -> None:
    """Every node input (and subgraph reference) reading `old` reads `new`."""
    for n in graph.nodes:
        n.inputs = [new if i == old else i for i in n.inputs]
        for v in n.attrs.values():
            for sub in v if isinstance(v, list) else [v]:
                if isinstance(sub, Graph):
                    _rename_free(sub, old, new)


def _rename_free(g: Graph, old: str, new: str) -> None:
    if old in g.input_names or old in g.initializers or any(old in n.outputs for n in g.nodes):
        return  # shadowed inside the subgraph
    replace_all_uses(g, old, new)
    for o in g.outputs:
        if o.name == old:
            o.name = new


def replace_nodes(graph: Graph, root: Node, new: list[Node]) -> None:
    """Put `new` where `root` was. The new nodes must produce the root's (used) outputs."""
    made = {o for n in new for o in n.outputs}
    consumers = graph.consumers()
    for o in root.outputs:
        if o and o not in made and (o in consumers or o in graph.output_names):
            raise AssertionError(f"rewrite of {root.label()} dropped output '{o}'")
    at = next(k for k, n in enumerate(graph.nodes) if n is root)
    graph.nodes[at : at + 1] = new


def remove_dead(graph: Graph) -> int:
    """Delete nodes whose outputs nobody reads; drop unused weights. Returns nodes removed."""
    from ecoinfer.ir.graph import all_inputs  # noqa: PLC0415

    removed = 0
    while True:
        used = set(graph.output_names)
        for n in graph.nodes:
            used.update(all_inputs(n))
        keep = [n for n in graph.nodes if any(o in used for o in n.outputs if o)]
        if len(keep) == len(graph.nodes):
            break
        removed += len(graph.nodes) - len(keep)
        kept = {id(n) for n in keep}
        for n in graph.nodes:
            if id(n) not in kept:
                for o in n.outputs:
                    graph.values.pop(o, None)
        graph.nodes = keep
    used = set(graph.output_names)
    for n in graph.nodes:
        used.update(all_inputs(n))
    for name in [k for k in graph.initializers if k not in used]:
        del graph.initializers[name]
    return removed
