"""ecoinfer as an onnx.backend.base.Backend, so ONNX's own conformance suite can judge it."""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx
import torch
from onnx.backend.base import Backend, BackendRep

from ecoinfer.api import Model
from ecoinfer.errors import EcoinferError
from ecoinfer.frontend.onnx import import_onnx
from ecoinfer.ir import dtypes
from ecoinfer.ir.ops import has_schema
from ecoinfer.kernels.torch_ops import get_kernel

_REWRITTEN = {"Upsample": "Resize"}


class EcoinferRep(BackendRep):
    def __init__(self, model: Model, device: str):
        self.model = model
        self.device = device

    def run(self, inputs: Any, **kwargs: Any) -> tuple[np.ndarray, ...]:
        names = self.model.graph.input_names
        if isinstance(inputs, dict):
            feeds = dict(inputs)
        else:
            if isinstance(inputs, np.ndarray):
                inputs = [inputs]
            feeds = dict(zip(names, inputs))
        out = self.model.run(feeds, device=self.device)
        return tuple(out[o] for o in self.model.graph.output_names)


def unsupported_reason(model: onnx.ModelProto) -> str | None:
    """Why ecoinfer cannot take this model (op or dtype), or None when it can."""

    def walk(graph: onnx.GraphProto) -> str | None:
        for vi in list(graph.input) + list(graph.output):
            tt = vi.type.tensor_type if vi.type.HasField("tensor_type") else None
            if tt is None and vi.HasField("type"):
                return f"{vi.name}: non-tensor type"
            if (
                tt is not None
                and tt.elem_type
                and (
                    tt.elem_type not in dtypes.BY_ONNX
                    or dtypes.BY_ONNX[tt.elem_type].name not in dtypes.SUPPORTED
                )
            ):
                return f"dtype {onnx.TensorProto.DataType.Name(tt.elem_type)}"
        for t in graph.initializer:
            if (
                t.data_type not in dtypes.BY_ONNX
                or dtypes.BY_ONNX[t.data_type].name not in dtypes.SUPPORTED
            ):
                return f"dtype {onnx.TensorProto.DataType.Name(t.data_type)}"
        for n in graph.node:
            domain = "" if n.domain in ("", "ai.onnx") else n.domain
            if n.op_type == "Constant":
                for a in n.attribute:
                    if a.name in ("value_string", "value_strings", "sparse_value"):
                        return f"Constant {a.name}"
                    if a.name == "value" and (
                        a.t.data_type not in dtypes.BY_ONNX
                        or dtypes.BY_ONNX[a.t.data_type].name not in dtypes.SUPPORTED
                    ):
                        return f"dtype {onnx.TensorProto.DataType.Name(a.t.data_type)}"
                continue
            # ops the importer rewrites into another op are judged by that op
            target = _REWRITTEN.get(n.op_type, n.op_type) if domain == "" else n.op_type
            if not has_schema(target, domain) or get_kernel(target, domain) is None:
                return f"op {n.op_type}"
            for a in n.attribute:
                subs = [a.g] if a.type == onnx.AttributeProto.GRAPH else list(a.graphs)
                for sg in subs:
                    r = walk(sg)
                    if r:
                        return r
        return None

    return walk(model.graph)


class EcoinferBackend(Backend):
    @classmethod
    def is_compatible(cls, model: onnx.ModelProto, device: str = "CPU", **kwargs: Any) -> bool:
        return unsupported_reason(model) is None

    @classmethod
    def supports_device(cls, device: str) -> bool:
        d = device.upper()
        return d == "CPU" or (d == "CUDA" and torch.cuda.is_available())

    @classmethod
    def prepare(cls, model: onnx.ModelProto, device: str = "CPU", **kwargs: Any) -> EcoinferRep:
        graph = import_onnx(model)
        return EcoinferRep(Model(graph, model.graph.name or "<model>"), device.lower())

    @classmethod
    def run_model(cls, model: onnx.ModelProto, inputs: Any, device: str = "CPU", **kwargs: Any):
        return cls.prepare(model, device).run(inputs)

    @classmethod
    def run_node(cls, node: onnx.NodeProto, inputs: Any, device: str = "CPU", **kwargs: Any):
        raise EcoinferError("ecoinfer runs whole models; wrap the node in a model")


prepare = EcoinferBackend.prepare
run_model = EcoinferBackend.run_model
supports_device = EcoinferBackend.supports_device
is_compatible = EcoinferBackend.is_compatible
