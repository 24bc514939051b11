"""SmoothQuant-style activation smoothing: an exact float graph transform run before calibration.

A GEMM computes Y = A @ W. For any positive per-input-channel factors s,

    A @ W == (A / s) @ (diag(s) @ W)

so the activation's outlier channels can be shrunk (divided by s) and the difficulty moved into
the weight rows (multiplied by s), which are quantized per output channel and absorb it far
better. SmoothQuant (Xiao et al., 2023) picks s_k = max|A_k|^alpha / max|W_k,:|^(1 - alpha).

The division by s is folded into the node that *produces* A, so the smoothed graph has no extra
work on the GEMM path and computes the same numbers up to float rounding:

- LayerNormalization / RMSNormalization with a constant 1-D scale (and bias) over the last
  axis: y = norm(x) * gamma + beta, so y / s = norm(x) * (gamma / s) + beta / s (and so
  ecoinfer.EmbedLayerNorm, the embeddings' LayerNorm);
- ecoinfer.FusedGemm without a residual whose activation is positively homogeneous
  (f(x / s) = f(x) / s for s > 0: none, Relu, LeakyRelu): its weight's output columns and its
  bias are divided by s.

A FusedGemm with a Gelu (or Swish, Sigmoid, Tanh, ...) epilogue is *not* a valid producer:
gelu(x / s) != gelu(x) / s, so the FFN output projection of BERT-like models (fed by the GELU of
the FFN input projection) cannot be smoothed exactly and is left alone. Neither can a producer
with a residual epilogue (act(x) + r: r would have to be divided by s as well).

Every reader of the smoothed tensor must see the original values. Readers that are FusedGemm
A-inputs with a constant 2-D weight get their weight rows multiplied by s. Any other reader
(BERT's post-LN residual: the LayerNorm output is also the skip input of the next block's
output projection; a graph output) either makes smooth_graph() decline that producer
(compensate=False), or, by default, reads the original tensor restored by one float
Mul(A / s, s) inserted right after the producer, which keeps every float result unchanged (the
restored tensor differs from the original by float rounding only) while the quantized GEMMs
read the smoothed one.

explicit=True (off by default) also smooths the GEMM inputs no producer can absorb 1/s for
(BERT: the GELU outputs read by the FFN output projections, the merged attention heads read by
the attention output projections): a Mul(A, 1/s) is inserted in front of the GEMMs, which read
its output. That is still exact in float, but it is one more elementwise op unless the
deployment fuses the per-channel 1/s into the producer's epilogue or into the activation's
QuantizeLinear (an elementwise kernel, so a per-K-channel multiplier costs nothing there; the
INT8 GEMM itself still sees one per-tensor activation scale).

all-MiniLM-L6-v2, full INT8 with entropy calibration on 256 sentences, mean cosine of pooled
embeddings vs FP32 on 128 held-out ones (tests/quant/test_smooth.py): 0.963 unsmoothed; 0.973
(alpha 0.5) and 0.990 (alpha 0.7) with the LayerNorm outputs smoothed; 0.997 with explicit=True
and alpha 0.8 (the GELU outputs are the main remaining error once the LNs are smoothed).

Usage: stats = channel_absmax(graph, batches); sgraph, _ = smooth_graph(graph, stats, alpha);
then calibrate(sgraph, batches) and quantize_graph(sgraph, amax).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from ecoinfer.ir import dtypes
from ecoinfer.ir.graph import Graph, Node, Value
from ecoinfer.quant.data import CalibrationDataError

# activations f with f(x / s) == f(x) / s for every s > 0
HOMOGENEOUS_ACTIVATIONS = ("", "Relu", "LeakyRelu")
# factors are clamped to this range so a dead channel cannot blow a weight row up
MIN_FACTOR, MAX_FACTOR = 1e-5, 1e5


def _is(node: Node, op_type: str, domain: str) -> bool:
    return node.op_type == op_type and (node.domain or "") in (
        (domain,) if domain else ("", "ai.onnx")
    )


@dataclass
class SmoothGroup:
    """One smoothable tensor: its producer, the GEMMs whose weight rows absorb the factors and
    the other readers (which read the restored tensor, see the module docstring)."""

    producer: Node | None  # None: a graph input (explicit groups only)
    tensor: str
    gemms: list[Node]
    others: list[Node] = field(default_factory=list)
    is_output: bool = False
    explicit: bool = False  # a Mul(A, 1/s) in front of the GEMMs, the producer left alone

    @property
    def needs_restore(self) -> bool:
        return not self.explicit and (bool(self.others) or self.is_output)


def _const(graph: Graph, name: str) -> torch.Tensor | None:
    t = graph.initializers.get(name) if name else None
    return t if t is not None and t.is_floating_point() else None


def _norm_params(n: Node) -> tuple[int, int]:
    """Where a norm producer keeps its scale and bias (EmbedLayerNorm: after its k lookups)."""
    if _is(n, "EmbedLayerNorm", "ecoinfer"):
        k = int(n.attrs.get("num_lookups") or 0)
        return 2 * k, 2 * k + 1
    return 1, 2


def _producer_channels(graph: Graph, n: Node) -> int | None:
    """The channel count K of a node whose output can absorb 1/s, else None."""
    if (_is(n, "LayerNormalization", "") or _is(n, "RMSNormalization", "")) and n.inputs:
        if any(o for o in n.outputs[1:]):  # Mean / InvStdDev outputs would change meaning
            return None
        gamma = _const(graph, n.inputs[1]) if len(n.inputs) > 1 else None
        if gamma is None or gamma.dim() != 1:
            return None
        if len(n.inputs) > 2 and n.inputs[2]:
            beta = _const(graph, n.inputs[2])
            if beta is None or beta.shape != gamma.shape:
                return None
        rank = graph.values.get(n.inputs[0], Value("")).rank
        axis = int(n.attrs.get("axis", -1))
        if not (axis == -1 or (rank is not None and axis == rank - 1)):
            return None  # normalized over several axes: gamma is not per last-axis channel
        return int(gamma.shape[0])
    if _is(n, "EmbedLayerNorm", "ecoinfer"):  # normalizes the last axis, scale along it
        si, bi = _norm_params(n)
        gamma = _const(graph, n.inputs[si]) if si < len(n.inputs) else None
        if gamma is None or gamma.dim() != 1:
            return None
        if bi < len(n.inputs) and n.inputs[bi]:
            beta = _const(graph, n.inputs[bi])
            if beta is None or beta.shape != gamma.shape:
                return None
        return int(gamma.shape[0])
    if _is(n, "FusedGemm", "ecoinfer") and len(n.inputs) >= 2:
        if len(n.inputs) > 3 and n.inputs[3]:
            return None  # residual epilogue: act(x) + r is not homogeneous in x
        if str(n.attrs.get("activation", "") or "") not in HOMOGENEOUS_ACTIVATIONS:
            return None
        w = _const(graph, n.inputs[1])
        if w is None or w.dim() != 2:
            return None
        if len(n.inputs) > 2 and n.inputs[2]:
            b = _const(graph, n.inputs[2])
            if b is None or b.dim() != 1:
                return None
        return int(w.shape[0] if int(n.attrs.get("trans_b", 0) or 0) else w.shape[1])
    return None


def _gemm_rows(graph: Graph, n: Node) -> int | None:
    """K, the input-channel count, of a FusedGemm whose weight rows can absorb s, else None."""
    if not _is(n, "FusedGemm", "ecoinfer") or len(n.inputs) < 2:
        return None
    w = _const(graph, n.inputs[1])
    if w is None or w.dim() != 2:
        return None
    return int(w.shape[1] if int(n.attrs.get("trans_b", 0) or 0) else w.shape[0])


def _readers(graph: Graph, y: str, k: int, consumers: Mapping[str, list[Node]]):  # noqa: ANN202
    """(GEMMs whose A-input y can absorb factors of K = k, other readers)."""
    gemms: list[Node] = []
    others: list[Node] = []
    for c in consumers.get(y, []):
        if any(c is m for m in gemms + others):
            continue
        if c.inputs[0] == y and _gemm_rows(graph, c) == k and c.inputs[1] != y:
            gemms.append(c)
            if y in c.inputs[1:]:  # also read as bias/residual: that slot needs the original
                others.append(c)
        else:
            others.append(c)
    return gemms, others


def smoothing_groups(
    graph: Graph, compensate: bool = True, explicit: bool = False
) -> list[SmoothGroup]:
    """The tensors smooth_graph() can smooth: those whose producer absorbs 1/s, in graph
    order, then (explicit=True) the other FusedGemm A-inputs (see the module docstring)."""
    consumers = graph.consumers()
    outputs = set(graph.output_names)
    groups: list[SmoothGroup] = []
    for n in graph.nodes:
        if not n.outputs or not n.outputs[0]:
            continue
        k = _producer_channels(graph, n)
        if k is None:
            continue
        y = n.outputs[0]
        gemms, others = _readers(graph, y, k, consumers)
        group = SmoothGroup(n, y, gemms, others, y in outputs)
        if gemms and (compensate or not group.needs_restore):
            groups.append(group)
    if explicit:
        producers = graph.producers()
        done = {grp.tensor for grp in groups}
        for n in graph.nodes:
            k = _gemm_rows(graph, n)
            y = n.inputs[0]
            if k is None or not y or y in done or y in graph.initializers:
                continue
            done.add(y)
            gemms, others = _readers(graph, y, k, consumers)
            if gemms:
                groups.append(
                    SmoothGroup(producers.get(y), y, gemms, others, y in outputs, explicit=True)
                )
    return groups


# ------------------------------------------------------------------------------ statistics
def channel_absmax(
    graph: Graph,
    batches: Iterable[Mapping[str, Any]],
    tensors: Iterable[str] | None = None,
    max_batches: int | None = None,
    device: str = "cpu",
) -> dict[str, np.ndarray]:
    """Per-channel (last axis) max |x| of `tensors` (default: every tensor of
    smoothing_groups(graph, explicit=True)) over calibration batches, with the reference
    runner on `device`."""
    from ecoinfer.api import validate_inputs  # noqa: PLC0415 (api imports the frontends)
    from ecoinfer.kernels.runner import ReferenceRunner  # noqa: PLC0415
    from ecoinfer.passes.manager import clone_graph  # noqa: PLC0415

    names = list(
        dict.fromkeys(
            tensors
            if tensors is not None
            else [s.tensor for s in smoothing_groups(graph, explicit=True)]
        )
    )
    if not names:
        return {}
    g = clone_graph(graph)
    have = set(g.output_names)
    for name in names:
        if name not in have:
            v = graph.values.get(name, Value(name))
            g.outputs.append(Value(name, v.dtype, v.shape, v.sym))
    runner = ReferenceRunner(g, device)
    out: dict[str, np.ndarray] = {}
    seen = 0
    for feeds in batches:
        if max_batches is not None and seen >= max_batches:
            break
        inputs = validate_inputs(graph, feeds, graph.name)
        with torch.inference_mode():
            res = runner.run(inputs)
        for name in names:
            x = res[name].detach().float().abs()
            m = x.reshape(-1, x.shape[-1]).amax(dim=0).cpu().numpy().astype(np.float64)
            out[name] = m if name not in out else np.maximum(out[name], m)
        seen += 1
    if seen == 0:
        raise CalibrationDataError("smoothing statistics got no batches; give at least one")
    return out


def smoothing_factors(
    act_absmax: np.ndarray, weight_absmax: np.ndarray, alpha: float = 0.5
) -> np.ndarray:
    """s_k = max|A_k|^alpha / max|W_k,:|^(1 - alpha), float64; 1 where either max is 0."""
    a = np.asarray(act_absmax, np.float64)
    w = np.asarray(weight_absmax, np.float64)
    ok = (a > 0) & (w > 0)
    s = np.ones_like(a)
    s[ok] = a[ok] ** alpha / w[ok] ** (1.0 - alpha)
    return np.clip(s, MIN_FACTOR, MAX_FACTOR)


def _weight_row_absmax(graph: Graph, n: Node) -> np.ndarray:
    w = graph.initializers[n.inputs[1]].detach().double().abs()
    dim = 0 if int(n.attrs.get("trans_b", 0) or 0) else 1  # reduce over output channels
    return w.amax(dim=dim).cpu().numpy()


# ------------------------------------------------------------------------------ transform
@dataclass(frozen=True)
class SmoothedTensor:
    tensor: str
    producer: str
    gemms: tuple[str, ...]
    restored: bool  # a Mul restores the original tensor for its other readers
    explicit: bool  # a Mul(A, 1/s) feeds the GEMMs
    act_absmax_before: float
    act_absmax_after: float


def smooth_graph(
    graph: Graph,
    act_absmax: Mapping[str, np.ndarray],
    alpha: float = 0.5,
    compensate: bool = True,
    explicit: bool = False,
) -> tuple[Graph, list[SmoothedTensor]]:
    """A copy of `graph` with every smoothable tensor found in `act_absmax` (from
    channel_absmax on this graph) smoothed with migration strength `alpha`; returns it and
    what was done. The float outputs are those of `graph` up to float rounding; calibrate the
    returned graph (its GEMM inputs changed) before quantize_graph()."""
    from ecoinfer.passes.manager import clone_graph  # noqa: PLC0415

    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    g = clone_graph(graph)
    done: list[SmoothedTensor] = []
    restores: dict[int, Node] = {}  # id(producer) -> the Mul to place right after it
    befores: dict[int, Node] = {}  # id(first GEMM) -> the explicit Mul to place before it
    replaced: set[str] = set()

    def new_init(base: str, t: torch.Tensor) -> str:
        name = g.fresh_name(base)
        g.values[name] = Value(name, dtypes.from_torch(t.dtype), tuple(t.shape))
        g.initializers[name] = t
        return name

    def scaled(name: str, factor: torch.Tensor, base: str) -> str:
        # a new initializer: the original may be shared with nodes left alone
        t = g.initializers[name]
        replaced.add(name)
        return new_init(base, (t.double() * factor).to(t.dtype))

    for grp in smoothing_groups(g, compensate, explicit):
        a = act_absmax.get(grp.tensor)
        if a is None:
            continue
        a = np.asarray(a, np.float64)
        w = np.max([_weight_row_absmax(g, c) for c in grp.gemms], axis=0)
        if a.shape != w.shape:
            continue
        s = smoothing_factors(a, w, alpha)
        st = torch.from_numpy(s)
        p, y = grp.producer, grp.tensor
        dtype = g.initializers[grp.gemms[0].inputs[1]].dtype
        if grp.explicit:
            ys = g.fresh_name(f"{y}_smoothed")
            v = g.values.get(y, Value(y))
            g.values[ys] = Value(ys, v.dtype, v.shape, v.sym)
            inv = new_init(f"{y}_smooth_inv_scale", (1.0 / st).to(dtype))
            mul = Node("Mul", [y, inv], [ys], {}, g.fresh_name(f"{y}_smooth"))
            befores[id(grp.gemms[0])] = mul
        # producer: its output divided by s
        elif p is not None and _is(p, "FusedGemm", "ecoinfer"):
            col = st[:, None] if int(p.attrs.get("trans_b", 0) or 0) else st[None, :]
            p.inputs[1] = scaled(p.inputs[1], 1.0 / col, f"{p.inputs[1]}_smoothed")
            if len(p.inputs) > 2 and p.inputs[2]:
                p.inputs[2] = scaled(p.inputs[2], 1.0 / st, f"{p.inputs[2]}_smoothed")
        elif p is not None:
            for i in _norm_params(p):
                if len(p.inputs) > i and p.inputs[i]:
                    p.inputs[i] = scaled(p.inputs[i], 1.0 / st, f"{p.inputs[i]}_smoothed")
        if not grp.explicit:
            assert p is not None
            v = g.values.get(y, Value(y))
            ys = g.fresh_name(f"{y}_smoothed")
            g.values[ys] = Value(ys, v.dtype, v.shape, v.sym)
            p.outputs[0] = ys
        # consuming GEMMs: weight rows multiplied by s, A-input the smoothed tensor
        for c in grp.gemms:
            row = st[None, :] if int(c.attrs.get("trans_b", 0) or 0) else st[:, None]
            c.inputs[1] = scaled(c.inputs[1], row, f"{c.inputs[1]}_smoothed")
            c.inputs[0] = ys
        if grp.needs_restore:
            sname = new_init(f"{y}_smooth_scale", st.to(dtype))
            restores[id(p)] = Node("Mul", [ys, sname], [y], {}, g.fresh_name(f"{y}_restore"))
        elif not grp.explicit:
            g.values.pop(y, None)
        done.append(
            SmoothedTensor(
                y,
                p.name if p is not None else "",
                tuple(c.name for c in grp.gemms),
                grp.needs_restore,
                grp.explicit,
                float(a.max()),
                float((a / s).max()),
            )
        )
    if restores or befores:
        nodes: list[Node] = []
        for n in g.nodes:
            if id(n) in befores:
                nodes.append(befores[id(n)])
            nodes.append(n)
            if id(n) in restores:
                nodes.append(restores[id(n)])
        g.nodes = nodes
    # replaced weights nothing reads any more
    used = {i for n in g.nodes for i in n.inputs} | set(g.output_names)
    for name in replaced - used:
        del g.initializers[name]
        g.values.pop(name, None)
    if done:
        g.metadata = {**g.metadata, "ecoinfer.smoothing_alpha": str(alpha)}
    g.infer_shapes()
    g.verify()
    return g, done
