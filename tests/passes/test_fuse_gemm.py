"""fuse_gemm (level 2) and the ecoinfer.FusedGemm op: Y = act(A @ op(B) + bias) + residual."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
import torch.nn.functional as F
from helpers import check_optimized, numpy_feeds
from onnx import TensorProto as T
from onnx import helper, numpy_helper

from ecoinfer.api import Model
from ecoinfer.errors import EcoinferError
from ecoinfer.ir.graph import Graph, Node, Value
from ecoinfer.ir.ops import get_schema, infer_node
from ecoinfer.ir.ops.registry import InferContext

RNG = np.random.default_rng(4)
ONLY = ("fuse_gemm",)
mk = helper.make_node


def _model(nodes, inputs, outputs, inits=(), opset=18) -> bytes:  # noqa: ANN001
    g = helper.make_graph(nodes, "g", inputs, outputs, initializer=list(inits))
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)], ir_version=10)
    return m.SerializeToString()


def _t(name: str, arr) -> onnx.TensorProto:  # noqa: ANN001
    return numpy_helper.from_array(np.asarray(arr), name)


def _w(*shape: int) -> np.ndarray:
    return (RNG.standard_normal(shape) * 0.3).astype(np.float32)


def _vi(name: str, shape=None) -> onnx.ValueInfoProto:  # noqa: ANN001
    return helper.make_tensor_value_info(name, T.FLOAT, shape)


def _ops(g: Graph) -> list[str]:
    return [n.op_type for n in g.nodes]


def _gemms(g: Graph) -> list[Node]:
    return [n for n in g.nodes if n.op_type == "FusedGemm" and n.domain == "ecoinfer"]


def _counts(reports, name: str = "fuse_gemm"):  # noqa: ANN001, ANN202
    return next(r for r in reports if r.name == name).counts


def _const_weight_matmuls(g: Graph) -> list[Node]:
    return [
        n
        for n in g.nodes
        if n.op_type in ("MatMul", "Gemm") and not n.domain and n.inputs[1] in g.initializers
    ]


# ------------------------------------------------------------------------------ the op
def _graph_with(node: Node, shapes: dict[str, tuple], consts: dict[str, torch.Tensor]) -> Graph:
    g = Graph(initializers=dict(consts))
    g.inputs = [Value(k, "float32", s) for k, s in shapes.items()]
    g.values = {v.name: v for v in g.inputs}
    g.nodes = [node]
    return g


def test_shape_inference_keeps_symbolic_dims() -> None:
    n = Node("FusedGemm", ["a", "w", "b", "r"], ["y"], {"trans_b": 1}, domain="ecoinfer")
    g = _graph_with(
        n,
        {"a": ("batch", "seq", 16), "r": ("batch", "seq", 32)},
        {"w": torch.zeros(32, 16), "b": torch.zeros(32)},
    )
    (out,) = infer_node(g, n)
    assert out.dtype == "float32" and out.shape == ("batch", "seq", 32)
    # FLOPs: 2*M*K*N plus one per element for the bias and for the residual
    g.values["a"].shape = (2, 5, 16)
    g.values["r"].shape = (2, 5, 32)
    schema = get_schema("FusedGemm", "ecoinfer")
    outs = infer_node(g, n)
    assert schema.flops(InferContext(g, n, schema), outs) == 2 * 10 * 16 * 32 + 2 * 10 * 32


def test_shape_inference_rejects_a_wrong_bias() -> None:
    n = Node("FusedGemm", ["a", "w", "b"], ["y"], {}, domain="ecoinfer")
    g = _graph_with(n, {"a": ("batch", 16)}, {"w": torch.zeros(16, 32), "b": torch.zeros(31)})
    with pytest.raises(EcoinferError, match="bias"):
        infer_node(g, n)


@pytest.mark.parametrize("trans_b", [0, 1])
@pytest.mark.parametrize(
    ("act", "params", "ref"),
    [
        ("", [], lambda y: y),
        ("Relu", [], torch.relu),
        ("Gelu", [0.0], F.gelu),
        ("Gelu", [1.0], lambda y: F.gelu(y, approximate="tanh")),
        ("Swish", [1.0], F.silu),
        ("Tanh", [], torch.tanh),
        ("Clip", [0.0, 6.0], lambda y: y.clamp(0, 6)),
    ],
)
def test_kernel_matches_the_unfused_ops(trans_b: int, act: str, params: list[float], ref) -> None:  # noqa: ANN001
    a = torch.randn(2, 5, 16)
    w = torch.randn(32, 16) if trans_b else torch.randn(16, 32)
    b, r = torch.randn(32), torch.randn(2, 5, 32)
    attrs = {"trans_b": trans_b, "activation": act, "activation_params": params}
    n = Node("FusedGemm", ["a", "w", "b", "r"], ["y"], attrs, domain="ecoinfer")
    g = _graph_with(n, {"a": (2, 5, 16), "r": (2, 5, 32)}, {"w": w, "b": b})
    g.outputs = [Value("y", "float32", (2, 5, 32))]
    g.infer_shapes()
    y = Model(g).run({"a": a.numpy(), "r": r.numpy()})["y"]
    want = ref(a @ (w.t() if trans_b else w) + b) + r
    np.testing.assert_allclose(y, want.numpy(), rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------------------ the pass
X = _vi("x", ["batch", "seq", 8])
FEEDS = {"x": RNG.standard_normal((2, 3, 8)).astype(np.float32)}


def _ffn(extra_out: str = "", act: str = "Relu") -> bytes:
    """x@W1 + b1 -> act -> @W2 + b2 -> + x : two FusedGemm nodes, the second with a residual."""
    nodes = [
        mk("MatMul", ["x", "w1"], ["h"]),
        mk("Add", ["h", "b1"], ["hb"]),
        mk(act, ["hb"], ["ha"]),
        mk("MatMul", ["ha", "w2"], ["o"]),
        mk("Add", ["b2", "o"], ["ob"]),
        mk("Add", ["x", "ob"], ["y"]),
    ]
    inits = [_t("w1", _w(8, 16)), _t("b1", _w(16)), _t("w2", _w(16, 8)), _t("b2", _w(1, 1, 8))]
    outs = [_vi("y")] + ([_vi(extra_out)] if extra_out else [])
    return _model(nodes, [X], outs, inits)


def test_ffn_becomes_two_fused_gemms() -> None:
    model = _ffn()
    g, reports = check_optimized(model, FEEDS, only=ONLY)
    first, second = _gemms(g)
    assert _ops(g) == ["FusedGemm", "FusedGemm"]
    assert first.attrs["activation"] == "Relu" and len(first.inputs) == 3
    assert second.inputs[3] == "x" and not second.attrs.get("activation")
    assert list(g.initializers[second.inputs[2]].shape) == [8]  # [1, 1, 8] bias flattened
    assert _counts(reports) == {"matmul": 2, "bias": 2, "activation": 1, "residual": 1}
    check_optimized(model, FEEDS)  # whole level-2 pipeline


def test_bias_output_read_elsewhere_stops_the_fusion() -> None:
    # hb is also a graph output: the bias is fused but Relu (and what follows) is not
    g, reports = check_optimized(_ffn(extra_out="hb"), FEEDS, only=ONLY)
    assert _ops(g) == ["FusedGemm", "Relu", "FusedGemm"]
    assert g.nodes[0].outputs == ["hb"] and not g.nodes[0].attrs.get("activation")
    assert _counts(reports) == {"matmul": 2, "bias": 2, "residual": 1}


def test_unsupported_activation_stays_outside() -> None:
    g, reports = check_optimized(_ffn(act="Softsign"), FEEDS, only=ONLY)
    assert _ops(g) == ["FusedGemm", "Softsign", "FusedGemm"]
    assert "activation" not in _counts(reports)


def test_activation_after_the_residual_stays_outside() -> None:
    nodes = [
        mk("MatMul", ["x", "w"], ["h"]),
        mk("Add", ["h", "x"], ["s"]),
        mk("Relu", ["s"], ["y"]),
    ]
    g, reports = check_optimized(
        _model(nodes, [X], [_vi("y")], [_t("w", _w(8, 8))]), FEEDS, only=ONLY
    )
    assert _ops(g) == ["FusedGemm", "Relu"] and g.nodes[0].inputs == ["x", "w", "", "x"]
    assert _counts(reports) == {"matmul": 1, "residual": 1}


def test_clip_with_constant_bounds_is_an_activation() -> None:
    nodes = [mk("MatMul", ["x", "w"], ["h"]), mk("Clip", ["h", "lo", "hi"], ["y"])]
    inits = [_t("w", _w(8, 8)), _t("lo", np.float32(0)), _t("hi", np.float32(0.2))]
    g, _ = check_optimized(_model(nodes, [X], [_vi("y")], inits), FEEDS, only=ONLY)
    (n,) = g.nodes
    assert n.attrs["activation"] == "Clip" and n.attrs["activation_params"] == pytest.approx(
        [0, 0.2]
    )


def test_matmul_of_two_activations_is_left_alone() -> None:
    y2 = _vi("x2", ["batch", 8, 4])
    nodes = [mk("MatMul", ["x", "x2"], ["y"])]
    feeds = {**FEEDS, "x2": RNG.standard_normal((2, 8, 4)).astype(np.float32)}
    g, reports = check_optimized(_model(nodes, [X, y2], [_vi("y")]), feeds, only=ONLY)
    assert _ops(g) == ["MatMul"] and not _counts(reports)


@pytest.mark.parametrize("c_shape", [(6,), (1, 6), (4, 6), ()])
def test_gemm_with_alpha_beta_trans_b(c_shape: tuple[int, ...]) -> None:
    a = _vi("a", ["m", 5])
    nodes = [
        mk(
            "Gemm",
            ["a", "w", "c"],
            ["y"],
            alpha=0.5,
            beta=2.0 if c_shape != (4, 6) else 1.0,
            transB=1,
        )
    ]
    inits = [_t("w", _w(6, 5)), _t("c", _w(*c_shape))]
    feeds = {"a": RNG.standard_normal((4, 5)).astype(np.float32)}
    g, reports = check_optimized(_model(nodes, [a], [_vi("y")], inits), feeds, only=ONLY)
    (n,) = g.nodes
    assert n.op_type == "FusedGemm" and n.attrs["trans_b"] == 1
    if c_shape == (4, 6):  # a full [M, N] matrix: added like the residual
        assert n.inputs[2] == "" and n.inputs[3] == "c"
    else:
        assert list(g.initializers[n.inputs[2]].shape) == [6]
    assert _counts(reports) == {"gemm": 1}


@pytest.mark.parametrize(
    ("x_shape", "back", "fused"),
    [
        ((2, 3, 8), (2, 3, 6), True),  # [B, S, K] -> [B*S, K] -> Gemm -> [B, S, N]
        ((2, 3, 2, 4), (2, 3, 6), True),  # heads merged into K on the way: [B, S, H, D]
        ((2, 3, 8), (3, 2, 6), False),  # rows regrouped differently: not x's leading dims
        ((2, 3, 8), (6, 6), False),  # stays 2-D
    ],
)
def test_gemm_between_reshapes_becomes_n_d(x_shape, back, fused: bool) -> None:  # noqa: ANN001
    k = int(np.prod(x_shape)) // 6
    x = _vi("x", list(x_shape))
    nodes = [
        mk("Reshape", ["x", "flat"], ["x2"]),
        mk("Gemm", ["x2", "w", "b"], ["y2"], transB=1),
        mk("Reshape", ["y2", "back"], ["y3"]),
        mk("Add", ["y3", "r"], ["y"]),
    ]
    inits = [
        _t("flat", np.array([-1, k], np.int64)),
        _t("back", np.array(back, np.int64)),
        _t("w", _w(6, k)),
        _t("b", _w(6)),
        _t("r", _w(*back)),
    ]
    feeds = {"x": RNG.standard_normal(x_shape).astype(np.float32)}
    g, reports = check_optimized(_model(nodes, [x], [_vi("y")], inits), feeds, only=ONLY)
    counts = _counts(reports)
    if fused:
        assert counts == {"gemm": 1, "unflatten": 1, "residual": 1}
        assert _ops(g)[-1] == "FusedGemm" and len(g.values["y"].shape) == 3
    else:
        assert "unflatten" not in counts and "Reshape" in _ops(g)


# ------------------------------------------------------------------------------ real models
def _check_all_gemms_fused(g: Graph) -> None:
    assert _const_weight_matmuls(g) == []
    assert "Gemm" not in _ops(g)


@pytest.mark.parametrize("dynamo", [False, True])
def test_minilm(minilm_export, dynamo: bool) -> None:  # noqa: ANN001
    path, feeds = minilm_export(dynamo)
    g, reports = check_optimized(path, feeds)
    _check_all_gemms_fused(g)
    counts = _counts(reports)
    # 6 layers x (Q, K, V, attention output, FFN in, FFN out) + the pooler's Gemm
    assert counts["matmul"] + counts["gemm"] == 37
    assert counts["bias"] + counts["gemm"] == 37
    assert counts["residual"] == 12  # attention output and FFN output of every layer
    acts = sorted(n.attrs.get("activation", "") for n in _gemms(g))
    assert acts.count("Gelu") == 6 and acts.count("Tanh") == 1  # FFN GELUs, pooler tanh
    assert len(_gemms(g)) == 25  # Q/K/V packed: 6 x 4 + pooler
    assert g.op_histogram()["LayerNormalization"] == 12  # + the embeddings' EmbedLayerNorm


@pytest.mark.parametrize("dynamo", [False, True])
def test_minilm_without_packing(minilm_export, dynamo: bool) -> None:  # noqa: ANN001
    path, feeds = minilm_export(dynamo)
    g, _ = check_optimized(path, feeds, disable=("pack_qkv",))
    assert len(_gemms(g)) == 37
    _check_all_gemms_fused(g)


@pytest.mark.parametrize("dynamo", [False, True])
@pytest.mark.parametrize("name", ["vit", "gpt2"])
def test_code_built_transformers(exported, name: str, dynamo: bool) -> None:  # noqa: ANN001
    from models import CASES  # noqa: PLC0415

    g, reports = check_optimized(exported(name, dynamo), numpy_feeds(CASES[name].inputs(2)))
    _check_all_gemms_fused(g)
    counts = _counts(reports)
    # 2 blocks x (attention output + MLP output) residual adds
    assert counts["residual"] == 4
    gemms = _gemms(g)
    assert len(gemms) == 9  # 2 x (QKV, attention output, MLP in, MLP out) + pooler / LM head
    if name == "gpt2":
        # GPT-2's Conv1D is a 2-D Gemm between reshapes: all 8 viewed back as N-D GEMMs
        assert counts["unflatten"] == 8
        assert all(len(g.values[n.outputs[0]].shape) == 3 for n in gemms)
