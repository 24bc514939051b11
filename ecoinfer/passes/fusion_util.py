"""Helpers shared by the fusion passes (normalisation, activation and GEMM fusions).

Not a pass: it registers nothing. The checks here are what lets a rewrite prove itself safe.
"""

from __future__ import annotations

import math

import torch

from ecoinfer.ir.graph import Graph
from ecoinfer.ir.pattern import Match

FLOAT_DTYPES = frozenset({"float32", "float16", "bfloat16", "float64"})


def internal_only(m: Match) -> bool:
    """Every matched node but the root is read only by matched nodes (and is no graph output).

    Patterns that read one value twice (x - mean used by both Pow and Div) are built with
    `shared=True`; this is the check that the sharing stays inside the match, so deleting the
    matched nodes cannot starve a reader outside it.
    """
    inside = {id(n) for n in m.matched} | {id(m.root)}
    outputs = set(m.graph.output_names)
    consumers = m.graph.consumers()
    for n in m.matched:
        if n is m.root:
            continue
        for o in n.outputs:
            if not o:
                continue
            if o in outputs or any(id(c) not in inside for c in consumers.get(o, [])):
                return False
    return True


def scalar(t: torch.Tensor | None) -> float | None:
    """The value of a one-element constant of rank <= 1, else None.

    Rank <= 1 so that broadcasting it against the fused op's input (rank >= 1) cannot grow
    the result's rank: the fused op keeps its input's shape.
    """
    if t is None or t.numel() != 1 or t.dim() > 1 or t.dtype == torch.bool:
        return None
    return float(t.reshape(-1)[0])


def near(t: torch.Tensor | None, want: float, rtol: float = 1e-6) -> bool:
    """A one-element constant within rtol of `want` (rtol covers float32 rounding)."""
    v = scalar(t)
    return v is not None and math.isfinite(v) and abs(v - want) <= rtol * max(abs(want), 1e-30)


def const_near(want: float, rtol: float = 1e-6):  # noqa: ANN201
    """A Const(where=...) predicate: a scalar constant equal to `want` up to rounding."""
    return lambda t: near(t, want, rtol)


def keeps_shape(m: Match, x: str) -> bool:
    """The matched subgraph's result has the rank of x (where both are known): a rewrite into
    a shape-preserving op (Gelu, LayerNormalization...) must not drop a broadcast."""
    xs, ys = shape_of(m.graph, x), shape_of(m.graph, m.root.outputs[0])
    if xs is not None and len(xs) == 0:
        return False
    return xs is None or ys is None or len(xs) == len(ys)


def is_float(graph: Graph, name: str) -> bool:
    if name in graph.initializers:
        return graph.initializers[name].is_floating_point()
    v = graph.values.get(name)
    return v is not None and v.dtype in FLOAT_DTYPES


def dtype_of(graph: Graph, name: str) -> str | None:
    from ecoinfer.ir.dtypes import from_torch  # noqa: PLC0415

    if name in graph.initializers:
        return from_torch(graph.initializers[name].dtype)
    v = graph.values.get(name)
    return v.dtype if v else None


def shape_of(graph: Graph, name: str) -> tuple | None:
    if name in graph.initializers:
        return tuple(graph.initializers[name].shape)
    v = graph.values.get(name)
    return v.shape if v else None


def const_axes(m: Match, node_name: str) -> list[int] | None:
    """The constant axes of a matched Reduce* node (input 1, newest ONNX form), or None.

    Only keepdims=1 reductions qualify: the decomposed norms broadcast the statistic back.
    """
    n = m.nodes[node_name]
    if int(n.attrs.get("keepdims", 1)) != 1 or int(n.attrs.get("noop_with_empty_axes", 0)):
        return None
    if len(n.inputs) < 2 or not n.inputs[1]:
        return None
    t = m.graph.initializers.get(n.inputs[1])
    if t is None or t.dtype not in (torch.int64, torch.int32) or t.dim() > 1 or t.numel() == 0:
        return None
    return [int(a) for a in t.reshape(-1).tolist()]


def trailing_axes(axes: list[int], rank: int | None) -> int | None:
    """k when `axes` are exactly the last k axes of a rank-`rank` tensor, else None.

    All-negative axes are trailing whatever the rank; positive ones need the rank.
    """
    if len(set(axes)) != len(axes):
        return None
    if rank is None:
        if any(a >= 0 for a in axes):
            return None
        norm = sorted(axes)
        k = len(norm)
        return k if norm == list(range(-k, 0)) else None
    norm = sorted(a + rank if a < 0 else a for a in axes)
    k = len(norm)
    if any(a < 0 or a >= rank for a in norm):
        return None
    return k if norm == list(range(rank - k, rank)) else None


def param_for(c: torch.Tensor, norm_shape: list[int], out_rank: int) -> torch.Tensor | None:
    """A constant that an elementwise op broadcasts over a tensor of rank `out_rank`, as a
    parameter of exactly `norm_shape` (the trailing normalised dims), when it only varies
    along those dims and does not grow the output; else None."""
    if c.dim() > out_rank:
        return None
    dims = list(c.shape)
    while dims and dims[0] == 1 and len(dims) > len(norm_shape):
        dims.pop(0)
    if len(dims) > len(norm_shape):
        return None
    tail = norm_shape[len(norm_shape) - len(dims) :]
    if any(d != 1 and d != t for d, t in zip(dims, tail)):
        return None
    return torch.broadcast_to(c.reshape(dims), norm_shape).contiguous().clone()
