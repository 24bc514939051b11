"""IR graph <-> JSON-able dict, with tensors (weights and tensor attributes) kept apart.

Used by the engine file: the graph goes into the JSON header, every tensor into the
safetensors blob. Only plain data is written and read: nothing here can execute code.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from ecoinfer.errors import EcoinferError
from ecoinfer.ir.graph import Graph, Node, Value


def _dims(shape: tuple | None) -> list | None:
    return None if shape is None else [d for d in shape]


def _value(v: Value) -> dict:
    return {"name": v.name, "dtype": v.dtype, "shape": _dims(v.shape)}


def _attr(v: Any, tensors: dict[str, torch.Tensor], key: str) -> Any:
    if isinstance(v, torch.Tensor):
        tensors[key] = v.contiguous()
        return {"__tensor__": key}
    if isinstance(v, Graph):
        return {"__graph__": graph_to_dict(v, tensors, prefix=key + "/")}
    if isinstance(v, list):
        return [_attr(x, tensors, f"{key}/{i}") for i, x in enumerate(v)]
    if isinstance(v, float) and not math.isfinite(v):
        return {"__float__": repr(v)}  # inf / nan survive a round trip through strict JSON
    return v


def graph_to_dict(g: Graph, tensors: dict[str, torch.Tensor], prefix: str = "") -> dict:
    """The graph as plain data; weights and tensor attributes are put into `tensors`."""
    inits = {}
    for name, t in g.initializers.items():
        key = f"{prefix}w/{name}"
        tensors[key] = t.contiguous()
        inits[name] = key
    nodes = []
    for k, n in enumerate(g.nodes):
        nodes.append(
            {
                "op": n.op_type,
                "domain": n.domain,
                "name": n.name,
                "inputs": list(n.inputs),
                "outputs": list(n.outputs),
                "attrs": {a: _attr(v, tensors, f"{prefix}a/{k}/{a}") for a, v in n.attrs.items()},
            }
        )
    return {
        "name": g.name,
        "inputs": [_value(v) for v in g.inputs],
        "outputs": [_value(g.values.get(v.name, v)) for v in g.outputs],
        "values": [
            _value(v) for v in g.values.values() if v.dtype is not None or v.shape is not None
        ],
        "initializers": inits,
        "nodes": nodes,
        "opsets": dict(g.opsets),
        "metadata": dict(g.metadata),
        "outer_scope": sorted(g.outer_scope),
    }


def _load_attr(v: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(v, dict):
        if "__tensor__" in v:
            return tensors[v["__tensor__"]]
        if "__graph__" in v:
            return graph_from_dict(v["__graph__"], tensors)
        if "__float__" in v:
            return float(v["__float__"])
        raise EcoinferError(f"engine file: unknown attribute encoding {sorted(v)}")
    if isinstance(v, list):
        return [_load_attr(x, tensors) for x in v]
    return v


def _shape(s: list | None) -> tuple | None:
    return None if s is None else tuple(s)


def graph_from_dict(d: dict, tensors: dict[str, torch.Tensor]) -> Graph:
    g = Graph(
        name=d["name"],
        opsets=dict(d.get("opsets", {"": 21})),
        metadata=dict(d.get("metadata", {})),
        outer_scope=frozenset(d.get("outer_scope", [])),
    )
    for v in d["values"]:
        g.values[v["name"]] = Value(v["name"], v["dtype"], _shape(v["shape"]))
    g.inputs = [Value(v["name"], v["dtype"], _shape(v["shape"])) for v in d["inputs"]]
    for v in g.inputs:
        g.values[v.name] = v
    g.outputs = [Value(v["name"], v["dtype"], _shape(v["shape"])) for v in d["outputs"]]
    g.initializers = {name: tensors[key] for name, key in d["initializers"].items()}
    g.nodes = [
        Node(
            n["op"],
            list(n["inputs"]),
            list(n["outputs"]),
            {a: _load_attr(v, tensors) for a, v in n["attrs"].items()},
            n["name"],
            n["domain"],
        )
        for n in d["nodes"]
    ]
    return g
