"""Schemas and shape inference of fused ops in the "ecoinfer" domain (see docs/fused-ops.md).

ecoinfer.FusedElementwise(x0, x1, ...) -> (y0, ...)
    attribute `body`: a closed Graph of elementwise ONNX ops (unary math, activations,
    broadcasting arithmetic, comparisons, logic, Where, Cast, Clip, ...). Its inputs bind
    positionally to the node's inputs, its outputs to the node's outputs. Scalar constants
    live in the body as body initializers (a code generator emits them as literals); larger
    constants stay outer weights passed as inputs. The body reads nothing from the outer
    graph, so one kernel can be generated from it alone (the GPU engine emits one Triton
    kernel per node). Semantics: exactly running the body.
"""

from __future__ import annotations

from ecoinfer.ir.graph import Graph, Value
from ecoinfer.ir.ops.registry import InferContext, OutType, numel, op


def body_types(
    body: Graph, inputs: list[tuple[str | None, tuple | None, tuple | None]], consts: list
) -> list[Value]:
    """Infer the body's output types from the outer input types (dtype, shape, sym) and the
    outer constants (a tensor where the outer input is a weight, else None)."""
    g = Graph(
        name=body.name,
        inputs=[Value(v.name, dt, sh, sym) for v, (dt, sh, sym) in zip(body.inputs, inputs)],
        outputs=[Value(o.name) for o in body.outputs],
        nodes=body.nodes,  # inference reads nodes, never changes them
        initializers=dict(body.initializers),
        opsets=dict(body.opsets),
    )
    for v, c in zip(body.inputs, consts):
        if c is not None:
            g.initializers[v.name] = c  # lets Clip bounds, Pow exponents... be seen as constants
    g.values = {v.name: Value(v.name, v.dtype, v.shape, v.sym) for v in g.inputs}
    g.infer_shapes()
    return [g.values.get(o.name, Value(o.name)) for o in g.outputs]


def _infer(ctx: InferContext) -> list[OutType | None]:
    body = ctx.attr("body")
    if not isinstance(body, Graph):
        raise ctx.fail("attribute 'body' (the fused subgraph) is missing")
    if len(body.inputs) != ctx.n_inputs:
        raise ctx.fail(f"body takes {len(body.inputs)} inputs, the node has {ctx.n_inputs}")
    if len(body.outputs) != len(ctx.node.outputs):
        raise ctx.fail(
            f"body has {len(body.outputs)} outputs, the node has {len(ctx.node.outputs)}"
        )
    ins = [(ctx.dtype(i), ctx.shape(i), ctx.sym(i)) for i in range(ctx.n_inputs)]
    outs = body_types(body, ins, [ctx.const(i) for i in range(ctx.n_inputs)])
    return [OutType(v.dtype, v.shape, v.sym) for v in outs]


def _flops(ctx: InferContext, outs: list[OutType | None]) -> int | None:
    """One op per output element per body node (intermediates are as large or smaller)."""
    if not outs or outs[0] is None:
        return None
    n = numel(outs[0].shape)
    return n * len(ctx.attr("body").nodes) if isinstance(n, int) else None


op(
    "FusedElementwise",
    inputs=(1, -1),
    outputs=(1, -1),
    attrs={},
    domain="ecoinfer",
    flops=_flops,
    doc="a closed subgraph of elementwise ops (attribute body), run as one kernel",
)(_infer)
