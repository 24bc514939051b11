"""Precision assignment: lower a graph's float32 computation to FP16/BF16 (or keep FP32/TF32).

`assign_precision(graph, precision, layer_precision)` returns a new graph plus one
`LayerPrecision` per float compute node saying which precision it runs in and why.

What the lowered graph looks like (float16 / bfloat16 builds):

- Every float compute node runs in the target dtype T unless it is kept in FP32 (below).
  Float32 weights are converted once (per dtype) to T, saturating: finite float32 constants
  beyond T's range become T's max/min instead of inf (a float32 `finfo.min` mask fill
  would otherwise become -inf in fp16, and `0 * -inf` is NaN where the mask is 0), and
  nonzero values below T's smallest subnormal become that subnormal rather than 0 (an
  epsilon must not vanish). -inf/+inf/NaN stay what they are.
- The user interface never changes type: float32 graph inputs stay float32 with a Cast to T
  where the model reads them, float32 graph outputs are cast back at the exit
  (keep_io=False lets inputs/outputs take the lowered dtype instead).
- Cast(to=float32) inside the model (e.g. the attention-mask cast) is retargeted to T;
  ConstantOfShape values, EyeLike dtypes, Attention `mask_fill` and the constants inside
  FusedElementwise bodies are adapted the same way (saturated to T's range).
- Integer, bool and shape computations are untouched, and so is float arithmetic that only
  computes on shapes (Shape -> Cast -> Mul ... -> Cast back to int, rotary positions): it
  stays FP32 since fp16 loses integers above 2048.
- Nodes kept in FP32, with Casts inserted around them (inputs up-cast, outputs cast down
  once per value for the T consumers): sums/means/norms over extents larger than
  `LARGE_REDUCTION` (or unknown at build time: a symbolic axis), because fp16 sums overflow
  and a half-precision accumulator loses the small terms; control flow (If/Loop/Scan:
  their bodies are not lowered); and whatever the user forces with `layer_precision`.
- LayerNormalization/RMSNormalization/GroupNormalization run in T with `stash_type=1`, i.e.
  their statistics in FP32 (ONNX semantics; torch's half layer_norm does the same, and the
  reference kernels honour it); so does ecoinfer.EmbedLayerNorm (its lookups summed in FP32
  too; tables, scale and bias become T like any weight). Softmax and Attention run in T:
  every kernel subtracts the row max first and sums in FP32 (torch's half softmax, SDPA and
  the Triton kernels do).
  GEMM/conv accumulation is FP32 in every tactic; that is the tactic's job, not this pass's.

bfloat16 keeps 8 mantissa bits (fp16 keeps 11): storing a transformer's residual stream in
bf16 costs about 1e-2 relative error on MiniLM-L6 (HF's own pure-bf16 model: 1.1e-2;
autocast, whose residual adds and LayerNorms are fp32: 6.8e-3). So bfloat16 builds keep the
residual stream in fp32 by default (`residual_fp32`, what autocast does): a FusedGemm's
residual Add is split into its own FusedElementwise node (bf16 GEMM output up-cast and added
in fp32 inside that one kernel) and LayerNorm/RMSNorm/EmbedLayerNorm (the stream's start) run
in fp32; the GEMMs stay bf16.

float32 and tf32 builds leave the graph as it is (TF32 is a runtime setting the builder
applies to matmul/conv layers; the report records "tf32" for those), unless an override
asks some layers for float16/bfloat16, which are then lowered as above.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch

from ecoinfer.errors import EcoinferError
from ecoinfer.ir import dtypes
from ecoinfer.ir.graph import Graph, Node, Value, all_inputs
from ecoinfer.ir.pattern import remove_dead
from ecoinfer.passes.manager import clone_graph

PRECISIONS = ("float32", "tf32", "float16", "bfloat16")
_ALIASES = {
    "fp32": "float32",
    "float": "float32",
    "float32": "float32",
    "tf32": "tf32",
    "fp16": "float16",
    "half": "float16",
    "float16": "float16",
    "bf16": "bfloat16",
    "bfloat16": "bfloat16",
}
# the dtype tensors are stored in, per compute precision
STORAGE = {"float32": "float32", "tf32": "float32", "float16": "float16", "bfloat16": "bfloat16"}
SHORT_NAMES = {"float32": "fp32", "float16": "fp16", "bfloat16": "bf16"}

# ops whose float math TF32 applies to (tensor-core GEMMs and convolutions)
MATMUL_OPS = frozenset(
    {
        "MatMul",
        "Gemm",
        "Conv",
        "ConvTranspose",
        "Einsum",
        "FusedGemm",
        "FusedConv",
        "QGemm",
        "QConv",
        "Attention",
        "MultiHeadAttention",
    }
)
# a sum over more elements than this stays in FP32 (fp16 overflows past 65504, and a
# half-precision accumulator drops terms below its ulp); unknown extents count as large
LARGE_REDUCTION = 256
_SUMMING = frozenset(
    {
        "ReduceSum",
        "ReduceMean",
        "ReduceSumSquare",
        "ReduceL1",
        "ReduceL2",
        "ReduceLogSum",
        "ReduceLogSumExp",
        "ReduceProd",
        "GlobalAveragePool",
        "GlobalLpPool",
        "CumSum",
        "CumProd",
    }
)
_NORMS = frozenset({"LayerNormalization", "RMSNormalization", "GroupNormalization"})
# ops that read only the type/shape of an input (input 0), never its values
_AGNOSTIC_INPUT0 = frozenset({"Shape", "Size", "Cast", "CastLike", "EyeLike"})
# float inputs that are parameters, not data: they keep their float32 type
_PARAM_INPUTS = {
    "Resize": (1, 2),
    "Dropout": (1,),
    "QGemm": (2, 3),
    "QConv": (2, 3),
    "MultiHeadAttention": (6,),  # x_scale
}
# quantized fused ops: W_q stays int8/float8 (not a float32 value, so never converted) and
# x_scale/w_scale stay float32 (above); X, bias, residual and Y take the layer's dtype
_QUANTIZED = frozenset({"QGemm", "QConv"})
# where a fused op keeps its residual input: FusedGemm(A, B, bias, residual),
# QGemm(X, W_q, x_scale, w_scale, bias, residual)
_RESIDUAL_AT = {"FusedGemm": 3, "QGemm": 5}
# ops that materialise a float tensor from a shape, or select between float constants (how
# causal masks are built from index comparisons): such outputs are data, not shape arithmetic
_MATERIALIZE = frozenset({"ConstantOfShape", "Expand", "Tile", "EyeLike", "Where"})
# a float initializer this small may be a constant of shape arithmetic (e.g. rotary
# inv_freq); larger ones are weights, i.e. data
_SMALL_CONST = 256


@dataclass(frozen=True)
class LayerPrecision:
    """The precision one compute node runs in, and why."""

    name: str
    op: str
    precision: str  # "float32", "tf32", "float16" or "bfloat16"
    reason: str  # "default", "override 'regex'", "kept fp32: <why>"
    note: str = ""  # how a sensitive part stays accurate in this precision, if it does


def normalize_precision(p: str) -> str:
    """'fp16', 'half', 'float16' -> 'float16' (and so on), or a clear error."""
    key = str(p).strip().lower()
    if key not in _ALIASES:
        raise EcoinferError(
            f"unknown precision '{p}'; use one of {', '.join(PRECISIONS)} "
            "(or fp32, tf32, fp16, bf16)"
        )
    return _ALIASES[key]


def parse_layer_precision(spec: str) -> tuple[str, str]:
    """'name_regex:fp32' (the --layer-precision syntax) -> (regex, 'float32').

    The precision follows the last ':' so the regex itself may contain colons."""
    if ":" not in spec:
        raise EcoinferError(
            f"--layer-precision '{spec}': expected NAME_REGEX:PRECISION, e.g. 'attention.*:fp32'"
        )
    rx, p = spec.rsplit(":", 1)
    _compile(rx)
    return rx, normalize_precision(p)


def _compile(rx: str) -> re.Pattern[str]:
    try:
        return re.compile(rx)
    except re.error as e:
        raise EcoinferError(f"layer precision override: '{rx}' is not a valid regex: {e}") from e


def storage_dtype(precision: str) -> torch.dtype:
    return dtypes.to_torch(STORAGE[normalize_precision(precision)])


def summarize(layers: Iterable[LayerPrecision]) -> dict[str, int]:
    """How many layers run in each precision."""
    out: dict[str, int] = {}
    for lp in layers:
        out[lp.precision] = out.get(lp.precision, 0) + 1
    return out


def format_table(layers: Sequence[LayerPrecision]) -> str:
    """The build report's per-layer precision table (plain text)."""
    w = max([len(lp.name) for lp in layers] + [5])
    lines = [f"{'layer':<{w}}  {'op':<22} {'precision':<9}  reason"]
    for lp in layers:
        why = lp.reason + (f" ({lp.note})" if lp.note else "")
        lines.append(f"{lp.name:<{w}}  {lp.op:<22} {lp.precision:<9}  {why}")
    counts = ", ".join(f"{k}: {v}" for k, v in sorted(summarize(layers).items()))
    lines.append(f"{len(layers)} layers ({counts})")
    return "\n".join(lines)


# ---------------------------------------------------------------------------- constants
def convert_tensor(t: torch.Tensor, dtype: str) -> torch.Tensor:
    """A float tensor in `dtype`, saturating finite values to its range and keeping tiny
    nonzero values nonzero (see the module docstring); other tensors come back as they are."""
    to = dtypes.to_torch(dtype)
    if not t.is_floating_point() or t.dtype == to:
        return t
    info = torch.finfo(to)
    if info.bits < torch.finfo(t.dtype).bits or info.max < torch.finfo(t.dtype).max:
        tiny = info.smallest_normal * info.eps  # the smallest subnormal of `to`
        x = t.clamp(info.min, info.max)  # clamp keeps NaN; +-inf become +-max...
        x = torch.where(torch.isinf(t), t, x)  # ...so put the infinities back
        small = (x != 0) & (x.abs() < tiny)
        if bool(small.any()):
            x = torch.where(small, torch.copysign(torch.full_like(x, tiny), x), x)
        return x.to(to)
    return t.to(to)


def _saturate(v: float, dtype: str) -> float:
    """A float attribute as `dtype` can hold it: finite values clamp to its range."""
    if math.isnan(v) or math.isinf(v):
        return v
    info = torch.finfo(dtypes.to_torch(dtype))
    return float(min(max(v, info.min), info.max))


# ---------------------------------------------------------------------------- decisions
def _node_name(n: Node, k: int) -> str:
    return n.name or f"{n.op_type}_{k}"


def _has_subgraph(n: Node) -> bool:
    return any(
        isinstance(v, Graph) or (isinstance(v, list) and any(isinstance(x, Graph) for x in v))
        for v in n.attrs.values()
    )


def _is_float(dt: str | None) -> bool:
    return dt in dtypes.FLOAT_TYPES


def _dtype_of(g: Graph, name: str) -> str | None:
    if name in g.initializers:
        return dtypes.from_torch(g.initializers[name].dtype)
    v = g.values.get(name)
    return v.dtype if v is not None else None


def _is_compute(g: Graph, n: Node) -> bool:
    """A node that computes on float data (what the precision report lists)."""
    ins = [
        i for k, i in enumerate(n.inputs) if i and not (k == 0 and n.op_type in ("Shape", "Size"))
    ]
    return any(_is_float(_dtype_of(g, x)) for x in ins + [o for o in n.outputs if o])


def _shape_derived(g: Graph) -> set[str]:
    """Values computed only from shapes (Shape/Size outputs) and small constants: shape and
    index arithmetic, as opposed to data derived from the inputs' contents or weights."""
    sd: set[str] = set()
    for n in g.nodes:
        if n.op_type in ("Shape", "Size"):
            sd.update(o for o in n.outputs if o)
            continue
        if _has_subgraph(n) and n.op_type != "FusedElementwise":
            continue
        if n.op_type in _MATERIALIZE and any(_is_float(_dtype_of(g, o)) for o in n.outputs if o):
            continue
        ins = [i for i in n.inputs if i]

        def const(i: str) -> bool:
            t = g.initializers.get(i)
            return t is not None and (not t.is_floating_point() or t.numel() <= _SMALL_CONST)

        if ins and any(i in sd for i in ins) and all(i in sd or const(i) for i in ins):
            sd.update(o for o in n.outputs if o)
    return sd


def _ints_of(g: Graph, name: str) -> list[int] | None:
    t = g.initializers.get(name)
    if t is None or t.is_floating_point():
        return None
    return [int(v) for v in t.reshape(-1).tolist()]


def _reduction_extent(g: Graph, n: Node) -> int | None:
    """Number of elements each output element sums over; None when unknown."""
    v = g.values.get(n.inputs[0]) if n.inputs else None
    shape = v.shape if v is not None else None
    if shape is None:
        return None
    r = len(shape)
    if n.op_type in ("GlobalAveragePool", "GlobalLpPool"):
        axes = list(range(2, r))
    elif n.op_type in ("CumSum", "CumProd"):
        ax = _ints_of(g, n.inputs[1]) if len(n.inputs) > 1 else None
        if not ax:
            return None
        axes = [ax[0]]
    else:
        if len(n.inputs) > 1 and n.inputs[1]:
            ax = _ints_of(g, n.inputs[1])
            if ax is None:
                return None
        else:
            ax = list(n.attrs.get("axes") or [])
        if not ax:
            if n.attrs.get("noop_with_empty_axes", 0):
                return 1
            ax = list(range(r))
        axes = ax
    count = 1
    for a in axes:
        d = shape[a + r if a < 0 else a]
        if not isinstance(d, int):
            return None
        count *= d
    return count


def _decide(
    g: Graph,
    n: Node,
    name: str,
    prec: str,
    overrides: list[tuple[re.Pattern[str], str, str]],
    sd: set[str],
    keep_io: bool,
    residual: dict[str, str] | None,
) -> tuple[str, str, str]:
    """(precision, reason, note) for one compute node."""
    for pat, p, rx in overrides:
        if pat.search(name):
            return p, f"override '{rx}'", ""
    lowered = STORAGE[prec] != "float32"
    if lowered and residual is not None:
        why = f"kept fp32: residual stream ({prec} keeps too few mantissa bits)"
        if name in residual:
            return "float32", why, f"split out of '{residual[name]}'"
        if n.op_type in ("LayerNormalization", "RMSNormalization", "EmbedLayerNorm"):
            return "float32", why, ""
    if lowered:
        if _has_subgraph(n) and n.op_type != "FusedElementwise":
            return "float32", "kept fp32: control flow (its subgraphs are not lowered)", ""
        outs = [o for o in n.outputs if o]
        if outs and all(o in sd for o in outs):
            return "float32", "kept fp32: shape/index arithmetic", ""
        if n.op_type == "Cast" and keep_io and set(outs) & set(g.output_names):
            return "float32", "kept fp32: casts a graph output to its declared type", ""
        if n.op_type in _SUMMING:
            ext = _reduction_extent(g, n)
            if ext is None:
                return "float32", f"kept fp32: {n.op_type} over an extent unknown at build", ""
            if ext > LARGE_REDUCTION:
                return "float32", f"kept fp32: {n.op_type} over {ext} elements", ""
    if prec == "tf32" and n.op_type not in MATMUL_OPS:
        return "float32", "default", "tf32 applies to matmul/conv only"
    note = ""
    if lowered and n.op_type in _NORMS:
        note = "statistics in fp32: stash_type=1"
    elif lowered and n.op_type == "EmbedLayerNorm":
        note = "sum and statistics in fp32"
    elif residual and name in residual.values():
        note = "residual add split out, runs in fp32"
    elif lowered and n.op_type in ("Softmax", "LogSoftmax", "Attention", "MultiHeadAttention"):
        note = "max-subtracted, sums accumulate in fp32"
    elif n.op_type in _QUANTIZED:
        note = f"{n.attrs.get('qtype', 'int8')} operands, scales fp32"
    return prec, "default", note


# ---------------------------------------------------------------------------- lowering
class _Lowering:
    """Rewrites one graph so every node reads its float inputs in its storage dtype."""

    def __init__(self, g: Graph, orig: dict[str, str | None]):
        self.g = g
        self.orig = orig  # dtype of every value before lowering
        self.cur = dict(orig)  # dtype now
        self.cache: dict[tuple[str, str], str] = {}  # (value, dtype) -> its cast/converted name
        self.converted: dict[str, str] = {}  # converted initializer -> original name
        self.node_names = {n.name for n in g.nodes if n.name}
        self.out: list[Node] = []
        for n in g.nodes:
            # the model's own Cast(v, to=float16/bfloat16) already is v in that dtype (its
            # target is not retargeted): reuse it rather than cast v a second time
            if n.op_type == "Cast" and n.inputs and n.inputs[0] and n.outputs[0]:
                to = n.attrs.get("to")
                to = to if isinstance(to, str) else dtypes.from_onnx(int(to))  # type: ignore[arg-type]
                if to in ("float16", "bfloat16") and orig.get(n.inputs[0]) == "float32":
                    self.cache.setdefault((n.inputs[0], to), n.outputs[0])

    def _node_name(self, base: str) -> str:
        name, k = base, 1
        while name in self.node_names:
            name, k = f"{base}_{k}", k + 1
        self.node_names.add(name)
        return name

    def as_dtype(self, name: str, want: str) -> str:
        """`name` as a value of dtype `want`: itself, a converted weight, or a Cast output."""
        have = self.cur.get(name)
        if have == want:
            return name
        key = (name, want)
        if key in self.cache:
            return self.cache[key]
        g = self.g
        if name in g.initializers and name not in g.input_names:
            new = g.fresh_name(f"{name}_{SHORT_NAMES.get(want, want)}")
            g.initializers[new] = convert_tensor(g.initializers[name], want)
            v = g.values.get(name)
            g.values[new] = Value(new, want, v.shape if v else tuple(g.initializers[new].shape))
            self.converted[new] = name
        else:
            new = g.fresh_name(f"{name}_{SHORT_NAMES.get(want, want)}")
            v = g.values.get(name)
            g.values[new] = Value(new, want, v.shape if v else None)
            node = Node(
                "Cast",
                [name],
                [new],
                {"to": dtypes.to_onnx(want)},
                self._node_name(f"{name}_cast_{SHORT_NAMES.get(want, want)}"),
            )
            self.out.append(node)
        self.cur[new] = want
        self.cache[key] = new
        return new

    def lower_node(self, n: Node, dt: str, keep_fp32_inputs: bool = False) -> None:
        """Rewrite node n to run in storage dtype dt (float32 values only are touched)."""
        params = _PARAM_INPUTS.get(n.op_type, ())
        _adapt_attrs(n, dt, self.orig)
        for k, name in enumerate(n.inputs):
            if not name or self.orig.get(name) != "float32":
                continue
            if k == 0 and n.op_type in _AGNOSTIC_INPUT0:
                continue
            want = "float32" if k in params or keep_fp32_inputs else dt
            have = self.cur.get(name)
            if (
                n.op_type == "FusedElementwise"
                and have != want
                and name not in self.g.initializers
                and _is_float(have)
            ):
                # the fused kernel converts the input as it reads it: no separate Cast
                _cast_body_input(n.attrs["body"], k, have, want)  # type: ignore[arg-type]
                continue
            n.inputs[k] = self.as_dtype(name, want)
        for o in n.outputs:
            if o and self.orig.get(o) == "float32":
                self.cur[o] = dt
                v = self.g.values.get(o)
                if v is not None:
                    v.dtype = dt
        self.out.append(n)


def _widens(wide: str | None, narrow: str | None) -> bool:
    """Casting narrow -> wide is exact (so wide -> narrow gives back the original)."""
    return (narrow, wide) in {
        ("float16", "float32"),
        ("bfloat16", "float32"),
        ("float16", "float64"),
        ("bfloat16", "float64"),
        ("float32", "float64"),
    }


def _adapt_attrs(n: Node, dt: str, orig: dict[str, str | None]) -> None:
    """Attributes that carry float32 types or values, for a node now running in dt (also
    for dt float32: an EyeLike whose input is now half must still produce float32)."""
    code = dtypes.to_onnx(dt)
    if n.op_type == "Cast" and orig.get(n.outputs[0]) == "float32":
        n.attrs["to"] = code
    elif n.op_type == "EyeLike" and orig.get(n.outputs[0]) == "float32":
        n.attrs["dtype"] = code
    elif n.op_type == "ConstantOfShape" and orig.get(n.outputs[0]) == "float32":
        value = n.attrs.get("value")
        if value is None:
            value = torch.zeros(1, dtype=torch.float32)
        n.attrs["value"] = convert_tensor(value, dt)
    elif n.op_type in ("Attention", "MultiHeadAttention") and "mask_fill" in n.attrs:
        n.attrs["mask_fill"] = _saturate(float(n.attrs["mask_fill"]), dt)
    elif n.op_type in _NORMS and dt != "float32":
        n.attrs["stash_type"] = 1  # statistics in fp32
    elif n.op_type == "FusedElementwise" and dt != "float32":
        n.attrs["body"] = _lower_closed(n.attrs["body"], dt)


def _lower_closed(body: Graph, dt: str) -> Graph:
    """A closed elementwise body (FusedElementwise) with every float32 value in dt."""
    orig = {v.name: v.dtype for v in body.values.values()}
    orig.update({v.name: v.dtype for v in body.inputs})
    orig.update({k: dtypes.from_torch(t.dtype) for k, t in body.initializers.items()})
    for k, t in list(body.initializers.items()):
        if t.dtype == torch.float32:
            body.initializers[k] = convert_tensor(t, dt)
    for v in [*body.inputs, *body.outputs, *body.values.values()]:
        if v.dtype == "float32":
            v.dtype = dt
    for n in body.nodes:
        _adapt_attrs(n, dt, orig)
    return body


def _cast_body_input(body: Graph, k: int, have: str, want: str) -> None:
    """Body input k now arrives as `have`: a Cast to `want` at the start of the body."""
    x = body.inputs[k]
    new = body.fresh_name(f"{x.name}_{SHORT_NAMES.get(have, have)}")
    body.values[new] = Value(new, have, x.shape)
    cast = Node("Cast", [new], [x.name], {"to": dtypes.to_onnx(want)}, f"{x.name}_cast")
    body.inputs[k] = Value(new, have, x.shape, x.sym)
    body.values[x.name] = Value(x.name, want, x.shape, x.sym)
    body.nodes.insert(0, cast)


def _elementwise_body(name: str, op: str, dtype: str, shapes: list, opsets: dict) -> Graph:  # noqa: ANN001
    """A FusedElementwise body computing y0 = op(x0, x1, ...)."""
    ins = [Value(f"x{k}", dtype, sh) for k, sh in enumerate(shapes)]
    body = Graph(
        name=name,
        inputs=ins,
        outputs=[Value("y0", dtype)],
        nodes=[Node(op, [v.name for v in ins], ["y0"], {}, name)],
        opsets=dict(opsets),
    )
    body.values = {v.name: Value(v.name, v.dtype, v.shape) for v in ins}
    body.infer_shapes()
    return body


def _split_residuals(g: Graph) -> dict[str, str]:
    """FusedGemm(A, B, bias, residual) -> FusedGemm(A, B, bias) + FusedElementwise(Add), and
    QGemm alike: the residual Add moves to its own node so it can run in fp32 while the GEMM
    runs in the lowered dtype. Returns {new node name: GEMM node name}."""
    made: dict[str, str] = {}
    names = {n.name for n in g.nodes if n.name}
    nodes: list[Node] = []
    for n in g.nodes:
        at = _RESIDUAL_AT.get(n.op_type, -1) if n.domain == "ecoinfer" else -1
        res = n.inputs[at] if 0 <= at < len(n.inputs) else ""
        out = n.outputs[0] if n.outputs else ""
        v = g.values.get(out)
        if not res or v is None or v.dtype != "float32" or g.values.get(res) is None:
            nodes.append(n)
            continue
        mid = g.fresh_name(f"{out}_gemm")
        g.values[mid] = Value(mid, v.dtype, v.shape)
        n.inputs = n.inputs[:at] if n.inputs[at - 1] else n.inputs[: at - 1]
        n.outputs = [mid]
        name, k = f"{n.name or out}_residual_add", 1
        while name in names:
            name, k = f"{n.name or out}_residual_add_{k}", k + 1
        names.add(name)
        body = _elementwise_body(name, "Add", "float32", [v.shape, g.values[res].shape], g.opsets)
        add = Node("FusedElementwise", [mid, res], [out], {"body": body}, name, "ecoinfer")
        nodes += [n, add]
        made[name] = n.name
    g.nodes = nodes
    return made


def _rename_reads(g: Graph, mapping: dict[str, str]) -> None:
    """Point a subgraph's reads of outer values at other names (not names it defines)."""
    local = set(g.input_names) | set(g.initializers) | {o for n in g.nodes for o in n.outputs}
    m = {k: v for k, v in mapping.items() if k not in local}
    if not m:
        return
    for n in g.nodes:
        n.inputs = [m.get(i, i) for i in n.inputs]
        for v in n.attrs.values():
            for sub in v if isinstance(v, list) else [v]:
                if isinstance(sub, Graph):
                    _rename_reads(sub, m)
    for o in g.outputs:
        if o.name in m:
            o.name = m[o.name]


def _replace_uses(g: Graph, old: str, new: str) -> None:
    for n in g.nodes:
        n.inputs = [new if i == old else i for i in n.inputs]


def _cancel_casts(g: Graph) -> int:
    """Float casts only: Cast(Cast(x, wide), to) with an exact first step reads x directly;
    a cast to the type its input already has is dropped. Returns how many casts changed."""
    changed = 0
    prod = g.producers()
    outs = set(g.output_names)
    for n in g.nodes:
        if n.op_type != "Cast" or not n.inputs or not n.inputs[0]:
            continue
        to = n.attrs.get("to")
        to_name = to if isinstance(to, str) else dtypes.from_onnx(int(to))
        if not _is_float(to_name) or not _is_float(_dtype_of(g, n.inputs[0])):
            continue  # integer and bool casts are not this pass's business
        p = prod.get(n.inputs[0])
        if p is not None and p.op_type == "Cast" and p.inputs and p.inputs[0]:
            x = p.inputs[0]
            if _widens(_dtype_of(g, p.outputs[0]), _dtype_of(g, x)):
                n.inputs[0] = x
                changed += 1
        if _dtype_of(g, n.inputs[0]) == to_name and n.outputs[0] not in outs:
            _replace_uses(g, n.outputs[0], n.inputs[0])
            changed += 1
    return changed


# ---------------------------------------------------------------------------- entry point
def assign_precision(
    graph: Graph,
    precision: str,
    layer_precision: Sequence[tuple[str, str]] = (),
    keep_io: bool = True,
    residual_fp32: bool | None = None,
) -> tuple[Graph, list[LayerPrecision]]:
    """Assign a compute precision to every float node; lower the graph accordingly.

    precision: "float32", "tf32", "float16" or "bfloat16" (fp32/fp16/bf16 aliases accepted).
    layer_precision: (regex, precision) overrides searched (re.search) in node names, first
        match wins, e.g. ("attention", "float32") keeps every node whose name contains
        "attention" in fp32, with Casts around it.
    keep_io: float32 graph inputs/outputs keep their type (Casts at entry and exit);
        False lets them take the lowered dtype.
    residual_fp32: keep the residual stream (FusedGemm residual adds, LayerNorm/RMSNorm) in
        fp32 while GEMMs and the rest run lowered; None = on for bfloat16, off otherwise.

    Returns (new graph, per-layer report); the input graph is never modified.
    """
    prec = normalize_precision(precision)
    overrides = [(_compile(rx), normalize_precision(p), rx) for rx, p in layer_precision]
    g = clone_graph(graph)
    g.toposort()
    g.infer_shapes()
    sd = _shape_derived(g)
    if residual_fp32 is None:
        residual_fp32 = prec == "bfloat16"
    residual = _split_residuals(g) if residual_fp32 and STORAGE[prec] != "float32" else None

    layers: list[LayerPrecision] = []
    plan: list[tuple[Node, str | None]] = []  # node, storage dtype (None: not a compute node)
    for k, n in enumerate(g.nodes):
        if not _is_compute(g, n):
            plan.append((n, None))
            continue
        name = _node_name(n, k)
        p, reason, note = _decide(g, n, name, prec, overrides, sd, keep_io, residual)
        layers.append(LayerPrecision(name, n.op_type, p, reason, note))
        plan.append((n, STORAGE[p]))

    io_dt = STORAGE[prec]
    lowers_io = not keep_io and io_dt != "float32"
    if all(dt in (None, "float32") for _, dt in plan) and not lowers_io:
        return g, layers  # float32/tf32 without half overrides: nothing to rewrite

    orig: dict[str, str | None] = {k: v.dtype for k, v in g.values.items()}
    orig.update({k: dtypes.from_torch(t.dtype) for k, t in g.initializers.items()})
    orig.update({v.name: v.dtype for v in g.inputs})
    low = _Lowering(g, orig)
    if lowers_io:
        for v in g.inputs:
            if v.dtype == "float32":
                v.dtype = io_dt
                low.cur[v.name] = io_dt
                if v.name in g.values:
                    g.values[v.name].dtype = io_dt
    for n, dt in plan:
        if dt is None:
            low.out.append(n)
        elif _has_subgraph(n) and n.op_type != "FusedElementwise":
            _lower_control_flow(low, n)
        else:
            low.lower_node(n, dt)
    g.nodes = low.out

    _fix_outputs(g, low, io_dt if lowers_io else None)
    _restore_weight_names(g, low)
    _cancel_casts(g)
    remove_dead(g)
    g.infer_shapes()
    g.verify()
    return g, layers


def _lower_control_flow(low: _Lowering, n: Node) -> None:
    """If/Loop/Scan run in fp32: explicit float inputs and the outer values their bodies
    read are given to them in float32."""
    mapping: dict[str, str] = {}
    for name in all_inputs(n):
        if name and name not in n.inputs and low.orig.get(name) == "float32":
            new = low.as_dtype(name, "float32")
            if new != name:
                mapping[name] = new
    if mapping:
        for v in n.attrs.values():
            for sub in v if isinstance(v, list) else [v]:
                if isinstance(sub, Graph):
                    _rename_reads(sub, mapping)
    low.lower_node(n, "float32", keep_fp32_inputs=True)


def _fix_outputs(g: Graph, low: _Lowering, io_dt: str | None) -> None:
    """Graph outputs leave in their declared type (or io_dt): a Cast at the exit."""
    prod = g.producers()
    for o in g.outputs:
        want = io_dt if (io_dt is not None and low.orig.get(o.name) == "float32") else o.dtype
        have = low.cur.get(o.name)
        if want is None or have == want or o.name not in prod:
            if io_dt is not None and want is not None and have == want:
                o.dtype = want
            continue
        inner = g.fresh_name(f"{o.name}_{SHORT_NAMES.get(have or '', have)}")
        producer = prod[o.name]
        producer.outputs = [inner if x == o.name else x for x in producer.outputs]
        v = g.values.pop(o.name, None)
        g.values[inner] = Value(inner, have, v.shape if v else None, v.sym if v else None)
        _replace_uses(g, o.name, inner)
        g.values[o.name] = Value(o.name, want, v.shape if v else None)
        o.dtype = want
        cast = Node(
            "Cast",
            [inner],
            [o.name],
            {"to": dtypes.to_onnx(want)},
            low._node_name(f"{o.name}_cast_{SHORT_NAMES.get(want, want)}"),
        )
        # a consumer that had up-cast the value itself reads the exit cast instead
        for n in g.nodes:
            if (
                n.op_type == "Cast"
                and n.inputs == [inner]
                and _dtype_of(g, n.outputs[0]) == want
                and n.outputs[0] not in g.output_names
            ):
                _replace_uses(g, n.outputs[0], o.name)
        g.nodes.append(cast)
    g.toposort()


def _restore_weight_names(g: Graph, low: _Lowering) -> None:
    """A weight converted for every reader keeps its original name in the engine."""
    used = set(g.output_names) | set(g.input_names)
    for n in g.nodes:
        used.update(all_inputs(n))
    for new, old in low.converted.items():
        if old in used or new not in g.initializers:
            continue
        g.initializers[old] = g.initializers.pop(new)
        v = g.values.pop(new)
        g.values[old] = Value(old, v.dtype, v.shape, v.sym)
        _replace_uses(g, new, old)
        used.add(old)
