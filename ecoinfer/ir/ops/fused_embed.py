"""ecoinfer.EmbedLayerNorm: summed embedding lookups followed by LayerNormalization.

ecoinfer.EmbedLayerNorm(ids_0, table_0, ..., ids_{k-1}, table_{k-1}, scale, bias?) -> Y

    table_i: [V_i, H] float (one dtype for all)    ids_i: int32/int64, shapes broadcasting
    to a common leading shape L (e.g. [B, S], [B, S], [1, S])         Y: L + [H], table dtype
    E = sum_i Gather(table_i, ids_i, axis=0)          (in float32, negative ids count from V_i)
    Y = (E - mean(E)) / sqrt(var(E) + epsilon) * scale + bias        (over H, float32 stats)

Attributes: epsilon (float), num_lookups (k). BERT-style embeddings (word + token type +
position) become one node; onnxruntime's com.microsoft.EmbedLayerNormalization is the same
idea. See docs/fused-ops.md.
"""

from __future__ import annotations

from ecoinfer.ir.ops.registry import InferContext, OutType, broadcast_shapes, numel, op

MAX_LOOKUPS = 4  # the fusion pass builds nodes the GPU kernel takes (k in [2, MAX_LOOKUPS])
INDEX_DTYPES = ("int32", "int64")


def lookups(ctx: InferContext) -> int:
    """k, checked against the number of inputs (2k + scale, + bias optionally)."""
    k = ctx.attr("num_lookups")
    if k is None or int(k) < 1:
        raise ctx.fail("attribute 'num_lookups' (k >= 1) is required")
    k = int(k)
    if ctx.n_inputs not in (2 * k + 1, 2 * k + 2):
        raise ctx.fail(
            f"num_lookups={k} needs {2 * k + 1} or {2 * k + 2} inputs (ids/table pairs, scale, "
            f"bias?), got {ctx.n_inputs}"
        )
    return k


def _infer(ctx: InferContext) -> list[OutType | None]:
    k = lookups(ctx)
    dts = {ctx.dtype(2 * i + 1) for i in range(k)} - {None}
    if len(dts) > 1:
        raise ctx.fail(f"the tables have different dtypes {sorted(dts)}")  # type: ignore[type-var]
    dtype = dts.pop() if dts else None
    for i in range(k):
        dt = ctx.dtype(2 * i)
        if dt is not None and dt not in INDEX_DTYPES:
            raise ctx.fail(f"ids input {2 * i} is {dt}; it must be int32 or int64")
    widths = set()
    for i in range(k):
        t = ctx.shape(2 * i + 1)
        if t is not None:
            if len(t) != 2:
                raise ctx.fail(f"table input {2 * i + 1} must be 2-D [rows, hidden], got {list(t)}")
            widths.add(t[1])
    if len(widths) > 1:
        raise ctx.fail(f"the tables have different widths {sorted(map(str, widths))}")
    lead = broadcast_shapes(ctx, *[ctx.shape(2 * i) for i in range(k)])
    if lead is None or not widths:
        return [OutType(dtype, None)]
    return [OutType(dtype, tuple(lead) + (widths.pop(),))]


def _flops(ctx: InferContext, outs: list[OutType | None]) -> int | None:
    """k - 1 adds, then LayerNorm's ~8 ops, per output element."""
    n = numel(outs[0].shape) if outs and outs[0] is not None else None
    return n * (int(ctx.attr("num_lookups")) + 7) if isinstance(n, int) else None


op(
    "EmbedLayerNorm",
    inputs=(3, -1),
    attrs={"epsilon": 1e-5, "num_lookups": None},
    domain="ecoinfer",
    flops=_flops,
    doc="summed embedding lookups (Gather on 2-D tables) + LayerNormalization over hidden",
)(_infer)
