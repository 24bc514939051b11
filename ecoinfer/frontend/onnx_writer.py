"""ecoinfer IR -> ONNX, so an optimized graph can be opened in the tools people already use.

Standard ops are written in the default domain at an opset new enough for every op in the
graph (the IR keeps the newest form of each op, so at least opset 18). Fused ops go to the
custom domain "ecoinfer" (version 1), documented in docs/fused-ops.md; onnxruntime cannot
run those, ecoinfer can read them back.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from onnx import helper, numpy_helper

from ecoinfer.ir import dtypes
from ecoinfer.ir.graph import Graph, Value

FUSED_DOMAIN = "ecoinfer"
# The opset that introduced each op, for ops newer than our floor of 18.
_SINCE = {"Gelu": 20, "RMSNormalization": 23, "Attention": 23, "Swish": 24, "HardSwish": 14}
_FLOOR = 18  # Reduce*/Split/Pad/Resize take the input forms the IR uses from opset 18 on
_EXTERNAL_BYTES = 1_800_000_000  # protobuf's 2 GB limit, with margin


def _value_info(v: Value) -> onnx.ValueInfoProto:
    elem = dtypes.to_onnx(v.dtype) if v.dtype else onnx.TensorProto.UNDEFINED
    if v.shape is None:
        return helper.make_tensor_value_info(v.name, elem, None)
    dims: list[int | str | None] = [d if isinstance(d, int | str) else None for d in v.shape]
    return helper.make_tensor_value_info(v.name, elem, dims)


def _tensor(name: str, t: torch.Tensor) -> onnx.TensorProto:
    arr = dtypes.torch_to_numpy(t)
    return numpy_helper.from_array(np.asarray(arr), name)


def _attr(key: str, value: Any) -> onnx.AttributeProto | None:
    if isinstance(value, Graph):
        return helper.make_attribute(key, graph_proto(value))
    if isinstance(value, torch.Tensor):
        return helper.make_attribute(key, _tensor("", value))
    if isinstance(value, list):
        if not value:
            return None  # an empty list has no ONNX type; readers use the schema default
        if isinstance(value[0], Graph):
            return helper.make_attribute(key, [graph_proto(g) for g in value])
        if isinstance(value[0], torch.Tensor):
            return helper.make_attribute(key, [_tensor("", t) for t in value])
    if isinstance(value, bool):
        value = int(value)
    return helper.make_attribute(key, value)


def graph_proto(g: Graph) -> onnx.GraphProto:
    nodes = []
    for n in g.nodes:
        attrs = [a for k, v in sorted(n.attrs.items()) if (a := _attr(k, v)) is not None]
        node = helper.make_node(n.op_type, n.inputs, n.outputs, name=n.name, domain=n.domain)
        node.attribute.extend(attrs)
        nodes.append(node)
    inputs = [_value_info(v) for v in g.inputs]
    outputs = [_value_info(g.values.get(o.name, o)) for o in g.outputs]
    io = set(g.input_names) | set(g.output_names) | set(g.initializers)
    value_info = [
        _value_info(v)
        for name, v in g.values.items()
        if name not in io and v.dtype is not None and any(name in n.outputs for n in g.nodes)
    ]
    inits = [_tensor(k, t) for k, t in g.initializers.items()]
    return helper.make_graph(
        nodes, g.name, inputs, outputs, initializer=inits, value_info=value_info
    )


def _ops(g: Graph) -> set[tuple[str, str]]:
    out = set()
    for n in g.nodes:
        out.add((n.domain, n.op_type))
        for v in n.attrs.values():
            for sub in v if isinstance(v, list) else [v]:
                if isinstance(sub, Graph):
                    out |= _ops(sub)
    return out


def to_onnx(graph: Graph, producer: str = "ecoinfer") -> onnx.ModelProto:
    """The graph as an ONNX ModelProto (weights inline)."""
    from ecoinfer import __version__  # noqa: PLC0415

    ops = _ops(graph)
    opset = max([graph.opset, _FLOOR] + [_SINCE.get(op, 0) for d, op in ops if not d])
    opsets = [helper.make_opsetid("", opset)]
    if any(d == FUSED_DOMAIN for d, _ in ops):
        opsets.append(helper.make_opsetid(FUSED_DOMAIN, 1))
    model = helper.make_model(
        graph_proto(graph),
        opset_imports=opsets,
        producer_name=producer,
        producer_version=__version__,
    )
    model.ir_version = helper.find_min_ir_version_for(opsets, ignore_unknown=True)
    for k, v in graph.metadata.items():
        if k != "producer":
            helper.set_model_props(model, {**{p.key: p.value for p in model.metadata_props}, k: v})
    return model


def save_onnx(graph: Graph, path: str | os.PathLike) -> Path:
    """Write the graph to `path`; weights go to `<name>.data` beside it past protobuf's limit."""
    path = Path(path)
    model = to_onnx(graph)
    size = sum(t.numel() * t.element_size() for t in graph.initializers.values())
    if size > _EXTERNAL_BYTES:
        onnx.save_model(
            model,
            path,
            save_as_external_data=True,
            all_tensors_to_one_file=True,
            location=path.name + ".data",
        )
    else:
        onnx.save_model(model, path)
    return path
