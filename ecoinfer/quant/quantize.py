"""Calibration runs and Q/DQ insertion: the graph-level half of post-training quantization.

calibrate() runs a graph with the reference runner over calibration batches and feeds every
activation that enters a quantizable op (the data input of ecoinfer.FusedGemm, MatMul with a
constant weight, ecoinfer.FusedConv and Conv) into one streaming calibrator per tensor.

quantize_graph() then rewrites the graph in the QDQ form TensorRT and onnxruntime use:

    x -> QuantizeLinear(scale = amax / 127, zero_point = int8 0) -> DequantizeLinear -> op
    W (float)  becomes  DequantizeLinear(W_int8, per-output-channel scale, axis) -> op

FP8 ("fp8") is the same with float8 E4M3 codes (ONNX opset 19+ QuantizeLinear semantics):
scale = amax / 448, zero points float8e4m3fn 0, x / scale saturated to +-448 and rounded to
the nearest E4M3 value. Weights are quantized once, here, symmetric: INT8 per output
channel, FP8 per tensor (as the FP8 recipe of NVIDIA's libraries does); activations per
tensor. The builder then fuses each Q/DQ layer into ecoinfer.QGemm/QConv
(passes/fuse_quantized.py) so quantized kernels can run it.
The result runs on the reference runtime and computes exactly what INT8 kernels with a
float epilogue compute, up to the float rounding of the accumulation order: the operands
the op sees are exactly int8 codes times their scales.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ecoinfer.errors import EcoinferError
from ecoinfer.ir import dtypes
from ecoinfer.ir.graph import Graph, Node, Value
from ecoinfer.quant.calibrators import (
    FP8_E4M3_MAX,
    Calibrator,
    fp8_scale,
    int_scale,
    make_calibrator,
    per_channel_amax,
    per_channel_scale,
)
from ecoinfer.quant.data import CalibrationDataError

# int8 symmetric: amax maps to 127; -128 is never produced by the weights
INT8_MAX = 127
PRECISIONS = ("int8", "fp8")
LONG_CALIBRATION = 1000  # batches between notes that calibration is still reading data
# the quantized element type of each precision
QDTYPES = {"int8": torch.int8, "fp8": torch.float8_e4m3fn}


class QuantizationError(EcoinferError):
    """The graph cannot be quantized as asked (missing thresholds, unknown precision)."""


@dataclass(frozen=True)
class QuantTarget:
    """One quantizable node: its activation input, its constant weight and the weight's
    output-channel axis (None: per tensor, for a 1-D weight)."""

    node: Node
    act_index: int
    weight_index: int
    weight_axis: int | None

    @property
    def activation(self) -> str:
        return self.node.inputs[self.act_index]

    @property
    def weight(self) -> str:
        return self.node.inputs[self.weight_index]


def _is(node: Node, op_type: str, domain: str) -> bool:
    return node.op_type == op_type and (node.domain or "") in (
        (domain,) if domain else ("", "ai.onnx")
    )


def quant_targets(graph: Graph) -> list[QuantTarget]:
    """The nodes quantize_graph() quantizes, in graph order.

    - ecoinfer.FusedGemm(A, B, ...) and MatMul(A, B) with B an initializer: A per tensor,
      B per output channel (axis 0 of B [N, K] when trans_b=1, else its last axis);
    - ecoinfer.FusedConv(X, W, ...) and Conv(X, W, ...) with W an initializer: X per tensor,
      W per output channel (axis 0, in NCHW and NHWC layouts alike).
    """
    out: list[QuantTarget] = []
    for n in graph.nodes:
        if len(n.inputs) < 2 or not n.inputs[0] or n.inputs[1] not in graph.initializers:
            continue
        w = graph.initializers[n.inputs[1]]
        if not w.is_floating_point() or w.dim() == 0:
            continue
        if _is(n, "FusedGemm", "ecoinfer") or _is(n, "MatMul", ""):
            if w.dim() == 1:
                axis = None
            elif int(n.attrs.get("trans_b", 0) or 0) and w.dim() == 2:
                axis = 0
            else:
                axis = w.dim() - 1
        elif _is(n, "FusedConv", "ecoinfer") or _is(n, "Conv", ""):
            axis = 0
        else:
            continue
        out.append(QuantTarget(n, 0, 1, axis))
    return out


def attention_targets(graph: Graph) -> list[Node]:
    """The ecoinfer.MultiHeadAttention nodes whose packed QKV input quantize_graph() quantizes
    for FP8 (one per-tensor scale for Q, K and V), in graph order: the QKV projection can
    then write FP8 codes and attention read half the bytes (engine/link_codes.py)."""
    out = []
    for n in graph.nodes:
        if not _is(n, "MultiHeadAttention", "ecoinfer") or not int(n.attrs.get("packed", 0) or 0):
            continue
        if not n.inputs or not n.inputs[0] or len(n.inputs) > 5 and any(n.inputs[5:]):
            continue  # already quantized or writing codes
        v = graph.values.get(n.inputs[0])
        if v is not None and v.dtype not in (None, "float32", "float16", "bfloat16"):
            continue
        out.append(n)
    return out


def quantizable_layers(
    graph: Graph,
    precision: str,
    amax: Mapping[str, float] | None = None,
    attention: bool = True,
) -> list[str]:
    """Names of the nodes quantize_graph(graph, amax, precision, attention=attention)
    quantizes (keep_fp aside): every quant target, and for FP8 (unless attention is False)
    each attention target with a threshold in `amax`."""
    names = [t.node.name for t in quant_targets(graph)]
    if precision == "fp8" and attention:
        names += [n.name for n in attention_targets(graph) if amax is None or n.inputs[0] in amax]
    return list(dict.fromkeys(names))


# ------------------------------------------------------------------------------ calibration
def calibrate_methods(
    graph: Graph,
    batches: Iterable[Mapping[str, Any]],
    methods: Sequence[str] = ("entropy",),
    max_batches: int | None = None,
    device: str = "cpu",
    **options: Any,
) -> dict[str, dict[str, float]]:
    """Like calibrate(), for several methods from one pass over the data:
    {method: {tensor: amax}}. `options` go to every calibrator (e.g. num_bins)."""
    from ecoinfer.api import validate_inputs  # noqa: PLC0415 (api imports the frontends)
    from ecoinfer.kernels.runner import ReferenceRunner  # noqa: PLC0415
    from ecoinfer.passes.manager import clone_graph  # noqa: PLC0415

    acts = [t.activation for t in quant_targets(graph)]
    acts += [n.inputs[0] for n in attention_targets(graph)]  # used by FP8 builds
    names = list(dict.fromkeys(acts))
    if not names:
        return {m: {} for m in methods}
    # the same graph with every observed activation as an extra output, so the runner keeps
    # it for us; memory per batch is bounded by one batch's activations
    g = clone_graph(graph)
    have = set(g.output_names)
    for name in names:
        if name not in have:
            v = graph.values.get(name, Value(name))
            g.outputs.append(Value(name, v.dtype, v.shape, v.sym))
    # the FP32 reference kernels (no TF32 on a GPU); the histograms are kept on the CPU
    runner = ReferenceRunner(g, device)
    cals: dict[str, dict[str, Calibrator]] = {
        m: {name: make_calibrator(m, name, **_options_for(m, options)) for name in names}
        for m in methods
    }
    seen = 0
    for feeds in batches:
        if max_batches is not None and seen >= max_batches:
            break
        tensors = validate_inputs(graph, feeds, graph.name)
        with torch.inference_mode():
            outs = runner.run(tensors)
        for name in names:
            x = outs[name].detach().float().cpu().numpy()
            for m in methods:
                cals[m][name].observe(x)
        seen += 1
        if max_batches is None and seen >= LONG_CALIBRATION and _power_of_ten(seen):
            # a script whose batches() never ends would otherwise run on without a word
            print(
                f"calibration: {seen} batches so far; a calibration script's batches() must "
                "end, or give --calib-batches N",
                file=sys.stderr,
                flush=True,
            )
    if seen == 0:
        raise CalibrationDataError("calibration got no batches; give at least one")
    return {m: {name: float(c.amax()) for name, c in cals[m].items()} for m in methods}


def _power_of_ten(n: int) -> bool:
    return str(n).rstrip("0") == "1"


def _options_for(method: str, options: Mapping[str, Any]) -> dict[str, Any]:
    # num_bins etc. only mean something to the histogram calibrators
    return {} if method == "minmax" else dict(options)


def calibrate(
    graph: Graph,
    batches: Iterable[Mapping[str, Any]],
    method: str = "entropy",
    max_batches: int | None = None,
    device: str = "cpu",
    **options: Any,
) -> dict[str, float]:
    """Clipping thresholds (amax) of every activation that feeds a quantizable op.

    Runs `graph` (normally the optimized one, since its fused nodes are what gets quantized)
    on each batch (a dict of input arrays or tensors) with the reference runner on `device`
    (a GPU build passes its GPU: the same FP32 math, many times faster than the CPU); each
    activation has one streaming calibrator of `method` ("entropy", "percentile", "minmax",
    "mse"), so memory does not grow with the number of batches.
    """
    return calibrate_methods(graph, batches, (method,), max_batches, device, **options)[method]


# ------------------------------------------------------------------------------ Q/DQ insertion
def quantize_weight(
    w: torch.Tensor, axis: int | None, precision: str = "int8"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric quantization of a weight: (int8 or float8e4m3fn codes, float32 scale), per
    output channel along `axis` (scale 1-D) or per tensor (axis None, scale 0-D)."""
    wf = w.detach().float().cpu()
    fp8 = precision == "fp8"
    if axis is None:
        amax = float(wf.abs().max()) if wf.numel() else 0.0
        scale = torch.tensor(fp8_scale(amax) if fp8 else int_scale(amax), dtype=torch.float32)
        s = scale
    else:
        if fp8:
            a = per_channel_amax(wf.numpy(), axis)
            sc = np.where(a > 0, a / FP8_E4M3_MAX, 1.0)
        else:
            sc = per_channel_scale(wf.numpy(), axis)
        scale = torch.from_numpy(sc.astype(np.float32))
        shape = [1] * wf.dim()
        shape[axis] = -1
        s = scale.reshape(shape)
    # QuantizeLinear's arithmetic: x / scale in float32, then round half to even and saturate
    # (int8), or saturate and round to the nearest float8 E4M3 value (fp8)
    if fp8:
        q = (wf / s).clamp(-FP8_E4M3_MAX, FP8_E4M3_MAX).to(torch.float8_e4m3fn)
    else:
        q = torch.round(wf / s).clamp(-INT8_MAX, INT8_MAX).to(torch.int8)
    return q, scale


def _keep(node: Node, patterns: Sequence[re.Pattern[str]]) -> bool:
    return any(p.search(node.name or "") for p in patterns)


def quantize_graph(
    graph: Graph,
    amax: Mapping[str, float],
    precision: str = "int8",
    keep_fp: Sequence[str] = (),
    attention: bool = True,
    float_weights: dict[str, torch.Tensor] | None = None,
) -> Graph:
    """A copy of `graph` with Q/DQ nodes around every quantizable op (see quant_targets),
    and for FP8 (unless `attention` is False) before each attention target's QKV input (see
    attention_targets).

    `amax` holds the activation thresholds from calibrate() (or a calibration cache).
    Nodes whose name matches one of the `keep_fp` regexes (re.search) stay in float.
    `float_weights`, if given, receives each quantized node's float weight (node name ->
    tensor, as quantized): a layer the builder later runs in float uses it, not the
    dequantized codes.
    """
    from ecoinfer.passes.manager import clone_graph  # noqa: PLC0415

    if precision not in PRECISIONS:
        raise QuantizationError(
            f"precision '{precision}' is not supported yet; choose one of {', '.join(PRECISIONS)}"
        )
    try:
        patterns = [re.compile(p) for p in keep_fp]
    except re.error as e:
        raise QuantizationError(f"keep_fp: bad regular expression: {e}") from None
    g = clone_graph(graph)
    targets = [t for t in quant_targets(g) if not _keep(t.node, patterns)]
    missing = sorted({t.activation for t in targets if t.activation not in amax})
    if missing:
        raise QuantizationError(
            f"no calibration threshold for {len(missing)} activation(s), e.g. "
            f"{', '.join(repr(m) for m in missing[:3])}; calibrate this graph (the optimized "
            "one, if it is what you quantize) or keep those nodes in float with keep_fp"
        )
    by_node = {id(t.node): t for t in targets}
    # FP8: attention reads QKV quantized too (where a threshold was calibrated; a calibration
    # cache from before this existed has none, and those attentions stay in float)
    attn = set()
    if precision == "fp8" and attention:
        attn = {
            id(n) for n in attention_targets(g) if not _keep(n, patterns) and n.inputs[0] in amax
        }
    act_dq: dict[str, str] = {}  # activation -> its DequantizeLinear output
    weight_dq: dict[tuple[str, int | None], str] = {}
    replaced_weights: set[str] = set()
    nodes: list[Node] = []

    def new_value(base: str, dtype: str | None, shape: Any) -> str:
        name = g.fresh_name(base)
        g.values[name] = Value(name, dtype, shape)
        return name

    def new_init(base: str, t: torch.Tensor) -> str:
        name = new_value(base, dtypes.from_torch(t.dtype), tuple(t.shape))
        g.initializers[name] = t
        return name

    def quantize_activation(x: str) -> str:
        if x not in act_dq:
            v = g.values.get(x)
            fdtype = v.dtype if v is not None and v.dtype else "float32"
            shape = v.shape if v is not None else None
            a = float(amax[x])
            sv = fp8_scale(a) if precision == "fp8" else int_scale(a, 8)
            scale = torch.tensor(sv, dtype=dtypes.to_torch(fdtype))
            s = new_init(f"{x}_scale", scale)
            zp = new_init(f"{x}_zero_point", torch.zeros((), dtype=QDTYPES[precision]))
            q = new_value(f"{x}_quantized", dtypes.from_torch(QDTYPES[precision]), shape)
            dq = new_value(f"{x}_dequantized", fdtype, shape)
            nodes.append(Node("QuantizeLinear", [x, s, zp], [q], {}, g.fresh_name(f"{x}_Q")))
            nodes.append(Node("DequantizeLinear", [q, s, zp], [dq], {}, g.fresh_name(f"{x}_DQ")))
            act_dq[x] = dq
        return act_dq[x]

    for n in g.nodes:
        if id(n) in attn:
            n.inputs[0] = quantize_activation(n.inputs[0])
            nodes.append(n)
            continue
        t = by_node.get(id(n))
        if t is None:
            nodes.append(n)
            continue
        x = quantize_activation(t.activation)
        w = t.weight
        # FP8 weights per tensor (E4M3's exponent covers the channel spread; cuBLASLt then
        # applies both scales and the bias inside the GEMM); INT8 per output channel
        axis = None if precision == "fp8" else t.weight_axis
        key = (w, axis)
        if key not in weight_dq:
            wt = g.initializers[w]
            codes, wscale = quantize_weight(wt, axis, precision)
            wq = new_init(f"{w}_{precision}", codes)
            ws = new_init(f"{w}_scale", wscale.to(wt.dtype))
            wdq = new_value(f"{w}_dequantized", dtypes.from_torch(wt.dtype), tuple(wt.shape))
            attrs = {"axis": axis} if axis is not None else {}
            nodes.append(Node("DequantizeLinear", [wq, ws], [wdq], attrs, g.fresh_name(f"{w}_DQ")))
            weight_dq[key] = wdq
            replaced_weights.add(w)
        if float_weights is not None:
            float_weights[n.name] = g.initializers[w]
        n.inputs[t.act_index] = x
        n.inputs[t.weight_index] = weight_dq[key]
        nodes.append(n)
    g.nodes = nodes
    # drop float weights nothing reads any more (all their users now read the int8 copy)
    used = {i for n in g.nodes for i in n.inputs} | set(g.output_names)
    for w in replaced_weights - used:
        del g.initializers[w]
        g.values.pop(w, None)
    g.metadata = {**g.metadata, "ecoinfer.quantization": precision}
    g.infer_shapes()
    g.verify()
    return g
