"""Code generation: one Triton kernel per ecoinfer.FusedElementwise node.

The node's `body` (a closed graph of elementwise ONNX ops, docs/fused-ops.md) is lowered to
straight-line Triton code: every input is read once, the body is evaluated in registers and
every output is written once. Broadcasting goes through strides: the output is contiguous,
the flat output index is split into per-dimension indices of the broadcast shape, and each
input's offset is the dot product with its strides (0 along broadcast dimensions).

    lower(body, dtypes, ranks)  -> _Program  (register code of the body; raises Unsupported)
    _Program.source(spec)       -> kernel source for one load specialisation
    FusedElementwise(body)(xs)  -> outputs   (plans, compiles and launches)

Numerics: float16/bfloat16 values are computed in float32 registers and rounded once, on
store (the reference rounds after every op: the difference stays far inside the 1e-2
tolerance of half precisions). Where a rounding would change a discrete result (compare,
floor/ceil/round, casts to integers, IsInf...), the operand is first rounded to its half
dtype, so masks and integer results match the reference exactly. Result dtypes follow what
the torch reference computes (torch type promotion, 0-dim tensors promoting weakly).

Specialisation: before launch, output dimensions of size 1 are dropped and adjacent
dimensions that every input walks contiguously (or broadcasts over) are merged, so the
common cases need no index arithmetic: an input of the output's shape reads `ptr + offs`,
a one-element input is one scalar load, a per-channel vector keeps one index. The kernel
source is a pure function of (body, dtypes, input kinds, merged rank, zero-stride pattern,
64-bit indexing, BLOCK); compiled kernels are cached by that source, and Triton's own disk
cache keys binaries by it too, so a rebuild or an engine load re-generates the same text and
reuses the binary.
"""

from __future__ import annotations

import hashlib
import linecache
import math
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from ecoinfer.ir import dtypes as ir_dtypes
from ecoinfer.ir.graph import Graph, Node
from ecoinfer.kernels.broadcast import broadcast_shape
from ecoinfer.kernels.triton.gemm import interpreting

Tensor = torch.Tensor

_HALF = frozenset({torch.float16, torch.bfloat16})
_FLOAT = frozenset({torch.float16, torch.bfloat16, torch.float32})
_INT = frozenset({torch.int8, torch.uint8, torch.int16, torch.int32, torch.int64})
_SUPPORTED = _FLOAT | _INT | {torch.bool}

# Triton element type in memory, and the register type the body computes in
_TL: dict[torch.dtype, str] = {
    torch.float32: "tl.float32",
    torch.float16: "tl.float16",
    torch.bfloat16: "tl.bfloat16",
    torch.int8: "tl.int8",
    torch.uint8: "tl.uint8",
    torch.int16: "tl.int16",
    torch.int32: "tl.int32",
    torch.int64: "tl.int64",
    torch.bool: "tl.int1",
}


def _ct(dt: torch.dtype) -> str:
    return "tl.float32" if dt in _FLOAT else _TL[dt]


class Unsupported(Exception):
    """The generator cannot express this body (the reference tactic stays)."""


# ------------------------------------------------------------------------------ helpers
# Float32 building blocks with the accuracy the 1e-5 tolerance needs, written with core
# Triton ops only (libdevice is unavailable under TRITON_INTERPRET, so CI tests this code).
_PRELUDE = """
import triton
import triton.language as tl


@triton.jit
def _log1p(u):
    # log(w) * u / (w - 1) corrects the rounding of w = 1 + u (Goldberg)
    w = 1.0 + u
    r = tl.where(w == 1.0, u, tl.log(w) * (u / (w - 1.0)))
    return tl.where(w == float("inf"), w, r)


@triton.jit
def _expm1(x):
    # Kahan: (u - 1) * x / log(u) cancels the rounding of u = exp(x) near 0
    u = tl.exp(x)
    small = tl.where(u == 1.0, x, (u - 1.0) * x / tl.log(u))
    return tl.where(tl.abs(x) < 0.5, small, u - 1.0)


@triton.jit
def _tanh(x):
    e = _expm1(-2.0 * tl.abs(x))
    t = -e / (e + 2.0)
    return tl.where(x < 0, -t, t)


@triton.jit
def _softplus(x):
    return tl.where(x > 0, x + _log1p(tl.exp(-x)), _log1p(tl.exp(x)))


@triton.jit
def _asinh(x):
    a = tl.abs(x)
    r = tl.where(a < 1.0, _log1p(a + a * a / (1.0 + tl.sqrt(1.0 + a * a))),
                 tl.log(a + tl.sqrt(a * a + 1.0)))
    r = tl.where(a > 1e15, tl.log(a) + 0.6931471805599453, r)
    return tl.where(x < 0, -r, r)


@triton.jit
def _acosh(x):
    t = x - 1.0
    r = _log1p(t + tl.sqrt(t * (x + 1.0)))
    return tl.where(x > 1e15, tl.log(x) + 0.6931471805599453, r)


@triton.jit
def _round_even(x):
    # round half to even (ONNX Round); |x| >= 2**23 is already integral
    f = tl.floor(x)
    d = x - f
    h = f * 0.5
    odd = tl.floor(h) != h
    r = tl.where((d > 0.5) | ((d == 0.5) & odd), f + 1.0, f)
    return tl.where(tl.abs(x) >= 8388608.0, x, r)


@triton.jit
def _pow(x, y):
    r = tl.exp2(y * tl.log2(tl.abs(x)))
    yi = tl.floor(y) == y
    odd = yi & (tl.floor(y * 0.5) * 2.0 != y)
    r = tl.where(x < 0, tl.where(yi, tl.where(odd, -r, r), float("nan")), r)
    return tl.where((y == 0.0) | (x == 1.0), 1.0, r)
"""


# ------------------------------------------------------------------------------ lowering
@dataclass(frozen=True)
class _Val:
    name: str  # register variable in the kernel
    dtype: torch.dtype  # dtype the reference gives this value
    rank: int  # rank of the value (0-dim tensors promote weakly in torch)
    deps: frozenset[int]  # body inputs whose shapes broadcast into this value's shape
    const_rank: int = 0  # largest rank of a body constant that broadcasts into it
    exact: bool = True  # register holds exactly a value of `dtype` (not a float32 excess)
    reads: frozenset[int] = frozenset()  # body inputs loaded to compute it (deps and more)


def _lit(v: float | int | bool, dt: torch.dtype) -> str:
    if dt == torch.bool:
        return "1" if v else "0"
    if dt in _INT:
        return repr(int(v))
    f = float(v)
    if math.isnan(f):
        return 'float("nan")'
    if math.isinf(f):
        return 'float("inf")' if f > 0 else 'float("-inf")'
    return repr(f)


def _flit(v: float) -> str:
    return _lit(v, torch.float32)


def _promote(vals: list[_Val]) -> torch.dtype:
    """torch's result dtype of an op on tensors of these dtypes and ranks."""
    dt, rank = vals[0].dtype, vals[0].rank
    for v in vals[1:]:
        a = torch.empty((1,) * rank, dtype=dt)
        b = torch.empty((1,) * v.rank, dtype=v.dtype)
        dt, rank = torch.result_type(a, b), max(rank, v.rank)
    return dt


def _attrs(node: Node) -> dict[str, Any]:
    from ecoinfer.ir.ops import get_schema  # noqa: PLC0415

    try:
        schema = get_schema(node.op_type, node.domain)
    except Exception as e:  # an op the IR does not know
        raise Unsupported(f"unknown op {node.op_type}") from e
    return {**schema.attrs, **node.attrs}


def _to_torch_dtype(to: Any) -> torch.dtype:
    try:
        name = to if isinstance(to, str) else ir_dtypes.from_onnx(int(to))
        dt = ir_dtypes.to_torch(name)
    except Exception as e:  # an element type ecoinfer or torch lacks
        raise Unsupported(f"Cast to {to!r}") from e
    if dt not in _SUPPORTED:
        raise Unsupported(f"Cast to {name}")
    return dt


@dataclass
class _Program:
    """The body lowered to register code: loads are added per launch specialisation."""

    in_dtypes: tuple[torch.dtype, ...]
    lines: list[str]  # compute code, reads x{i} (input registers), defines the outputs
    outputs: list[_Val]
    used: list[int]  # inputs the kernel loads, in order
    deps: list[int]  # inputs whose shapes broadcast into the output shape
    const_rank: int  # rank the body constants give the output (a [1] constant makes it 1-D)

    @property
    def out_dtypes(self) -> list[torch.dtype]:
        return [v.dtype for v in self.outputs]

    def source(self, spec: _Spec) -> str:
        """The module source of the kernel `fused_elementwise` for one specialisation."""
        args = [f"in{i}" for i in self.used] + [f"out{k}" for k in range(len(self.outputs))]
        args.append("n")
        rank = spec.rank
        need_idx = any(k == "g" for k in spec.kinds)
        if need_idx:
            args += [f"d{d}" for d in range(1, rank)]
        for i, kind, nz in zip(self.used, spec.kinds, spec.nonzero):
            if kind == "g":
                args += [f"in{i}_s{d}" for d in range(rank) if nz[d]]
        args.append("BLOCK: tl.constexpr")
        pid = "tl.program_id(0).to(tl.int64)" if spec.i64 else "tl.program_id(0)"
        body = [
            f"offs = {pid} * BLOCK + tl.arange(0, BLOCK)",
            "mask = offs < n",
        ]
        if need_idx:
            if rank == 1:
                body.append("i0 = offs")
            else:
                body.append("r = offs")
                for d in range(rank - 1, 0, -1):
                    body.append(f"i{d} = r % d{d}")
                    body.append(f"r = r // d{d}")
                body.append("i0 = r")
        for i, kind, nz in zip(self.used, spec.kinds, spec.nonzero):
            cvt = f".to({_ct(self.in_dtypes[i])})"
            if kind == "c":
                body.append(f"x{i} = tl.load(in{i} + offs, mask=mask, other=1){cvt}")
            elif kind == "s":
                body.append(f"x{i} = tl.load(in{i}){cvt}")
            else:
                terms = [f"i{d} * in{i}_s{d}" for d in range(rank) if nz[d]]
                off = " + ".join(terms)
                body.append(f"x{i} = tl.load(in{i} + ({off}), mask=mask, other=1){cvt}")
        body += self.lines
        for k, v in enumerate(self.outputs):
            body.append(f"tl.store(out{k} + offs, {v.name}.to({_TL[v.dtype]}), mask=mask)")
        sig = ", ".join(args)
        code = "\n".join("    " + ln for ln in body)
        return f"{_PRELUDE}\n\n@triton.jit\ndef fused_elementwise({sig}):\n{code}\n"


class _Lowering:
    def __init__(self, body: Graph, in_dtypes: list[torch.dtype], in_ranks: list[int]):
        self.body = body
        self.lines: list[str] = []
        self.k = 0
        self.env: dict[str, _Val] = {}
        self._rounded: dict[str, _Val] = {}
        for i, (v, dt, r) in enumerate(zip(body.inputs, in_dtypes, in_ranks)):
            if dt not in _SUPPORTED:
                raise Unsupported(f"input dtype {dt}")
            self.env[v.name] = _Val(f"x{i}", dt, r, frozenset({i}), reads=frozenset({i}))
        for name, t in body.initializers.items():
            if name in self.env:
                continue
            if t.numel() != 1 or t.dtype not in _SUPPORTED:
                raise Unsupported(f"body constant {name} {tuple(t.shape)} {t.dtype}")
            var = f"c{self.k}"
            self.k += 1
            val = t.reshape(()).item()
            self.lines.append(f"{var} = tl.full([BLOCK], {_lit(val, t.dtype)}, {_ct(t.dtype)})")
            self.env[name] = _Val(var, t.dtype, t.dim(), frozenset(), t.dim())

    # -------------------------------------------------------------- emission
    def emit(
        self,
        expr: str,
        dtype: torch.dtype,
        ins: list[_Val],
        exact: bool | None = None,
        also_reads: tuple[_Val, ...] = (),
    ) -> _Val:
        """`v<k> = expr`: a value shaped by `ins` (broadcast), also loading `also_reads`."""
        name = f"v{self.k}"
        self.k += 1
        self.lines.append(f"{name} = {expr}")
        deps = frozenset().union(*(v.deps for v in ins))
        reads = frozenset().union(*(v.reads for v in [*ins, *also_reads]))
        rank = max((v.rank for v in ins), default=0)
        crank = max((v.const_rank for v in ins), default=0)
        if exact is None:
            exact = dtype not in _HALF  # float32 registers of a half value carry excess
        return _Val(name, dtype, rank, deps, crank, exact, reads)

    def rounded(self, v: _Val) -> _Val:
        """v with its float32 excess dropped (rounded to its half dtype)."""
        if v.exact or v.dtype not in _HALF:
            return v
        if v.name not in self._rounded:
            expr = f"{v.name}.to({_TL[v.dtype]}).to(tl.float32)"
            r = self.emit(expr, v.dtype, [v])
            self._rounded[v.name] = _Val(
                r.name, v.dtype, v.rank, v.deps, v.const_rank, True, v.reads
            )
        return self._rounded[v.name]

    def cvt(self, v: _Val, dt: torch.dtype, discrete: bool = False) -> str:
        """Expression of v converted as `tensor.to(dt)` would, in dt's register type.
        discrete: the reader's result jumps with the value (round half values first). Half
        values otherwise keep their float32 excess through arithmetic (rounded on store)."""
        if discrete or (dt != v.dtype and (dt in _INT or dt == torch.bool)):
            v = self.rounded(v)
        x = v.name
        if v.dtype == dt:
            return x
        if dt == torch.bool:
            return f"({x} != 0)"
        if v.dtype == torch.bool:
            one, zero = ("1.0", "0.0") if dt in _FLOAT else ("1", "0")
            return f"tl.where({x}, {one}, {zero}).to({_ct(dt)})"
        if dt in _HALF:
            return f"{x}.to({_TL[dt]}).to(tl.float32)"
        return x if _ct(v.dtype) == _ct(dt) else f"{x}.to({_ct(dt)})"

    # -------------------------------------------------------------- driver
    def run(self) -> _Program:
        for node in self.body.nodes:
            if (node.domain or "") not in ("", "ai.onnx"):
                raise Unsupported(f"op {node.domain}.{node.op_type}")
            fn = _OPS.get(node.op_type)
            if fn is None:
                raise Unsupported(f"op {node.op_type}")
            ins: list[_Val | None] = []
            for i in node.inputs:
                if not i:
                    ins.append(None)
                elif i in self.env:
                    ins.append(self.env[i])
                else:
                    raise Unsupported(f"{node.label()} reads '{i}' from outside the body")
            outs = fn(self, node, _attrs(node), ins)
            for name, val in zip(node.outputs, outs):
                if name:
                    self.env[name] = val
        outputs = []
        for o in self.body.outputs:
            v = self.env.get(o.name)
            if v is None or v.name.startswith(("x", "c")):
                raise Unsupported(f"body output {o.name} is an input or a constant")
            outputs.append(v)
        used = sorted(frozenset().union(*(v.reads for v in outputs)))
        deps = sorted(frozenset().union(*(v.deps for v in outputs)))
        crank = max(v.const_rank for v in outputs)
        in_dtypes = tuple(v.dtype for v in (self.env[x.name] for x in self.body.inputs))
        return _Program(in_dtypes, self.lines, outputs, used, deps, crank)


def lower(body: Graph, in_dtypes: list[torch.dtype], in_ranks: list[int]) -> _Program:
    """Lower the body for inputs of these dtypes and ranks; raises Unsupported."""
    if len(body.inputs) != len(in_dtypes):
        raise Unsupported("input count")
    return _Lowering(body, in_dtypes, in_ranks).run()


# ------------------------------------------------------------------------------ op table
Handler = Callable[[_Lowering, Node, dict[str, Any], list["_Val | None"]], list[_Val]]
_OPS: dict[str, Handler] = {}


def _handles(*names: str) -> Callable[[Handler], Handler]:
    def deco(fn: Handler) -> Handler:
        for n in names:
            _OPS[n] = fn
        return fn

    return deco


def _need(ins: list[_Val | None], k: int) -> list[_Val]:
    if len(ins) < k or any(v is None for v in ins[:k]):
        raise Unsupported("missing input")
    return [v for v in ins[:k] if v is not None]


def _float_in(v: _Val, op: str) -> None:
    if v.dtype not in _FLOAT:
        raise Unsupported(f"{op} on {v.dtype}")


# float unary ops: expression of the float32 register x; discrete ops round half inputs
_UNARY_F: dict[str, tuple[str, bool]] = {
    "Exp": ("tl.exp({x})", False),
    "Log": ("tl.log({x})", False),
    "Sqrt": ("tl.sqrt({x})", False),
    "Reciprocal": ("1.0 / {x}", False),
    "Floor": ("tl.floor({x})", True),
    "Ceil": ("tl.ceil({x})", True),
    "Round": ("_round_even({x})", True),
    "Sin": ("tl.sin({x})", False),
    "Cos": ("tl.cos({x})", False),
    "Tan": ("tl.sin({x}) / tl.cos({x})", False),
    "Sinh": ("0.5 * (_expm1({x}) - _expm1(-{x}))", False),
    "Cosh": ("0.5 * (tl.exp({x}) + tl.exp(-{x}))", False),
    "Asinh": ("_asinh({x})", False),
    "Acosh": ("_acosh({x})", False),
    "Atanh": ("0.5 * _log1p(2.0 * {x} / (1.0 - {x}))", False),
    "Erf": ("tl.erf({x})", False),
    "Tanh": ("_tanh({x})", False),
    "Sigmoid": ("tl.sigmoid({x})", False),
    "Softplus": ("_softplus({x})", False),
    "Softsign": ("{x} / (1.0 + tl.abs({x}))", False),
    # x * clamp(x / 6 + 0.5, 0, 1), NaN kept as torch.clamp keeps it
    "HardSwish": (
        "{x} * tl.where({x} / 6.0 + 0.5 < 0.0, 0.0,"
        " tl.where({x} / 6.0 + 0.5 > 1.0, 1.0, {x} / 6.0 + 0.5))",
        False,
    ),
    "Mish": ("{x} * _tanh(_softplus({x}))", False),
}


@_handles(*_UNARY_F)
def _unary_float(lw: _Lowering, node: Node, a: dict, ins: list[_Val | None]) -> list[_Val]:
    (x,) = _need(ins, 1)
    _float_in(x, node.op_type)
    expr, discrete = _UNARY_F[node.op_type]
    xv = lw.cvt(x, x.dtype, discrete=discrete)
    return [lw.emit(expr.format(x=xv), x.dtype, [x])]


def _clamp01(e: str) -> str:
    return f"tl.where({e} < 0.0, 0.0, tl.where({e} > 1.0, 1.0, {e}))"


@_handles(
    "LeakyRelu", "Elu", "Celu", "Selu", "HardSigmoid", "ThresholdedRelu", "Gelu", "Swish", "Shrink"
)
def _activation(lw: _Lowering, node: Node, a: dict, ins: list[_Val | None]) -> list[_Val]:
    (x,) = _need(ins, 1)
    _float_in(x, node.op_type)
    op = node.op_type
    xv = lw.cvt(x, x.dtype, discrete=op in ("ThresholdedRelu", "Shrink"))
    alpha = float(a.get("alpha") if a.get("alpha") is not None else 0.0)
    al = _flit(alpha)
    if op == "LeakyRelu":
        e = f"tl.where({xv} < 0.0, {xv} * {al}, {xv})"
    elif op == "Elu":
        e = f"tl.where({xv} > 0.0, {xv}, {al} * _expm1({xv}))"
    elif op == "Celu":
        t = f"({al} * _expm1({xv} / {al}))"
        e = f"tl.where({xv} < 0.0, 0.0, {xv}) + tl.where({t} > 0.0, 0.0, {t})"
    elif op == "Selu":
        g = _flit(float(a["gamma"]))
        e = f"{g} * tl.where({xv} > 0.0, {xv}, {al} * _expm1({xv}))"
    elif op == "HardSigmoid":
        e = _clamp01(f"({al} * {xv} + {_flit(float(a['beta']))})")
    elif op == "ThresholdedRelu":
        e = f"tl.where({xv} > {al}, {xv}, 0.0)"
    elif op == "Swish":
        e = f"{xv} * tl.sigmoid({al} * {xv})"
    elif op == "Shrink":
        lam, bias = _flit(float(a.get("lambd", 0.5))), _flit(float(a.get("bias", 0.0)))
        e = f"tl.where({xv} < -{lam}, {xv} + {bias}, tl.where({xv} > {lam}, {xv} - {bias}, 0.0))"
    else:  # Gelu
        approx = a.get("approximate", "none")
        approx = approx.decode() if isinstance(approx, bytes) else str(approx)
        if approx == "tanh":
            inner = f"0.7978845608028654 * ({xv} + 0.044715 * {xv} * {xv} * {xv})"
            e = f"0.5 * {xv} * (1.0 + _tanh({inner}))"
        elif approx == "none":
            e = f"0.5 * {xv} * (1.0 + tl.erf({xv} * 0.7071067811865476))"
        else:
            raise Unsupported(f"Gelu approximate={approx}")
    return [lw.emit(e, x.dtype, [x])]


@_handles("Abs", "Neg", "Sign", "Relu")
def _signed_unary(lw: _Lowering, node: Node, a: dict, ins: list[_Val | None]) -> list[_Val]:
    (x,) = _need(ins, 1)
    op, dt = node.op_type, x.dtype
    unsigned = dt in (torch.uint8, torch.bool)
    if dt == torch.bool and op in ("Neg", "Sign"):
        raise Unsupported(f"{op} on bool")
    if op == "Neg" and unsigned:
        raise Unsupported("Neg on uint8")
    if (op in ("Abs", "Relu")) and unsigned:
        return [lw.emit(x.name, dt, [x], exact=x.exact)]
    xv = lw.cvt(x, dt, discrete=op == "Sign")
    if dt in _FLOAT:
        e = {
            "Abs": f"tl.abs({xv})",
            "Neg": f"-{xv}",
            "Sign": f"tl.where({xv} > 0.0, 1.0, tl.where({xv} < 0.0, -1.0, {xv}))",
            "Relu": f"tl.where({xv} < 0.0, 0.0, {xv})",
        }[op]
        return [lw.emit(e, dt, [x], exact=x.exact if op != "Sign" else True)]
    ct = _ct(dt)
    e = {
        "Abs": f"tl.abs({xv})",
        "Neg": f"(0 - {xv}).to({ct})",
        "Sign": f"tl.where({xv} > 0, 1, tl.where({xv} < 0, -1, 0)).to({ct})",
        "Relu": f"tl.where({xv} < 0, 0, {xv}).to({ct})",
    }[op]
    return [lw.emit(e, dt, [x])]


@_handles("Not", "BitwiseNot")
def _not(lw: _Lowering, node: Node, a: dict, ins: list[_Val | None]) -> list[_Val]:
    (x,) = _need(ins, 1)
    if x.dtype == torch.bool:
        return [lw.emit(f"({x.name} == 0)", torch.bool, [x])]
    if node.op_type == "Not" or x.dtype not in _INT:
        raise Unsupported(f"{node.op_type} on {x.dtype}")
    return [lw.emit(f"(~{x.name}).to({_ct(x.dtype)})", x.dtype, [x])]


@_handles("IsNaN", "IsInf")
def _isnan_isinf(lw: _Lowering, node: Node, a: dict, ins: list[_Val | None]) -> list[_Val]:
    (x,) = _need(ins, 1)
    if x.dtype not in _FLOAT:
        return [lw.emit(f"tl.zeros_like({x.name}) != 0", torch.bool, [x])]
    xv = lw.cvt(x, x.dtype, discrete=True)  # a half value that overflowed is inf
    if node.op_type == "IsNaN":
        return [lw.emit(f"({xv} != {xv})", torch.bool, [x])]
    pos, neg = bool(a.get("detect_positive", 1)), bool(a.get("detect_negative", 1))
    if pos and neg:
        e = f'(tl.abs({xv}) == float("inf"))'
    elif pos:
        e = f'({xv} == float("inf"))'
    elif neg:
        e = f'({xv} == float("-inf"))'
    else:
        e = f"tl.zeros_like({xv}) != 0"
    return [lw.emit(e, torch.bool, [x])]


@_handles("Cast", "CastLike")
def _cast(lw: _Lowering, node: Node, a: dict, ins: list[_Val | None]) -> list[_Val]:
    if node.op_type == "Cast":
        (x,) = _need(ins, 1)
        to = _to_torch_dtype(a.get("to"))
    else:
        x, like = _need(ins, 2)
        to = like.dtype  # the second input only gives the dtype: it neither loads nor shapes
    if x.dtype in _FLOAT and to in _INT | {torch.bool}:
        xv = lw.cvt(x, x.dtype, discrete=True)
        e = f"({xv} != 0)" if to == torch.bool else f"{xv}.to({_TL[to]})"
        return [lw.emit(e, to, [x])]
    if to == x.dtype:
        return [lw.emit(x.name, to, [x], exact=x.exact)]
    return [lw.emit(lw.cvt(x, to), to, [x], exact=True)]


def _binary_dtype(vals: list[_Val], op: str) -> torch.dtype:
    dt = _promote(vals)
    if dt == torch.bool or dt not in _SUPPORTED:
        raise Unsupported(f"{op} on {dt}")
    return dt


@_handles("Add", "Sub", "Mul")
def _arith(lw: _Lowering, node: Node, a: dict, ins: list[_Val | None]) -> list[_Val]:
    x, y = _need(ins, 2)
    dt = _binary_dtype([x, y], node.op_type)
    sym = {"Add": "+", "Sub": "-", "Mul": "*"}[node.op_type]
    e = f"{lw.cvt(x, dt)} {sym} {lw.cvt(y, dt)}"
    if dt not in _FLOAT:
        e = f"({e}).to({_ct(dt)})"
    return [lw.emit(e, dt, [x, y])]


@_handles("Div")
def _div(lw: _Lowering, node: Node, a: dict, ins: list[_Val | None]) -> list[_Val]:
    x, y = _need(ins, 2)
    dt = _binary_dtype([x, y], "Div")
    if x.dtype in _FLOAT:
        return [lw.emit(f"{lw.cvt(x, dt)} / {lw.cvt(y, dt)}", dt, [x, y])]
    if x.dtype not in _INT:
        raise Unsupported(f"Div on {x.dtype}")
    # integers: truncating division, result in x's dtype (the reference's _back)
    if dt in _FLOAT:
        e = f"({lw.cvt(x, dt)} / {lw.cvt(y, dt)}).to({_TL[x.dtype]})"
    else:
        e = f"({lw.cvt(x, dt)} // {lw.cvt(y, dt)}).to({_ct(x.dtype)})"
    return [lw.emit(e, x.dtype, [x, y])]


@_handles("Mod")
def _mod(lw: _Lowering, node: Node, a: dict, ins: list[_Val | None]) -> list[_Val]:
    x, y = _need(ins, 2)
    dt = _binary_dtype([x, y], "Mod")
    if x.dtype not in _INT or dt not in _INT:
        raise Unsupported(f"Mod on {x.dtype}")
    xv, yv = lw.cvt(x, dt), lw.cvt(y, dt)
    r = lw.emit(f"{xv} % {yv}", dt, [x, y])  # C remainder: the dividend's sign
    if not int(a.get("fmod", 0)):
        # Python/numpy mod: the divisor's sign
        r = lw.emit(
            f"tl.where(({r.name} != 0) & (({r.name} < 0) != ({yv} < 0)), {r.name} + {yv},"
            f" {r.name}).to({_ct(dt)})",
            dt,
            [r],
        )
    return [lw.emit(f"{r.name}.to({_ct(x.dtype)})", x.dtype, [r])]


def _const_value(lw: _Lowering, v: _Val) -> float | None:
    """The value of a body constant (None for anything computed or loaded)."""
    for name, t in lw.body.initializers.items():
        if lw.env.get(name) is v:
            return float(t.reshape(()).item())
    return None


@_handles("Pow")
def _pow(lw: _Lowering, node: Node, a: dict, ins: list[_Val | None]) -> list[_Val]:
    x, y = _need(ins, 2)
    c = _const_value(lw, y)
    if x.dtype in _INT:
        if c is None or c != int(c) or not 0 <= c <= 8:
            raise Unsupported("Pow of integers")
        ct = _ct(x.dtype)
        e = " * ".join([x.name] * int(c)) if c else f"tl.full([BLOCK], 1, {ct})"
        return [lw.emit(f"({e}).to({ct})", x.dtype, [x, y])]
    _float_in(x, "Pow")
    if y.dtype not in _FLOAT | _INT:
        raise Unsupported(f"Pow exponent {y.dtype}")
    xv = x.name
    special = {
        1.0: f"{xv} + 0.0",
        2.0: f"{xv} * {xv}",
        3.0: f"{xv} * {xv} * {xv}",
        4.0: f"({xv} * {xv}) * ({xv} * {xv})",
        0.5: f"tl.sqrt({xv})",
        -1.0: f"1.0 / {xv}",
        -0.5: f"1.0 / tl.sqrt({xv})",
        -2.0: f"1.0 / ({xv} * {xv})",
    }
    if c is not None and c in special:
        return [lw.emit(special[c], x.dtype, [x, y])]
    yv = lw.cvt(y, torch.float32)
    return [lw.emit(f"_pow({xv}, {yv})", x.dtype, [x, y])]


_CMP = {"Greater": ">", "Less": "<", "GreaterOrEqual": ">=", "LessOrEqual": "<=", "Equal": "=="}


@_handles(*_CMP)
def _compare(lw: _Lowering, node: Node, a: dict, ins: list[_Val | None]) -> list[_Val]:
    x, y = _need(ins, 2)
    dt = _promote([x, y])
    if dt not in _SUPPORTED:
        raise Unsupported(f"{node.op_type} on {dt}")
    e = f"({lw.cvt(x, dt, True)} {_CMP[node.op_type]} {lw.cvt(y, dt, True)})"
    return [lw.emit(e, torch.bool, [x, y])]


@_handles("And", "Or", "Xor")
def _logic(lw: _Lowering, node: Node, a: dict, ins: list[_Val | None]) -> list[_Val]:
    x, y = _need(ins, 2)
    sym = {"And": "&", "Or": "|", "Xor": "^"}[node.op_type]
    e = f"({lw.cvt(x, torch.bool)} {sym} {lw.cvt(y, torch.bool)})"
    return [lw.emit(e, torch.bool, [x, y])]


@_handles("BitwiseAnd", "BitwiseOr", "BitwiseXor")
def _bitwise(lw: _Lowering, node: Node, a: dict, ins: list[_Val | None]) -> list[_Val]:
    x, y = _need(ins, 2)
    dt = _promote([x, y])
    if dt not in _INT and dt != torch.bool:
        raise Unsupported(f"{node.op_type} on {dt}")
    sym = {"BitwiseAnd": "&", "BitwiseOr": "|", "BitwiseXor": "^"}[node.op_type]
    e = f"({lw.cvt(x, dt)} {sym} {lw.cvt(y, dt)})"
    return [lw.emit(e if dt == torch.bool else f"{e}.to({_ct(dt)})", dt, [x, y])]


@_handles("Where")
def _where(lw: _Lowering, node: Node, a: dict, ins: list[_Val | None]) -> list[_Val]:
    c, x, y = _need(ins, 3)
    dt = _promote([x, y])
    if dt not in _SUPPORTED:
        raise Unsupported(f"Where on {dt}")
    xv, yv = lw.cvt(x, dt), lw.cvt(y, dt)
    exact = (x.exact or x.dtype != dt) and (y.exact or y.dtype != dt)
    e = f"tl.where({lw.cvt(c, torch.bool)}, {xv}, {yv})"
    if dt not in _FLOAT:
        e = f"{e}.to({_ct(dt)})"
    return [lw.emit(e, dt, [c, x, y], exact=exact)]


def _max_min(lw: _Lowering, op: str, x: _Val, y: _Val) -> _Val:
    dt = _promote([x, y])
    if dt not in _SUPPORTED:
        raise Unsupported(f"{op} on {dt}")
    xv, yv = lw.cvt(x, dt), lw.cvt(y, dt)
    if dt == torch.bool:
        return lw.emit(f"({xv} {'|' if op == 'Max' else '&'} {yv})", dt, [x, y])
    fn = "tl.maximum" if op == "Max" else "tl.minimum"
    if dt in _FLOAT:
        exact = (x.exact or x.dtype != dt) and (y.exact or y.dtype != dt)
        e = f"{fn}({xv}, {yv}, propagate_nan=tl.PropagateNan.ALL)"
        return lw.emit(e, dt, [x, y], exact=exact)
    return lw.emit(f"{fn}({xv}, {yv}).to({_ct(dt)})", dt, [x, y])


@_handles("Max", "Min")
def _variadic_max_min(lw: _Lowering, node: Node, a: dict, ins: list[_Val | None]) -> list[_Val]:
    vals = [v for v in ins if v is not None]
    if not vals:
        raise Unsupported("no inputs")
    out = vals[0]
    for v in vals[1:]:
        out = _max_min(lw, node.op_type, out, v)
    if len(vals) == 1:
        out = lw.emit(out.name, out.dtype, [out], exact=out.exact)
    return [out]


@_handles("Sum", "Mean")
def _sum_mean(lw: _Lowering, node: Node, a: dict, ins: list[_Val | None]) -> list[_Val]:
    vals = [v for v in ins if v is not None]
    if not vals:
        raise Unsupported("no inputs")
    dt = _binary_dtype(vals, node.op_type) if len(vals) > 1 else vals[0].dtype
    if dt not in _FLOAT | _INT:
        raise Unsupported(f"{node.op_type} on {dt}")
    e = " + ".join(lw.cvt(v, dt) for v in vals)
    if node.op_type == "Mean":
        e = f"({e}) / {float(len(vals))!r}" if dt in _FLOAT else f"({e}) // {len(vals)}"
    if dt not in _FLOAT:
        e = f"({e}).to({_ct(dt)})"
    return [lw.emit(e, dt, vals)]


@_handles("Clip")
def _clip(lw: _Lowering, node: Node, a: dict, ins: list[_Val | None]) -> list[_Val]:
    x = _need(ins, 1)[0]
    dt = x.dtype
    if dt == torch.bool:
        raise Unsupported("Clip on bool")
    lo = ins[1] if len(ins) > 1 else None
    hi = ins[2] if len(ins) > 2 else None
    bounds: list[tuple[str, str]] = []  # (fn, bound expression in x's register type)
    for fn, v, attr in (("tl.maximum", lo, "min"), ("tl.minimum", hi, "max")):
        if v is not None:
            bounds.append((fn, lw.cvt(v, dt)))  # the reference casts bounds to x's dtype
        elif a.get(attr) is not None:  # opset < 11 kept its bounds as attributes
            lit = float(a[attr])
            if dt in _HALF:
                lit = float(torch.tensor(lit, dtype=dt))
            bounds.append((fn, _lit(lit, dt)))
    e = x.name
    for fn, b in bounds:
        nan = ", propagate_nan=tl.PropagateNan.ALL" if dt in _FLOAT else ""
        e = f"{fn}({e}, {b}{nan})"
    if dt not in _FLOAT:
        e = f"({e}).to({_ct(dt)})"
    elif not bounds:
        e = f"{e} + 0.0"
    # the bounds are read but do not broadcast x (the reference reshapes them to ())
    extra = tuple(v for v in (lo, hi) if v is not None)
    return [lw.emit(e, dt, [x], exact=x.exact, also_reads=extra)]


@_handles("PRelu")
def _prelu(lw: _Lowering, node: Node, a: dict, ins: list[_Val | None]) -> list[_Val]:
    x, s = _need(ins, 2)
    dt = _binary_dtype([x, s], "PRelu")
    if dt not in _FLOAT and dt not in _INT:
        raise Unsupported("PRelu")
    if x.dtype == torch.uint8:
        raise Unsupported("PRelu on uint8")
    xv, sv = lw.cvt(x, dt), lw.cvt(s, dt)
    zero = "0.0" if dt in _FLOAT else "0"
    e = f"tl.where({xv} < {zero}, {xv} * {sv}, {xv})"
    if dt not in _FLOAT:
        e = f"{e}.to({_ct(dt)})"
    return [lw.emit(e, dt, [x, s])]


# ------------------------------------------------------------------------------ launching
@dataclass(frozen=True)
class _Spec:
    """How each loaded input is addressed in one compiled variant."""

    kinds: tuple[str, ...]  # per used input: "c" output-shaped contiguous, "s" scalar, "g" strided
    rank: int  # merged rank of the iteration space
    nonzero: tuple[tuple[bool, ...], ...]  # per used input, which merged strides are non-zero
    i64: bool  # 64-bit offsets


@dataclass
class _Launch:
    kernel: Any
    grid: tuple[int]
    scalars: list[int]
    out_shape: tuple[int, ...]
    numel: int
    prog: _Program


_COMPILED: dict[str, Any] = {}
_LOCK = threading.Lock()


def compile_source(src: str) -> Any:
    """The `fused_elementwise` Triton kernel of a generated module source (cached)."""
    with _LOCK:
        k = _COMPILED.get(src)
        if k is not None:
            return k
        import triton  # noqa: F401, PLC0415  (fail early without Triton)

        digest = hashlib.sha256(src.encode()).hexdigest()[:20]
        # triton.jit reads the source back with inspect: register it with linecache
        filename = f"<ecoinfer-fused-elementwise-{digest}>"
        linecache.cache[filename] = (len(src), None, src.splitlines(True), filename)
        ns: dict[str, Any] = {"__name__": f"ecoinfer_fused_{digest}"}
        exec(compile(src, filename, "exec"), ns)  # noqa: S102 - our own generated code
        k = ns["fused_elementwise"]
        _COMPILED[src] = k
        return k


def _merge_dims(
    out_shape: tuple[int, ...], strides: list[list[int]]
) -> tuple[list[int], list[list[int]]]:
    """Drop size-1 dims and merge neighbours every input walks contiguously (or broadcasts)."""
    dims = [d for d in range(len(out_shape)) if out_shape[d] != 1]
    shape = [out_shape[d] for d in dims]
    st = [[s[d] for d in dims] for s in strides]
    if not shape:
        return [1], [[0] for _ in strides]
    k = len(shape) - 1
    while k > 0:
        if all(s[k - 1] == s[k] * shape[k] for s in st):
            shape[k - 1] *= shape[k]
            del shape[k]
            for s in st:
                s[k - 1] = s[k]
                del s[k]
        k -= 1
    return shape, st


class FusedElementwise:
    """The generated kernel of one FusedElementwise body: call it with the node's inputs."""

    def __init__(self, body: Graph, block: int = 1024, num_warps: int = 4):
        self.body = body
        self.block = block
        self.num_warps = num_warps
        self._programs: dict[tuple, _Program] = {}
        self._launches: dict[tuple, _Launch] = {}
        self._lock = threading.Lock()

    def program(self, in_dtypes: list[torch.dtype], in_ranks: list[int]) -> _Program:
        key = (tuple(in_dtypes), tuple(in_ranks))
        p = self._programs.get(key)
        if p is None:
            p = lower(self.body, list(in_dtypes), list(in_ranks))
            self._programs[key] = p
        return p

    def plan(
        self, shapes: list[tuple[int, ...]], strides: list[tuple[int, ...]], prog: _Program
    ) -> tuple[_Spec, list[int], tuple[int, ...], int]:
        """(spec, scalar args, output shape, numel) for inputs of these shapes and strides."""
        used, deps = prog.used, set(prog.deps)
        out_shape = tuple(broadcast_shape(*[shapes[i] for i in deps], (1,) * prog.const_rank))
        r = len(out_shape)
        full: list[list[int]] = []
        for i in used:
            sh, st = shapes[i], strides[i]
            if i not in deps:  # read, not broadcast (Clip bounds): one element
                if math.prod(sh) != 1:
                    raise ValueError(f"input {i} must have one element, has shape {sh}")
                full.append([0] * r)
                continue
            off = r - len(sh)
            full.append([0 if d < off or sh[d - off] == 1 else int(st[d - off]) for d in range(r)])
        mshape, mst = _merge_dims(out_shape, full)
        numel = math.prod(out_shape)
        contig = [0] * len(mshape)
        acc = 1
        for d in range(len(mshape) - 1, -1, -1):
            contig[d] = acc
            acc *= mshape[d]
        kinds, nonzero = [], []
        for s in mst:
            if all(v == 0 for v in s):
                kinds.append("s")
            elif s == contig:
                kinds.append("c")
            else:
                kinds.append("g")
            nonzero.append(tuple(v != 0 for v in s))
        max_off = max([numel] + [sum((n - 1) * abs(v) for n, v in zip(mshape, s)) for s in mst])
        i64 = max_off + self.block >= 2**31
        has_g = "g" in kinds
        spec = _Spec(tuple(kinds), len(mshape) if has_g else 0, tuple(nonzero), i64)
        scalars = [numel]
        if has_g:
            scalars += mshape[1:]
            for kind, s in zip(kinds, mst):
                if kind == "g":
                    scalars += [v for v in s if v != 0]
        return spec, scalars, out_shape, numel

    def sources(self) -> list[str]:
        """Sources of the kernels launched so far (one per input signature): what an engine
        file can carry to compile (or find in Triton's cache) at load, before the first run."""
        seen: dict[str, None] = {}
        for key, launch in list(self._launches.items()):
            shapes = [k[1] for k in key]
            strides = [k[2] for k in key]
            seen[launch.prog.source(self.plan(shapes, strides, launch.prog)[0])] = None
        return list(seen)

    def source_for(self, xs: list[Tensor]) -> str:
        """The kernel source these inputs launch (for inspection and tests)."""
        prog = self.program([x.dtype for x in xs], [x.dim() for x in xs])
        spec, _, _, _ = self.plan(
            [tuple(x.shape) for x in xs], [tuple(x.stride()) for x in xs], prog
        )
        return prog.source(spec)

    def __call__(self, xs: list[Tensor | None]) -> list[Tensor]:
        if any(x is None for x in xs):
            raise ValueError("FusedElementwise: every input is required")
        ts: list[Tensor] = [x for x in xs if x is not None]
        # one launch record per input signature: later calls are a dict lookup and a launch
        key = tuple((x.dtype, tuple(x.shape), tuple(x.stride())) for x in ts)
        launch = self._launches.get(key)
        if launch is None:
            with self._lock:
                prog = self.program([x.dtype for x in ts], [x.dim() for x in ts])
                spec, scalars, out_shape, numel = self.plan(
                    [tuple(x.shape) for x in ts], [tuple(x.stride()) for x in ts], prog
                )
                kernel = compile_source(prog.source(spec))
                grid = (max(1, -(-numel // self.block)),)
                launch = _Launch(kernel, grid, scalars, out_shape, numel, prog)
                self._launches[key] = launch
        prog = launch.prog
        dev = ts[0].device if ts else torch.device("cpu")
        outs = [torch.empty(launch.out_shape, dtype=dt, device=dev) for dt in prog.out_dtypes]
        if launch.numel == 0:
            return outs
        args = [ts[i] for i in prog.used] + outs + launch.scalars
        launch.kernel[launch.grid](*args, BLOCK=self.block, num_warps=self.num_warps)
        return outs


# ------------------------------------------------------------------------------ tactic
def configs(node: Node, attrs: dict[str, Any], inputs: list, build: Any) -> list[dict[str, Any]]:
    """BLOCK / num_warps candidates: small tensors want more programs, large ones wider ones."""
    try:
        shapes = [tuple(i.shape) for i in inputs if i is not None]
        n = math.prod(broadcast_shape(*shapes)) if shapes else 0
    except RuntimeError:
        n = 0
    if n <= 1 << 16:
        return [{"block": 256, "num_warps": 2}, {"block": 1024, "num_warps": 4}]
    return [{"block": 1024, "num_warps": 4}, {"block": 2048, "num_warps": 8}]


def make(
    node: Node, attrs: dict[str, Any], inputs: list, cfg: dict[str, Any], build: Any
) -> Callable[[list[Tensor | None]], list[Tensor]] | None:
    """The triton_codegen tactic of ecoinfer.FusedElementwise, or None where it cannot apply."""
    body = attrs.get("body", node.attrs.get("body"))
    if not isinstance(body, Graph) or not inputs or any(i is None for i in inputs):
        return None
    device = getattr(build, "device", torch.device("cuda"))
    if torch.device(device).type != "cuda" and not interpreting():
        return None  # CPU tensors only run under the interpreter (tests)
    kern = FusedElementwise(
        body, block=int(cfg.get("block", 1024)), num_warps=int(cfg.get("num_warps", 4))
    )
    try:
        prog = kern.program([i.dtype for i in inputs], [len(i.shape) for i in inputs])
        shapes = [tuple(int(d) for d in i.shape) for i in inputs]
        full = tuple(broadcast_shape(*[shapes[k] for k in prog.deps], (1,) * prog.const_rank))
        for v in prog.outputs:
            own = tuple(broadcast_shape(*[shapes[k] for k in v.deps], (1,) * v.const_rank))
            if own != full:  # outputs of different shapes share no iteration space
                return None
        contig = [tuple(torch.empty(s, device="meta").stride()) for s in shapes]
        kern.plan(shapes, contig, prog)
    except (Unsupported, RuntimeError, ValueError, KeyError):
        return None
    return kern


__all__ = ["FusedElementwise", "Unsupported", "compile_source", "configs", "lower", "make"]
