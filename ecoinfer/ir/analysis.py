"""Graph analysis for reports: binding concrete input shapes, FLOP estimates."""

from __future__ import annotations

import copy
from collections import Counter
from dataclasses import dataclass, field

from ecoinfer.errors import InputShapeError, UnknownInputError
from ecoinfer.ir.graph import Dim, Graph, Value
from ecoinfer.ir.ops.registry import InferContext, get_schema, infer_node, numel

# Ops that move or reinterpret data and do no arithmetic.
_NO_MATH = frozenset(
    "Identity Reshape Transpose Flatten Squeeze Unsqueeze Expand Tile Concat Split Slice "
    "Gather GatherElements GatherND Shape Size Range ConstantOfShape Cast CastLike Dropout "
    "DepthToSpace SpaceToDepth Pad EyeLike Trilu NonZero OneHot Compress".split()
)


def check_shape_names(graph: Graph, shapes: dict[str, tuple[int, ...]] | None) -> None:
    """--shapes may name only the model's inputs (a typo must not be silently ignored)."""
    names = {v.name for v in graph.inputs}
    for n in shapes or {}:
        if n not in names:
            raise UnknownInputError(
                f"--shapes names '{n}', which is not an input of the model "
                f"(inputs: {', '.join(sorted(names))})"
            )


def bind_input_shapes(
    graph: Graph, shapes: dict[str, tuple[int, ...]], default_dim: int = 1
) -> tuple[Graph, dict[str, int]]:
    """A shallow copy of the graph whose inputs have concrete shapes, with shapes re-inferred.

    Symbolic dims not fixed by `shapes` take `default_dim`; returns them as the assumed dims.
    """
    check_shape_names(graph, shapes)
    bindings: dict[str, int] = {}
    for v in graph.inputs:
        if v.name in shapes and v.shape is not None:
            given = shapes[v.name]
            if len(given) != len(v.shape):
                raise InputShapeError(
                    f"--shapes {v.name}: rank {len(given)} given but the model's input is "
                    f"{v.type_str()} (rank {len(v.shape)})"
                )
            for want, have in zip(v.shape, given):
                if isinstance(want, int) and want != have:
                    raise InputShapeError(
                        f"--shapes {v.name}: {list(given)} contradicts the model's fixed shape "
                        f"{v.type_str()}"
                    )
                if isinstance(want, str):
                    if want in bindings and bindings[want] != have:
                        raise InputShapeError(
                            f"--shapes {v.name}: dimension '{want}' = {have} disagrees with "
                            f"{bindings[want]} given for another input"
                        )
                    bindings[want] = have
    assumed: dict[str, int] = {}
    g = copy.copy(graph)
    g.values = {}
    g.inputs = []
    for v in graph.inputs:
        if v.name in shapes:
            shape: tuple[Dim, ...] | None = tuple(shapes[v.name])
        elif v.shape is None:
            shape = None
        else:
            dims: list[Dim] = []
            for k, d in enumerate(v.shape):
                if isinstance(d, int):
                    dims.append(d)
                else:
                    key = d if isinstance(d, str) else f"{v.name}[{k}]"
                    if key not in bindings:
                        assumed[key] = default_dim
                    dims.append(bindings.setdefault(key, default_dim))
            shape = tuple(dims)
        nv = Value(v.name, v.dtype, shape)
        g.inputs.append(nv)
        g.values[v.name] = nv
    g.outputs = [Value(o.name, o.dtype, None) for o in graph.outputs]
    g.infer_shapes()
    return g, assumed


def index_table_sizes(graph: Graph) -> dict[str, int]:
    """Graph inputs used as indices into a constant table (Gather on an embedding, or an
    ecoinfer.EmbedLayerNorm lookup: its kernel cannot raise on a bad index), with the
    size of the smallest table each one indexes: valid indices are [-size, size)."""
    out: dict[str, int] = {}
    names = set(graph.input_names)
    for n in graph.nodes:
        pairs: list[tuple[str, str, int]] = []  # (table, ids, axis)
        if n.op_type == "Gather" and not n.domain and len(n.inputs) > 1:
            pairs = [(n.inputs[0], n.inputs[1], int(n.attrs.get("axis", 0)))]
        elif n.op_type == "EmbedLayerNorm" and n.domain == "ecoinfer":
            k = int(n.attrs.get("num_lookups") or 0)  # ids_i, table_i pairs, then scale, bias
            pairs = [(n.inputs[2 * i + 1], n.inputs[2 * i], 0) for i in range(k)]
        for table, ids, axis in pairs:
            data = graph.initializers.get(table)
            if ids in names and data is not None:
                size = int(data.shape[axis])
                out[ids] = min(out.get(ids, size), size)
    return out


@dataclass
class FlopReport:
    total: int = 0
    by_op: Counter[str] = field(default_factory=Counter)
    unknown_nodes: list[str] = field(default_factory=list)


def estimate_flops(graph: Graph) -> FlopReport:
    """FLOPs (multiply-add = 2) from each op's formula; elementwise ops count one per output element."""
    rep = FlopReport()
    for n in graph.nodes:
        if n.op_type in _NO_MATH:
            continue
        schema = get_schema(n.op_type, n.domain)
        outs = infer_node(graph, n)
        flops: int | None
        if schema.flops is not None:
            flops = schema.flops(InferContext(graph, n, schema), outs)
        else:
            first = outs[0] if outs else None
            size = numel(first.shape) if first is not None else None
            flops = size if isinstance(size, int) else None
        if flops is None:
            rep.unknown_nodes.append(n.name or n.op_type)
            continue
        rep.total += int(flops)
        rep.by_op[n.op_type] += int(flops)
    return rep
