"""Torch kernels for elementwise ops (CPU and CUDA).

torch implements few ops for uint16/uint32/uint64: uint16/32 are computed exactly in int64 and
cast back; uint64 is reinterpreted as int64 (same bits), which is exact for wrap-around
arithmetic and bitwise ops, while order-dependent ops (compare, div, mod, shift right) get
unsigned helpers.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from ecoinfer.ir import dtypes
from ecoinfer.kernels.torch_ops.registry import KernelContext, kernel

Tensor = torch.Tensor
Xs = list[Tensor | None]

_U_WIDE = frozenset({torch.uint16, torch.uint32})  # exact in int64
_U64 = torch.uint64
_UNSIGNED = frozenset({torch.uint8, torch.uint16, torch.uint32, torch.uint64})
_HALF = frozenset({torch.float16, torch.bfloat16})
_FLOAT8_NAMES = ("float8_e4m3fn", "float8_e4m3fnuz", "float8_e5m2", "float8_e5m2fnuz")
_FLOAT8 = frozenset(getattr(torch, n) for n in _FLOAT8_NAMES if hasattr(torch, n))
_SIGNED_OF = {1: torch.int8, 2: torch.int16, 4: torch.int32, 8: torch.int64}
_I64_MIN = -(2**63)


def _wide(t: Tensor) -> Tensor:
    """A dtype torch computes with: uint16/32 -> int64 (exact), uint64 -> int64 bits."""
    if t.dtype in _U_WIDE:
        return t.to(torch.int64)
    if t.dtype == _U64:
        return t.view(torch.int64)
    return t


def _back(t: Tensor, dtype: torch.dtype) -> Tensor:
    """Undo _wide on a result (uint64 from its int64 bits, the rest by a wrapping cast)."""
    if t.dtype == dtype:
        return t
    if dtype == _U64 and t.dtype == torch.int64:
        return t.view(_U64)
    return t.to(dtype)


def _ukey(t: Tensor) -> Tensor:
    """An int64 tensor ordered like the unsigned/signed values of t (for compare/max/min)."""
    if t.dtype == _U64:
        return t.view(torch.int64) ^ _I64_MIN  # flip the sign bit: unsigned order -> signed order
    return _wide(t)


def _float_op(fn: Callable[[Tensor], Tensor]) -> Callable[[Tensor], Tensor]:
    """Run fn; where torch lacks a half/bfloat16 kernel (on this device), go through float32."""

    def run(x: Tensor) -> Tensor:
        try:
            return fn(x)
        except (RuntimeError, NotImplementedError):
            if x.dtype not in _HALF:
                raise
            return fn(x.float()).to(x.dtype)

    return run


# ---------------------------------------------------------------------------- unary
def _softsign(x: Tensor) -> Tensor:
    return x / (1 + x.abs())


def _softplus(x: Tensor) -> Tensor:
    # log(1 + exp(x)) without overflow for large x
    return torch.where(x > 0, x + torch.log1p(torch.exp(-x)), torch.log1p(torch.exp(x)))


def _hardswish(x: Tensor) -> Tensor:
    return x * torch.clamp(x / 6 + 0.5, 0, 1)


_FLOAT_UNARY: dict[str, Callable[[Tensor], Tensor]] = {
    "Exp": torch.exp,
    "Log": torch.log,
    "Sqrt": torch.sqrt,
    "Reciprocal": torch.reciprocal,
    "Floor": torch.floor,
    "Ceil": torch.ceil,
    "Round": torch.round,  # half to even, as ONNX
    "Sin": torch.sin,
    "Cos": torch.cos,
    "Tan": torch.tan,
    "Asin": torch.asin,
    "Acos": torch.acos,
    "Atan": torch.atan,
    "Sinh": torch.sinh,
    "Cosh": torch.cosh,
    "Asinh": torch.asinh,
    "Acosh": torch.acosh,
    "Atanh": torch.atanh,
    "Erf": torch.erf,
    "Tanh": torch.tanh,
    "Sigmoid": torch.sigmoid,
    "Softplus": _softplus,
    "Softsign": _softsign,
    "HardSwish": _hardswish,
    "Mish": F.mish,
}
_FLOAT_UNARY_RUN = {k: _float_op(f) for k, f in _FLOAT_UNARY.items()}


@kernel(list(_FLOAT_UNARY))
def _float_unary(ctx: KernelContext, xs: Xs) -> list[Tensor]:
    x = xs[0]
    assert x is not None
    if not x.is_floating_point():  # ints are outside the schema; compute in float, keep dtype
        return [_FLOAT_UNARY[ctx.node.op_type](x.double()).to(x.dtype)]
    return [_FLOAT_UNARY_RUN[ctx.node.op_type](x)]


@kernel("Abs")
def _abs(ctx: KernelContext, xs: Xs) -> list[Tensor]:
    x = xs[0]
    assert x is not None
    if x.dtype in _UNSIGNED or x.dtype == torch.bool:
        return [x.clone()]
    return [torch.abs(x)]


@kernel("Neg")
def _neg(ctx: KernelContext, xs: Xs) -> list[Tensor]:
    x = xs[0]
    assert x is not None
    if x.dtype in _UNSIGNED and x.dtype != torch.uint8:
        return [_back(torch.neg(_wide(x)), x.dtype)]
    return [torch.neg(x)]


@kernel("Sign")
def _sign(ctx: KernelContext, xs: Xs) -> list[Tensor]:
    x = xs[0]
    assert x is not None
    if x.dtype in _UNSIGNED:
        return [(_wide(x) != 0).to(x.dtype)]
    return [torch.sign(x)]


@kernel("Relu")
def _relu(ctx: KernelContext, xs: Xs) -> list[Tensor]:
    x = xs[0]
    assert x is not None
    if x.dtype in _UNSIGNED:
        return [x.clone()]
    return [torch.relu(x)]


@kernel("Not")
def _not(ctx: KernelContext, xs: Xs) -> list[Tensor]:
    x = xs[0]
    assert x is not None
    return [torch.logical_not(x)]


@kernel("BitwiseNot")
def _bitwise_not(ctx: KernelContext, xs: Xs) -> list[Tensor]:
    x = xs[0]
    assert x is not None
    if x.dtype in _UNSIGNED and x.dtype != torch.uint8:
        # same bits as the signed type of the same width
        return [torch.bitwise_not(x.view(_SIGNED_OF[x.element_size()])).view(x.dtype)]
    return [torch.bitwise_not(x)]


def _as_float(x: Tensor) -> Tensor:
    return x.float() if x.dtype in _FLOAT8 else x


@kernel("IsNaN")
def _isnan(ctx: KernelContext, xs: Xs) -> list[Tensor]:
    x = xs[0]
    assert x is not None
    return [torch.isnan(_as_float(x))]


@kernel("IsInf")
def _isinf(ctx: KernelContext, xs: Xs) -> list[Tensor]:
    x = xs[0]
    assert x is not None
    x = _as_float(x)
    pos, neg = bool(ctx.attr("detect_positive", 1)), bool(ctx.attr("detect_negative", 1))
    if pos and neg:
        return [torch.isinf(x)]
    if pos:
        return [torch.isposinf(x)]
    if neg:
        return [torch.isneginf(x)]
    return [torch.zeros(x.shape, dtype=torch.bool, device=x.device)]


# ---------------------------------------------------------------------------- activations
def _act(ctx: KernelContext, x: Tensor) -> Tensor:
    name = ctx.node.op_type
    a = ctx.attr("alpha")
    if name == "LeakyRelu":
        return F.leaky_relu(x, float(a))
    if name == "Elu":
        return torch.where(x > 0, x, float(a) * torch.expm1(x))
    if name == "Celu":
        return torch.clamp(x, min=0) + torch.clamp(float(a) * torch.expm1(x / float(a)), max=0)
    if name == "Selu":
        g = float(ctx.attr("gamma"))
        return g * torch.where(x > 0, x, float(a) * torch.expm1(x))
    if name == "HardSigmoid":
        return torch.clamp(float(a) * x + float(ctx.attr("beta")), 0, 1)
    if name == "ThresholdedRelu":
        return torch.where(x > float(a), x, torch.zeros_like(x))
    if name == "Gelu":
        return F.gelu(x, approximate=str(ctx.attr("approximate", "none")))
    if name == "Swish":
        return x * torch.sigmoid(float(a) * x)
    raise AssertionError(name)


@kernel(["LeakyRelu", "Elu", "Celu", "Selu", "HardSigmoid", "ThresholdedRelu", "Gelu", "Swish"])
def _activation(ctx: KernelContext, xs: Xs) -> list[Tensor]:
    x = xs[0]
    assert x is not None
    return [_float_op(lambda t: _act(ctx, t))(x)]


@kernel("Shrink")
def _shrink(ctx: KernelContext, xs: Xs) -> list[Tensor]:
    x = xs[0]
    assert x is not None
    lambd, bias = float(ctx.attr("lambd", 0.5)), float(ctx.attr("bias", 0.0))
    if x.is_floating_point():
        y = torch.where(x < -lambd, x + bias, torch.where(x > lambd, x - bias, torch.zeros_like(x)))
        return [y]
    # ints: compare and shift in float64 (exact for the values a shrink takes), then back
    w = _wide(x)
    xf = w.double()
    y = torch.where(
        xf < -lambd, xf + bias, torch.where(xf > lambd, xf - bias, torch.zeros_like(xf))
    )
    return [_back(y.to(w.dtype), x.dtype)]


@kernel("PRelu")
def _prelu(ctx: KernelContext, xs: Xs) -> list[Tensor]:
    x, slope = xs
    assert x is not None and slope is not None
    if x.dtype in _UNSIGNED:
        return [x.clone()]  # never negative
    y = torch.where(x < 0, x * slope, x)
    return [y.expand(x.shape).clone() if y.shape != x.shape else y]


# ---------------------------------------------------------------------------- binary
def _binary_wrap(fn: Callable[[Tensor, Tensor], Tensor], a: Tensor, b: Tensor) -> Tensor:
    """A wrap-around op (add/sub/mul) in a dtype torch supports, result in a's dtype."""
    if a.dtype in _U_WIDE or a.dtype == _U64:
        return _back(fn(_wide(a), _wide(b)), a.dtype)
    return fn(a, b)


@kernel(["Add", "Sub", "Mul"])
def _arith(ctx: KernelContext, xs: Xs) -> list[Tensor]:
    a, b = xs
    assert a is not None and b is not None
    fn = {"Add": torch.add, "Sub": torch.sub, "Mul": torch.mul}[ctx.node.op_type]
    if a.dtype == torch.bool:  # outside the schema; keep bool semantics of numpy
        return [fn(a.to(torch.uint8), b.to(torch.uint8)).to(torch.bool)]
    return [_binary_wrap(fn, a, b)]


def _udivmod64(a: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
    """Unsigned 64-bit quotient and remainder on int64 bit patterns."""
    a, b = torch.broadcast_tensors(a, b)
    big_b = b < 0  # divisor >= 2**63: quotient is 0 or 1
    # (a >>> 1) // b * 2 is within 1 of the true quotient when b < 2**63
    half = (a >> 1) & 0x7FFFFFFFFFFFFFFF
    bb = torch.where(big_b | (b == 0), torch.ones_like(b), b)
    q = torch.div(half, bb, rounding_mode="floor") << 1
    r = a - q * bb
    fix = (r ^ _I64_MIN) >= (bb ^ _I64_MIN)  # r >= b, unsigned
    q = torch.where(fix, q + 1, q)
    r = torch.where(fix, r - bb, r)
    ge = (a ^ _I64_MIN) >= (b ^ _I64_MIN)
    q = torch.where(big_b, ge.to(torch.int64), q)
    r = torch.where(big_b, torch.where(ge, a - b, a), r)
    return q, r


@kernel("Div")
def _div(ctx: KernelContext, xs: Xs) -> list[Tensor]:
    a, b = xs
    assert a is not None and b is not None
    if a.is_floating_point():
        return [torch.div(a, b)]
    if a.dtype == _U64:
        return [_udivmod64(a.view(torch.int64), b.view(torch.int64))[0].view(_U64)]
    return [_back(torch.div(_wide(a), _wide(b), rounding_mode="trunc"), a.dtype)]


@kernel("Mod")
def _mod(ctx: KernelContext, xs: Xs) -> list[Tensor]:
    a, b = xs
    assert a is not None and b is not None
    fmod = bool(ctx.attr("fmod", 0))
    if a.dtype == _U64:
        return [_udivmod64(a.view(torch.int64), b.view(torch.int64))[1].view(_U64)]
    if fmod:
        return [_back(torch.fmod(_wide(a), _wide(b)), a.dtype)]
    if a.is_floating_point():
        r = torch.remainder(a, b)
        # numpy's mod: a zero result takes the divisor's sign
        return [torch.where(r == 0, torch.copysign(torch.zeros_like(r), b), r)]
    return [_back(torch.remainder(_wide(a), _wide(b)), a.dtype)]


@kernel("Pow")
def _pow(ctx: KernelContext, xs: Xs) -> list[Tensor]:
    x, y = xs
    assert x is not None and y is not None
    if x.is_floating_point():
        if not y.is_floating_point():
            y = _wide(y) if y.dtype != _U64 else y.view(torch.int64).double()
            return [torch.pow(x, y).to(x.dtype)]
        if y.dtype != x.dtype:  # numpy computes in the wider type, then casts to X's
            return [torch.pow(x.double(), y.double()).to(x.dtype)]
        return [_float_op(lambda t: torch.pow(t, y))(x)]
    if y.is_floating_point():
        return [_back(torch.pow(_wide(x).double(), y.double()).to(torch.int64), x.dtype)]
    xw = _wide(x) if x.dtype != torch.uint8 else x
    return [_back(torch.pow(xw, _wide(y).to(xw.dtype) if xw.dtype != torch.uint8 else y), x.dtype)]


_CMP: dict[str, Callable[[Tensor, Tensor], Tensor]] = {
    "Greater": torch.gt,
    "Less": torch.lt,
    "GreaterOrEqual": torch.ge,
    "LessOrEqual": torch.le,
}


@kernel(list(_CMP))
def _compare(ctx: KernelContext, xs: Xs) -> list[Tensor]:
    a, b = xs
    assert a is not None and b is not None
    fn = _CMP[ctx.node.op_type]
    if a.dtype in _U_WIDE or a.dtype == _U64:
        return [fn(_ukey(a), _ukey(b))]
    return [fn(a, b)]


@kernel("Equal")
def _equal(ctx: KernelContext, xs: Xs) -> list[Tensor]:
    a, b = xs
    assert a is not None and b is not None
    return [torch.eq(_wide(a), _wide(b))]


@kernel(["And", "Or", "Xor"])
def _logic(ctx: KernelContext, xs: Xs) -> list[Tensor]:
    a, b = xs
    assert a is not None and b is not None
    fn = {"And": torch.logical_and, "Or": torch.logical_or, "Xor": torch.logical_xor}[
        ctx.node.op_type
    ]
    return [fn(a, b)]


@kernel(["BitwiseAnd", "BitwiseOr", "BitwiseXor"])
def _bitwise(ctx: KernelContext, xs: Xs) -> list[Tensor]:
    a, b = xs
    assert a is not None and b is not None
    fn = {
        "BitwiseAnd": torch.bitwise_and,
        "BitwiseOr": torch.bitwise_or,
        "BitwiseXor": torch.bitwise_xor,
    }[ctx.node.op_type]
    if a.dtype in _UNSIGNED and a.dtype != torch.uint8:
        signed = _SIGNED_OF[a.element_size()]
        return [fn(a.view(signed), b.view(signed)).view(a.dtype)]
    return [fn(a, b)]


@kernel("BitShift")
def _bitshift(ctx: KernelContext, xs: Xs) -> list[Tensor]:
    # numpy semantics: a shift < 0 or >= the bit width gives 0 (or -1 for a right shift of a
    # negative signed value); left shifts wrap within the width
    x, y = xs
    assert x is not None and y is not None
    bits = x.element_size() * 8
    dtype = x.dtype
    if dtype == _U64:
        xi, yi = (
            x.view(torch.int64),
            y.view(torch.int64),
        )  # a shift >= 2**63 reads negative: out of range
    else:
        xi, yi = x.to(torch.int64), y.to(torch.int64)
    xi, yi = torch.broadcast_tensors(xi, yi)
    out_of_range = (yi < 0) | (yi >= bits)
    s = torch.clamp(yi, 0, bits - 1)
    if ctx.attr("direction") == "LEFT":
        r = torch.where(out_of_range, torch.zeros_like(xi), xi << s)
    elif dtype == _U64:
        # logical shift of the int64 bits: shift by one with the sign bit cleared, then the rest
        once = (xi >> 1) & 0x7FFFFFFFFFFFFFFF
        r = torch.where(s == 0, xi, once >> torch.clamp(s - 1, min=0))
        r = torch.where(out_of_range, torch.zeros_like(xi), r)
    else:
        fill = torch.where(xi < 0, torch.full_like(xi, -1), torch.zeros_like(xi))
        r = torch.where(out_of_range, fill, xi >> s)
    if dtype == _U64:
        return [r.view(_U64)]
    if dtype in _UNSIGNED or bits < 64:
        # keep the low bits: wrap within the width (int64 -> narrower casts truncate)
        mask = (1 << bits) - 1
        low = r & mask
        if dtype not in _UNSIGNED:
            low = torch.where(low >= 1 << (bits - 1), low - (1 << bits), low)
        return [low.to(dtype)]
    return [r]


# ---------------------------------------------------------------------------- variadic
def _minmax(name: str, a: Tensor, b: Tensor) -> Tensor:
    if a.dtype in _U_WIDE or a.dtype == _U64:
        ka, kb = _ukey(a), _ukey(b)
        pick_a = ka >= kb if name == "Max" else ka <= kb
        return _back(torch.where(pick_a, _wide(a), _wide(b)), a.dtype)
    if a.dtype == torch.bool:
        return torch.logical_or(a, b) if name == "Max" else torch.logical_and(a, b)
    return torch.maximum(a, b) if name == "Max" else torch.minimum(a, b)


@kernel(["Max", "Min"])
def _max_min(ctx: KernelContext, xs: Xs) -> list[Tensor]:
    ts = [x for x in xs if x is not None]
    out = ts[0]
    for t in ts[1:]:
        out = _minmax(ctx.node.op_type, out, t)
    if len(ts) == 1:
        out = out.clone()
    return [out]


@kernel(["Sum", "Mean"])
def _sum_mean(ctx: KernelContext, xs: Xs) -> list[Tensor]:
    ts = [x for x in xs if x is not None]
    out = ts[0]
    for t in ts[1:]:
        out = _binary_wrap(torch.add, out, t)
    if ctx.node.op_type == "Mean":
        if out.is_floating_point():
            out = out / len(ts)
        else:
            out = _back(torch.div(_wide(out), len(ts), rounding_mode="trunc"), out.dtype)
    elif len(ts) == 1:
        out = out.clone()
    return [out]


# ---------------------------------------------------------------------------- others
def _raw(t: Tensor) -> Tensor:
    """Same bits in a dtype every torch op supports (for data movement on exotic dtypes)."""
    if t.dtype in _FLOAT8 or t.dtype in _U_WIDE or t.dtype == _U64:
        return t.view(_SIGNED_OF[t.element_size()])
    return t


@kernel("Where")
def _where(ctx: KernelContext, xs: Xs) -> list[Tensor]:
    c, a, b = xs
    assert c is not None and a is not None and b is not None
    if a.dtype in _FLOAT8 or a.dtype in _U_WIDE or a.dtype == _U64:
        return [torch.where(c, _raw(a), _raw(b)).view(a.dtype)]
    return [torch.where(c, a, b)]


# float8 limits: (largest finite, smallest magnitude that overflows when not saturating,
# whether that magnitude itself overflows (round-half-even ties), overflow gives inf)
_F8_LIMITS: dict[torch.dtype, tuple[float, float, bool, bool]] = {}
for _name, _lim in {
    "float8_e4m3fn": (448.0, 464.0, False, False),
    "float8_e4m3fnuz": (240.0, 248.0, True, False),
    "float8_e5m2": (57344.0, 61440.0, True, True),
    "float8_e5m2fnuz": (57344.0, 61440.0, True, False),
}.items():
    if hasattr(torch, _name):
        _F8_LIMITS[getattr(torch, _name)] = _lim


def cast(x: Tensor, to: torch.dtype, saturate: bool = True) -> Tensor:
    """ONNX Cast: float8 targets saturate (or overflow to NaN/inf) as ONNX says."""
    if x.dtype == to:
        return x.clone()
    if to in _F8_LIMITS:
        top, over, tie_over, to_inf = _F8_LIMITS[to]
        xf = x if x.dtype in (torch.float32, torch.float64) else x.float()
        y = torch.clamp(xf, -top, top).to(to)  # clamp keeps NaN
        if saturate:
            return y
        mag = xf.abs()
        overflow = (mag >= over) if tie_over else (mag > over)
        if to_inf:
            bad = torch.copysign(torch.full_like(xf, float("inf")), xf)
        else:
            bad = torch.full_like(xf, float("nan"))
        return torch.where(overflow, bad, y.to(xf.dtype)).to(to)
    if x.dtype in _FLOAT8 and not to.is_floating_point:
        return x.float().to(to)
    return x.to(to)


@kernel("Cast")
def _cast(ctx: KernelContext, xs: Xs) -> list[Tensor]:
    x = xs[0]
    assert x is not None
    to = ctx.attr("to")
    name = to if isinstance(to, str) else dtypes.from_onnx(int(to), ctx.node.label())
    return [cast(x, dtypes.to_torch(name, ctx.node.label()), bool(ctx.attr("saturate", 1)))]


@kernel("CastLike")
def _cast_like(ctx: KernelContext, xs: Xs) -> list[Tensor]:
    x, like = xs
    assert x is not None and like is not None
    return [cast(x, like.dtype, bool(ctx.attr("saturate", 1)))]


@kernel("Clip")
def _clip(ctx: KernelContext, xs: Xs) -> list[Tensor]:
    x = xs[0]
    assert x is not None
    lo = xs[1] if len(xs) > 1 else None
    hi = xs[2] if len(xs) > 2 else None
    # old-opset bounds are imported as float32 constants: bring them to x's dtype
    lo = None if lo is None else lo.reshape(()).to(x.dtype)
    hi = None if hi is None else hi.reshape(()).to(x.dtype)
    if x.dtype in _U_WIDE or x.dtype == _U64:
        y = x
        if lo is not None:
            y = _minmax("Max", y, lo)
        if hi is not None:
            y = _minmax("Min", y, hi)
        return [y.clone() if y is x else y]
    if lo is None and hi is None:
        return [x.clone()]
    # min(max(x, lo), hi): when lo > hi every element becomes hi, as ONNX says
    y = x
    if lo is not None:
        y = torch.maximum(y, lo)
    if hi is not None:
        y = torch.minimum(y, hi)
    return [y]


def _coerced(x: Tensor, axis: int) -> int:
    return axis + x.dim() if axis < 0 else axis


@kernel(["Softmax", "LogSoftmax"])
def _softmax(ctx: KernelContext, xs: Xs) -> list[Tensor]:
    x = xs[0]
    assert x is not None
    axis = _coerced(x, int(ctx.attr("axis", -1)))
    if x.dtype in _HALF:
        # round after each step in x's dtype, as the ONNX function body (and numpy) does
        t = x - x.amax(axis, keepdim=True)
        e = torch.exp(t)
        s = e.sum(axis, keepdim=True)
        return [e / s if ctx.node.op_type == "Softmax" else t - torch.log(s)]
    fn = torch.softmax if ctx.node.op_type == "Softmax" else torch.log_softmax
    return [fn(x, axis)]


@kernel("Hardmax")
def _hardmax(ctx: KernelContext, xs: Xs) -> list[Tensor]:
    x = xs[0]
    assert x is not None
    axis = _coerced(x, int(ctx.attr("axis", -1)))
    if x.numel() == 0:
        return [torch.zeros_like(x)]
    idx = torch.argmax(x, dim=axis, keepdim=True)  # first maximum, as ONNX
    return [torch.zeros_like(x).scatter_(axis, idx, 1)]
