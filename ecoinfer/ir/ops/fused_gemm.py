"""Schemas and shape inference of fused ops in the "ecoinfer" domain (see docs/fused-ops.md).

ecoinfer.FusedGemm(A, B, bias?, residual?) -> Y

    Y = A @ op(B)                 op(B) = B, or B^T when trans_b=1 (B stored [N, K], as
                                  nn.Linear / Gemm transB=1 keep it)
    Y = Y + bias                  bias: 1-D [N], broadcast over the last dim   (optional)
    Y = act(Y)                    activation / activation_params: see
                                  ecoinfer/kernels/torch_ops/activation.py ("" = none)
    Y = Y + residual              numpy broadcasting, like the ONNX Add it replaces (optional;
                                  in practice a tensor of Y's shape: the skip connection)

A is N-D [..., K] (MatMul semantics: leading dims are kept, a 1-D A drops its row dim); B is
2-D. The epilogue order is the one transformer blocks need: the BERT attention-output and FFN
output projections are `A@W + b + skip` (then LayerNorm), the FFN input projection is
`gelu(A@W + b)`. An omitted bias with a residual is written as the empty name "".
"""

from __future__ import annotations

from ecoinfer.ir.ops.nn import matmul_shape
from ecoinfer.ir.ops.registry import InferContext, OutType, broadcast_shapes, op

_EPILOGUE_OPS = {"": 0, "Relu": 1, "Sigmoid": 4, "Tanh": 4, "Gelu": 8, "Swish": 5}


def _b_shape(ctx: InferContext):  # noqa: ANN202
    b = ctx.shape(1)
    if b is None:
        return None
    if len(b) != 2:
        raise ctx.fail(f"B must be 2-D, got shape {list(b)}")
    return (b[1], b[0]) if int(ctx.attr("trans_b")) else tuple(b)


def _fused_gemm_flops(ctx: InferContext, outs: list[OutType | None]) -> int | None:
    a, b = ctx.shape(0), _b_shape(ctx)
    y = outs[0].shape if outs and outs[0] else None
    if a is None or b is None or y is None:
        return None
    if not all(isinstance(d, int) for d in (*y, b[0])):
        return None
    n = 1
    for d in y:
        n *= int(d)  # type: ignore[arg-type]
    flops = 2 * n * int(b[0])  # type: ignore[arg-type]
    # epilogue: one op per element for the bias and residual adds, a few for the activation
    flops += n * (int(ctx.has(2)) + int(ctx.has(3)))
    flops += n * _EPILOGUE_OPS.get(str(ctx.attr("activation") or ""), 2)
    return flops


@op(
    "FusedGemm",
    inputs=(2, 4),
    attrs={"trans_b": 0, "activation": "", "activation_params": []},
    domain="ecoinfer",
    flops=_fused_gemm_flops,
    doc="Y = act(A @ op(B) + bias) + residual; op(B) = B^T if trans_b",
)
def _fused_gemm(ctx: InferContext) -> list[OutType | None]:
    b = _b_shape(ctx)
    y = matmul_shape(ctx, ctx.shape(0), b)
    if ctx.has(2):
        bias = ctx.shape(2)
        if bias is not None:
            n = b[1] if b is not None else None
            if len(bias) != 1:
                raise ctx.fail(f"bias must be 1-D [N], got shape {list(bias)}")
            if isinstance(n, int) and isinstance(bias[0], int) and bias[0] != n:
                raise ctx.fail(f"bias has {bias[0]} elements for N={n} output columns")
    if ctx.has(3) and y is not None:
        y = broadcast_shapes(ctx, y, ctx.shape(3))
    return [OutType(ctx.dtype(0), y)]
