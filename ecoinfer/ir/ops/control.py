"""Control flow: If, Loop, Scan. Bodies are nested Graphs held in attributes."""

from __future__ import annotations

from ecoinfer.ir.graph import Graph
from ecoinfer.ir.ops.registry import InferContext, OutType, op


def _declared(g: Graph, k: int) -> OutType | None:
    if k >= len(g.outputs):
        return None
    v = g.values.get(g.outputs[k].name, g.outputs[k])
    return OutType(
        v.dtype or g.outputs[k].dtype, v.shape if v.shape is not None else g.outputs[k].shape
    )


@op("If", inputs=(1, 1), outputs=(1, -1))
def _if(ctx: InferContext) -> list[OutType | None]:
    then_g: Graph = ctx.attr("then_branch")
    else_g: Graph = ctx.attr("else_branch")
    out: list[OutType | None] = []
    for k in range(len(ctx.node.outputs)):
        a, b = _declared(then_g, k), _declared(else_g, k)
        if a is None or b is None:
            out.append(a or b)
            continue
        same_rank = a.shape is not None and b.shape is not None and len(a.shape) == len(b.shape)
        shape = (
            tuple(x if x == y else None for x, y in zip(a.shape, b.shape)) if same_rank else None
        )  # type: ignore[arg-type]
        out.append(OutType(a.dtype or b.dtype, shape))
    return out


@op("Loop", inputs=(2, -1), outputs=(1, -1))
def _loop(ctx: InferContext) -> list[OutType | None]:
    body: Graph = ctx.attr("body")
    n_carried = len(ctx.node.inputs) - 2
    out: list[OutType | None] = []
    for k in range(len(ctx.node.outputs)):
        if k < n_carried:
            out.append(OutType(ctx.dtype(2 + k), ctx.shape(2 + k)))
        else:
            d = _declared(body, 1 + k)
            out.append(
                OutType(d.dtype, (ctx.new_dim(), *d.shape) if d and d.shape is not None else None)
                if d
                else None
            )
    return out


@op(
    "Scan",
    inputs=(1, -1),
    outputs=(1, -1),
    attrs={"scan_input_axes": None, "scan_output_axes": None},
)
def _scan(ctx: InferContext) -> list[OutType | None]:
    body: Graph = ctx.attr("body")
    n_scan_in = int(ctx.attr("num_scan_inputs"))
    first = 1 if ctx.graph.opset < 9 else 0  # Scan-8 starts with sequence_lens
    n_state = len(ctx.node.inputs) - first - n_scan_in
    out: list[OutType | None] = []
    for k in range(len(ctx.node.outputs)):
        if k < n_state:
            out.append(OutType(ctx.dtype(first + k), ctx.shape(first + k)))
        else:
            d = _declared(body, k)
            out.append(OutType(d.dtype, None) if d else None)
    return out
