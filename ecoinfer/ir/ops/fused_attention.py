"""Schemas and shape inference of fused ops in the "ecoinfer" domain (see docs/fused-ops.md).

ecoinfer.Attention(Q, K, V, add_mask?, keep_mask?) -> Y: scaled-dot-product attention.

    Q: [B, H, Sq, D]        K: [B, H, Sk, D], or [B, H, D, Sk] when k_transposed=1
    V: [B, H, Sk, Dv]       Y: [B, H, Sq, Dv]
    add_mask (optional, Q's dtype): additive mask broadcastable to [B, H, Sq, Sk]
    keep_mask (optional, bool): True = attend; broadcastable to [B, H, Sq, Sk]

    S = scale * (Q @ Kᵀ)                         (matmul in Q's dtype, then one multiply)
    S = where(keep_mask, S, mask_fill)           (if keep_mask is given)
    S = where(j <= i, S, mask_fill)              (if is_causal: top-left aligned, i = query row)
    S = S + add_mask                             (if add_mask is given)
    P = softmax(S, axis=-1)
    P = where(isnan(P), 0, P)                    (if nan_to_zero: rows with every score -inf give 0)
    Y = P @ V

The order (keep mask, causal, then additive mask) is the order the exporters emit; without
nan_to_zero a row whose scores are all -inf gives NaN, as the ONNX graph it came from does.
Leading (batch/head) dims broadcast like MatMul's; the fusion pass only builds 4-D nodes, with
the head split (Reshape/Transpose of the projections) and the head merge left outside, so the
GPU engine can hand Q/K/V to SDPA/flash kernels as they are.

Attributes: scale (float, default 1.0), k_transposed (int 0/1), is_causal (int 0/1),
mask_fill (float, default -inf; the score given to masked-out positions), nan_to_zero (int 0/1).
"""

from __future__ import annotations

from ecoinfer.ir.graph import Dim, Shape
from ecoinfer.ir.ops.registry import InferContext, OutType, broadcast_shapes, op

_FLOATS = frozenset({"float16", "bfloat16", "float32", "float64"})


def _dims(ctx: InferContext) -> tuple[Shape, Dim, Dim, Dim, Dim] | None:
    """(broadcast batch dims of the scores, Sq, Sk, D, Dv), None where shapes are unknown."""
    q, k, v = ctx.shape(0), ctx.shape(1), ctx.shape(2)
    if q is None or k is None or v is None:
        return None
    for i, s in enumerate((q, k, v)):
        if len(s) < 2:
            raise ctx.fail(f"input {i} must have rank >= 2, got {list(s)}")
    kt = bool(ctx.attr("k_transposed"))
    sk, dk = (k[-1], k[-2]) if kt else (k[-2], k[-1])
    d = q[-1]
    if isinstance(d, int) and isinstance(dk, int) and d != dk:
        raise ctx.fail(f"Q head size {d} != K head size {dk} (k_transposed={int(kt)})")
    if isinstance(sk, int) and isinstance(v[-2], int) and sk != v[-2]:
        raise ctx.fail(f"K has {sk} positions but V has {v[-2]}")
    scores = broadcast_shapes(ctx, q[:-2], k[:-2])
    assert scores is not None
    scores = (*scores, q[-2], sk if sk is not None else v[-2])
    for i in (3, 4):
        m = ctx.shape(i) if ctx.has(i) else ()
        if m is None:
            return None
        scores = broadcast_shapes(ctx, scores, m)
        assert scores is not None
    batch = broadcast_shapes(ctx, scores[:-2], v[:-2])
    assert batch is not None
    return batch, scores[-2], scores[-1], d if d is not None else dk, v[-1]


def _flops(ctx: InferContext, outs: list[OutType | None]) -> int | None:
    """2·Sq·Sk·D (Q·Kᵀ) + 2·Sq·Sk·Dv (P·V) + 5·Sq·Sk (scale, mask, exp, sum, divide) per head."""
    dims = _dims(ctx)
    if dims is None:
        return None
    batch, sq, sk, d, dv = dims
    flat = [*batch, sq, sk, d, dv]
    if not all(isinstance(x, int) for x in flat):
        return None
    n = 1
    for x in batch:
        n *= int(x)  # type: ignore[arg-type]
    sq, sk, d, dv = int(sq), int(sk), int(d), int(dv)  # type: ignore[arg-type]
    return n * sq * sk * (2 * d + 2 * dv + 5)


@op(
    "Attention",
    inputs=(3, 5),
    domain="ecoinfer",
    attrs={
        "scale": 1.0,
        "k_transposed": 0,
        "is_causal": 0,
        "mask_fill": float("-inf"),
        "nan_to_zero": 0,
    },
    flops=_flops,
    doc="softmax(scale·Q·Kᵀ masked) · V over [B, H, S, D] tensors",
)
def _attention(ctx: InferContext) -> list[OutType | None]:
    dt = ctx.dtype(0)
    if dt is not None and dt not in _FLOATS:
        raise ctx.fail(f"Q is {dt}; Attention takes floats")
    for i in (1, 2, 3):
        if ctx.has(i) and dt is not None and ctx.dtype(i) not in (None, dt):
            raise ctx.fail(f"input {i} is {ctx.dtype(i)} but Q is {dt}")
    if ctx.has(4) and ctx.dtype(4) not in (None, "bool"):
        raise ctx.fail(f"keep_mask (input 4) must be bool, got {ctx.dtype(4)}")
    dims = _dims(ctx)
    if dims is None:
        ranks = [ctx.rank(i) for i in range(ctx.n_inputs) if ctx.has(i)]
        if all(r is not None for r in ranks):
            return [OutType(dt, (None,) * max(ranks))]  # type: ignore[type-var]
        return [OutType(dt, None)]
    batch, sq, _, _, dv = dims
    return [OutType(dt, (*batch, sq, dv))]
