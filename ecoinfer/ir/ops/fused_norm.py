"""ecoinfer.SkipLayerNorm: a residual add folded into the LayerNormalization that follows it.

ecoinfer.SkipLayerNorm(X, Skip, Scale, B?) -> Y

    Y = LayerNormalization(X + Skip, Scale, B)      attributes axis, epsilon (LayerNorm's)

X and Skip have one shape and one float dtype; Y has it too. The sum is formed in float32
and not rounded before the statistics. The builder makes it (engine/link_skip.py) where a
FusedGemm's residual epilogue feeds only a LayerNormalization and moving the add into the
norm's pass is faster (BERT's FFN output projection: cuBLAS takes the GEMM, the norm reads
the skip). onnxruntime's com.microsoft.SkipLayerNormalization is the same idea. See
docs/fused-ops.md.
"""

from __future__ import annotations

from ecoinfer.ir.ops.registry import InferContext, OutType, numel, op

_FLOATS = ("float32", "float16", "bfloat16")


def _flops(ctx: InferContext, outs: list[OutType | None]) -> int | None:
    """The add, then LayerNorm's ~8 ops, per element."""
    n = numel(outs[0].shape) if outs and outs[0] is not None else None
    return 9 * n if isinstance(n, int) else None


@op(
    "SkipLayerNorm",
    inputs=(3, 4),
    attrs={"axis": -1, "epsilon": 1e-5},
    domain="ecoinfer",
    flops=_flops,
    doc="LayerNormalization(X + Skip): the residual add folded into the norm",
)
def _skip_layer_norm(ctx: InferContext) -> list[OutType | None]:
    x, s = ctx.shape(0), ctx.shape(1)
    xdt, sdt = ctx.dtype(0), ctx.dtype(1)
    if xdt is not None and xdt not in _FLOATS:
        raise ctx.fail(f"X must be float32, float16 or bfloat16, got {xdt}")
    if xdt is not None and sdt is not None and xdt != sdt:
        raise ctx.fail(f"Skip is {sdt} but X is {xdt}; they must match")
    if x is not None and s is not None and tuple(x) != tuple(s):
        raise ctx.fail(f"Skip has shape {list(s)}, X has {list(x)}; they must match")
    if x is not None:
        ctx.norm_axis(int(ctx.attr("axis")), len(x))
    return [OutType(xdt or sdt, x if x is not None else s)]
