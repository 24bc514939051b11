"""Shape/dtype inference for elementwise ops: unary math, activations, binary/variadic ops with
numpy broadcasting, comparisons and logic, Where, Cast/CastLike, Clip, Softmax family.

Small integer tensors whose contents are known (OutType.sym, usually from Shape) keep those
contents through arithmetic, Cast and Where, so Reshape/Expand targets computed from Shape in
exported models stay symbolic.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from ecoinfer.errors import UnsupportedDTypeError
from ecoinfer.ir import dtypes
from ecoinfer.ir.graph import Dim, Shape
from ecoinfer.ir.ops.registry import InferContext, OutType, broadcast_shapes, numel, op

FLOATS = frozenset({"float16", "bfloat16", "float32", "float64"})
FLOAT8 = frozenset(n for n in dtypes.FLOAT_TYPES if n.startswith("float8"))
BITWISE = frozenset({"int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64"})
BOOL = frozenset({"bool"})
_SYM_MAX = 64  # same bound as InferContext.sym for constants


# ---------------------------------------------------------------------------- helpers
def _flops(ctx: InferContext, outs: list[OutType | None]) -> int | None:
    """One op per output element."""
    if not outs or outs[0] is None:
        return None
    n = numel(outs[0].shape)
    return n if isinstance(n, int) else None


def _check_dtype(ctx: InferContext, i: int, allowed: frozenset[str], what: str) -> str | None:
    dt = ctx.dtype(i)
    if dt is not None and dt not in allowed:
        raise ctx.fail(f"input {i} is {dt}, but the op takes {what} ({', '.join(sorted(allowed))})")
    return dt


def _same_dtype(ctx: InferContext, idx: list[int]) -> str | None:
    """The common dtype of inputs idx (skipping omitted ones); fails when they differ."""
    seen: tuple[int, str] | None = None
    for i in idx:
        dt = ctx.dtype(i)
        if dt is None:
            continue
        if seen is not None and dt != seen[1]:
            raise ctx.fail(
                f"inputs {seen[0]} and {i} have different dtypes ({seen[1]} and {dt}); "
                "insert a Cast so they agree"
            )
        seen = seen or (i, dt)
    return seen[1] if seen else None


def _bcast(ctx: InferContext, idx: list[int]) -> Shape | None:
    return broadcast_shapes(ctx, *(ctx.shape(i) for i in idx if ctx.has(i)))


def _is_int(dt: str | None) -> bool:
    return dt is not None and (dt in dtypes.INT_TYPES or dt == "bool")


# --- arithmetic on symbolic dims (known contents of small int tensors) --------------------
def _nonneg(d: Dim) -> bool:
    """Known to be >= 0: a non-negative int or a plain symbol / product of symbols (a dim)."""
    return (isinstance(d, int) and d >= 0) or (isinstance(d, str) and "-" not in d)


def _wrap(d: str) -> str:
    # parenthesize sums so that products of them stay unambiguous
    return f"({d})" if any(c in d for c in "+-") else d


def _s_add(a: Dim, b: Dim) -> Dim:
    if isinstance(a, int) and isinstance(b, int):
        return a + b
    if a is None or b is None:
        return None
    if a == 0:
        return b
    if b == 0:
        return a
    if isinstance(b, int) and b < 0:
        return f"{a}-{-b}"
    return f"{a}+{b}"


def _s_sub(a: Dim, b: Dim) -> Dim:
    if isinstance(a, int) and isinstance(b, int):
        return a - b
    if a is None or b is None:
        return None
    if b == 0:
        return a
    if a == b:
        return 0
    if isinstance(b, int) and b < 0:
        return f"{a}+{-b}"
    return f"{a}-{_wrap(str(b))}"


def _s_mul(a: Dim, b: Dim) -> Dim:
    if isinstance(a, int) and isinstance(b, int):
        return a * b
    if a == 0 or b == 0:
        return 0
    if a is None or b is None:
        return None
    if a == 1:
        return b
    if b == 1:
        return a
    if (isinstance(a, int) and a < 0) or (isinstance(b, int) and b < 0):
        return None  # no use for negative multiples of a dim
    return f"{_wrap(str(a))}*{_wrap(str(b))}"


def _factors(d: str) -> list[str] | None:
    """Top-level factors of a product expression such as 'batch*seq', else None."""
    if any(c in d for c in "+-()/"):
        return None
    return d.split("*")


def _s_div(a: Dim, b: Dim) -> Dim:
    """Integer Div (truncates toward zero)."""
    if isinstance(a, int) and isinstance(b, int):
        if b == 0:
            return None
        q = abs(a) // abs(b)
        return q if (a >= 0) == (b > 0) else -q
    if a == 0:
        return 0
    if a is None or b is None:
        return None
    if b == 1:
        return a
    if a == b:
        return 1
    if isinstance(a, str):
        fa = _factors(a)
        if fa is not None and str(b) in fa and len(fa) > 1:
            fa.remove(str(b))
            rest = "*".join(fa)
            return int(rest) if rest.isdigit() else rest
    return None


def _s_mod(fmod: bool) -> Callable[[Dim, Dim], Dim]:
    def f(a: Dim, b: Dim) -> Dim:
        if isinstance(a, int) and isinstance(b, int) and b != 0:
            if fmod:
                r = abs(a) % abs(b)
                return r if a >= 0 else -r
            return a % b
        if b == 1 or (a == 0 and b is not None):
            return 0
        return None

    return f


def _s_max(a: Dim, b: Dim) -> Dim:
    if isinstance(a, int) and isinstance(b, int):
        return max(a, b)
    if a == b:
        return a
    # dims are never negative
    if _nonneg(a) and isinstance(b, int) and b <= 0:
        return a
    if _nonneg(b) and isinstance(a, int) and a <= 0:
        return b
    return None


def _s_min(a: Dim, b: Dim) -> Dim:
    if isinstance(a, int) and isinstance(b, int):
        return min(a, b)
    if a == b:
        return a
    if _nonneg(a) and isinstance(b, int) and b <= 0:
        return b
    if _nonneg(b) and isinstance(a, int) and a <= 0:
        return a
    return None


def _s_cmp(fn: Callable[[int, int], bool]) -> Callable[[Dim, Dim], Dim]:
    """Comparison giving 0/1."""

    def f(a: Dim, b: Dim) -> Dim:
        if isinstance(a, int) and isinstance(b, int):
            return int(fn(a, b))
        if a is None or b is None:
            return None
        if a == b:
            return int(fn(0, 0))
        # a dim is >= 0, so its order against a negative int is known
        if _nonneg(a) and isinstance(b, int) and b < 0:
            return int(fn(0, -1))
        if _nonneg(b) and isinstance(a, int) and a < 0:
            return int(fn(-1, 0))
        return None

    return f


_SYM_FNS: dict[str, Callable[[Dim, Dim], Dim]] = {
    "Add": _s_add,
    "Sub": _s_sub,
    "Mul": _s_mul,
    "Div": _s_div,
    "Max": _s_max,
    "Min": _s_min,
    "Sum": _s_add,
    "Equal": _s_cmp(lambda a, b: a == b),
    "Greater": _s_cmp(lambda a, b: a > b),
    "GreaterOrEqual": _s_cmp(lambda a, b: a >= b),
    "Less": _s_cmp(lambda a, b: a < b),
    "LessOrEqual": _s_cmp(lambda a, b: a <= b),
}


def _sym_operands(ctx: InferContext, idx: list[int]) -> list[Shape] | None:
    """The known contents of inputs idx, broadcast to one length; None when any is unknown."""
    syms: list[Shape] = []
    for i in idx:
        s = ctx.sym(i)
        c = ctx.const(i)
        if s is None and c is not None and c.dtype == torch.bool and c.numel() <= _SYM_MAX:
            s = tuple(int(v) for v in c.reshape(-1).tolist())  # e.g. a Where condition
        if s is None or ctx.rank(i) is None or (ctx.rank(i) or 0) > 1:
            return None
        syms.append(s)
    n = max(len(s) for s in syms)
    if n > _SYM_MAX or any(len(s) not in (1, n) for s in syms):
        return None
    return [tuple(s) * n if len(s) == 1 else tuple(s) for s in syms]


def _sym_binary(
    ctx: InferContext, out: OutType, fn: Callable[[Dim, Dim], Dim], idx: list[int]
) -> None:
    if not _is_int(out.dtype) or out.shape is None or len(out.shape) > 1:
        return
    ops = _sym_operands(ctx, idx)
    if ops is None:
        return
    acc = ops[0]
    for s in ops[1:]:
        acc = tuple(fn(a, b) for a, b in zip(acc, s))
    if all(d is None for d in acc):
        return
    out.sym = _fit_int(acc, out.dtype)


def _fit_int(sym: Shape, dtype: str | None) -> Shape:
    """Known contents as the output dtype holds them (bool -> 0/1, narrow ints wrap)."""
    if dtype == "bool":
        return tuple(int(bool(d)) if isinstance(d, int) else None for d in sym)
    if dtype in ("int8", "int16", "int32", "uint8", "uint16", "uint32"):
        bits = int(dtype.removeprefix("u").removeprefix("int"))
        signed = not dtype.startswith("u")

        def wrap(d: int) -> int:
            d &= (1 << bits) - 1
            return d - (1 << bits) if signed and d >= 1 << (bits - 1) else d

        return tuple(wrap(d) if isinstance(d, int) else d for d in sym)
    return sym


# ---------------------------------------------------------------------------- unary
_FLOAT_UNARY = [
    "Exp", "Log", "Sqrt", "Reciprocal", "Floor", "Ceil", "Round",
    "Sin", "Cos", "Tan", "Asin", "Acos", "Atan", "Sinh", "Cosh", "Asinh", "Acosh", "Atanh",
    "Erf", "Tanh", "Sigmoid", "Softplus", "Softsign", "HardSwish", "Mish",
]  # fmt: skip


@op(_FLOAT_UNARY, flops=_flops)
def _float_unary(ctx: InferContext) -> list[OutType]:
    return [OutType(_check_dtype(ctx, 0, FLOATS, "floats"), ctx.shape(0))]


@op("LeakyRelu", attrs={"alpha": 0.01}, flops=_flops)
@op("Elu", attrs={"alpha": 1.0}, flops=_flops)
@op("Celu", attrs={"alpha": 1.0}, flops=_flops)
@op(
    "Selu",
    attrs={"alpha": 1.67326319217681884765625, "gamma": 1.05070102214813232421875},
    flops=_flops,
)
@op("HardSigmoid", attrs={"alpha": 0.2, "beta": 0.5}, flops=_flops)
@op("ThresholdedRelu", attrs={"alpha": 1.0}, flops=_flops)
@op("Gelu", attrs={"approximate": "none"}, flops=_flops)
@op("Swish", attrs={"alpha": 1.0}, flops=_flops)
def _activation(ctx: InferContext) -> list[OutType]:
    if ctx.node.op_type == "Gelu" and ctx.attr("approximate") not in ("none", "tanh"):
        raise ctx.fail(f"approximate must be 'none' or 'tanh', got {ctx.attr('approximate')!r}")
    return [OutType(_check_dtype(ctx, 0, FLOATS, "floats"), ctx.shape(0))]


@op(["Abs", "Neg", "Sign", "Relu"], flops=_flops)
def _numeric_unary(ctx: InferContext) -> list[OutType]:
    dt = ctx.dtype(0)
    if dt in BOOL or dt in FLOAT8:
        raise ctx.fail(f"input 0 is {dt}, but the op takes numbers (ints or floats)")
    out = OutType(dt, ctx.shape(0))
    s = ctx.sym(0)
    if s is not None and _is_int(dt) and ctx.rank(0) is not None and (ctx.rank(0) or 0) <= 1:
        name = ctx.node.op_type
        if name == "Abs":
            out.sym = tuple(abs(d) if isinstance(d, int) else d if _nonneg(d) else None for d in s)
        elif name == "Neg":
            out.sym = tuple(-d if isinstance(d, int) else None for d in s)
        elif name == "Relu":
            out.sym = tuple(
                max(d, 0) if isinstance(d, int) else d if _nonneg(d) else None for d in s
            )
        else:  # Sign of a dim: 0 or 1, unknown unless an int
            out.sym = tuple((d > 0) - (d < 0) if isinstance(d, int) else None for d in s)
    return [out]


@op("Shrink", attrs={"bias": 0.0, "lambd": 0.5}, flops=_flops)
def _shrink(ctx: InferContext) -> list[OutType]:
    dt = ctx.dtype(0)
    if dt is not None and dt not in FLOATS | BITWISE:
        raise ctx.fail(f"input 0 is {dt}, but Shrink takes ints or floats")
    return [OutType(dt, ctx.shape(0))]


@op("Not", flops=_flops)
def _not(ctx: InferContext) -> list[OutType]:
    out = OutType(_check_dtype(ctx, 0, BOOL, "bools"), ctx.shape(0))
    s = ctx.sym(0)
    if s is not None and (ctx.rank(0) or 0) <= 1:
        out.sym = tuple(int(not d) if isinstance(d, int) else None for d in s)
    return [out]


@op("BitwiseNot", flops=_flops)
def _bitwise_not(ctx: InferContext) -> list[OutType]:
    return [OutType(_check_dtype(ctx, 0, BITWISE, "integers"), ctx.shape(0))]


@op(["IsNaN"], flops=_flops)
@op(["IsInf"], attrs={"detect_negative": 1, "detect_positive": 1}, flops=_flops)
def _is_special(ctx: InferContext) -> list[OutType]:
    _check_dtype(ctx, 0, FLOATS | FLOAT8, "floats")
    return [OutType("bool", ctx.shape(0))]


# ---------------------------------------------------------------------------- binary
@op(["Add", "Sub", "Mul", "Div"], inputs=(2, 2), flops=_flops)
@op("Mod", inputs=(2, 2), attrs={"fmod": 0}, flops=_flops)
def _arith(ctx: InferContext) -> list[OutType]:
    dt = _same_dtype(ctx, [0, 1])
    if dt in BOOL or dt in FLOAT8:
        raise ctx.fail(f"inputs are {dt}, but {ctx.node.op_type} takes numbers (ints or floats)")
    if ctx.node.op_type == "Mod" and dt in FLOATS and ctx.attr("fmod") not in (0, 1):
        raise ctx.fail(f"fmod must be 0 or 1, got {ctx.attr('fmod')}")
    out = OutType(dt, _bcast(ctx, [0, 1]))
    fn = _SYM_FNS.get(ctx.node.op_type) or _s_mod(bool(ctx.attr("fmod")))
    _sym_binary(ctx, out, fn, [0, 1])
    return [out]


@op("Pow", inputs=(2, 2), flops=_flops)
def _pow(ctx: InferContext) -> list[OutType]:
    # X and Y may differ in dtype; the result has X's
    for i in (0, 1):
        dt = ctx.dtype(i)
        if dt in BOOL or dt in FLOAT8:
            raise ctx.fail(f"input {i} is {dt}, but Pow takes numbers (ints or floats)")
    out = OutType(ctx.dtype(0), _bcast(ctx, [0, 1]))
    if _is_int(ctx.dtype(0)) and _is_int(ctx.dtype(1)):

        def ipow(a: Dim, b: Dim) -> Dim:
            if isinstance(a, int) and isinstance(b, int) and 0 <= b <= 64:
                return a**b
            return a if b == 1 else None

        _sym_binary(ctx, out, ipow, [0, 1])
    return [out]


@op(["Equal", "Greater", "Less", "GreaterOrEqual", "LessOrEqual"], inputs=(2, 2), flops=_flops)
def _compare(ctx: InferContext) -> list[OutType]:
    dt = _same_dtype(ctx, [0, 1])
    if dt in BOOL and ctx.node.op_type != "Equal":
        raise ctx.fail(f"inputs are bool, but {ctx.node.op_type} takes numbers")
    out = OutType("bool", _bcast(ctx, [0, 1]))
    if _is_int(dt):
        _sym_binary(ctx, out, _SYM_FNS[ctx.node.op_type], [0, 1])
    return [out]


@op(["And", "Or", "Xor"], inputs=(2, 2), flops=_flops)
def _logic(ctx: InferContext) -> list[OutType]:
    for i in (0, 1):
        _check_dtype(ctx, i, BOOL, "bools")
    out = OutType("bool", _bcast(ctx, [0, 1]))
    fn = {
        "And": lambda a, b: a & b,
        "Or": lambda a, b: a | b,
        "Xor": lambda a, b: a ^ b,
    }[ctx.node.op_type]
    _sym_binary(
        ctx,
        out,
        lambda a, b: fn(a, b) if isinstance(a, int) and isinstance(b, int) else None,
        [0, 1],
    )
    return [out]


@op(["BitwiseAnd", "BitwiseOr", "BitwiseXor"], inputs=(2, 2), flops=_flops)
@op("BitShift", inputs=(2, 2), attrs={"direction": ""}, flops=_flops)
def _bitwise(ctx: InferContext) -> list[OutType]:
    _check_dtype(ctx, 0, BITWISE, "integers")
    dt = _same_dtype(ctx, [0, 1])
    if ctx.node.op_type == "BitShift" and ctx.attr("direction") not in ("LEFT", "RIGHT"):
        raise ctx.fail(f"direction must be 'LEFT' or 'RIGHT', got {ctx.attr('direction')!r}")
    return [OutType(dt, _bcast(ctx, [0, 1]))]


@op("PRelu", inputs=(2, 2), flops=_flops)
def _prelu(ctx: InferContext) -> list[OutType]:
    dt = _same_dtype(ctx, [0, 1])
    if dt is not None and dt not in FLOATS | {"int32", "int64", "uint32", "uint64"}:
        raise ctx.fail(f"inputs are {dt}, but PRelu takes floats or 32/64-bit ints")
    x, slope = ctx.shape(0), ctx.shape(1)
    if x is not None and slope is not None and len(slope) > len(x):
        raise ctx.fail(
            f"slope {list(slope)} has a higher rank than X {list(x)} (it must broadcast to X)"
        )
    shape = broadcast_shapes(ctx, x, slope)
    if shape is not None and x is not None:
        for k, (d_out, d_x) in enumerate(zip(shape, x)):
            if isinstance(d_x, int) and d_out != d_x:
                raise ctx.fail(
                    f"slope {list(slope or ())} does not broadcast to X {list(x)} (dim {k})"
                )
    return [OutType(dt, shape if shape is not None else x)]


# ---------------------------------------------------------------------------- variadic
@op(["Max", "Min", "Sum"], inputs=(1, -1), flops=_flops)
@op("Mean", inputs=(1, -1), flops=_flops)
def _variadic(ctx: InferContext) -> list[OutType]:
    idx = list(range(ctx.n_inputs))
    dt = _same_dtype(ctx, idx)
    if ctx.node.op_type in ("Sum", "Mean"):
        _check_dtype(ctx, 0, FLOATS | dtypes.INT_TYPES, "numbers")
    if ctx.node.op_type == "Mean":
        _check_dtype(ctx, 0, FLOATS, "floats")
    out = OutType(dt, _bcast(ctx, idx))
    fn = _SYM_FNS.get(ctx.node.op_type)
    if fn is not None:
        _sym_binary(ctx, out, fn, idx)
    return [out]


# ---------------------------------------------------------------------------- others
@op("Where", inputs=(3, 3), flops=_flops)
def _where(ctx: InferContext) -> list[OutType]:
    _check_dtype(ctx, 0, BOOL, "a bool condition")
    out = OutType(_same_dtype(ctx, [1, 2]), _bcast(ctx, [0, 1, 2]))

    def pick(c: Dim, a: Dim, b: Dim) -> Dim:
        if isinstance(c, int):
            return a if c else b
        return a if a == b else None

    if _is_int(out.dtype) and out.shape is not None and len(out.shape) <= 1:
        ops = _sym_operands(ctx, [0, 1, 2])
        if ops is not None:
            sym = tuple(pick(c, a, b) for c, a, b in zip(*ops))
            if any(d is not None for d in sym):
                out.sym = sym
    return [out]


def _cast_sym(ctx: InferContext, out: OutType) -> None:
    """Cast keeps known contents between integer types (and to bool as 0/1)."""
    if not _is_int(out.dtype) or not _is_int(ctx.dtype(0)):
        return
    if out.shape is None or len(out.shape) > 1:
        return
    s = ctx.sym(0)
    if s is None:
        return
    if out.dtype == "bool":
        # a symbolic dim may be 0, so its truth is unknown
        out.sym = tuple(int(bool(d)) if isinstance(d, int) else None for d in s)
    else:
        out.sym = _fit_int(s, out.dtype)


def _cast_target(ctx: InferContext, name: str | None) -> str | None:
    if name is not None and name not in dtypes.SUPPORTED:
        raise UnsupportedDTypeError(
            f"{ctx.node.label()}: casts to {name}, which ecoinfer cannot run; "
            f"supported: {', '.join(sorted(dtypes.SUPPORTED))}"
        )
    return name


@op("Cast", attrs={"saturate": 1, "round_mode": "up"}, flops=_flops)
def _cast(ctx: InferContext) -> list[OutType]:
    to = ctx.attr("to")
    if to is None:
        raise ctx.fail("attribute 'to' is missing")
    name = to if isinstance(to, str) else dtypes.from_onnx(int(to), ctx.node.label())
    out = OutType(_cast_target(ctx, name), ctx.shape(0))
    _cast_sym(ctx, out)
    return [out]


@op("CastLike", inputs=(2, 2), attrs={"saturate": 1, "round_mode": "up"}, flops=_flops)
def _cast_like(ctx: InferContext) -> list[OutType]:
    out = OutType(_cast_target(ctx, ctx.dtype(1)), ctx.shape(0))
    _cast_sym(ctx, out)
    return [out]


@op("Clip", inputs=(1, 3), flops=_flops)
def _clip(ctx: InferContext) -> list[OutType]:
    # bounds from old-opset attributes are imported as float32 whatever X is: not checked
    dt = ctx.dtype(0)
    for i in (1, 2):
        r = ctx.rank(i)
        if r is not None and r > 1:
            raise ctx.fail(
                f"input {i} ({'min' if i == 1 else 'max'}) must be a scalar, got rank {r}"
            )
        s = ctx.shape(i)
        if r == 1 and s is not None and isinstance(s[0], int) and s[0] != 1:
            raise ctx.fail(
                f"input {i} ({'min' if i == 1 else 'max'}) must hold one value, got {s[0]}"
            )
    out = OutType(dt, ctx.shape(0))
    lo, hi, s = ctx.ints(1), ctx.ints(2), ctx.sym(0)
    if s is not None and _is_int(dt) and (ctx.rank(0) or 0) <= 1:
        vals = list(s)
        if lo is not None:
            vals = [_s_max(d, lo[0]) for d in vals]
        if hi is not None:
            vals = [_s_min(d, hi[0]) for d in vals]
        if (lo is not None or not ctx.has(1)) and (hi is not None or not ctx.has(2)):
            out.sym = tuple(vals)
    return [out]


@op(["Softmax", "LogSoftmax", "Hardmax"], attrs={"axis": -1}, flops=_flops)
def _softmax(ctx: InferContext) -> list[OutType]:
    dt = _check_dtype(ctx, 0, FLOATS, "floats")
    r = ctx.rank(0)
    if r is not None:
        ctx.norm_axis(int(ctx.attr("axis")), r)
    return [OutType(dt, ctx.shape(0))]
