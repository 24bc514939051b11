"""ONNX -> ecoinfer IR. One importer per op where the ONNX form differs between opsets.

Older opsets' attribute forms (Squeeze axes, Clip min/max, Reduce axes, Slice, Pad, Split...)
are rewritten to the newest form, with constant inputs, so the IR has one form per op.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from google.protobuf.message import DecodeError
from onnx import numpy_helper

from ecoinfer.errors import (
    EcoinferError,
    GraphError,
    ModelLoadError,
    UnsupportedDTypeError,
    UnsupportedOpError,
)
from ecoinfer.ir import dtypes
from ecoinfer.ir.graph import Dim, Graph, Node, Value
from ecoinfer.ir.ops import get_schema

MIN_OPSET = 7  # older models: convert with onnx.version_converter first

ImporterFn = Callable[["ImportContext", Node], list[Node]]
_IMPORTERS: dict[str, ImporterFn] = {}


def importer(*op_types: str) -> Callable[[ImporterFn], ImporterFn]:
    def deco(fn: ImporterFn) -> ImporterFn:
        for name in op_types:
            _IMPORTERS[name] = fn
        return fn

    return deco


# ---------------------------------------------------------------------------- loading
def read_model(src: str | os.PathLike | bytes | onnx.ModelProto) -> tuple[onnx.ModelProto, str]:
    """Read and parse an ONNX file (with its external data); returns the proto and a label."""
    if isinstance(src, onnx.ModelProto):
        return src, "<model>"
    if isinstance(src, bytes | bytearray):
        label = "<bytes>"
        try:
            model = onnx.load_from_string(bytes(src))
        except (DecodeError, ValueError, RuntimeError) as e:
            raise ModelLoadError(f"{label}: not a valid ONNX model ({_first_line(e)})") from None
        _check_parsed(model, label)
        return model, label
    path = Path(src)
    label = str(path)
    if not path.exists():
        raise ModelLoadError(f"{label}: no such file; check the path")
    if path.is_dir():
        raise ModelLoadError(f"{label}: is a folder; give the path of the .onnx file")
    from ecoinfer.engine.format import is_engine_file  # noqa: PLC0415

    if is_engine_file(path):
        raise ModelLoadError(
            f"{label}: is an ecoinfer engine file, not an ONNX model; give this command the "
            ".onnx model (run, bench and inspect also take engine files)"
        )
    try:
        model = onnx.load(str(path), load_external_data=False)
    except (DecodeError, ValueError, RuntimeError, UnicodeDecodeError) as e:
        raise ModelLoadError(
            f"{label}: {_neither(path)}, the file is truncated or of another format "
            f"({_first_line(e)}); export it again with torch.onnx.export or check the download"
        ) from None
    try:
        _check_parsed(model, label)
    except ModelLoadError as e:
        if path.suffix != ".eng":
            raise
        raise ModelLoadError(str(e).replace("not an ONNX model", _neither(path), 1)) from None
    try:
        onnx.external_data_helper.load_external_data_for_model(model, str(path.parent))
    except (FileNotFoundError, OSError, onnx.checker.ValidationError) as e:
        raise ModelLoadError(
            f"{label}: the weights it keeps in external data files could not be read "
            f"({_first_line(e)}); keep the data files next to the model"
        ) from None
    return model, label


def _neither(path: Path) -> str:
    # a .eng file that is no engine was most likely meant as one: say both were tried
    if path.suffix == ".eng":
        return "neither an ecoinfer engine file (no engine header) nor a valid ONNX model"
    return "not a valid ONNX model"


def _check_parsed(model: onnx.ModelProto, label: str) -> None:
    # protobuf parses many non-ONNX byte strings "successfully" into an empty message
    if model.ir_version == 0 or not model.HasField("graph"):
        raise ModelLoadError(
            f"{label}: not an ONNX model (no ir_version or graph); "
            "export it with torch.onnx.export or check the file"
        )


def _first_line(e: BaseException) -> str:
    text = str(e).strip() or type(e).__name__
    return text.splitlines()[0][:200]


def import_onnx(src: str | os.PathLike | bytes | onnx.ModelProto) -> Graph:
    """Load an ONNX model into an ecoinfer Graph with inferred (symbolic) shapes."""
    model, label = read_model(src)
    opsets = {
        (imp.domain if imp.domain != "ai.onnx" else ""): imp.version for imp in model.opset_import
    }
    opset = opsets.get("", 0)
    if "" in opsets and opset < MIN_OPSET:
        raise UnsupportedOpError(
            f"{label}: opset {opset} is older than ecoinfer supports ({MIN_OPSET}+); upgrade it "
            "with onnx.version_converter.convert_version(model, 17)"
        )
    if model.functions:
        # model-local functions (e.g. from exporters) are expanded into plain nodes
        try:
            import onnx.inliner  # noqa: PLC0415

            model = onnx.inliner.inline_local_functions(model)
        except Exception as e:  # noqa: BLE001
            raise ModelLoadError(
                f"{label}: could not inline its local functions ({_first_line(e)})"
            ) from None
    ctx = ImportContext(label, opsets)
    graph = ctx.import_graph(model.graph, outer=frozenset())
    _check_defined(graph, label)
    graph.metadata = {p.key: p.value for p in model.metadata_props}
    if model.producer_name:
        graph.metadata.setdefault(
            "producer", f"{model.producer_name} {model.producer_version}".strip()
        )
    graph.infer_shapes()
    return graph


def _check_defined(graph: Graph, label: str) -> None:
    """Every tensor a node reads, and every graph output, is defined: a graph input, an
    initializer or an earlier node's output (the graph is in topological order here)."""
    defined = set(graph.initializers) | set(graph.input_names)
    for n in graph.nodes:
        for x in n.inputs:
            if x and x not in defined:
                raise GraphError(
                    f"{label}: node '{n.name or n.op_type}' ({n.op_type}) reads '{x}', which no "
                    "graph input, initializer or node defines; export the model again or fix "
                    "the node's inputs"
                )
        defined.update(o for o in n.outputs if o)
    for v in graph.outputs:
        if v.name not in defined:
            raise GraphError(
                f"{label}: graph output '{v.name}' is produced by no node, input or initializer;"
                " export the model again or remove that output"
            )


class ImportContext:
    def __init__(self, label: str, opsets: dict[str, int]):
        self.label = label
        self.opsets = opsets
        self.graph: Graph | None = None
        self._anon = 0

    @property
    def opset(self) -> int:
        return self.opsets.get("", 21)

    # ---------------------------------------------------------------- graphs
    def import_graph(self, gp: onnx.GraphProto, outer: frozenset[str]) -> Graph:
        g = Graph(name=gp.name or "graph", opsets=dict(self.opsets), outer_scope=outer)
        parent, self.graph = self.graph, g
        try:
            for t in gp.initializer:
                g.initializers[t.name] = self.tensor(t, f"initializer '{t.name}'")
            for t in gp.sparse_initializer:
                raise UnsupportedDTypeError(
                    f"{self.label}: sparse initializer '{t.values.name}' is not supported; "
                    "store it dense"
                )
            for vi in gp.input:
                if vi.name in g.initializers:
                    continue  # an input with a default value: treated as a weight
                v = self.value_info(vi, "input")
                g.inputs.append(v)
                g.values[v.name] = v
            for vi in gp.value_info:
                g.values[vi.name] = self.value_info(vi, "value")
            for vi in gp.output:
                v = self.value_info(vi, "output")
                g.outputs.append(v)
                if vi.name not in g.values or g.values[vi.name].shape is None:
                    g.values[vi.name] = Value(v.name, v.dtype, v.shape)
            for k, np_ in enumerate(gp.node):
                self.import_node(np_, k, outer | set(g.initializers) | set(g.input_names))
            g.toposort()
        finally:
            self.graph = parent
        return g

    def value_info(self, vi: onnx.ValueInfoProto, kind: str) -> Value:
        t = vi.type
        if not vi.HasField("type") or t.WhichOneof("value") is None:
            return Value(vi.name)
        which = t.WhichOneof("value")
        if which != "tensor_type":
            raise UnsupportedDTypeError(
                f"{self.label}: {kind} '{vi.name}' is a {which.replace('_type', '')}, "
                "ecoinfer supports tensors only"
            )
        tt = t.tensor_type
        dtype = (
            dtypes.from_onnx(tt.elem_type, f"{self.label}: {kind} '{vi.name}'")
            if tt.elem_type
            else None
        )
        shape: tuple[Dim, ...] | None = None
        if tt.HasField("shape"):
            dims: list[Dim] = []
            for d in tt.shape.dim:
                if d.HasField("dim_value"):
                    dims.append(int(d.dim_value))
                elif d.HasField("dim_param") and d.dim_param:
                    dims.append(d.dim_param)
                else:
                    dims.append(None)
            shape = tuple(dims)
        return Value(vi.name, dtype, shape)

    def tensor(self, t: onnx.TensorProto, where: str) -> torch.Tensor:
        if t.data_type == onnx.TensorProto.STRING:
            raise UnsupportedDTypeError(
                f"{self.label}: {where} holds strings, which ecoinfer cannot run"
            )
        name = dtypes.from_onnx(t.data_type, f"{self.label}: {where}")
        if name in ("int4", "uint4"):
            raise UnsupportedDTypeError(
                f"{self.label}: {where} is {name}, which ecoinfer does not support yet"
            )
        try:
            arr = numpy_helper.to_array(t)
        except Exception as e:  # noqa: BLE001
            raise ModelLoadError(
                f"{self.label}: {where} could not be read ({_first_line(e)})"
            ) from None
        return dtypes.numpy_to_torch(np.asarray(arr), f"{self.label}: {where}")

    # ---------------------------------------------------------------- nodes
    def attribute(self, a: onnx.AttributeProto, where: str, visible: frozenset[str]) -> Any:
        A = onnx.AttributeProto
        if a.ref_attr_name:
            raise UnsupportedOpError(
                f"{where}: attribute '{a.name}' refers to a function attribute"
            )
        if a.type == A.FLOAT:
            return float(a.f)
        if a.type == A.INT:
            return int(a.i)
        if a.type == A.STRING:
            return a.s.decode("utf-8", errors="replace")
        if a.type == A.TENSOR:
            return self.tensor(a.t, f"{where} attribute '{a.name}'")
        if a.type == A.GRAPH:
            return self.import_graph(a.g, visible)
        if a.type == A.FLOATS:
            return [float(x) for x in a.floats]
        if a.type == A.INTS:
            return [int(x) for x in a.ints]
        if a.type == A.STRINGS:
            return [s.decode("utf-8", errors="replace") for s in a.strings]
        if a.type == A.TENSORS:
            return [self.tensor(t, f"{where} attribute '{a.name}'") for t in a.tensors]
        if a.type == A.GRAPHS:
            return [self.import_graph(g, visible) for g in a.graphs]
        raise UnsupportedOpError(f"{where}: attribute '{a.name}' has a type ecoinfer cannot read")

    def import_node(
        self, np_: onnx.NodeProto, index: int, visible: frozenset[str] | set[str]
    ) -> None:
        g = self.graph
        assert g is not None
        name = np_.name or f"{np_.op_type}_{index}"
        domain = "" if np_.domain in ("", "ai.onnx") else np_.domain
        where = f"{self.label}: {np_.op_type} node '{name}'"
        visible = frozenset(visible) | {o for n in g.nodes for o in n.outputs}
        attrs = {a.name: self.attribute(a, where, visible) for a in np_.attribute}
        node = Node(np_.op_type, list(np_.input), list(np_.output), attrs, name, domain)
        opset = self.opsets.get(domain, self.opset)
        fn = _IMPORTERS.get(node.op_type) if domain == "" else None
        if fn is None:
            get_schema(node.op_type, domain, where=where, opset=opset)
        try:
            new_nodes = fn(self, node) if fn else [node]
        except EcoinferError:
            raise
        except Exception as e:  # noqa: BLE001
            raise UnsupportedOpError(f"{where}: cannot import ({_first_line(e)})") from None
        g.nodes.extend(new_nodes)

    # ---------------------------------------------------------------- helpers for importers
    def const(self, base: str, value: Any, dtype: torch.dtype = torch.int64) -> str:
        """Add a constant initializer; returns its name."""
        g = self.graph
        assert g is not None
        name = g.fresh_name(base)
        g.initializers[name] = torch.as_tensor(value, dtype=dtype)
        return name

    def attr_to_input(
        self, node: Node, attr: str, pos: int, dtype: torch.dtype = torch.int64
    ) -> None:
        """Move an attribute that later opsets take as an input into that input slot."""
        if attr not in node.attrs:
            return
        value = node.attrs.pop(attr)
        while len(node.inputs) < pos:
            node.inputs.append("")
        name = self.const(f"{node.name}_{attr}", value, dtype)
        if len(node.inputs) == pos:
            node.inputs.append(name)
        else:
            node.inputs[pos] = name


@importer("Constant")
def _constant(ctx: ImportContext, node: Node) -> list[Node]:
    # Constants become initializers; their output name stays the same.
    a = node.attrs
    out = node.outputs[0]
    g = ctx.graph
    assert g is not None
    if "value" in a:
        t = a["value"]
    elif "value_float" in a:
        t = torch.tensor(a["value_float"], dtype=torch.float32)
    elif "value_floats" in a:
        t = torch.tensor(a["value_floats"], dtype=torch.float32)
    elif "value_int" in a:
        t = torch.tensor(a["value_int"], dtype=torch.int64)
    elif "value_ints" in a:
        t = torch.tensor(a["value_ints"], dtype=torch.int64)
    elif "sparse_value" in a:
        raise UnsupportedOpError(f"{ctx.label}: {node.label()} holds a sparse tensor (unsupported)")
    else:
        raise UnsupportedOpError(
            f"{ctx.label}: {node.label()} holds a {', '.join(a) or 'missing'} value, which ecoinfer "
            "does not support (strings cannot run)"
        )
    g.initializers[out] = t
    return []


# Old attribute forms -> newest input forms ------------------------------------------
@importer("Squeeze", "Unsqueeze")
def _squeeze(ctx: ImportContext, node: Node) -> list[Node]:
    ctx.attr_to_input(node, "axes", 1)
    return [node]


@importer("ReduceSum")
def _reduce_sum(ctx: ImportContext, node: Node) -> list[Node]:
    ctx.attr_to_input(node, "axes", 1)
    return [node]


@importer(
    "ReduceMean",
    "ReduceMax",
    "ReduceMin",
    "ReduceProd",
    "ReduceL1",
    "ReduceL2",
    "ReduceLogSum",
    "ReduceLogSumExp",
    "ReduceSumSquare",
)
def _reduce(ctx: ImportContext, node: Node) -> list[Node]:
    ctx.attr_to_input(node, "axes", 1)
    return [node]


@importer("Split")
def _split(ctx: ImportContext, node: Node) -> list[Node]:
    ctx.attr_to_input(node, "split", 1)
    return [node]


@importer("TopK")
def _topk(ctx: ImportContext, node: Node) -> list[Node]:
    # TopK-1 takes k as an attribute; later opsets take a 1-element input
    if "k" in node.attrs:
        node.attrs["k"] = [int(node.attrs["k"])]
    ctx.attr_to_input(node, "k", 1)
    return [node]


@importer("Clip")
def _clip(ctx: ImportContext, node: Node) -> list[Node]:
    if "min" in node.attrs or "max" in node.attrs:
        lo = node.attrs.pop("min", None)
        hi = node.attrs.pop("max", None)
        node.inputs = node.inputs[:1] + [
            ctx.const(f"{node.name}_min", lo, torch.float32) if lo is not None else "",
            ctx.const(f"{node.name}_max", hi, torch.float32) if hi is not None else "",
        ]
    return [node]


@importer("Softmax", "LogSoftmax", "Hardmax")
def _softmax_coerce_2d(ctx: ImportContext, node: Node) -> list[Node]:
    # Before opset 13 these ops flatten the input to 2-D at `axis` (default 1) and work on
    # the whole second half; the IR op works along one axis. Same thing when axis is last.
    if ctx.opset >= 13:
        return [node]
    g = ctx.graph
    assert g is not None
    axis = int(node.attrs.get("axis", 1))
    x = node.inputs[0]
    if x in g.initializers:
        rank: int | None = g.initializers[x].dim()
    else:
        v = g.values.get(x)
        rank = v.rank if v is not None else None
    if axis == -1 or (rank is not None and axis == rank - 1):
        node.attrs["axis"] = -1
        return [node]
    y = node.outputs[0]
    flat, flat_y, shape = (g.fresh_name(f"{y}__{s}") for s in ("flat2d", "flat2d_out", "shape"))
    base = node.name or y
    return [
        Node("Flatten", [x], [flat], {"axis": axis}, f"{base}__flatten", ""),
        Node(node.op_type, [flat], [flat_y], {"axis": 1}, node.name, node.domain),
        Node("Shape", [x], [shape], {}, f"{base}__shape", ""),
        Node("Reshape", [flat_y, shape], [y], {}, f"{base}__reshape", ""),
    ]


@importer("Slice")
def _slice(ctx: ImportContext, node: Node) -> list[Node]:
    if "starts" in node.attrs:  # opset < 10
        starts = node.attrs.pop("starts")
        ends = node.attrs.pop("ends")
        axes = node.attrs.pop("axes", None)
        node.inputs = node.inputs[:1] + [
            ctx.const(f"{node.name}_starts", starts),
            ctx.const(f"{node.name}_ends", ends),
        ]
        if axes is not None:
            node.inputs.append(ctx.const(f"{node.name}_axes", axes))
    return [node]


@importer("Pad")
def _pad(ctx: ImportContext, node: Node) -> list[Node]:
    if "pads" in node.attrs:  # opset < 11
        pads = node.attrs.pop("pads")
        value = node.attrs.pop("value", 0.0)
        node.inputs = node.inputs[:1] + [ctx.const(f"{node.name}_pads", pads)]
        if value:
            node.inputs.append(ctx.const(f"{node.name}_value", value, torch.float32))
    return [node]


@importer("Upsample")
def _upsample(ctx: ImportContext, node: Node) -> list[Node]:
    # Upsample(X, scales) == Resize(X, roi="", scales)
    if "scales" in node.attrs:
        scales = node.attrs.pop("scales")
        node.inputs = node.inputs[:1] + [ctx.const(f"{node.name}_scales", scales, torch.float32)]
    mode = node.attrs.get("mode", "nearest")
    node.attrs = {"mode": mode}
    if mode == "nearest":
        node.attrs.update(coordinate_transformation_mode="asymmetric", nearest_mode="floor")
    else:
        node.attrs.update(coordinate_transformation_mode="asymmetric")
    node.op_type = "Resize"
    node.inputs = [node.inputs[0], "", node.inputs[1]]
    return [node]


@importer("Resize")
def _resize_10(ctx: ImportContext, node: Node) -> list[Node]:
    # Resize-10 is (X, scales) with Upsample's asymmetric coordinates; onnxruntime picks the
    # nearest pixel by truncation when upsampling and by ceil when downsampling
    if ctx.opset >= 11:
        return [node]
    g = ctx.graph
    assert g is not None
    scales = g.initializers.get(node.inputs[1]) if len(node.inputs) > 1 else None
    down = scales is not None and bool((scales < 1).any()) and not bool((scales > 1).any())
    node.attrs.setdefault("coordinate_transformation_mode", "asymmetric")
    node.attrs.setdefault("nearest_mode", "ceil" if down else "floor")
    node.inputs = [node.inputs[0], "", node.inputs[1]]
    return [node]


@importer("Dropout")
def _dropout(ctx: ImportContext, node: Node) -> list[Node]:
    node.attrs.pop("is_test", None)
    if "ratio" in node.attrs:
        ratio = node.attrs.pop("ratio")
        while len(node.inputs) < 2:
            node.inputs.append("")
        node.inputs[1] = ctx.const(f"{node.name}_ratio", ratio, torch.float32)
    return [node]
