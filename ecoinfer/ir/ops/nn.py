"""Shape/dtype inference for NN ops: convolution, pooling, normalization, matmul-likes,
Resize, Pad, Dropout, DepthToSpace/SpaceToDepth and Attention.

The window arithmetic here (pads from auto_pad, output sizes with ceil_mode) is shared with
the torch kernels, so inference and execution cannot disagree.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from ecoinfer.ir.graph import Dim, Shape
from ecoinfer.ir.ops.registry import (
    InferContext,
    OutType,
    broadcast_shapes,
    dim_mul,
    numel,
    op,
    same,
)

# ONNX TensorProto element types that stash_type / softmax_precision may name
STASH_DTYPES = {1: "float32", 10: "float16", 11: "float64", 16: "bfloat16"}


# ---------------------------------------------------------------------- dim arithmetic
def dim_add(a: Dim, b: Dim) -> Dim:
    if isinstance(a, int) and isinstance(b, int):
        return a + b
    if a == 0:
        return b
    if b == 0:
        return a
    if a is None or b is None:
        return None
    return f"{a}+{b}"


def dim_div(a: Dim, b: int) -> Dim:
    """a / b when it is known to be exact; symbols divided by 1 stay themselves."""
    if b == 1:
        return a
    if isinstance(a, int):
        return a // b
    return None


def _all_ints(shape: Sequence[Dim] | None) -> bool:
    return shape is not None and all(isinstance(d, int) for d in shape)


def _prod(xs: Sequence[int]) -> int:
    out = 1
    for x in xs:
        out *= int(x)
    return out


# ---------------------------------------------------------------------- window arithmetic
def window_params(
    attrs: dict, nd: int, kernel: Sequence[int]
) -> tuple[list[int], list[int], list[int], str]:
    """(strides, dilations, explicit pads [begins..., ends...], auto_pad) with defaults filled."""
    strides = list(attrs.get("strides") or [1] * nd)
    dilations = list(attrs.get("dilations") or [1] * nd)
    pads = list(attrs.get("pads") or [0] * (2 * nd))
    auto_pad = attrs.get("auto_pad") or "NOTSET"
    if len(strides) != nd or len(dilations) != nd or len(pads) != 2 * nd or len(kernel) != nd:
        raise ValueError(
            f"kernel_shape {list(kernel)}, strides {strides}, dilations {dilations} and pads "
            f"{pads} do not all match {nd} spatial dims"
        )
    return strides, dilations, pads, auto_pad


def window_out(
    size: Dim, k: int, s: int, d: int, pb: int, pe: int, auto_pad: str, ceil_mode: bool = False
) -> Dim:
    """Output length of a sliding window (Conv/pools) over one spatial axis."""
    keff = (k - 1) * d + 1
    if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        if isinstance(size, int):
            return -(-size // s)
        return size if s == 1 else None
    if auto_pad == "VALID":
        if isinstance(size, int):
            return (size - keff) // s + 1
        return size if keff == 1 and s == 1 else None
    if not isinstance(size, int):
        return size if keff == 1 and s == 1 and pb == 0 and pe == 0 else None
    span = size + pb + pe - keff
    if not ceil_mode:
        return span // s + 1
    out = -(-span // s) + 1
    # the last window must start inside the input or its left padding
    if (out - 1) * s >= size + pb:
        out -= 1
    return out


def resolve_pads(
    size: int, k: int, s: int, d: int, pb: int, pe: int, auto_pad: str
) -> tuple[int, int]:
    """Begin/end padding actually applied for auto_pad (explicit pads for NOTSET)."""
    if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        out = -(-size // s)
        total = max(0, (out - 1) * s + (k - 1) * d + 1 - size)
        small = total // 2
        return (small, total - small) if auto_pad == "SAME_UPPER" else (total - small, small)
    if auto_pad == "VALID":
        return 0, 0
    return pb, pe


def conv_transpose_geometry(
    in_sizes: Sequence[int],
    kernel: Sequence[int],
    strides: Sequence[int],
    dilations: Sequence[int],
    pads: Sequence[int],
    output_padding: Sequence[int],
    output_shape: Sequence[int] | None,
    auto_pad: str,
) -> tuple[list[int], list[int], list[int]]:
    """(pads_begin, pads_end, out_sizes) of ConvTranspose per the ONNX rules."""
    nd = len(in_sizes)
    if output_shape is None and auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        output_shape = [in_sizes[i] * strides[i] for i in range(nd)]
    if output_shape is not None:
        begins, ends = [], []
        for i in range(nd):
            full = (
                strides[i] * (in_sizes[i] - 1)
                + output_padding[i]
                + (kernel[i] - 1) * dilations[i]
                + 1
            )
            total = full - output_shape[i]
            if auto_pad == "SAME_UPPER":
                begins.append(total // 2)
                ends.append(total - total // 2)
            else:
                begins.append(total - total // 2)
                ends.append(total // 2)
        return begins, ends, list(output_shape)
    begins = list(pads[:nd])
    ends = list(pads[nd:])
    if auto_pad == "VALID":
        begins, ends = [0] * nd, [0] * nd
    outs = [
        strides[i] * (in_sizes[i] - 1)
        + output_padding[i]
        + (kernel[i] - 1) * dilations[i]
        + 1
        - begins[i]
        - ends[i]
        for i in range(nd)
    ]
    return begins, ends, outs


def _spatial(ctx: InferContext, x: Shape | None, rank_hint: int | None) -> int | None:
    if x is not None:
        return len(x) - 2
    if rank_hint is not None:
        return rank_hint - 2
    return None


# ---------------------------------------------------------------------- convolution
def _conv_kernel(ctx: InferContext, w: Shape | None, nd: int | None) -> list[int] | None:
    k = ctx.attr("kernel_shape")
    if k:
        return [int(v) for v in k]
    if w is not None and _all_ints(w[2:]):
        return [int(v) for v in w[2:]]  # type: ignore[arg-type]
    return None


@op(
    "Conv",
    inputs=(2, 3),
    attrs={
        "auto_pad": "NOTSET",
        "dilations": None,
        "group": 1,
        "kernel_shape": None,
        "pads": None,
        "strides": None,
    },
    flops=lambda ctx, outs: _conv_flops(ctx, outs),
)
def _conv(ctx: InferContext) -> list[OutType | None]:
    x, w = ctx.shape(0), ctx.shape(1)
    nd = _spatial(ctx, x, None if w is None else len(w))
    if nd is None:
        return [OutType(ctx.dtype(0), None)]
    if nd < 1:
        raise ctx.fail(f"input must have rank >= 3 (N, C, spatial...), got {list(x or ())}")
    m: Dim = w[0] if w is not None else None
    group = int(ctx.attr("group"))
    if x is not None and w is not None and isinstance(x[1], int) and isinstance(w[1], int):
        if x[1] != w[1] * group:
            raise ctx.fail(
                f"input has {x[1]} channels but weight {list(w)} with group={group} expects "
                f"{w[1] * group}"
            )
    kernel = _conv_kernel(ctx, w, nd)
    if x is None or kernel is None:
        return [OutType(ctx.dtype(0), (x[0] if x else None, m) + (None,) * nd)]
    try:
        strides, dil, pads, auto_pad = window_params(ctx.node.attrs, nd, kernel)
    except ValueError as e:
        raise ctx.fail(str(e)) from None
    out = [
        window_out(x[2 + i], kernel[i], strides[i], dil[i], pads[i], pads[nd + i], auto_pad)
        for i in range(nd)
    ]
    if any(isinstance(d, int) and d <= 0 for d in out):
        raise ctx.fail(f"kernel {kernel} does not fit input {list(x)} (output spatial {out})")
    return [OutType(ctx.dtype(0), (x[0], m, *out))]


def _conv_flops(ctx: InferContext, outs: list[OutType | None]) -> int | None:
    w = ctx.shape(1)
    y = outs[0].shape if outs and outs[0] else None
    if not _all_ints(w) or not _all_ints(y):
        return None
    return 2 * _prod(y) * _prod(w[1:])  # type: ignore[arg-type]


@op(
    "ConvTranspose",
    inputs=(2, 3),
    attrs={
        "auto_pad": "NOTSET",
        "dilations": None,
        "group": 1,
        "kernel_shape": None,
        "output_padding": None,
        "output_shape": None,
        "pads": None,
        "strides": None,
    },
    flops=lambda ctx, outs: _conv_transpose_flops(ctx),
)
def _conv_transpose(ctx: InferContext) -> list[OutType | None]:
    x, w = ctx.shape(0), ctx.shape(1)
    nd = _spatial(ctx, x, None if w is None else len(w))
    if nd is None:
        return [OutType(ctx.dtype(0), None)]
    group = int(ctx.attr("group"))
    m = dim_mul(w[1], group) if w is not None else None
    kernel = _conv_kernel(ctx, w, nd)
    batch = x[0] if x is not None else None
    out_shape = ctx.attr("output_shape")
    if out_shape and len(out_shape) == nd + 2:
        out_shape = out_shape[2:]
    if x is None or kernel is None or not _all_ints(x[2:]):
        if out_shape:
            return [OutType(ctx.dtype(0), (batch, m, *[int(v) for v in out_shape]))]
        return [OutType(ctx.dtype(0), (batch, m) + (None,) * nd)]
    try:
        strides, dil, pads, auto_pad = window_params(ctx.node.attrs, nd, kernel)
    except ValueError as e:
        raise ctx.fail(str(e)) from None
    outpad = list(ctx.attr("output_padding") or [0] * nd)
    _, _, out = conv_transpose_geometry(
        [int(v) for v in x[2:]],
        kernel,
        strides,
        dil,
        pads,
        outpad,  # type: ignore[arg-type]
        [int(v) for v in out_shape] if out_shape else None,
        auto_pad,
    )
    return [OutType(ctx.dtype(0), (batch, m, *out))]


def _conv_transpose_flops(ctx: InferContext) -> int | None:
    x, w = ctx.shape(0), ctx.shape(1)
    if not _all_ints(x) or not _all_ints(w):
        return None
    return 2 * _prod(x) * _prod(w[1:])  # type: ignore[arg-type]


# ---------------------------------------------------------------------- pooling
_POOL_ATTRS = {
    "auto_pad": "NOTSET",
    "ceil_mode": 0,
    "dilations": None,
    "kernel_shape": None,
    "pads": None,
    "strides": None,
}


def _pool_shape(ctx: InferContext) -> Shape | None:
    x = ctx.shape(0)
    kernel = ctx.attr("kernel_shape")
    if not kernel:
        raise ctx.fail("attribute 'kernel_shape' is required")
    kernel = [int(k) for k in kernel]
    nd = len(kernel)
    if x is None:
        return None
    if len(x) != nd + 2:
        raise ctx.fail(f"kernel_shape {kernel} needs a rank-{nd + 2} input, got {list(x)}")
    try:
        strides, dil, pads, auto_pad = window_params(ctx.node.attrs, nd, kernel)
    except ValueError as e:
        raise ctx.fail(str(e)) from None
    ceil_mode = bool(ctx.attr("ceil_mode"))
    out = [
        window_out(
            x[2 + i], kernel[i], strides[i], dil[i], pads[i], pads[nd + i], auto_pad, ceil_mode
        )
        for i in range(nd)
    ]
    if any(isinstance(d, int) and d <= 0 for d in out):
        raise ctx.fail(f"kernel {kernel} does not fit input {list(x)} (output spatial {out})")
    return (x[0], x[1], *out)


@op("MaxPool", outputs=(1, 2), attrs={**_POOL_ATTRS, "storage_order": 0})
def _max_pool(ctx: InferContext) -> list[OutType | None]:
    shape = _pool_shape(ctx)
    return [OutType(ctx.dtype(0), shape), OutType("int64", shape)]


@op("AveragePool", attrs={**_POOL_ATTRS, "count_include_pad": 0})
def _avg_pool(ctx: InferContext) -> list[OutType | None]:
    return [OutType(ctx.dtype(0), _pool_shape(ctx))]


@op("LpPool", attrs={**_POOL_ATTRS, "p": 2})
def _lp_pool(ctx: InferContext) -> list[OutType | None]:
    return [OutType(ctx.dtype(0), _pool_shape(ctx))]


@op(["GlobalAveragePool", "GlobalMaxPool", "GlobalLpPool"], attrs={"p": 2})
def _global_pool(ctx: InferContext) -> list[OutType | None]:
    x = ctx.shape(0)
    if x is None:
        return [OutType(ctx.dtype(0), None)]
    if len(x) < 2:
        raise ctx.fail(f"input must have rank >= 2 (N, C, ...), got {list(x)}")
    return [OutType(ctx.dtype(0), (x[0], x[1]) + (1,) * (len(x) - 2))]


# ---------------------------------------------------------------------- normalization
@op(
    "BatchNormalization",
    inputs=(5, 5),
    outputs=(1, 5),
    attrs={"epsilon": 1e-5, "momentum": 0.9, "training_mode": 0, "spatial": 1},
)
def _batch_norm(ctx: InferContext) -> list[OutType | None]:
    stats = OutType(ctx.dtype(3), ctx.shape(3))
    return [same(ctx), stats, OutType(ctx.dtype(4), ctx.shape(4)), stats, stats]


@op("InstanceNormalization", inputs=(3, 3), attrs={"epsilon": 1e-5})
def _instance_norm(ctx: InferContext) -> list[OutType | None]:
    return [same(ctx)]


@op(
    "LayerNormalization",
    inputs=(2, 3),
    outputs=(1, 3),
    attrs={"axis": -1, "epsilon": 1e-5, "stash_type": 1},
)
def _layer_norm(ctx: InferContext) -> list[OutType | None]:
    x = ctx.shape(0)
    stash = STASH_DTYPES.get(int(ctx.attr("stash_type")), "float32")
    if x is None:
        return [same(ctx), OutType(stash, None), OutType(stash, None)]
    axis = ctx.norm_axis(int(ctx.attr("axis")), len(x))
    stat = tuple(x[:axis]) + (1,) * (len(x) - axis)
    return [same(ctx), OutType(stash, stat), OutType(stash, stat)]


@op("RMSNormalization", inputs=(2, 2), attrs={"axis": -1, "epsilon": 1e-5, "stash_type": 1})
def _rms_norm(ctx: InferContext) -> list[OutType | None]:
    x = ctx.shape(0)
    if x is not None:
        ctx.norm_axis(int(ctx.attr("axis")), len(x))
    return [OutType(ctx.dtype(1) or ctx.dtype(0), x)]


@op(
    "GroupNormalization",
    inputs=(3, 3),
    attrs={"epsilon": 1e-5, "num_groups": None, "stash_type": 1},
)
def _group_norm(ctx: InferContext) -> list[OutType | None]:
    g = ctx.attr("num_groups")
    if g is None:
        raise ctx.fail("attribute 'num_groups' is required")
    x = ctx.shape(0)
    if x is not None and isinstance(x[1], int) and x[1] % int(g):
        raise ctx.fail(f"{x[1]} channels do not split into num_groups={g}")
    return [same(ctx)]


@op("LRN", attrs={"alpha": 1e-4, "beta": 0.75, "bias": 1.0, "size": None})
def _lrn(ctx: InferContext) -> list[OutType | None]:
    if ctx.attr("size") is None:
        raise ctx.fail("attribute 'size' is required")
    return [same(ctx)]


@op("LpNormalization", attrs={"axis": -1, "p": 2})
def _lp_norm(ctx: InferContext) -> list[OutType | None]:
    return [same(ctx)]


@op("MeanVarianceNormalization", attrs={"axes": [0, 2, 3]})
def _mvn(ctx: InferContext) -> list[OutType | None]:
    return [same(ctx)]


# ---------------------------------------------------------------------- matmul family
def matmul_shape(ctx: InferContext, a: Shape | None, b: Shape | None) -> Shape | None:
    if a is None or b is None:
        return None
    if len(a) == 0 or len(b) == 0:
        raise ctx.fail("MatMul operands must have rank >= 1")
    a2 = (1, *a) if len(a) == 1 else tuple(a)
    b2 = (*b, 1) if len(b) == 1 else tuple(b)
    k1, k2 = a2[-1], b2[-2]
    if isinstance(k1, int) and isinstance(k2, int) and k1 != k2:
        raise ctx.fail(f"inner dimensions differ: {list(a)} x {list(b)}")
    batch = broadcast_shapes(ctx, a2[:-2], b2[:-2])
    assert batch is not None
    out = (*batch, a2[-2], b2[-1])
    if len(a) == 1:
        out = out[:-2] + out[-1:]
    if len(b) == 1:
        out = out[:-1]
    return out


def _matmul_flops(ctx: InferContext, outs: list[OutType | None]) -> int | None:
    a = ctx.shape(0)
    y = outs[0].shape if outs and outs[0] else None
    if not _all_ints(a) or not _all_ints(y):
        return None
    return 2 * _prod(y) * int(a[-1])  # type: ignore[index, arg-type]


@op("MatMul", inputs=(2, 2), flops=_matmul_flops)
def _matmul(ctx: InferContext) -> list[OutType | None]:
    return [OutType(ctx.dtype(0), matmul_shape(ctx, ctx.shape(0), ctx.shape(1)))]


def _gemm_dims(ctx: InferContext) -> tuple[Dim, Dim, Dim] | None:
    a, b = ctx.shape(0), ctx.shape(1)
    if a is None or b is None:
        return None
    if len(a) != 2 or len(b) != 2:
        raise ctx.fail(f"A and B must be 2-D, got {list(a)} and {list(b)}")
    m, k = (a[1], a[0]) if ctx.attr("transA") else (a[0], a[1])
    k2, n = (b[1], b[0]) if ctx.attr("transB") else (b[0], b[1])
    if isinstance(k, int) and isinstance(k2, int) and k != k2:
        raise ctx.fail(
            f"inner dimensions differ: A {list(a)} x B {list(b)} (transA/transB applied)"
        )
    return m, k if k is not None else k2, n


def _gemm_flops(ctx: InferContext, outs: list[OutType | None]) -> int | None:
    dims = _gemm_dims(ctx)
    if dims is None or not _all_ints(dims):
        return None
    m, k, n = dims
    return 2 * int(m) * int(k) * int(n)  # type: ignore[arg-type]


@op(
    "Gemm",
    inputs=(2, 3),
    attrs={"alpha": 1.0, "beta": 1.0, "transA": 0, "transB": 0},
    flops=_gemm_flops,
)
def _gemm(ctx: InferContext) -> list[OutType | None]:
    dims = _gemm_dims(ctx)
    if dims is None:
        return [OutType(ctx.dtype(0), (None, None))]
    m, _, n = dims
    return [OutType(ctx.dtype(0), (m, n))]


# ---------------------------------------------------------------------- einsum
def parse_einsum(equation: str, ranks: Sequence[int]) -> tuple[list[str], str]:
    """Operand subscripts and the output subscript, with '...' spelled as '.' per dim slot.

    Broadcast dims become the characters '0'.. (counted from the right) so the caller
    can treat them like letters.
    """
    eq = equation.replace(" ", "")
    lhs, arrow, rhs = eq.partition("->")
    terms = lhs.split(",")
    if len(terms) != len(ranks):
        raise ValueError(
            f"equation '{equation}' has {len(terms)} operands, got {len(ranks)} inputs"
        )
    ell_rank = 0
    expanded: list[str] = []
    for t, r in zip(terms, ranks):
        if "..." in t:
            n = r - (len(t) - 3)
            if n < 0:
                raise ValueError(f"operand '{t}' does not fit rank {r}")
            ell_rank = max(ell_rank, n)
            expanded.append(t.replace("...", "".join(str(i) for i in range(n - 1, -1, -1))))
        else:
            if len(t) != r:
                raise ValueError(f"operand '{t}' has {len(t)} subscripts but rank {r}")
            expanded.append(t)
    ell = "".join(str(i) for i in range(ell_rank - 1, -1, -1))
    if arrow:
        out = rhs.replace("...", ell)
    else:
        counts: dict[str, int] = {}
        for t in terms:
            for c in t.replace("...", ""):
                counts[c] = counts.get(c, 0) + 1
        out = ell + "".join(sorted(c for c, n in counts.items() if n == 1))
    return expanded, out


def _einsum_sizes(ctx: InferContext) -> tuple[dict[str, Dim], str, list[str]] | None:
    shapes = [ctx.shape(i) for i in range(ctx.n_inputs)]
    if any(s is None for s in shapes):
        return None
    try:
        terms, out = parse_einsum(str(ctx.attr("equation")), [len(s) for s in shapes])  # type: ignore[arg-type]
    except ValueError as e:
        raise ctx.fail(str(e)) from None
    sizes: dict[str, Dim] = {}
    for t, s in zip(terms, shapes):
        for c, d in zip(t, s):  # type: ignore[arg-type]
            if c not in sizes or sizes[c] is None or sizes[c] == 1 and c.isdigit():
                sizes[c] = d
            elif isinstance(d, int) and isinstance(sizes[c], int) and d != sizes[c]:
                if not (c.isdigit() and d == 1):
                    raise ctx.fail(
                        f"subscript '{c}' is {sizes[c]} in one operand and {d} in another"
                    )
    return sizes, out, terms


@op("Einsum", inputs=(1, -1), attrs={"equation": ""}, flops=lambda ctx, outs: _einsum_flops(ctx))
def _einsum(ctx: InferContext) -> list[OutType | None]:
    got = _einsum_sizes(ctx)
    if got is None:
        return [OutType(ctx.dtype(0), None)]
    sizes, out, _ = got
    return [OutType(ctx.dtype(0), tuple(sizes.get(c) for c in out))]


def _einsum_flops(ctx: InferContext) -> int | None:
    got = _einsum_sizes(ctx)
    if got is None or ctx.n_inputs < 2:
        return None
    sizes = got[0]
    if not _all_ints(list(sizes.values())):
        return None
    return 2 * (ctx.n_inputs - 1) * _prod(sizes.values())  # type: ignore[arg-type]


# ---------------------------------------------------------------------- attention
def _attention_dims(ctx: InferContext) -> dict[str, Dim] | None:
    q, k, v = ctx.shape(0), ctx.shape(1), ctx.shape(2)
    if q is None or k is None or v is None:
        return None
    if not (len(q) == len(k) == len(v)) or len(q) not in (3, 4):
        raise ctx.fail(f"Q, K, V must all be 3-D or all 4-D, got {list(q)}, {list(k)}, {list(v)}")
    past = ctx.shape(4)
    p: Dim = past[2] if past is not None and len(past) == 4 else (0 if not ctx.has(4) else None)
    if len(q) == 4:
        dims = {"b": q[0], "hq": q[1], "sq": q[2], "d": q[3], "hkv": k[1], "skv": k[2], "dv": v[3]}
    else:
        hq, hkv = ctx.attr("q_num_heads"), ctx.attr("kv_num_heads")
        if hq is None or hkv is None:
            raise ctx.fail("3-D Q/K/V need the q_num_heads and kv_num_heads attributes")
        dims = {
            "b": q[0],
            "hq": int(hq),
            "sq": q[1],
            "d": dim_div(q[2], int(hq)),
            "hkv": int(hkv),
            "skv": k[1],
            "dv": dim_div(v[2], int(hkv)),
        }
    dims["t"] = dim_add(p, dims["skv"])
    dims["dk"] = k[3] if len(k) == 4 else dim_div(k[2], int(dims["hkv"]))  # type: ignore[arg-type]
    return dims


@op(
    "Attention",
    inputs=(3, 7),
    outputs=(1, 4),
    attrs={
        "is_causal": 0,
        "kv_num_heads": None,
        "q_num_heads": None,
        "qk_matmul_output_mode": 0,
        "scale": None,
        "softcap": 0.0,
        "softmax_precision": None,
        "left_window_size": -1,
        "right_window_size": -1,
    },
    flops=lambda ctx, outs: _attention_flops(ctx),
)
def _attention(ctx: InferContext) -> list[OutType | None]:
    dt = ctx.dtype(0)
    d = _attention_dims(ctx)
    if d is None:
        return [OutType(dt, None), OutType(dt, None), OutType(dt, None), OutType(dt, None)]
    if len(ctx.shape(0)) == 4:  # type: ignore[arg-type]
        y: Shape = (d["b"], d["hq"], d["sq"], d["dv"])
    else:
        y = (d["b"], d["sq"], dim_mul(d["hq"], d["dv"]))
    return [
        OutType(dt, y),
        OutType(dt, (d["b"], d["hkv"], d["t"], d["dk"])),
        OutType(dt, (d["b"], d["hkv"], d["t"], d["dv"])),
        OutType(dt, (d["b"], d["hq"], d["sq"], d["t"])),
    ]


def _attention_flops(ctx: InferContext) -> int | None:
    d = _attention_dims(ctx)
    if d is None:
        return None
    vals = [d[k] for k in ("b", "hq", "sq", "t", "d", "dv")]
    if not _all_ints(vals):
        return None
    b, hq, sq, t, dq, dv = (int(x) for x in vals)  # type: ignore[arg-type]
    return 2 * b * hq * sq * t * (dq + dv)


# ---------------------------------------------------------------------- resize / pad / misc
@op(
    "Resize",
    inputs=(1, 4),
    attrs={
        "antialias": 0,
        "axes": None,
        "coordinate_transformation_mode": "half_pixel",
        "cubic_coeff_a": -0.75,
        "exclude_outside": 0,
        "extrapolation_value": 0.0,
        "keep_aspect_ratio_policy": "stretch",
        "mode": "nearest",
        "nearest_mode": "round_prefer_floor",
    },
)
def _resize(ctx: InferContext) -> list[OutType | None]:
    x = ctx.shape(0)
    dt = ctx.dtype(0)
    if x is None:
        return [OutType(dt, None)]
    r = len(x)
    axes = [a + r if a < 0 else a for a in (ctx.attr("axes") or range(r))]
    scales_c = ctx.const(2)
    if scales_c is not None and scales_c.numel() == 0:
        scales_c = None
    sizes = ctx.sym(3) if ctx.has(3) else None
    if sizes is not None and len(sizes) == 0:
        sizes = None
    out: list[Dim] = list(x)
    if sizes is not None:
        if len(sizes) != len(axes):
            raise ctx.fail(f"sizes has {len(sizes)} entries for {len(axes)} axes")
        policy = ctx.attr("keep_aspect_ratio_policy")
        if policy == "stretch":
            for a, s in zip(axes, sizes):
                out[a] = s
        elif _all_ints([x[a] for a in axes]) and _all_ints(sizes):
            ratios = [int(s) / int(x[a]) for a, s in zip(axes, sizes)]  # type: ignore[arg-type]
            scale = min(ratios) if policy == "not_larger" else max(ratios)
            for a in axes:
                out[a] = int(scale * int(x[a]) + 0.5)  # type: ignore[arg-type]
        else:
            for a in axes:
                out[a] = None
        return [OutType(dt, tuple(out))]
    if scales_c is not None:
        scales = [float(s) for s in scales_c.double().reshape(-1).tolist()]
        if len(scales) != len(axes):
            raise ctx.fail(f"scales has {len(scales)} entries for {len(axes)} axes")
        for a, s in zip(axes, scales):
            if isinstance(x[a], int):
                out[a] = int(math.floor(x[a] * s))  # type: ignore[operator]
            elif s != 1.0:
                out[a] = None
        return [OutType(dt, tuple(out))]
    if not ctx.has(2) and not ctx.has(3):
        raise ctx.fail("needs either scales or sizes")
    return [OutType(dt, tuple(None if a in axes else x[a] for a in range(r)))]


@op("Pad", inputs=(1, 4), attrs={"mode": "constant"})
def _pad(ctx: InferContext) -> list[OutType | None]:
    x = ctx.shape(0)
    dt = ctx.dtype(0)
    if x is None:
        return [OutType(dt, None)]
    r = len(x)
    if ctx.attr("mode") not in ("constant", "reflect", "edge", "wrap"):
        raise ctx.fail(f"mode '{ctx.attr('mode')}' is not one of constant, reflect, edge, wrap")
    axes = ctx.ints(3) if ctx.has(3) else list(range(r))
    pads = ctx.ints(1)
    if axes is None or pads is None:
        return [OutType(dt, (None,) * r)]
    axes = [ctx.norm_axis(a, r) for a in axes]
    if len(pads) != 2 * len(axes):
        raise ctx.fail(f"pads has {len(pads)} values for {len(axes)} axes (needs 2 per axis)")
    out = list(x)
    n = len(axes)
    for i, a in enumerate(axes):
        d = out[a]
        if pads[i] or pads[n + i]:
            # a padded symbol has no name of its own
            out[a] = d + pads[i] + pads[n + i] if isinstance(d, int) else None
    return [OutType(dt, tuple(out))]


@op("Dropout", inputs=(1, 3), outputs=(1, 2), attrs={"seed": None})
def _dropout(ctx: InferContext) -> list[OutType | None]:
    mask_dt = "bool" if ctx.graph.opset >= 10 else ctx.dtype(0)
    return [same(ctx), OutType(mask_dt, ctx.shape(0))]


@op(["DepthToSpace", "SpaceToDepth"], attrs={"blocksize": None, "mode": "DCR"})
def _depth_space(ctx: InferContext) -> list[OutType | None]:
    b = ctx.attr("blocksize")
    if b is None:
        raise ctx.fail("attribute 'blocksize' is required")
    b = int(b)
    x = ctx.shape(0)
    if x is None:
        return [OutType(ctx.dtype(0), (None,) * 4)]
    if len(x) != 4:
        raise ctx.fail(f"input must be 4-D (N, C, H, W), got {list(x)}")
    n, c, h, w = x
    if ctx.node.op_type == "DepthToSpace":
        if isinstance(c, int) and c % (b * b):
            raise ctx.fail(f"{c} channels are not divisible by blocksize^2 = {b * b}")
        return [OutType(ctx.dtype(0), (n, dim_div(c, b * b), dim_mul(h, b), dim_mul(w, b)))]
    for d in (h, w):
        if isinstance(d, int) and d % b:
            raise ctx.fail(f"spatial dims {h}x{w} are not divisible by blocksize {b}")
    return [OutType(ctx.dtype(0), (n, dim_mul(c, b * b), dim_div(h, b), dim_div(w, b)))]


__all__ = [
    "STASH_DTYPES",
    "conv_transpose_geometry",
    "dim_add",
    "matmul_shape",
    "numel",
    "parse_einsum",
    "resolve_pads",
    "window_out",
    "window_params",
]
