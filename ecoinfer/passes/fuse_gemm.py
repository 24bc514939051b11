"""MatMul/Gemm + bias + activation + residual Add into one ecoinfer.FusedGemm node.

FusedGemm(A, B, bias?, residual?) computes Y = act(A @ op(B) + bias) + residual (see
ecoinfer/ir/ops/fused_gemm.py). The rules build it up one step at a time, each checking the
value it absorbs has no other reader (the pattern engine's single-use rule), so a MatMul whose
bias Add is also read elsewhere keeps its bias but stops there:

    MatMul(A, W const 2-D)                     -> FusedGemm(A, W)
    Gemm(A, B, C; transA=0)                    -> FusedGemm(A, alpha*B, beta*C, trans_b=transB)
    Reshape(FusedGemm(Reshape(x, [-1, K])), x.shape[:t] + [N])
                                               -> FusedGemm(x viewed as x.shape[:t] + [K])
                                                  (N-D A instead of the 2-D Gemm view)
    FusedGemm(...) + c   (c const along N)     -> bias += c       (before any activation)
    act(FusedGemm(...))                        -> activation = act  (before any residual)
    FusedGemm(...) + r                         -> residual = r
"""

from __future__ import annotations

from collections import Counter

import torch

from ecoinfer.ir.graph import Graph, Node
from ecoinfer.ir.pattern import Any_, Const, Match, Op, Rewriter, Rule, apply_rules
from ecoinfer.kernels.torch_ops.activation import activation_of
from ecoinfer.passes.fusion_util import dtype_of, is_float, shape_of
from ecoinfer.passes.registry import register_pass

DOMAIN = "ecoinfer"
ACTIVATIONS = (
    "Relu",
    "Sigmoid",
    "Tanh",
    "HardSwish",
    "HardSigmoid",
    "LeakyRelu",
    "Elu",
    "Swish",
    "Gelu",
)


# ---------------------------------------------------------------------- node helpers
def _ins(n: Node) -> list[str]:
    return list(n.inputs) + [""] * (4 - len(n.inputs))


def _has_act(n: Node) -> bool:
    return bool(n.attrs.get("activation"))


def _has_residual(n: Node) -> bool:
    return _ins(n)[3] != ""


def fused_gemm(
    name: str,
    a: str,
    b: str,
    out: str,
    bias: str = "",
    residual: str = "",
    attrs: dict | None = None,
) -> Node:
    inputs = [a, b, bias, residual]
    while inputs and inputs[-1] == "":
        inputs.pop()
    return Node("FusedGemm", inputs, [out], dict(attrs or {}), name=name, domain=DOMAIN)


def _rebuild(g: Node, out: str, **change: str | dict) -> Node:
    a, b, bias, res = _ins(g)
    attrs = dict(g.attrs)
    attrs.update(change.pop("attrs", {}))  # type: ignore[arg-type]
    return fused_gemm(
        g.name,
        str(change.get("a", a)),
        b,
        out,
        str(change.get("bias", bias)),
        str(change.get("residual", res)),
        attrs,
    )


def weight_kn(graph: Graph, g: Node) -> tuple[object, object] | None:
    """(K, N) of a FusedGemm from B's shape and trans_b."""
    s = shape_of(graph, g.inputs[1])
    if s is None or len(s) != 2:
        return None
    return (s[1], s[0]) if int(g.attrs.get("trans_b", 0)) else (s[0], s[1])


def _as_bias(c: torch.Tensor, n: object, out_rank: int | None) -> torch.Tensor | None:
    """c as a 1-D [N] bias when adding c to a [..., N] tensor only broadcasts it along N."""
    if not isinstance(n, int) or out_rank is None or c.dim() > out_rank:
        return None
    if c.numel() == 1:
        return c.reshape(1).expand(n).clone()
    if c.dim() == 0 or c.shape[-1] != n or c.numel() != n:
        return None
    return c.reshape(n).clone()


def _same_dtype(graph: Graph, *names: str) -> bool:
    dts = {dtype_of(graph, x) for x in names if x}
    return len(dts) == 1 and None not in dts


# ---------------------------------------------------------------------- rewrites
def _from_matmul(m: Match, rw: Rewriter) -> list[Node] | None:
    a, b = m.values["a"], m.values["b"]
    if not is_float(m.graph, a) or not _same_dtype(m.graph, a, b):
        return None
    return [fused_gemm(m.root.name or "FusedGemm", a, b, m.root.outputs[0])]


def _from_gemm(m: Match, rw: Rewriter) -> list[Node] | None:
    n = m.root
    g = m.graph
    ins = list(n.inputs) + [""] * (3 - len(n.inputs))
    a, b, c = ins[:3]
    alpha, beta = float(n.attrs.get("alpha", 1.0)), float(n.attrs.get("beta", 1.0))
    trans_b = int(n.attrs.get("transB", 0))
    if int(n.attrs.get("transA", 0)) or not is_float(g, a) or not _same_dtype(g, a, b, c):
        return None
    w = g.initializers.get(b)
    if alpha != 1.0 and w is None:
        return None  # alpha is folded into a constant B only
    bias_t, residual = None, ""
    if c and beta != 0.0:
        cs = g.initializers.get(c)
        bshape = shape_of(g, b)
        n_out = None if bshape is None or len(bshape) != 2 else bshape[0 if trans_b else 1]
        bias_t = _as_bias(cs, n_out, 2) if cs is not None else None
        if bias_t is None:
            if beta != 1.0:
                return None
            residual = c  # y = A@B + C, C broadcast: the residual slot's semantics
        elif not bool((bias_t != 0).any()):
            bias_t = None  # a zero bias adds nothing
    # decided: now add the folded constants
    if alpha != 1.0:
        b = rw.const(f"{b}_alpha", w * alpha)  # type: ignore[operator]
    bias = ""
    if bias_t is not None:
        bias = rw.const(f"{c}_bias", bias_t * beta if beta != 1.0 else bias_t)
    return [
        fused_gemm(n.name or "FusedGemm", a, b, n.outputs[0], bias, residual, {"trans_b": trans_b})
    ]


def _same_dims(x: tuple, y: tuple) -> bool:
    # ints equal, or the same symbol (one runtime value wherever it appears)
    return len(x) == len(y) and all(d is not None and d == e for d, e in zip(x, y))


def _merge_point(xs: tuple, ys: tuple, k: int, n: object) -> int | None:
    """t such that x's dims from t on multiply to K and the result is x.shape[:t] + [N]."""
    size = 1
    for t in range(len(xs) - 1, 0, -1):
        if not isinstance(xs[t], int):
            return None
        size *= xs[t]
        if size == k and _same_dims(ys, (*xs[:t], n)):
            return t
        if size > k:
            return None
    return None


def _unflatten(m: Match, rw: Rewriter) -> list[Node] | None:
    """Reshape(FG(Reshape(x, [M, K])), x.shape[:t] + [N]) == FG(x viewed as x.shape[:t] + [K]).

    A row-major reshape of x to 2-D with K columns, where K is the product of x's dims from
    t on, flattens x's first t dims; reshaping the [M, N] product to x.shape[:t] + [N] undoes
    that, so the pair is a FusedGemm with an N-D A. When t < rank-1 (attention heads still
    split) A is Reshape(x, [0]*t + [K]): the zeros copy x's leading dims, whatever they are at
    run time. Proved from the (symbolic) shapes of x and of the final result.
    """
    g_node = m.nodes["g"]
    if _has_residual(g_node):
        return None
    x = m.values["x"]
    graph = m.graph
    kn = weight_kn(graph, g_node)
    xs = shape_of(graph, x)
    flat = shape_of(graph, m.nodes["flat"].outputs[0])
    ys = shape_of(graph, m.root.outputs[0])
    if kn is None or xs is None or flat is None or ys is None or len(xs) < 2 or len(flat) != 2:
        return None
    k, n = kn
    if not isinstance(k, int) or flat[1] != k:
        return None
    t = _merge_point(tuple(xs), tuple(ys), k, n)
    if t is None:
        return None
    if t == len(xs) - 1:
        return [_rebuild(g_node, m.root.outputs[0], a=x)]
    target = rw.const(f"{x}_merge_dims", torch.tensor([0] * t + [k], dtype=torch.int64))
    merged = rw.value(f"{x}_merged")
    graph.values[merged].dtype = dtype_of(graph, x)
    graph.values[merged].shape = (*xs[:t], k)
    view = Node("Reshape", [x, target], [merged], {}, name=f"{g_node.name}_merge_dims")
    return [view, _rebuild(g_node, m.root.outputs[0], a=merged)]


def _bias(m: Match, rw: Rewriter) -> list[Node] | None:
    g_node = m.nodes["g"]
    graph = m.graph
    kn = weight_kn(graph, g_node)
    out = shape_of(graph, g_node.outputs[0])
    c = m.const("c")
    if kn is None or out is None or not _same_dtype(graph, g_node.inputs[0], m.values["c"]):
        return None
    t = _as_bias(c, kn[1], len(out))
    if t is None:
        return None
    old = _ins(g_node)[2]
    if old:
        prev = graph.initializers.get(old)
        if prev is None:
            return None
        t = prev + t
    bias = rw.const(f"{g_node.name or 'gemm'}_bias", t)
    return [_rebuild(g_node, m.root.outputs[0], bias=bias)]


def _activation(m: Match, rw: Rewriter) -> list[Node] | None:
    g_node, act = m.nodes["g"], m.root
    consts = []
    for i in act.inputs[1:]:
        if i and i not in m.graph.initializers:
            return None  # Clip bounds computed at run time
        consts.append(m.graph.initializers.get(i) if i else None)
    found = activation_of(act.op_type, act.attrs, consts)
    if found is None:
        return None
    name, params = found
    attrs = {"activation": name, "activation_params": [float(p) for p in params]}
    return [_rebuild(g_node, act.outputs[0], attrs=attrs)]


def _residual(m: Match, rw: Rewriter) -> list[Node] | None:
    g_node = m.nodes["g"]
    graph = m.graph
    r = m.values["r"]
    out, rs = shape_of(graph, g_node.outputs[0]), shape_of(graph, r)
    if out is None or rs is None or len(rs) > len(out):
        return None
    if not _same_dtype(graph, g_node.inputs[0], r):
        return None
    kn = weight_kn(graph, g_node)
    if r in graph.initializers and not _has_act(g_node) and kn is not None:
        if _as_bias(graph.initializers[r], kn[1], len(out)) is not None:
            return None  # a bias: the bias rule takes it
    return [_rebuild(g_node, m.root.outputs[0], residual=r)]


# ---------------------------------------------------------------------- rules
def _g(open_for: str) -> Op:
    """A FusedGemm whose epilogue can still take `open_for` (bias, activation or residual)."""

    def ok(m: Match, n: Node) -> bool:
        if _has_residual(n):
            return False
        return open_for == "residual" or not _has_act(n)

    return Op("FusedGemm", any_inputs=True, name="g", domain=DOMAIN, where=ok)


def _flat_gemm(*rest: Any_) -> Op:
    return Op(
        "FusedGemm",
        Op("Reshape", Any_("x"), Any_(), name="flat"),
        *rest,
        name="g",
        domain=DOMAIN,
    )


_W = Const("b", where=lambda t: t.dim() == 2 and t.is_floating_point())
RULES = [
    # MatMul(A, W) with W a constant matrix ==> FusedGemm(A, W)
    Rule("matmul", Op("MatMul", Any_("a"), _W), _from_matmul, "A@W ==> FusedGemm"),
    # Gemm(A, B, C) ==> FusedGemm(A, alpha*B, beta*C, trans_b=transB)   (transA=0)
    Rule("gemm", Op("Gemm", any_inputs=True), _from_gemm, "Gemm ==> FusedGemm"),
    # Reshape(FG(Reshape(x, [M, K])), x.shape[:-1]+[N]) ==> FG(x)   (N-D A)
    *[
        Rule("unflatten", Op("Reshape", _flat_gemm(*rest), Any_()), _unflatten, "2-D view ==> N-D")
        for rest in ((Any_(),), (Any_(), Any_()))
    ],
    # FG(A, B) + c ==> FG(A, B, bias=c)   (c constant along the last dim; no activation yet)
    Rule("bias", Op("Add", _g("bias"), Const("c")), _bias, "A@B + c ==> bias"),
    # act(FG(...)) ==> FG(..., activation=act)   (no residual yet)
    Rule("activation", Op(ACTIVATIONS, _g("activation")), _activation, "act(gemm) ==> epilogue"),
    *[
        Rule("activation", Op("Clip", _g("activation"), *bounds), _activation, "clip epilogue")
        for bounds in ((), (Any_(),), (Any_(), Any_()))
    ],
    # FG(...) + r ==> FG(..., residual=r)   (after the activation)
    Rule("residual", Op("Add", _g("residual"), Any_("r")), _residual, "gemm + r ==> residual"),
]


@register_pass(
    "fuse_gemm",
    level=2,
    doc="MatMul/Gemm + bias + activation + residual Add into ecoinfer.FusedGemm",
)
def fuse_gemm(graph: Graph) -> Counter[str]:
    return apply_rules(graph, RULES)
