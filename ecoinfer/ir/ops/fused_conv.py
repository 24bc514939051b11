"""Schemas and shape inference of fused ops in the "ecoinfer" domain (see docs/fused-ops.md).

ecoinfer.FusedConv(X, W, B?, Z?) -> Y
    A convolution with its epilogue. Attributes: the Conv ones with padding resolved
    (`pads`, `strides`, `dilations`, `group`, `kernel_shape` always explicit; never auto_pad),
    plus `activation`/`activation_params`, `post_activation`/`post_activation_params`
    (absorbed ONNX activation op names and float params, the convention of
    ecoinfer.kernels.torch_ops.activation; "" = none) and `layout` ("NCHW" or "NHWC").
    Semantics, in this order (each step is the ONNX op it replaced, so results are exact):

        y = Conv(X, W, B)            # bias inside the convolution
        y = activation(y)
        if Z: y = y + Z              # the residual Add; Z broadcasts to y without growing it
        y = post_activation(y)       # only meaningful with Z (ResNet's Add -> Relu)

    layout="NHWC" (set by the nhwc_layout pass): X, Z and Y are channels-last
    ([N, spatial..., C]) and W is [M, k..., C/group] (OHWI); B stays [M].

ecoinfer.MaxPool / ecoinfer.AveragePool(X) -> Y
    The ONNX pools (same attributes and semantics) plus `layout`; with layout="NHWC", X and
    Y are channels-last. They let a pool sit inside a channels-last conv chain.
"""

from __future__ import annotations

from ecoinfer.ir.graph import Dim, Shape
from ecoinfer.ir.ops.nn import _POOL_ATTRS, window_out, window_params
from ecoinfer.ir.ops.registry import InferContext, OutType, broadcast_dim, numel, op

FUSED_CONV_ATTRS = {
    "dilations": None,
    "group": 1,
    "kernel_shape": None,
    "pads": None,
    "strides": None,
    "activation": "",
    "activation_params": [],
    "post_activation": "",
    "post_activation_params": [],
    "layout": "NCHW",
}


def to_last(rank: int) -> list[int]:
    """Permutation NC(spatial) -> N(spatial)C: channels-last = x.permute(to_last(rank))."""
    return [0, *range(2, rank), 1]


def to_first(rank: int) -> list[int]:
    """Permutation N(spatial)C -> NC(spatial), the inverse of to_last."""
    return [0, rank - 1, *range(1, rank - 1)]


def permute_shape(shape: Shape | None, perm: list[int]) -> Shape | None:
    return None if shape is None else tuple(shape[p] for p in perm)


def _layout(ctx: InferContext) -> str:
    layout = str(ctx.attr("layout") or "NCHW")
    if layout not in ("NCHW", "NHWC"):
        raise ctx.fail(f"layout must be NCHW or NHWC, got '{layout}'")
    return layout


def _conv_out(ctx: InferContext, x: Shape, w: Shape | None) -> Shape:
    """Output shape of a convolution in NCHW terms (x and w NCHW/OIHW)."""
    nd = len(x) - 2
    kernel = ctx.attr("kernel_shape")
    if kernel:
        kernel = [int(k) for k in kernel]
    elif w is not None and all(isinstance(d, int) for d in w[2:]):
        kernel = [int(d) for d in w[2:]]  # type: ignore[arg-type]
    m: Dim = w[0] if w is not None else None
    if not kernel:
        return (x[0], m, *([None] * nd))
    try:
        strides, dil, pads, auto_pad = window_params(ctx.node.attrs, nd, kernel)
    except ValueError as e:
        raise ctx.fail(str(e)) from None
    if auto_pad != "NOTSET":
        raise ctx.fail("FusedConv takes explicit pads (auto_pad is resolved when fusing)")
    out = [
        window_out(x[2 + i], kernel[i], strides[i], dil[i], pads[i], pads[nd + i], auto_pad)
        for i in range(nd)
    ]
    if any(isinstance(d, int) and d <= 0 for d in out):
        raise ctx.fail(f"kernel {kernel} does not fit input {list(x)} (output spatial {out})")
    return (x[0], m, *out)


@op(
    "FusedConv",
    inputs=(2, 4),
    attrs=FUSED_CONV_ATTRS,
    domain="ecoinfer",
    flops=lambda ctx, outs: _fused_conv_flops(ctx, outs),
    doc="Conv + bias + activation + residual Add + activation (see module doc)",
)
def _fused_conv(ctx: InferContext) -> list[OutType | None]:
    layout = _layout(ctx)
    x, w = ctx.shape(0), ctx.shape(1)
    rank = len(x) if x is not None else (len(w) if w is not None else None)
    if rank is None:
        return [OutType(ctx.dtype(0), None)]
    if rank < 3:
        raise ctx.fail(f"input must have rank >= 3 (N, C, spatial...), got {list(x or ())}")
    nhwc = layout == "NHWC"
    xc = permute_shape(x, to_first(rank)) if nhwc else x
    wc = permute_shape(w, to_first(rank)) if nhwc else w
    group = int(ctx.attr("group"))
    if xc is not None and wc is not None and isinstance(xc[1], int) and isinstance(wc[1], int):
        if xc[1] != wc[1] * group:
            raise ctx.fail(
                f"input has {xc[1]} channels but weight {list(w or ())} with group={group} "
                f"expects {wc[1] * group}"
            )
    if xc is None:
        return [OutType(ctx.dtype(0), None)]
    y = _conv_out(ctx, xc, wc)
    if ctx.has(2):
        b = ctx.shape(2)
        if b is not None and (len(b) != 1 or not _dims_agree(b[0], y[1])):
            raise ctx.fail(f"bias must be [M] = [{y[1]}], got {list(b)}")
    out = permute_shape(y, to_last(rank)) if nhwc else y
    if ctx.has(3):
        z = ctx.shape(3)
        if z is not None and out is not None:
            _check_residual(ctx, z, out)
    return [OutType(ctx.dtype(0), out)]


def _dims_agree(a: Dim, b: Dim) -> bool:
    return not (isinstance(a, int) and isinstance(b, int) and a != b)


def _check_residual(ctx: InferContext, z: Shape, y: Shape) -> None:
    """Z must broadcast to Y's shape without growing it (the residual adds into Y)."""
    if len(z) > len(y):
        raise ctx.fail(f"residual Z {list(z)} has a higher rank than the output {list(y)}")
    for a, b in zip(z[::-1], y[::-1]):
        try:
            d = broadcast_dim(b, a)
        except ValueError:
            raise ctx.fail(f"residual Z {list(z)} does not broadcast to {list(y)}") from None
        if isinstance(d, int) and isinstance(b, int) and d != b:
            raise ctx.fail(f"residual Z {list(z)} would grow the output {list(y)}")


def _fused_conv_flops(ctx: InferContext, outs: list[OutType | None]) -> int | None:
    w = ctx.shape(1)
    y = outs[0].shape if outs and outs[0] else None
    n = numel(y)
    if w is None or not all(isinstance(d, int) for d in w) or not isinstance(n, int):
        return None
    per_out = 1
    for d in w[1:]:
        per_out *= int(d)  # type: ignore[arg-type]
    # the epilogue: one op per output element for bias, each activation and the residual
    epilogue = sum(
        (
            ctx.has(2),
            bool(ctx.attr("activation")),
            ctx.has(3),
            bool(ctx.attr("post_activation")),
        )
    )
    return 2 * n * per_out + epilogue * n


# ---------------------------------------------------------------------- channels-last pools
def _pool(ctx: InferContext) -> list[OutType | None]:
    layout = _layout(ctx)
    x = ctx.shape(0)
    kernel = ctx.attr("kernel_shape")
    if not kernel:
        raise ctx.fail("attribute 'kernel_shape' is required")
    kernel = [int(k) for k in kernel]
    nd = len(kernel)
    if x is None:
        return [OutType(ctx.dtype(0), None)]
    if len(x) != nd + 2:
        raise ctx.fail(f"kernel_shape {kernel} needs a rank-{nd + 2} input, got {list(x)}")
    xc = permute_shape(x, to_first(len(x))) if layout == "NHWC" else x
    assert xc is not None
    try:
        strides, dil, pads, auto_pad = window_params(ctx.node.attrs, nd, kernel)
    except ValueError as e:
        raise ctx.fail(str(e)) from None
    ceil_mode = bool(ctx.attr("ceil_mode"))
    out = [
        window_out(
            xc[2 + i], kernel[i], strides[i], dil[i], pads[i], pads[nd + i], auto_pad, ceil_mode
        )
        for i in range(nd)
    ]
    if any(isinstance(d, int) and d <= 0 for d in out):
        raise ctx.fail(f"kernel {kernel} does not fit input {list(x)} (output spatial {out})")
    y: Shape = (xc[0], xc[1], *out)
    if layout == "NHWC":
        y = permute_shape(y, to_last(len(y)))  # type: ignore[assignment]
    return [OutType(ctx.dtype(0), y)]


op(
    "MaxPool",
    attrs={**_POOL_ATTRS, "storage_order": 0, "layout": "NCHW"},
    domain="ecoinfer",
    doc="ONNX MaxPool (one output) with a layout attribute",
)(_pool)
op(
    "AveragePool",
    attrs={**_POOL_ATTRS, "count_include_pad": 0, "layout": "NCHW"},
    domain="ecoinfer",
    doc="ONNX AveragePool with a layout attribute",
)(_pool)
