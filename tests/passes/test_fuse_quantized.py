"""fuse_quantized: symmetric Q/DQ layers into ecoinfer.QGemm / ecoinfer.QConv.

Structural (every quantized layer fused, no Q/DQ left, weights in the op's layout) and numeric
(the fused graph computes what the Q/DQ graph computes, to 1e-5, for int8 and fp8) on a small
transformer (tests/models ViT) and a small CNN (tests/models ResNet), plus hand-built graphs
for what must not fuse."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from helpers import assert_close, numpy_feeds
from onnx import TensorProto as T
from onnx import helper, numpy_helper

from ecoinfer.api import Model
from ecoinfer.errors import ShapeInferenceError
from ecoinfer.frontend.onnx import import_onnx
from ecoinfer.ir.graph import Graph, Node, Value
from ecoinfer.ir.ops import get_schema, infer_node
from ecoinfer.ir.ops.registry import InferContext
from ecoinfer.passes.fuse_quantized import fuse_for_build
from ecoinfer.passes.manager import OptimizeConfig, optimize
from ecoinfer.passes.registry import pipeline
from ecoinfer.quant.quantize import attention_targets, calibrate, quant_targets, quantize_graph

RNG = np.random.default_rng(11)


def _quantized(graph: Graph, feeds: list[dict], precision: str) -> tuple[Graph, Graph, dict]:
    amax = calibrate(graph, feeds, method="minmax")
    qgraph = quantize_graph(graph, amax, precision)
    fused, counts = fuse_for_build(qgraph)
    return qgraph, fused, dict(counts)


def _q_ops(g: Graph) -> list[Node]:
    return [n for n in g.nodes if n.domain == "ecoinfer" and n.op_type in ("QGemm", "QConv")]


def _check_fused(graph: Graph, fused: Graph, precision: str) -> None:
    hist = fused.op_histogram()
    assert "QuantizeLinear" not in hist and "DequantizeLinear" not in hist, hist
    wdt = torch.int8 if precision == "int8" else torch.float8_e4m3fn
    qops = _q_ops(fused)
    assert len(qops) == len(quant_targets(graph))
    for n in qops:
        w, xs, ws = (fused.initializers[i] for i in n.inputs[1:4])
        assert w.dtype == wdt and xs.dtype == ws.dtype == torch.float32
        # INT8 weights per output channel, FP8 per tensor (one scale, shape [1])
        assert xs.dim() == 0 and ws.dim() == 1
        assert ws.numel() == (w.shape[0] if precision == "int8" else 1)
        assert n.attrs["qtype"] == ("int8" if precision == "int8" else "fp8e4m3")
        assert fused.values[n.inputs[0]].dtype == "float32"


@pytest.mark.parametrize("precision", ["int8", "fp8"])
def test_small_transformer(exported, precision: str) -> None:  # noqa: ANN001
    from models import CASES  # noqa: PLC0415

    path = exported("vit", False)
    graph, _ = optimize(import_onnx(path), OptimizeConfig(level=2))
    case = CASES["vit"]
    calib = [numpy_feeds(case.inputs(b)) for b in (2, 3)]
    qgraph, fused, counts = _quantized(graph, calib, precision)
    _check_fused(graph, fused, precision)
    # the patch embedding is a convolution, the projections and the head are GEMMs; FP8
    # attention reads its packed QKV quantized (x_scale, input 6)
    want = {"qconv": 1, "qgemm": len(quant_targets(graph)) - 1}
    mha = [n for n in fused.nodes if n.op_type == "MultiHeadAttention"]
    assert mha and len(attention_targets(graph)) == len(mha)
    if precision == "fp8":
        want["qmha"] = len(mha)
        for n in mha:
            assert n.attrs["x_qtype"] == "fp8e4m3" and len(n.inputs) == 7
            xs = fused.initializers[n.inputs[6]]
            assert xs.dtype == torch.float32 and xs.dim() == 0 and float(xs) > 0
    else:
        assert all(len(n.inputs) < 7 for n in mha)
    assert counts == want
    # residual/bias/activation epilogues survive the fusion
    assert any(len(n.inputs) == 6 for n in _q_ops(fused))
    assert any(n.attrs.get("activation") for n in _q_ops(fused))
    feeds = numpy_feeds(case.inputs(4))
    assert_close(Model(fused).run(feeds), Model(qgraph).run(feeds), f"fused {precision} vit")


def test_fp8_attention_quantization_follows_amax_and_keep_fp(exported) -> None:  # noqa: ANN001
    """FP8 quantizes a packed attention's QKV only where it has a threshold (a calibration
    cache from before keeps it float) and not where keep_fp names the attention; the layer
    lists (report, accuracy budget) say the same."""
    from models import CASES  # noqa: PLC0415

    from ecoinfer.quant.quantize import quantizable_layers  # noqa: PLC0415

    graph, _ = optimize(import_onnx(exported("vit", False)), OptimizeConfig(level=2))
    amax = calibrate(graph, [numpy_feeds(CASES["vit"].inputs(2))], method="minmax")
    mha = attention_targets(graph)
    assert len(mha) == 2 and all(n.inputs[0] in amax for n in mha)

    def quantized_mha(g: Graph) -> list[str]:
        prod = g.producers()
        return [n.name for n in g.nodes if n.op_type == "MultiHeadAttention"
                and prod[n.inputs[0]].op_type == "DequantizeLinear"]  # fmt: skip

    assert quantized_mha(quantize_graph(graph, amax, "int8")) == []
    assert quantized_mha(quantize_graph(graph, amax, "fp8")) == [n.name for n in mha]
    old_cache = {k: v for k, v in amax.items() if k != mha[0].inputs[0]}
    assert quantized_mha(quantize_graph(graph, old_cache, "fp8")) == [mha[1].name]
    kept = quantize_graph(graph, amax, "fp8", keep_fp=[f"^{mha[1].name}$"])
    assert quantized_mha(kept) == [mha[0].name]
    names = quantizable_layers(graph, "fp8", old_cache)
    assert mha[1].name in names and mha[0].name not in names
    assert not set(quantizable_layers(graph, "int8", amax)) & {n.name for n in mha}
    # --no-quant-attention: FP8 GEMMs quantized, attention left in float
    off = quantize_graph(graph, amax, "fp8", attention=False)
    assert quantized_mha(off) == [] and "QuantizeLinear" in off.op_histogram()
    assert not set(quantizable_layers(graph, "fp8", amax, attention=False)) & {n.name for n in mha}


def test_cli_no_quant_attention_flag() -> None:
    """`ecoinfer build --fp8 --no-quant-attention` reaches QuantizeOptions."""
    from ecoinfer.cli import build_parser  # noqa: PLC0415
    from ecoinfer.commands.build import _quant_options  # noqa: PLC0415

    base = ["build", "m.onnx", "-o", "m.eng", "--fp8", "--calib-data", "d"]
    on = _quant_options(build_parser().parse_args(base))
    off = _quant_options(build_parser().parse_args([*base, "--no-quant-attention"]))
    assert on is not None and off is not None
    assert on.quantize_attention and not off.quantize_attention


@pytest.mark.parametrize("precision", ["int8", "fp8"])
def test_small_cnn(exported, precision: str) -> None:  # noqa: ANN001
    from models import CASES  # noqa: PLC0415

    path = exported("resnet", False)
    graph, _ = optimize(import_onnx(path), OptimizeConfig(level=2))
    case = CASES["resnet"]
    calib = [numpy_feeds(case.inputs(2))]
    qgraph, fused, counts = _quantized(graph, calib, precision)
    _check_fused(graph, fused, precision)
    assert counts["qconv"] >= 8 and counts.get("qgemm", 0) == 1
    # ResNet's residual add + ReLU stays inside QConv
    assert any(n.attrs.get("post_activation") == "Relu" for n in _q_ops(fused))
    feeds = numpy_feeds(case.inputs(2))
    assert_close(Model(fused).run(feeds), Model(qgraph).run(feeds), f"fused {precision} resnet")


# ------------------------------------------------------------------------------ hand-built
def _vi(name: str, shape: list) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, T.FLOAT, shape)


def _plain_model() -> onnx.ModelProto:
    """MatMul with a [K, N] weight (trans_b=0) and a SAME_UPPER strided Conv: level 0."""
    w = RNG.normal(size=(16, 8)).astype(np.float32)
    cw = RNG.normal(size=(4, 3, 3, 3)).astype(np.float32)
    cb = RNG.normal(size=(4,)).astype(np.float32)
    nodes = [
        helper.make_node("MatMul", ["x", "W"], ["y"], name="mm"),
        helper.make_node(
            "Conv", ["img", "CW", "CB"], ["z"], name="conv", auto_pad="SAME_UPPER", strides=[2, 2]
        ),
    ]
    g = helper.make_graph(
        nodes,
        "plain",
        [_vi("x", [2, 5, 16]), _vi("img", [1, 3, 8, 8])],
        [_vi("y", [2, 5, 8]), _vi("z", [1, 4, 4, 4])],
        [numpy_helper.from_array(a, n) for a, n in ((w, "W"), (cw, "CW"), (cb, "CB"))],
    )
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


@pytest.mark.parametrize("precision", ["int8", "fp8"])
def test_plain_matmul_and_conv(precision: str) -> None:
    graph = import_onnx(_plain_model())
    feeds = {
        "x": RNG.normal(size=(2, 5, 16)).astype(np.float32),
        "img": RNG.normal(size=(1, 3, 8, 8)).astype(np.float32),
    }
    qgraph, fused, counts = _quantized(graph, [feeds], precision)
    assert counts == {"qgemm": 1, "qconv": 1}
    _check_fused(graph, fused, precision)
    gemm = next(n for n in fused.nodes if n.op_type == "QGemm")
    assert tuple(fused.initializers[gemm.inputs[1]].shape) == (8, 16)  # W_q^T: [N, K]
    conv = next(n for n in fused.nodes if n.op_type == "QConv")
    assert conv.attrs["pads"] == [0, 0, 1, 1] and "auto_pad" not in conv.attrs
    x2 = {k: v * 1.3 for k, v in feeds.items()}  # beyond the calibrated range: saturation
    assert_close(Model(fused).run(x2), Model(qgraph).run(x2), f"fused plain {precision}")


def _qdq_model(zp_type: int, zp: int, scale_shape: list[int], extra_reader: bool) -> bytes:
    """x -> Q(s, zp) -> DQ -> MatMul(., DQ(W int8, ws, axis 1)); optionally a second reader of
    the DQ output (a Relu)."""
    w = RNG.integers(-127, 128, size=(16, 8)).astype(np.int8)
    ws = (RNG.random(8) * 0.01 + 0.001).astype(np.float32)
    s = np.full(scale_shape, 0.02, np.float32)
    z = np.full(scale_shape, zp, helper.tensor_dtype_to_np_dtype(zp_type))
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "s", "zp"], ["xq"], axis=0),
        helper.make_node("DequantizeLinear", ["xq", "s", "zp"], ["xd"], axis=0),
        helper.make_node("DequantizeLinear", ["W", "ws"], ["wd"], axis=1),
        helper.make_node("MatMul", ["xd", "wd"], ["y"], name="mm"),
    ]
    outs = [_vi("y", [4, 8])]
    if extra_reader:
        nodes.append(helper.make_node("Relu", ["xd"], ["r"]))
        outs.append(_vi("r", [4, 16]))
    inits = [
        numpy_helper.from_array(w, "W"),
        numpy_helper.from_array(ws, "ws"),
        numpy_helper.from_array(s, "s"),
        numpy_helper.from_array(z, "zp"),
    ]
    g = helper.make_graph(nodes, "qdq", [_vi("x", [4, 16])], outs, inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 21)], ir_version=10)
    return m.SerializeToString()


def test_only_symmetric_per_tensor_activations_fuse() -> None:
    x = {"x": RNG.normal(size=(4, 16)).astype(np.float32)}
    cases = {
        "int8 symmetric": (_qdq_model(T.INT8, 0, [], False), 1),
        "uint8 asymmetric (onnxruntime)": (_qdq_model(T.UINT8, 128, [], False), 0),
        "int8 nonzero zero point": (_qdq_model(T.INT8, 3, [], False), 0),
        "per-row activation scale": (_qdq_model(T.INT8, 0, [4], False), 0),
    }
    for what, (model, n) in cases.items():
        graph = import_onnx(model)
        fused, counts = fuse_for_build(graph)
        assert counts.get("qgemm", 0) == n, what
        if not n:
            assert fused.op_histogram()["QuantizeLinear"] == 1, what
        assert_close(Model(fused).run(x), Model(graph).run(x), what)


def test_shared_dequantized_activation_keeps_its_other_reader() -> None:
    graph = import_onnx(_qdq_model(T.INT8, 0, [], True))
    fused, counts = fuse_for_build(graph)
    assert counts == {"qgemm": 1}
    hist = fused.op_histogram()
    # the Relu still reads DQ(Q(x)); the weight's DQ is gone with the MatMul
    assert hist["QuantizeLinear"] == 1 and hist["DequantizeLinear"] == 1
    x = {"x": RNG.normal(size=(4, 16)).astype(np.float32)}
    assert_close(Model(fused).run(x), Model(graph).run(x), "shared Q/DQ")


def test_not_in_the_optimize_levels() -> None:
    for level in range(4):
        assert "fuse_quantized" not in [p.name for p in pipeline(level)]


# ------------------------------------------------------------------------------ the ops
def _qgemm_graph(w: torch.Tensor, ws: torch.Tensor, qtype: str, xs=None) -> tuple[Graph, Node]:  # noqa: ANN001
    n = Node("QGemm", ["x", "w", "xs", "ws", "b"], ["y"], {"qtype": qtype}, domain="ecoinfer")
    g = Graph(
        initializers={
            "w": w,
            "ws": ws,
            "xs": torch.tensor(0.1) if xs is None else xs,
            "b": torch.zeros(w.shape[0]),
        }
    )
    g.inputs = [Value("x", "float16", ("batch", "seq", w.shape[1]))]
    g.values = {"x": g.inputs[0]}
    g.nodes = [n]
    return g, n


def test_qgemm_inference_flops_and_errors() -> None:
    w = torch.zeros(32, 16, dtype=torch.int8)
    g, n = _qgemm_graph(w, torch.ones(32), "int8")
    (out,) = infer_node(g, n)
    assert out.dtype == "float16" and out.shape == ("batch", "seq", 32)
    schema = get_schema("QGemm", "ecoinfer")
    g.inputs[0].shape = (2, 3, 16)
    flops = schema.flops(InferContext(g, n, schema), [out.__class__("float16", (2, 3, 32))])
    assert flops == 2 * 6 * 32 * 16 + 6 * 32  # the GEMM and the bias add
    bad = {
        "W_q is int8, qtype 'fp8e4m3'": _qgemm_graph(w, torch.ones(32), "fp8e4m3"),
        "qtype must be one of": _qgemm_graph(w, torch.ones(32), "int4"),
        "w_scale has 3 elements": _qgemm_graph(w, torch.ones(3), "int8"),
        "x_scale must be a scalar": _qgemm_graph(w, torch.ones(32), "int8", torch.ones(2)),
        "x_scale must be float32": _qgemm_graph(
            w, torch.ones(32), "int8", torch.tensor(1.0, dtype=torch.float16)
        ),
    }
    for msg, (g2, n2) in bad.items():
        with pytest.raises(ShapeInferenceError, match=msg):
            infer_node(g2, n2)


def test_qconv_inference_nhwc() -> None:
    w = torch.zeros(8, 3, 3, 4, dtype=torch.float8_e4m3fn)  # OHWI
    attrs = {"qtype": "fp8e4m3", "layout": "NHWC", "kernel_shape": [3, 3], "pads": [1, 1, 1, 1]}
    n = Node("QConv", ["x", "w", "xs", "ws"], ["y"], attrs, domain="ecoinfer")
    g = Graph(initializers={"w": w, "xs": torch.tensor(1.0), "ws": torch.ones(8)})
    g.inputs = [Value("x", "bfloat16", ("n", 10, 10, 4))]
    g.values = {"x": g.inputs[0]}
    g.nodes = [n]
    (out,) = infer_node(g, n)
    assert out.dtype == "bfloat16" and out.shape == ("n", 10, 10, 8)
