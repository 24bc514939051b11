"""The graph IR: typed values with symbolic shapes, nodes with attributes, graphs with weights."""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import torch

from ecoinfer.errors import GraphError

_T = TypeVar("_T")


def optional_input(items: list[_T | None], i: int) -> _T | None:
    """A node's i-th input (a tensor, or what a tactic knows of it), None where the list is
    shorter: ONNX leaves trailing optional inputs out."""
    return items[i] if i < len(items) else None


# A dimension is a known size (int), a symbol shared by every place it appears ("batch",
# "seq"), or None when nothing is known about it.
Dim = int | str | None
Shape = tuple[Dim, ...]


@dataclass
class Value:
    """A tensor flowing through the graph. shape None means even the rank is unknown."""

    name: str
    dtype: str | None = None
    shape: Shape | None = None
    # Known contents of a small integer tensor (usually derived from Shape): lets Reshape,
    # Expand and friends keep symbolic dims, like ONNX's data propagation.
    sym: Shape | None = None

    @property
    def rank(self) -> int | None:
        return None if self.shape is None else len(self.shape)

    def type_str(self) -> str:
        dims = (
            "?"
            if self.shape is None
            else "x".join("?" if d is None else str(d) for d in self.shape)
        )
        return f"{self.dtype or '?'}[{dims}]"


@dataclass
class Node:
    op_type: str
    inputs: list[str]  # "" marks an omitted optional input
    outputs: list[str]
    attrs: dict[str, Any] = field(default_factory=dict)
    name: str = ""
    domain: str = ""

    def label(self) -> str:
        return f"{self.op_type} node '{self.name}'" if self.name else f"{self.op_type} node"


@dataclass
class Graph:
    name: str = "graph"
    inputs: list[Value] = field(default_factory=list)
    outputs: list[Value] = field(default_factory=list)
    nodes: list[Node] = field(default_factory=list)
    initializers: dict[str, torch.Tensor] = field(default_factory=dict)
    # type information of every named value (inputs, initializers, node outputs)
    values: dict[str, Value] = field(default_factory=dict)
    opsets: dict[str, int] = field(default_factory=lambda: {"": 21})
    metadata: dict[str, str] = field(default_factory=dict)
    # names visible from an enclosing graph (control-flow bodies)
    outer_scope: frozenset[str] = frozenset()

    # ------------------------------------------------------------------ lookups
    @property
    def opset(self) -> int:
        return self.opsets.get("", self.opsets.get("ai.onnx", 21))

    @property
    def input_names(self) -> list[str]:
        return [v.name for v in self.inputs]

    @property
    def output_names(self) -> list[str]:
        return [v.name for v in self.outputs]

    def value(self, name: str) -> Value:
        v = self.values.get(name)
        if v is None:
            v = Value(name)
            self.values[name] = v
        return v

    def producers(self) -> dict[str, Node]:
        return {o: n for n in self.nodes for o in n.outputs if o}

    def consumers(self) -> dict[str, list[Node]]:
        out: dict[str, list[Node]] = {}
        for n in self.nodes:
            for i in n.inputs:
                if i:
                    out.setdefault(i, []).append(n)
        return out

    def fresh_name(self, base: str) -> str:
        if base not in self.values and base not in self.initializers:
            return base
        for k in itertools.count(1):
            cand = f"{base}_{k}"
            if cand not in self.values and cand not in self.initializers:
                return cand
        raise AssertionError("unreachable")

    # ------------------------------------------------------------------ structure
    def toposort(self) -> None:
        """Order nodes so every input is produced before it is used (stable, Kahn)."""
        available = set(self.input_names) | set(self.initializers) | set(self.outer_scope) | {""}
        pending = list(self.nodes)
        ordered: list[Node] = []
        produced_by = self.producers()
        while pending:
            progress = False
            rest = []
            for n in pending:
                if all(i in available or i not in produced_by for i in all_inputs(n)):
                    ordered.append(n)
                    available.update(n.outputs)
                    progress = True
                else:
                    rest.append(n)
            if not progress:
                names = ", ".join(n.name or n.op_type for n in rest[:5])
                raise GraphError(f"graph '{self.name}' has a cycle among nodes: {names}")
            pending = rest
        self.nodes = ordered

    def verify(self) -> None:
        """Check every input is defined before use, names are unique and types agree."""
        from ecoinfer.ir.ops import get_schema, infer_node  # noqa: PLC0415 (cycle)

        defined = set(self.input_names) | set(self.initializers) | set(self.outer_scope) | {""}
        dupes = [k for k, c in Counter(self.input_names).items() if c > 1]
        if dupes:
            raise GraphError(f"graph '{self.name}': input '{dupes[0]}' is declared twice")
        for n in self.nodes:
            for i in all_inputs(n):
                if i not in defined:
                    raise GraphError(
                        f"graph '{self.name}': {n.label()} reads '{i}', which no earlier node,"
                        " input or initializer defines"
                    )
            for o in n.outputs:
                if o and o in defined:
                    raise GraphError(
                        f"graph '{self.name}': value '{o}' is defined twice (again by {n.label()})"
                    )
                defined.add(o)
            get_schema(n.op_type, n.domain, where=n.label())
            inferred = infer_node(self, n)
            for name, got in zip(n.outputs, inferred):
                have = self.values.get(name)
                if not name or have is None or got is None:
                    continue
                if have.dtype and got.dtype and have.dtype != got.dtype:
                    raise GraphError(
                        f"graph '{self.name}': {n.label()} output '{name}' is declared "
                        f"{have.dtype} but the op produces {got.dtype}"
                    )
                if not shapes_compatible(have.shape, got.shape):
                    raise GraphError(
                        f"graph '{self.name}': {n.label()} output '{name}' is declared "
                        f"{have.type_str()} but the op produces {got.type_str()}"
                    )
        for o in self.outputs:
            if o.name not in defined:
                raise GraphError(f"graph '{self.name}': output '{o.name}' is never computed")

    def infer_shapes(self, strict: bool = False) -> None:
        """Propagate dtypes and (symbolic) shapes through the graph, in node order.

        Declared output types that are more precise than what inference finds are kept.
        """
        from ecoinfer.ir.ops import infer_node  # noqa: PLC0415

        for n in self.nodes:
            inferred = infer_node(self, n, strict=strict)
            for name, got in zip(n.outputs, inferred):
                if not name or got is None:
                    continue
                have = self.values.get(name)
                if have is None:
                    self.values[name] = Value(name, got.dtype, got.shape, got.sym)
                else:
                    have.dtype = have.dtype or got.dtype
                    have.shape = merge_shapes(have.shape, got.shape)
                    have.sym = got.sym
        for o in self.outputs:
            v = self.values.get(o.name)
            if v is not None:
                o.dtype = o.dtype or v.dtype
                o.shape = merge_shapes(o.shape, v.shape)

    # ------------------------------------------------------------------ reporting
    def op_histogram(self) -> Counter[str]:
        return Counter(
            (n.op_type if not n.domain or n.domain == "ai.onnx" else f"{n.domain}.{n.op_type}")
            for n in self.nodes
        )

    def param_count(self) -> tuple[int, int]:
        """(number of weight elements, bytes) over all initializers."""
        count = sum(t.numel() for t in self.initializers.values())
        nbytes = sum(t.numel() * t.element_size() for t in self.initializers.values())
        return count, nbytes

    def dump(self, max_nodes: int | None = None) -> str:
        """A readable text form: signature, then one line per node."""
        lines = [f"graph {self.name} (opset {self.opset})"]
        for v in self.inputs:
            lines.append(f"  input  {v.name}: {v.type_str()}")
        for v in self.outputs:
            lines.append(f"  output {v.name}: {self.values.get(v.name, v).type_str()}")
        count, nbytes = self.param_count()
        lines.append(
            f"  {len(self.initializers)} initializers, {count:,} parameters, {nbytes:,} bytes"
        )
        for k, n in enumerate(self.nodes):
            if max_nodes is not None and k >= max_nodes:
                lines.append(f"  ... {len(self.nodes) - k} more nodes")
                break
            outs = ", ".join(
                f"{o}: {self.values[o].type_str()}" if o in self.values else o for o in n.outputs
            )
            ins = ", ".join(i if i else "<none>" for i in n.inputs)
            attrs = ""
            if n.attrs:
                attrs = (
                    " {" + ", ".join(f"{k}={_short(v)}" for k, v in sorted(n.attrs.items())) + "}"
                )
            op = n.op_type if not n.domain else f"{n.domain}.{n.op_type}"
            lines.append(f"  {outs} = {op}({ins}){attrs}  # {n.name}")
        return "\n".join(lines)


def all_inputs(n: Node) -> list[str]:
    """A node's inputs plus the outer-scope names its subgraphs read."""
    names = list(n.inputs)
    for v in n.attrs.values():
        for g in v if isinstance(v, list) else [v]:
            if isinstance(g, Graph):
                names.extend(sorted(free_names(g)))
    return names


def last_uses(nodes: Iterable[Node]) -> dict[str, int]:
    """Name -> index of the last node that reads it (subgraph reads of outer names count):
    after that node runs, an activation can be freed."""
    last: dict[str, int] = {}
    for k, n in enumerate(nodes):
        for i in all_inputs(n):
            last[i] = k
    return last


def free_names(g: Graph) -> set[str]:
    """Names a (sub)graph reads without defining them."""
    defined = set(g.input_names) | set(g.initializers) | {""}
    free: set[str] = set()
    for n in g.nodes:
        for i in all_inputs(n):
            if i not in defined:
                free.add(i)
        defined.update(n.outputs)
    for o in g.outputs:
        if o.name not in defined:
            free.add(o.name)
    return free


def _short(v: Any) -> str:
    if isinstance(v, torch.Tensor):
        return f"tensor<{v.dtype}{list(v.shape)}>" if v.numel() > 4 else str(v.tolist())
    if isinstance(v, Graph):
        return f"<graph {v.name}: {len(v.nodes)} nodes>"
    if isinstance(v, list) and len(v) > 8:
        return f"[{', '.join(map(str, v[:8]))}, ...]"
    return repr(v)


def shapes_compatible(a: Shape | None, b: Shape | None) -> bool:
    if a is None or b is None:
        return True
    if len(a) != len(b):
        return False
    return all(not (isinstance(x, int) and isinstance(y, int) and x != y) for x, y in zip(a, b))


def merge_shapes(have: Shape | None, got: Shape | None) -> Shape | None:
    """Keep the most precise knowledge of a shape: ints beat symbols beat unknowns."""
    if have is None:
        return got
    if got is None or len(have) != len(got):
        return have
    out: list[Dim] = []
    for h, g in zip(have, got):
        if isinstance(h, int):
            out.append(h)
        elif isinstance(g, int):
            out.append(g)
        else:
            out.append(h if h is not None else g)
    return tuple(out)
