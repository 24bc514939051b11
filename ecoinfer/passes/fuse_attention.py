"""Scaled-dot-product attention into one ecoinfer.Attention node (semantics in
ecoinfer/ir/ops/fused_attention.py).

The rules are rooted at the MatMul(P, V) that ends an attention block; P is a last-axis
Softmax, possibly behind the dynamo SDPA decomposition's Where(IsNaN(P), 0, P) and/or an
inference Dropout/Identity. The rewrite then reads the scores S backwards through the forms
torch.onnx emits (BERT/MiniLM, ViT, GPT-2; TorchScript and dynamo exporters):

    S := Add(W, M) | W                  additive mask M (padding: (1-m)*min, Where(m, 0, -inf))
    W := Where(B, A, f) | Where(B, f, A) | A      keep mask B (or masked-fill form), scalar f
    A := Mul(A, c) | Div(A, c) | MatMul(Q', K')   scale after the MatMul
    Q' := Mul(Q', c) | Div(Q', c) | Q             scale on Q / K before the MatMul (dynamo
    K' := Mul(K', c) | Div(K', c) | Kᵀ            applies sqrt(scale) to both)

Every intermediate of S and P must be read only by the next step (a scores or probabilities
tensor read twice leaves the block alone). Kᵀ is turned back into K ([B, H, S, D]) when it is
a Transpose (swap the last two perm entries) or the dynamo Reshape-Transpose-Reshape of K;
otherwise the node keeps it with k_transposed=1. Masks are used as they are: the shared mask
value computed once from attention_mask stays one value read by every layer. A constant mask
is dropped when it masks nothing (all-zero additive, all-True keep mask) and a constant
lower-triangular keep mask becomes is_causal=1. Q/K/V must be 4-D: the head split and merge
(Reshape/Transpose) stay outside the fused node.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field

import torch

from ecoinfer.ir.graph import Graph, Node, Shape, Value
from ecoinfer.ir.pattern import Any_, Const, Match, Op, Pattern, Rewriter, Rule, apply_rules
from ecoinfer.passes.registry import register_pass

_RANK = 4  # q, k, v and the scores: [B, H, S, D] / [B, H, Sq, Sk]


# ---------------------------------------------------------------------- graph view
@dataclass
class _View:
    """Producers/consumers of the graph at the time of one rewrite."""

    graph: Graph
    producers: dict[str, Node] = field(init=False)
    consumers: dict[str, list[Node]] = field(init=False)
    outputs: set[str] = field(init=False)

    def __post_init__(self) -> None:
        self.producers = self.graph.producers()
        self.consumers = self.graph.consumers()
        self.outputs = set(self.graph.output_names)

    def single_use(self, value: str) -> bool:
        return len(self.consumers.get(value, [])) == 1 and value not in self.outputs

    def node(self, value: str, ops: tuple[str, ...], single: bool = True) -> Node | None:
        """The standard-domain producer of `value` if it is one of `ops` (and value is read once)."""
        n = self.producers.get(value)
        if n is None or n.op_type not in ops or (n.domain or "") not in ("", "ai.onnx"):
            return None
        return n if not single or self.single_use(value) else None

    def const(self, value: str) -> torch.Tensor | None:
        return self.graph.initializers.get(value)

    def shape(self, value: str) -> Shape | None:
        t = self.const(value)
        if t is not None:
            return tuple(t.shape)
        v = self.graph.values.get(value)
        return v.shape if v is not None else None

    def dtype(self, value: str) -> str | None:
        t = self.const(value)
        if t is not None:
            from ecoinfer.ir.dtypes import from_torch  # noqa: PLC0415

            return from_torch(t.dtype)
        v = self.graph.values.get(value)
        return v.dtype if v is not None else None


def _scalar(t: torch.Tensor | None) -> float | None:
    """The value of a one-element float constant that broadcasts without growing a 4-D tensor."""
    if t is None or t.numel() != 1 or t.dim() > _RANK or not t.is_floating_point():
        return None
    return float(t.reshape(()))


# ---------------------------------------------------------------------- scores parsing
@dataclass
class _Scores:
    q: str = ""
    k: str = ""  # the MatMul's right operand after scale peeling: Kᵀ
    scale: float = 1.0
    add_mask: str | None = None
    keep: str | None = None  # bool value, True = attend (or its negation, see keep_negated)
    keep_negated: bool = False  # Where(B, fill, A): B marks the masked-out positions
    fill: float = float("-inf")
    masked: str = ""  # the value the masks apply to (scaled Q·Kᵀ), for broadcast checks


def _peel_scale(vw: _View, value: str) -> tuple[str, float]:
    """value = x·c₁·c₂/c₃... with single-use Mul/Div by scalar constants  ==>  (x, product)."""
    factor = 1.0
    while True:
        n = vw.node(value, ("Mul", "Div"))
        if n is None or len(n.inputs) != 2:
            return value, factor
        a, b = n.inputs
        cb, ca = _scalar(vw.const(b)), _scalar(vw.const(a))
        if cb is not None and vw.const(a) is None:
            x, c = a, cb
        elif n.op_type == "Mul" and ca is not None and vw.const(b) is None:
            x, c = b, ca
        else:
            return value, factor
        if not math.isfinite(c) or c == 0.0:
            return value, factor
        factor = factor * c if n.op_type == "Mul" else factor / c
        value = x


def _parse_product(vw: _View, a: str, out: _Scores) -> bool:
    """A := Mul/Div(A, c) | MatMul(Q', K') with scales peeled off Q' and K'."""
    a, f = _peel_scale(vw, a)
    mm = vw.node(a, ("MatMul",))
    if mm is None or len(mm.inputs) != 2:
        return False
    q, fq = _peel_scale(vw, mm.inputs[0])
    k, fk = _peel_scale(vw, mm.inputs[1])
    out.q, out.k, out.scale, out.masked = q, k, f * fq * fk, a
    return True


def _parse_masked(vw: _View, w: str, out: _Scores) -> bool:
    """W := Where(B, A, f) | Where(B, f, A) | A."""
    n = vw.node(w, ("Where",))
    if n is not None and len(n.inputs) == 3:
        cond, a, b = n.inputs
        if vw.dtype(cond) not in (None, "bool"):
            return False
        fb, fa = _scalar(vw.const(b)), _scalar(vw.const(a))
        if fb is not None and vw.const(a) is None and _parse_product(vw, a, out):
            out.keep, out.fill = cond, fb
            return True
        if fa is not None and vw.const(b) is None and _parse_product(vw, b, out):
            out.keep, out.keep_negated, out.fill = cond, True, fa
            return True
        return False
    return _parse_product(vw, w, out)


def _parse_scores(vw: _View, s: str) -> _Scores | None:
    """S := Add(W, M) | W, trying both operand orders of the Add."""
    n = vw.node(s, ("Add",))
    if n is not None and len(n.inputs) == 2:
        for w, m in (n.inputs, n.inputs[::-1]):
            out = _Scores()
            if w != m and _parse_masked(vw, w, out):
                out.add_mask = m
                return out
        return None
    out = _Scores()
    return out if _parse_masked(vw, s, out) else None


# ---------------------------------------------------------------------- K layout
@dataclass
class _KLayout:
    k: str  # the value the node reads as K
    transposed: int  # 1: k is [B, H, D, Sk]
    perm: list[int] | None = None  # when set, K = Transpose(k, perm) is a new node

    def shape(self, vw: _View) -> Shape | None:
        s = vw.shape(self.k)
        if self.perm is None or s is None:
            return s
        return tuple(s[p] for p in self.perm) if len(s) == len(self.perm) else None

    def build(self, vw: _View, rw: Rewriter) -> tuple[str, list[Node]]:
        if self.perm is None:
            return self.k, []
        out = rw.value(f"{self.k}_bhsd")
        vw.graph.values[out] = Value(out, vw.dtype(self.k), self.shape(vw))
        return out, [Node("Transpose", [self.k], [out], {"perm": self.perm}, f"{out}_transpose")]


def _k_layout(vw: _View, kt: str) -> _KLayout:
    """How to read K ([B, H, Sk, D]) from the MatMul operand Kᵀ."""
    # Transpose(x, p) then swapping the last two axes is Transpose(x, p'), p' = p with its last
    # two entries swapped (the identity: K is x itself)
    # (reading x is safe even when the Transpose has other readers: it stays for them; a new
    # Transpose is only made when the old one goes away, so no work is duplicated)
    t = vw.node(kt, ("Transpose",), single=False)
    if t is not None and len(t.attrs.get("perm", [])) == _RANK:
        perm = list(t.attrs["perm"])
        perm2 = perm[:-2] + [perm[-1], perm[-2]]
        if perm2 == list(range(_RANK)):
            return _KLayout(t.inputs[0], 0)
        if vw.single_use(kt):
            return _KLayout(t.inputs[0], 0, perm2)
    # Reshape(Transpose(Reshape(k, [B*H, S, D]), [0, 2, 1]), [B, H, D, S]) is k with its last
    # two axes swapped (the dynamo export of k.transpose(-2, -1) in the SDPA decomposition)
    r2 = vw.node(kt, ("Reshape",))
    tr = vw.node(r2.inputs[0], ("Transpose",)) if r2 is not None else None
    r1 = vw.node(tr.inputs[0], ("Reshape",)) if tr is not None else None
    if r1 is not None and tr is not None and list(tr.attrs.get("perm", [])) == [0, 2, 1]:
        k4 = r1.inputs[0]
        ks, mid, shape = vw.shape(k4), vw.shape(r1.outputs[0]), vw.shape(kt)
        if (
            ks is not None
            and mid is not None
            and shape is not None
            and len(ks) == _RANK
            and len(mid) == 3
            and all(d is not None for d in ks)
            and tuple(mid[1:]) == tuple(ks[2:])
            and tuple(shape) == (ks[0], ks[1], ks[3], ks[2])
        ):
            return _KLayout(k4, 0)
    return _KLayout(kt, 1)


# ---------------------------------------------------------------------- masks
def _fits(mask: Shape | None, scores: Shape | None) -> bool:
    """Broadcasting `mask` against `scores` leaves the scores' shape unchanged."""
    if mask is None or scores is None or len(mask) > len(scores):
        return False
    tail = scores[len(scores) - len(mask) :]
    return all(m == 1 or (m is not None and m == s) for m, s in zip(mask, tail))


def _all_true(vw: _View, value: str) -> bool:
    """A bool constant that is all True, possibly behind an Expand."""
    e = vw.node(value, ("Expand",), single=False)
    t = vw.const(e.inputs[0] if e is not None else value)
    return t is not None and t.dtype == torch.bool and t.numel() <= 1 << 20 and bool(t.all())


def _is_zero(vw: _View, value: str) -> bool:
    """A float value known to be all zeros: a constant, Expand of one, or Where(True, 0, x)."""
    t = vw.const(value)
    if t is not None:
        return t.numel() <= 1 << 20 and bool((t == 0).all())
    n = vw.node(value, ("Expand", "Where"), single=False)
    if n is None:
        return False
    if n.op_type == "Expand":
        return _is_zero(vw, n.inputs[0])
    return len(n.inputs) == 3 and _all_true(vw, n.inputs[0]) and _is_zero(vw, n.inputs[1])


def _is_causal_const(t: torch.Tensor, scores: Shape | None) -> bool:
    """A bool constant [1.., Sq, Sk] equal to tril(ones(Sq, Sk)) (top-left aligned causal)."""
    if t.dtype != torch.bool or t.dim() < 2 or t.dim() > _RANK or scores is None:
        return False
    if any(d != 1 for d in t.shape[:-2]) or tuple(t.shape[-2:]) != tuple(scores[-2:]):
        return False
    sq, sk = t.shape[-2], t.shape[-1]
    if sq * sk > 1 << 24:
        return False
    tril = torch.ones(sq, sk, dtype=torch.bool).tril()
    return bool(torch.equal(t.reshape(sq, sk), tril))


def _not_node(vw: _View, rw: Rewriter, cond: str, root: Node) -> tuple[str, list[Node]]:
    """A value equal to Not(cond): an existing Not before the root (shared by all layers), or new."""
    for n in vw.graph.nodes:
        if n is root:
            break
        if n.op_type == "Not" and not n.domain and list(n.inputs) == [cond]:
            return n.outputs[0], []
    out = rw.value(f"{cond}_keep")
    vw.graph.values[out] = Value(out, "bool", vw.shape(cond))
    return out, [Node("Not", [cond], [out], name=f"{cond}_keep")]


# ---------------------------------------------------------------------- rewrite
def _fuse(nan_to_zero: bool):  # noqa: ANN202
    def rewrite(m: Match, rw: Rewriter) -> list[Node] | None:
        vw = _View(m.graph)
        sc = _parse_scores(vw, m.values["scores"])
        if sc is None:
            return None
        v = m.values["v"]
        dt = vw.dtype(sc.q)
        if dt not in ("float16", "bfloat16", "float32", "float64"):
            return None
        if vw.dtype(sc.k) != dt or vw.dtype(v) != dt:
            return None
        kl = _k_layout(vw, sc.k)
        scores = vw.shape(sc.masked)
        for s in (vw.shape(sc.q), kl.shape(vw), vw.shape(v), scores):
            if s is None or len(s) != _RANK:
                return None
        attrs: dict[str, object] = {"scale": float(sc.scale)}
        # masks: decide everything before adding anything to the graph
        add = sc.add_mask
        if add is not None:
            ms = vw.shape(add)
            if vw.dtype(add) != dt or ms is None or len(ms) > _RANK:
                return None
            if _is_zero(vw, add) and _fits(ms, scores):
                add = None  # adding zeros changes nothing
        keep, keep_const = sc.keep, None
        if keep is not None:
            ks = vw.shape(keep)
            if ks is None or len(ks) > _RANK:
                return None
            t = vw.const(keep)
            if t is not None:
                keep_const = ~t if sc.keep_negated else t
                if bool(keep_const.all()) and _fits(ks, scores):
                    keep = keep_const = None  # masks nothing
                elif _is_causal_const(keep_const, scores):
                    keep = keep_const = None
                    attrs["is_causal"] = 1
            if keep is not None or attrs.get("is_causal"):
                attrs["mask_fill"] = float(sc.fill)
        # rewrite
        new: list[Node] = []
        k, extra = kl.build(vw, rw)
        new += extra
        if keep_const is not None and sc.keep_negated:
            # not(masked-out constant), made once and shared by every layer that reads it
            have = m.graph.initializers.get(f"{keep}_keep")
            if (
                have is not None
                and have.shape == keep_const.shape
                and torch.equal(have, keep_const)
            ):
                keep = f"{keep}_keep"
            else:
                keep = rw.const(f"{keep}_keep", keep_const)
        elif keep is not None and sc.keep_negated:
            keep, extra = _not_node(vw, rw, keep, m.root)
            new += extra
        if kl.transposed:
            attrs["k_transposed"] = 1
        if nan_to_zero:
            attrs["nan_to_zero"] = 1
        inputs = [sc.q, k, v, add or "", keep or ""]
        while inputs[-1] == "":
            inputs.pop()
        name = f"{m.root.name}_attention" if m.root.name else "attention"
        new.append(Node("Attention", inputs, list(m.root.outputs), attrs, name, "ecoinfer"))
        return new

    return rewrite


# ---------------------------------------------------------------------- patterns
def _last_axis(m: Match, n: Node) -> bool:
    axis = int(n.attrs.get("axis", -1))
    v = m.graph.values.get(n.inputs[0])
    return axis == -1 or (v is not None and v.shape is not None and axis == len(v.shape) - 1)


def _guard_only(m: Match, n: Node) -> bool:
    # the softmax output is read by exactly the IsNaN and this Where
    readers = m.graph.consumers().get(m.nodes["softmax"].outputs[0], [])
    return len(readers) == 2 and {id(r) for r in readers} == {id(m.nodes["isnan"]), id(n)}


def _inference_dropout(m: Match, n: Node) -> bool:
    # no training_mode input, and the mask output (if any) is unused
    if n.op_type == "Identity":
        return True
    if len(n.inputs) > 2 and n.inputs[2]:
        return False
    return len(n.outputs) < 2 or not n.outputs[1] or n.outputs[1] not in m.graph.consumers()


def _softmax(shared: bool) -> Op:
    return Op("Softmax", Any_("scores"), name="softmax", shared=shared, where=_last_axis)


def _zero(t: torch.Tensor) -> bool:
    return t.numel() == 1 and t.dim() <= _RANK and t.is_floating_point() and float(t) == 0.0


# P = Softmax(S, axis=-1)
_PLAIN = _softmax(False)
# Where(IsNaN(P), 0, P): the dynamo SDPA decomposition zeroing rows that were all -inf
_NAN_GUARD = Op(
    "Where",
    Op("IsNaN", _softmax(True), name="isnan"),
    Const("zero", where=_zero),
    _softmax(True),
    where=_guard_only,
)


def _wrapped(p: Pattern) -> list[tuple[str, Pattern]]:
    """p, or p behind an inference Dropout (with or without a ratio input) or an Identity."""
    return [
        ("", p),
        ("_dropout", Op(["Dropout", "Identity"], p, where=_inference_dropout)),
        ("_dropout", Op("Dropout", p, Any_(), where=_inference_dropout)),
    ]


RULES = [
    # MatMul(P, V), P = softmax(scale·Q·Kᵀ masked)  ==>  Attention(Q, K, V, masks)
    Rule(f"{base}{suffix}", Op("MatMul", probs, Any_("v")), _fuse(nan))
    for base, p, nan in (("sdpa", _PLAIN, False), ("sdpa_nan_guard", _NAN_GUARD, True))
    for suffix, probs in _wrapped(p)
]


@register_pass(
    "fuse_attention",
    level=2,
    doc="MatMul(Q,Kᵀ) → scale → mask → Softmax → MatMul(V) into one ecoinfer.Attention",
)
def fuse_attention(graph: Graph) -> Counter[str]:
    return apply_rules(graph, RULES)
