"""Op registry: schema, attribute defaults, and shape/dtype inference per op.

Each op module registers its schemas with @op(...). Inference functions get an InferContext
and return one OutType per output (None where nothing can be said).
"""

from __future__ import annotations

import difflib
import itertools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from ecoinfer.errors import ShapeInferenceError, UnsupportedOpError
from ecoinfer.ir.graph import Dim, Graph, Node, Shape


@dataclass
class OutType:
    dtype: str | None
    shape: Shape | None
    sym: Shape | None = None

    def type_str(self) -> str:
        dims = (
            "?"
            if self.shape is None
            else "x".join("?" if d is None else str(d) for d in self.shape)
        )
        return f"{self.dtype or '?'}[{dims}]"


InferFn = Callable[["InferContext"], list[OutType | None]]
FlopsFn = Callable[["InferContext", list[OutType | None]], int | None]


@dataclass(frozen=True)
class OpSchema:
    op_type: str
    domain: str
    infer: InferFn
    inputs: tuple[int, int] = (1, 1)  # (min, max); max -1 = variadic
    outputs: tuple[int, int] = (1, 1)
    attrs: dict[str, Any] = field(default_factory=dict)  # defaults of optional attributes
    flops: FlopsFn | None = None
    doc: str = ""


_REGISTRY: dict[tuple[str, str], OpSchema] = {}
_fresh = itertools.count()


def _norm_domain(domain: str) -> str:
    return "" if domain in ("", "ai.onnx") else domain


def op(
    op_type: str | list[str],
    inputs: tuple[int, int] = (1, 1),
    outputs: tuple[int, int] = (1, 1),
    attrs: dict[str, Any] | None = None,
    domain: str = "",
    flops: FlopsFn | None = None,
    doc: str = "",
) -> Callable[[InferFn], InferFn]:
    """Register the decorated inference function for one or several op types."""

    def deco(fn: InferFn) -> InferFn:
        for name in [op_type] if isinstance(op_type, str) else op_type:
            _REGISTRY[(_norm_domain(domain), name)] = OpSchema(
                name, _norm_domain(domain), fn, inputs, outputs, dict(attrs or {}), flops, doc
            )
        return fn

    return deco


def has_schema(op_type: str, domain: str = "") -> bool:
    _load_all()
    return (_norm_domain(domain), op_type) in _REGISTRY


def supported_ops(domain: str | None = "") -> list[str]:
    _load_all()
    return sorted(name for (d, name) in _REGISTRY if domain is None or d == domain)


def get_schema(
    op_type: str, domain: str = "", where: str = "", opset: int | None = None
) -> OpSchema:
    _load_all()
    schema = _REGISTRY.get((_norm_domain(domain), op_type))
    if schema is None:
        near = difflib.get_close_matches(op_type, supported_ops(_norm_domain(domain)), n=3)
        hint = f" (did you mean {', '.join(near)}?)" if near else ""
        dom = f" in domain '{domain}'" if _norm_domain(domain) else ""
        ops = ", ".join(supported_ops(""))
        at = f" at opset {opset}" if opset is not None else ""
        raise UnsupportedOpError(
            f"{where or op_type}: op '{op_type}'{dom}{at} is not supported by ecoinfer{hint}; "
            f"re-export the model without it or replace it. Supported ONNX ops: {ops}"
        )
    return schema


def _load_all() -> None:
    # importing the package registers every op module
    import ecoinfer.ir.ops  # noqa: F401, PLC0415


class InferContext:
    """What an inference function may look at: input types, constant inputs, attributes."""

    def __init__(self, graph: Graph, node: Node, schema: OpSchema):
        self.graph = graph
        self.node = node
        self.schema = schema

    # inputs -----------------------------------------------------------------
    @property
    def n_inputs(self) -> int:
        return len(self.node.inputs)

    def has(self, i: int) -> bool:
        return i < len(self.node.inputs) and self.node.inputs[i] != ""

    def dtype(self, i: int) -> str | None:
        if not self.has(i):
            return None
        name = self.node.inputs[i]
        if name in self.graph.initializers:
            from ecoinfer.ir.dtypes import from_torch  # noqa: PLC0415

            return from_torch(self.graph.initializers[name].dtype)
        v = self.graph.values.get(name)
        return v.dtype if v else None

    def shape(self, i: int) -> Shape | None:
        if not self.has(i):
            return None
        name = self.node.inputs[i]
        if name in self.graph.initializers:
            return tuple(self.graph.initializers[name].shape)
        v = self.graph.values.get(name)
        return v.shape if v else None

    def rank(self, i: int) -> int | None:
        s = self.shape(i)
        return None if s is None else len(s)

    def const(self, i: int) -> torch.Tensor | None:
        """The input's value when it is known at build time (an initializer)."""
        if not self.has(i):
            return None
        return self.graph.initializers.get(self.node.inputs[i])

    def sym(self, i: int) -> Shape | None:
        """Known contents of a 0-D/1-D integer input: from a constant or from Shape propagation."""
        c = self.const(i)
        if c is not None:
            if (
                c.dim() <= 1
                and c.numel() <= 64
                and not c.is_floating_point()
                and c.dtype != torch.bool
            ):
                return tuple(int(x) for x in c.reshape(-1).tolist())
            return None
        if not self.has(i):
            return None
        v = self.graph.values.get(self.node.inputs[i])
        return v.sym if v else None

    def ints(self, i: int) -> list[int] | None:
        """The input's contents if fully known as plain integers."""
        s = self.sym(i)
        if s is None or not all(isinstance(d, int) for d in s):
            return None
        return [int(d) for d in s]  # type: ignore[arg-type]

    # attributes -------------------------------------------------------------
    def attr(self, name: str, default: Any = None) -> Any:
        if name in self.node.attrs:
            return self.node.attrs[name]
        if name in self.schema.attrs:
            return self.schema.attrs[name]
        return default

    # helpers ----------------------------------------------------------------
    def new_dim(self) -> str:
        return f"unk__{next(_fresh)}"

    def fail(self, msg: str) -> ShapeInferenceError:
        return ShapeInferenceError(f"{self.node.label()}: {msg}")

    def norm_axis(self, axis: int, rank: int) -> int:
        if not -rank <= axis < max(rank, 1):
            raise self.fail(f"axis {axis} is out of range for an input of rank {rank}")
        return axis + rank if axis < 0 else axis


def infer_node(graph: Graph, node: Node, strict: bool = False) -> list[OutType | None]:
    """Run the op's inference; errors in inference of unknown-ish shapes give unknowns unless strict."""
    schema = get_schema(node.op_type, node.domain, where=node.label())
    ctx = InferContext(graph, node, schema)
    lo, hi = schema.inputs
    n_in = len(node.inputs)
    if n_in < lo or (hi >= 0 and n_in > hi):
        raise ShapeInferenceError(
            f"{node.label()}: takes {lo}{'' if hi == lo else '+' if hi < 0 else f' to {hi}'} inputs, got {n_in}"
        )
    out = schema.infer(ctx)
    out = list(out) + [None] * (len(node.outputs) - len(out))
    return out[: len(node.outputs)]


# ---------------------------------------------------------------------- shape helpers
def broadcast_dim(a: Dim, b: Dim) -> Dim:
    if a == 1:
        return b
    if b == 1:
        return a
    if a == b:
        return a
    if isinstance(a, int) and isinstance(b, int):
        raise ValueError(f"dims {a} and {b} do not broadcast")
    if isinstance(a, int):
        return a
    if isinstance(b, int):
        return b
    return None


def broadcast_shapes(ctx: InferContext, *shapes: Shape | None) -> Shape | None:
    if any(s is None for s in shapes):
        return None
    rank = max(len(s) for s in shapes)  # type: ignore[arg-type]
    out: list[Dim] = [1] * rank
    for s in shapes:
        padded = (1,) * (rank - len(s)) + tuple(s)  # type: ignore[arg-type]
        for k, d in enumerate(padded):
            try:
                out[k] = broadcast_dim(out[k], d)
            except ValueError as e:
                shown = " and ".join(str(list(x)) for x in shapes)  # type: ignore[arg-type]
                raise ctx.fail(f"input shapes {shown} do not broadcast ({e})") from None
    return tuple(out)


def dim_mul(a: Dim, b: Dim) -> Dim:
    if isinstance(a, int) and isinstance(b, int):
        return a * b
    if a == 1:
        return b
    if b == 1:
        return a
    if a is None or b is None or a == 0 or b == 0:
        return 0 if (a == 0 or b == 0) else None
    return f"{a}*{b}"


def numel(shape: Shape | None) -> Dim:
    if shape is None:
        return None
    out: Dim = 1
    for d in shape:
        out = dim_mul(out, d)
    return out


def same(ctx: InferContext, i: int = 0) -> OutType:
    """Output has the type of input i."""
    return OutType(ctx.dtype(i), ctx.shape(i))
