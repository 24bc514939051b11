"""Shape/dtype inference for tensor ops: reshaping, indexing, gather/scatter, shape arithmetic.

Small int64 tensors that describe shapes (Shape, Gather/Slice/Concat of it, ...) carry their
known contents in OutType.sym, so Reshape/Expand/ConstantOfShape/Range/Tile can produce
symbolic output shapes like ('batch', 'seq', 12, 64) for exported models.
"""

from __future__ import annotations

import math

from ecoinfer.ir import dtypes
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

_SYM_MAX = 64  # longest int tensor whose contents we track


# ---------------------------------------------------------------------------- helpers
def _int_dtype(dt: str | None) -> bool:
    return dt is not None and dt in dtypes.INT_TYPES


def _small_sym(ctx: InferContext, sym: Shape | None) -> Shape | None:
    """A sym is only worth keeping for short integer tensors."""
    if sym is None or len(sym) > _SYM_MAX:
        return None
    return tuple(sym)


def _vec_sym(ctx: InferContext, out: Shape) -> Shape | None:
    """Input 0's known contents, kept when the output is still a scalar or vector."""
    return ctx.sym(0) if len(out) <= 1 else None


def _shape_from_sym(ctx: InferContext, i: int) -> Shape | None:
    """Turn a 1-D shape tensor input into a shape: known entries as ints or symbols."""
    sym = ctx.sym(i)
    if sym is not None:
        return tuple(sym)
    s = ctx.shape(i)
    if s is not None and len(s) == 1 and isinstance(s[0], int):
        return tuple(ctx.new_dim() for _ in range(s[0]))  # rank known, contents not
    return None


def _scalar_dim(ctx: InferContext, i: int) -> Dim:
    """A scalar (or 1-element) input's value as a dim, if known."""
    sym = ctx.sym(i)
    if sym is not None and len(sym) == 1:
        return sym[0]
    c = ctx.const(i)
    if c is not None and c.numel() == 1:  # e.g. a float depth
        return int(c.reshape(-1)[0].item())
    return None


def _split_factors(d: Dim) -> tuple[int, list[str]] | None:
    """d as (int factor, symbol factors); 'a*b' strings made by dim_mul split back."""
    if isinstance(d, int):
        return d, []
    if isinstance(d, str):
        n, syms = 1, []
        for part in d.split("*"):
            if part.isdigit():
                n *= int(part)
            else:
                syms.append(part)
        return n, syms
    return None


def _solve_missing(ctx: InferContext, total: Shape, known: list[Dim]) -> Dim:
    """The dim that makes prod(known) * x == prod(total) (Reshape's -1)."""
    n_in, s_in = 1, []
    for d in total:
        f = _split_factors(d)
        if f is None:
            return ctx.new_dim()
        n_in *= f[0]
        s_in.extend(f[1])
    n_out = 1
    for d in known:
        f = _split_factors(d)
        if f is None:
            return ctx.new_dim()
        n_out *= f[0]
        for s in f[1]:
            if s not in s_in:
                return ctx.new_dim()
            s_in.remove(s)
    if n_out == 0:
        return ctx.new_dim()
    if n_in % n_out:
        if not s_in:
            raise ctx.fail(f"cannot reshape {n_in} elements into a shape with {n_out}*k elements")
        return ctx.new_dim()
    rest = n_in // n_out
    if not s_in:
        return rest
    return "*".join(s_in + ([str(rest)] if rest != 1 else []))  # same order as dim_mul


def _axes(ctx: InferContext, axes: list[int], rank: int) -> list[int]:
    out = [ctx.norm_axis(a, rank) for a in axes]
    if len(set(out)) != len(out):
        raise ctx.fail(f"axes {axes} repeat an axis")
    return out


# ---------------------------------------------------------------------------- simple
@op("Identity")
def _identity(ctx: InferContext) -> list[OutType]:
    return [OutType(ctx.dtype(0), ctx.shape(0), sym=ctx.sym(0))]


@op("Shape", attrs={"start": 0})
def _shape(ctx: InferContext) -> list[OutType]:
    s = ctx.shape(0)
    if s is None:
        return [OutType("int64", (None,))]
    r = len(s)
    start, end = ctx.attr("start", 0), ctx.attr("end", r)
    start = min(max(start + r if start < 0 else start, 0), r)
    end = min(max(end + r if end < 0 else end, 0), r)
    sym = tuple(s[start:end])
    return [OutType("int64", (len(sym),), sym=sym)]


@op("Size")
def _size(ctx: InferContext) -> list[OutType]:
    n = numel(ctx.shape(0))
    return [OutType("int64", (), sym=None if n is None else (n,))]


@op("Reshape", inputs=(2, 2), attrs={"allowzero": 0})
def _reshape(ctx: InferContext) -> list[OutType]:
    target = _shape_from_sym(ctx, 1)
    if target is None:
        return [OutType(ctx.dtype(0), None)]
    src = ctx.shape(0)
    allowzero = ctx.attr("allowzero", 0)
    out: list[Dim] = []
    minus = None
    for k, d in enumerate(target):
        if d == 0 and not allowzero:
            if src is None or k >= len(src):
                if src is not None:
                    raise ctx.fail(f"shape entry {k} is 0 (copy) but the input has rank {len(src)}")
                out.append(None)
            else:
                out.append(src[k])
        elif d == -1:
            if minus is not None:
                raise ctx.fail(f"shape {list(target)} has more than one -1")
            minus = k
            out.append(None)
        elif isinstance(d, int) and d < -1:
            raise ctx.fail(f"shape {list(target)} has a negative entry {d}")
        else:
            out.append(d)
    if minus is not None:
        others = out[:minus] + out[minus + 1 :]
        if src is not None and all(d is not None for d in others):
            out[minus] = _solve_missing(ctx, src, others)
        else:
            out[minus] = ctx.new_dim()
    shape = tuple(out)
    sym = None
    if src is not None and ctx.sym(0) is not None and len(shape) <= 1:
        sym = ctx.sym(0)  # reshaping a shape vector to 1-D/0-D keeps its contents
    return [OutType(ctx.dtype(0), shape, sym=sym)]


@op("Transpose")
def _transpose(ctx: InferContext) -> list[OutType]:
    s = ctx.shape(0)
    if s is None:
        return [OutType(ctx.dtype(0), None)]
    perm = ctx.attr("perm") or list(range(len(s)))[::-1]
    if sorted(perm) != list(range(len(s))):
        raise ctx.fail(f"perm {perm} is not a permutation of the {len(s)} input axes")
    return [OutType(ctx.dtype(0), tuple(s[p] for p in perm))]


@op("Flatten", attrs={"axis": 1})
def _flatten(ctx: InferContext) -> list[OutType]:
    s = ctx.shape(0)
    if s is None:
        return [OutType(ctx.dtype(0), (None, None))]
    axis = ctx.attr("axis", 1)
    r = len(s)
    if not -r <= axis <= r:
        raise ctx.fail(f"axis {axis} is out of range for an input of rank {r}")
    axis = axis + r if axis < 0 else axis
    return [OutType(ctx.dtype(0), (numel(s[:axis]), numel(s[axis:])))]


@op("Squeeze", inputs=(1, 2))
def _squeeze(ctx: InferContext) -> list[OutType]:
    s = ctx.shape(0)
    if s is None:
        return [OutType(ctx.dtype(0), None, sym=ctx.sym(0))]
    if ctx.has(1):
        axes = ctx.ints(1)
        if axes is None:
            return [OutType(ctx.dtype(0), None, sym=ctx.sym(0))]
        ax = _axes(ctx, axes, len(s))
        for a in ax:
            if isinstance(s[a], int) and s[a] != 1:
                raise ctx.fail(f"cannot squeeze axis {a} of size {s[a]} (input shape {list(s)})")
    else:
        if any(not isinstance(d, int) for d in s):
            return [OutType(ctx.dtype(0), None, sym=ctx.sym(0))]
        ax = [k for k, d in enumerate(s) if d == 1]
    out = tuple(d for k, d in enumerate(s) if k not in ax)
    return [OutType(ctx.dtype(0), out, sym=_vec_sym(ctx, out))]


@op("Unsqueeze", inputs=(2, 2))
def _unsqueeze(ctx: InferContext) -> list[OutType]:
    s = ctx.shape(0)
    axes = ctx.ints(1)
    if s is None or axes is None:
        return [OutType(ctx.dtype(0), None, sym=ctx.sym(0))]
    r = len(s) + len(axes)
    ax = set(_axes(ctx, axes, r))
    it = iter(s)
    out = tuple(1 if k in ax else next(it) for k in range(r))
    return [OutType(ctx.dtype(0), out, sym=_vec_sym(ctx, out))]


@op("Expand", inputs=(2, 2))
def _expand(ctx: InferContext) -> list[OutType]:
    target = _shape_from_sym(ctx, 1)
    shape = broadcast_shapes(ctx, ctx.shape(0), target)
    sym = None
    s0 = ctx.sym(0)
    if s0 is not None and shape is not None and len(shape) <= 1:
        n = shape[0] if shape else 1
        if len(s0) == n:
            sym = s0
        elif len(s0) == 1 and isinstance(n, int) and n <= _SYM_MAX:
            sym = s0 * n
    return [OutType(ctx.dtype(0), shape, sym=sym)]


@op("Tile", inputs=(2, 2))
def _tile(ctx: InferContext) -> list[OutType]:
    s = ctx.shape(0)
    reps = ctx.sym(1)
    if s is None:
        return [OutType(ctx.dtype(0), None)]
    if reps is None:
        return [OutType(ctx.dtype(0), tuple(None for _ in s))]
    if len(reps) != len(s):
        raise ctx.fail(f"repeats has {len(reps)} entries but the input has rank {len(s)}")
    return [OutType(ctx.dtype(0), tuple(dim_mul(d, r) for d, r in zip(s, reps)))]


@op("Concat", inputs=(1, -1), attrs={})
def _concat(ctx: InferContext) -> list[OutType]:
    dt = next((ctx.dtype(i) for i in range(ctx.n_inputs) if ctx.dtype(i)), None)
    shapes = [ctx.shape(i) for i in range(ctx.n_inputs)]
    syms = [ctx.sym(i) for i in range(ctx.n_inputs)]
    sym = None
    if all(s is not None for s in syms):
        sym = _small_sym(ctx, tuple(d for s in syms for d in s))  # type: ignore[union-attr]
    if "axis" not in ctx.node.attrs:
        raise ctx.fail("attribute 'axis' is required")
    known = [s for s in shapes if s is not None]
    if not known:
        return [OutType(dt, None, sym=sym)]
    r = len(known[0])
    if any(len(s) != r for s in known):
        raise ctx.fail(f"inputs have different ranks: {[list(s) for s in known]}")
    axis = ctx.norm_axis(ctx.attr("axis"), r)
    out: list[Dim] = []
    for k in range(r):
        if k == axis:
            total: Dim = 0
            for s in shapes:
                if s is None:
                    total = None
                    break
                total = _dim_add(total, s[k])
            out.append(total)
        else:
            d: Dim = None
            for s in known:
                if isinstance(s[k], int):
                    if isinstance(d, int) and d != s[k]:
                        raise ctx.fail(
                            f"inputs differ in dimension {k} ({d} vs {s[k]}), not the concat axis"
                        )
                    d = s[k]
                elif d is None:
                    d = s[k]
            out.append(d)
    return [OutType(dt, tuple(out), sym=sym)]


def _dim_add(a: Dim, b: Dim) -> Dim:
    if isinstance(a, int) and isinstance(b, int):
        return a + b
    if a == 0:
        return b
    if b == 0:
        return a
    return None


@op("Split", inputs=(1, 2), outputs=(1, -1), attrs={"axis": 0})
def _split(ctx: InferContext) -> list[OutType]:
    n = len(ctx.node.outputs)
    dt = ctx.dtype(0)
    s = ctx.shape(0)
    if s is None:
        return [OutType(dt, None) for _ in range(n)]
    axis = ctx.norm_axis(ctx.attr("axis", 0), len(s))
    d = s[axis]
    sizes: list[Dim]
    if ctx.has(1):
        split = ctx.sym(1)
        if split is None:
            sizes = [ctx.new_dim() for _ in range(n)]
        else:
            if len(split) != n:
                raise ctx.fail(f"split has {len(split)} entries but the node has {n} outputs")
            if all(isinstance(x, int) for x in split) and isinstance(d, int) and sum(split) != d:  # type: ignore[arg-type]
                raise ctx.fail(f"split {list(split)} does not sum to dimension {axis} of size {d}")
            sizes = list(split)
    else:
        parts = ctx.attr("num_outputs") or n
        if isinstance(d, int):
            chunk = -(-d // parts)
            sizes = [min(chunk, max(d - k * chunk, 0)) for k in range(n)]
        elif n == 1:
            sizes = [d]
        else:
            # equal parts of an unknown size share one symbol; the last may be smaller
            common = ctx.new_dim()
            sizes = [common] * (n - 1) + [
                common if ctx.attr("num_outputs") is None else ctx.new_dim()
            ]
    sym = ctx.sym(0)
    outs = []
    pos = 0
    for k in range(n):
        shape = s[:axis] + (sizes[k],) + s[axis + 1 :]
        part_sym = None
        if sym is not None and len(s) == 1 and isinstance(sizes[k], int) and pos is not None:
            part_sym = tuple(sym[pos : pos + sizes[k]])  # type: ignore[operator]
        pos = pos + sizes[k] if isinstance(sizes[k], int) and pos is not None else None  # type: ignore[operator]
        outs.append(OutType(dt, shape, sym=part_sym))
    return outs


_BIG = 2**62


def _slice_params(ctx: InferContext, rank: int) -> list[tuple[int, int, int, int]] | None:
    """(axis, start, end, step) per sliced axis from constant inputs, or None if unknown."""
    starts, ends = ctx.ints(1), ctx.ints(2)
    if starts is None or ends is None:
        return None
    axes = ctx.ints(3) if ctx.has(3) else list(range(len(starts)))
    steps = ctx.ints(4) if ctx.has(4) else [1] * len(starts)
    if axes is None or steps is None:
        return None
    if not len(starts) == len(ends) == len(axes) == len(steps):
        raise ctx.fail(
            f"starts/ends/axes/steps have different lengths "
            f"({len(starts)}, {len(ends)}, {len(axes)}, {len(steps)})"
        )
    if any(st == 0 for st in steps):
        raise ctx.fail("a slice step is 0")
    ax = _axes(ctx, axes, rank)
    return list(zip(ax, starts, ends, steps))


def _slice_len(d: Dim, start: int, end: int, step: int) -> Dim:
    if isinstance(d, int):
        return len(range(*slice(start, end, step).indices(d)))
    if step == 1 and start == 0 and end >= _BIG:
        return d  # whole axis
    return None


def _symbolic_slice(ctx: InferContext, s: tuple) -> tuple:
    """Slice whose ends are symbolic dims (x[:, :seq] with seq from Shape): from 0 with step 1
    the result has `seq` elements, assuming (as the model does) that seq lies within the axis."""
    starts, ends = ctx.sym(1), ctx.sym(2)
    axes = ctx.ints(3) if ctx.has(3) else (list(range(len(starts))) if starts is not None else None)
    steps = ctx.ints(4) if ctx.has(4) else ([1] * len(starts) if starts is not None else None)
    if starts is None or ends is None or axes is None or steps is None:
        return tuple(ctx.new_dim() for _ in s)
    if not len(starts) == len(ends) == len(axes) == len(steps):
        return tuple(ctx.new_dim() for _ in s)
    out = list(s)
    for axis, start, end, step in zip(_axes(ctx, axes, len(s)), starts, ends, steps):
        if isinstance(start, int) and isinstance(end, int):
            d = _slice_len(s[axis], start, end, step)
            out[axis] = ctx.new_dim() if d is None else d
        elif start == 0 and step == 1 and isinstance(end, str):
            out[axis] = end
        else:
            out[axis] = ctx.new_dim()
    return tuple(out)


@op("Slice", inputs=(3, 5))
def _slice(ctx: InferContext) -> list[OutType]:
    s = ctx.shape(0)
    if s is None:
        return [OutType(ctx.dtype(0), None)]
    params = _slice_params(ctx, len(s))
    if params is None:
        return [OutType(ctx.dtype(0), _symbolic_slice(ctx, s))]
    out = list(s)
    for axis, start, end, step in params:
        d = _slice_len(s[axis], start, end, step)
        out[axis] = ctx.new_dim() if d is None else d
    sym = None
    src = ctx.sym(0)
    if src is not None and len(s) == 1 and params:
        _, start, end, step = params[0]
        sym = tuple(src[slice(start, end, step)])
    return [OutType(ctx.dtype(0), tuple(out), sym=sym)]


# ---------------------------------------------------------------------------- gather / scatter
@op("Gather", inputs=(2, 2), attrs={"axis": 0})
def _gather(ctx: InferContext) -> list[OutType]:
    s, idx = ctx.shape(0), ctx.shape(1)
    if s is None or idx is None:
        return [OutType(ctx.dtype(0), None)]
    axis = ctx.norm_axis(ctx.attr("axis", 0), len(s))
    out = s[:axis] + idx + s[axis + 1 :]
    sym = None
    src, ind = ctx.sym(0), ctx.ints(1)
    if src is not None and ind is not None and len(s) == 1:
        n = len(src)
        if all(-n <= i < n for i in ind) and len(out) <= 1:
            sym = tuple(src[i] for i in ind)
    return [OutType(ctx.dtype(0), out, sym=sym)]


@op("GatherElements", inputs=(2, 2), attrs={"axis": 0})
def _gather_elements(ctx: InferContext) -> list[OutType]:
    s, idx = ctx.shape(0), ctx.shape(1)
    if s is not None and idx is not None and len(s) != len(idx):
        raise ctx.fail(f"data has rank {len(s)} but indices rank {len(idx)}")
    return [OutType(ctx.dtype(0), idx)]


@op("GatherND", inputs=(2, 2), attrs={"batch_dims": 0})
def _gather_nd(ctx: InferContext) -> list[OutType]:
    s, idx = ctx.shape(0), ctx.shape(1)
    if s is None or idx is None or not isinstance(idx[-1], int):
        return [OutType(ctx.dtype(0), None)]
    b = ctx.attr("batch_dims", 0)
    k = idx[-1]
    if b + k > len(s):
        raise ctx.fail(f"indices address {k} dims after {b} batch dims but data has rank {len(s)}")
    return [OutType(ctx.dtype(0), idx[:-1] + s[b + k :])]


@op(["ScatterElements", "Scatter"], inputs=(3, 3), attrs={"axis": 0, "reduction": "none"})
def _scatter_elements(ctx: InferContext) -> list[OutType]:
    return [same(ctx)]


@op("ScatterND", inputs=(3, 3), attrs={"reduction": "none"})
def _scatter_nd(ctx: InferContext) -> list[OutType]:
    return [same(ctx)]


# ---------------------------------------------------------------------------- constants
@op("ConstantOfShape")
def _constant_of_shape(ctx: InferContext) -> list[OutType]:
    value = ctx.attr("value")
    dt = "float32" if value is None else dtypes.from_torch(value.dtype)
    shape = _shape_from_sym(ctx, 0)
    sym = None
    if shape is not None and len(shape) <= 1 and _int_dtype(dt):
        n = shape[0] if shape else 1
        v = 0 if value is None else int(value.reshape(-1)[0].item())
        if isinstance(n, int) and n <= _SYM_MAX:
            sym = (v,) * n
    return [OutType(dt, shape, sym=sym)]


@op("Range", inputs=(3, 3), attrs={})
def _range(ctx: InferContext) -> list[OutType]:
    dt = ctx.dtype(0)
    if not _int_dtype(dt):
        cs = [ctx.const(i) for i in range(3)]
        if all(c is not None for c in cs):  # float ranges: count from the constants
            a, b, d = (float(c.reshape(-1)[0].item()) for c in cs)  # type: ignore[union-attr]
            return [OutType(dt, (max(math.ceil((b - a) / d), 0),) if d else None)]
        return [OutType(dt, (ctx.new_dim(),))]
    start, limit, delta = _scalar_dim(ctx, 0), _scalar_dim(ctx, 1), _scalar_dim(ctx, 2)
    n: Dim
    sym = None
    if all(isinstance(x, int) for x in (start, limit, delta)) and delta != 0:
        values = range(start, limit, delta)  # type: ignore[arg-type]
        n = len(values)
        if n <= _SYM_MAX:
            sym = tuple(values)
    elif start == 0 and delta == 1 and limit is not None:
        n = limit  # Range(0, seq) has seq elements
    else:
        n = ctx.new_dim()
    return [OutType(dt, (n,), sym=sym)]


@op("EyeLike", attrs={"k": 0})
def _eye_like(ctx: InferContext) -> list[OutType]:
    s = ctx.shape(0)
    if s is not None and len(s) != 2:
        raise ctx.fail(f"input must be 2-D, got shape {list(s)}")
    dt = ctx.attr("dtype")
    return [OutType(dtypes.from_onnx(dt) if dt is not None else ctx.dtype(0), s)]


@op("Trilu", inputs=(1, 2), attrs={"upper": 1})
def _trilu(ctx: InferContext) -> list[OutType]:
    return [same(ctx)]


@op("OneHot", inputs=(3, 3), attrs={"axis": -1})
def _one_hot(ctx: InferContext) -> list[OutType]:
    s = ctx.shape(0)
    dt = ctx.dtype(2)
    if s is None:
        return [OutType(dt, None)]
    depth = _scalar_dim(ctx, 1)
    r = len(s) + 1
    axis = ctx.norm_axis(ctx.attr("axis", -1), r)
    out = s[:axis] + (depth if depth is not None else ctx.new_dim(),) + s[axis:]
    return [OutType(dt, out)]


# ---------------------------------------------------------------------------- data dependent
@op("NonZero")
def _nonzero(ctx: InferContext) -> list[OutType]:
    r = ctx.rank(0)
    return [OutType("int64", (r, ctx.new_dim()))]


@op("Compress", inputs=(2, 2))
def _compress(ctx: InferContext) -> list[OutType]:
    s = ctx.shape(0)
    axis = ctx.attr("axis")
    if axis is None:
        return [OutType(ctx.dtype(0), (ctx.new_dim(),))]
    if s is None:
        return [OutType(ctx.dtype(0), None)]
    a = ctx.norm_axis(axis, len(s))
    return [OutType(ctx.dtype(0), s[:a] + (ctx.new_dim(),) + s[a + 1 :])]


@op("Unique", outputs=(1, 4), attrs={"sorted": 1})
def _unique(ctx: InferContext) -> list[OutType]:
    s = ctx.shape(0)
    u = ctx.new_dim()
    axis = ctx.attr("axis")
    if axis is None:
        y: Shape | None = (u,)
        inv: Dim = numel(s)
    elif s is None:
        y, inv = None, None
    else:
        a = ctx.norm_axis(axis, len(s))
        y = s[:a] + (u,) + s[a + 1 :]
        inv = s[a]
    return [
        OutType(ctx.dtype(0), y),
        OutType("int64", (u,)),
        OutType("int64", (inv,)),
        OutType("int64", (u,)),
    ]


# ---------------------------------------------------------------------------- index ops
@op("TopK", inputs=(2, 2), outputs=(2, 2), attrs={"axis": -1, "largest": 1, "sorted": 1})
def _topk(ctx: InferContext) -> list[OutType]:
    s = ctx.shape(0)
    if s is None:
        return [OutType(ctx.dtype(0), None), OutType("int64", None)]
    axis = ctx.norm_axis(ctx.attr("axis", -1), len(s))
    k = _scalar_dim(ctx, 1)
    if isinstance(k, int) and isinstance(s[axis], int) and k > s[axis]:
        raise ctx.fail(f"K={k} is larger than axis {axis} of size {s[axis]}")
    out = s[:axis] + (k if k is not None else ctx.new_dim(),) + s[axis + 1 :]
    return [OutType(ctx.dtype(0), out), OutType("int64", out)]


@op(["ArgMax", "ArgMin"], attrs={"axis": 0, "keepdims": 1, "select_last_index": 0})
def _argmax(ctx: InferContext) -> list[OutType]:
    s = ctx.shape(0)
    if s is None:
        return [OutType("int64", None)]
    axis = ctx.norm_axis(ctx.attr("axis", 0), len(s))
    if ctx.attr("keepdims", 1):
        out = s[:axis] + (1,) + s[axis + 1 :]
    else:
        out = s[:axis] + s[axis + 1 :]
    return [OutType("int64", out)]


@op(["CumSum", "CumProd"], inputs=(2, 2), attrs={"exclusive": 0, "reverse": 0})
def _cumsum(ctx: InferContext) -> list[OutType]:
    return [same(ctx)]


@op("ReverseSequence", inputs=(2, 2), attrs={"batch_axis": 1, "time_axis": 0})
def _reverse_sequence(ctx: InferContext) -> list[OutType]:
    return [same(ctx)]
