"""fuse_attention: scaled-dot-product attention into one ecoinfer.Attention node.

Numeric tests compare the optimized graph with onnxruntime on the original model (1e-5);
structural tests count the fused nodes and check that no Softmax is left.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from helpers import EXPORTERS, check_optimized, numpy_feeds
from onnx import TensorProto as T
from onnx import helper, numpy_helper

from ecoinfer.api import Model
from ecoinfer.frontend.onnx import import_onnx
from ecoinfer.ir.ops import InferContext, get_schema, infer_node
from ecoinfer.passes import OptimizeConfig, optimize

B, H, S, D = 2, 3, 5, 4
RNG = np.random.default_rng(0)
MIN = float(np.finfo(np.float32).min)


def _model(nodes, inputs, outputs, inits=(), opset=18) -> bytes:  # noqa: ANN001
    g = helper.make_graph(nodes, "g", inputs, outputs, initializer=list(inits))
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)], ir_version=10)
    return m.SerializeToString()


def _t(name: str, arr) -> onnx.TensorProto:  # noqa: ANN001
    return numpy_helper.from_array(np.asarray(arr), name)


def _in(name: str, shape, dtype=T.FLOAT) -> onnx.ValueInfoProto:  # noqa: ANN001
    return helper.make_tensor_value_info(name, dtype, shape)


QKV = [
    _in("q", ["batch", H, "seq", D]),
    _in("k", ["batch", H, "seq", D]),
    _in("v", ["batch", H, "seq", D]),
]
Y = helper.make_tensor_value_info("y", T.FLOAT, None)


def _qkv(b: int = B, s: int = S) -> dict[str, np.ndarray]:
    return {n: RNG.standard_normal((b, H, s, D)).astype(np.float32) for n in "qkv"}


def _attention_nodes(g) -> list:  # noqa: ANN001
    return [n for n in g.nodes if n.op_type == "Attention" and n.domain == "ecoinfer"]


def _ops(g) -> list[str]:  # noqa: ANN001
    return [n.op_type for n in g.nodes]


def _counts(reports) -> dict[str, int]:  # noqa: ANN001
    return dict(next(r for r in reports if r.name == "fuse_attention").counts)


# ---------------------------------------------------------------------- hand-built forms
def test_bert_form_div_scale_and_padding_mask() -> None:
    """Q·Kᵀ / sqrt(D) + (1 - mask) * -10000 -> Softmax -> ·V; the mask is computed once."""
    nodes = [
        # extended padding mask, shared: (1 - m[:, None, None, :]) * -10000
        helper.make_node("Unsqueeze", ["m", "axes12"], ["m4"]),
        helper.make_node("Cast", ["m4"], ["mf"], to=T.FLOAT),
        helper.make_node("Sub", ["one", "mf"], ["inv"]),
        helper.make_node("Mul", ["inv", "neg"], ["ext"]),
    ]
    for layer in range(2):  # two layers read the same mask
        p = f"l{layer}_"
        q_in = "q" if layer == 0 else "l0_y"
        nodes += [
            helper.make_node("Transpose", ["k"], [p + "kt"], perm=[0, 1, 3, 2]),
            helper.make_node("MatMul", [q_in, p + "kt"], [p + "qk"]),
            helper.make_node("Div", [p + "qk", "sqrt_d"], [p + "sc"]),
            helper.make_node("Add", [p + "sc", "ext"], [p + "s"]),
            helper.make_node("Softmax", [p + "s"], [p + "p"], axis=-1),
            helper.make_node("MatMul", [p + "p", "v"], [p + "y"]),
        ]
    nodes.append(helper.make_node("Identity", ["l1_y"], ["y"]))
    inits = [
        _t("axes12", np.array([1, 2], np.int64)),
        _t("one", np.array(1.0, np.float32)),
        _t("neg", np.array(-10000.0, np.float32)),
        _t("sqrt_d", np.array(np.sqrt(D), np.float32)),
    ]
    feeds = {**_qkv(), "m": np.array([[1] * S, [1, 1, 1, 0, 0]], np.int64)}
    g, reports = check_optimized(
        _model(nodes, [*QKV, _in("m", ["batch", "seq"], T.INT64)], [Y], inits), feeds
    )
    att = _attention_nodes(g)
    assert len(att) == 2 and "Softmax" not in _ops(g)
    assert _counts(reports) == {"sdpa": 2}
    # K read as is (the Transpose is absorbed), one shared mask value
    assert [n.inputs[1] for n in att] == ["k", "k"]
    assert att[0].inputs[3] == att[1].inputs[3]
    assert att[0].attrs["scale"] == pytest.approx(1 / np.sqrt(D))
    assert "k_transposed" not in att[0].attrs and "nan_to_zero" not in att[0].attrs
    # symbolic dims survive shape inference of the fused node
    assert g.values[att[0].outputs[0]].shape == ("batch", H, "seq", D)


def test_dynamo_form_sqrt_scale_on_q_and_k_where_mask_nan_guard() -> None:
    """torch's SDPA decomposition: (Q·√s)·(Kᵀ·√s) + Where(keep, 0, -inf) -> Softmax -> Where(IsNaN)."""
    root = float(np.sqrt(1 / np.sqrt(D)))
    nodes = [
        helper.make_node("Cast", ["m"], ["mb"], to=T.BOOL),
        helper.make_node("Unsqueeze", ["mb", "axes12"], ["keep"]),
        helper.make_node("Where", ["keep", "zero", "ninf"], ["bias"]),
        helper.make_node("Transpose", ["k"], ["kt"], perm=[0, 1, 3, 2]),
        helper.make_node("Mul", ["q", "root"], ["qs"]),
        helper.make_node("Mul", ["kt", "root"], ["ks"]),
        helper.make_node("MatMul", ["qs", "ks"], ["qk"]),
        helper.make_node("Add", ["qk", "bias"], ["s"]),
        helper.make_node("Softmax", ["s"], ["p"], axis=-1),
        helper.make_node("IsNaN", ["p"], ["nan"]),
        helper.make_node("Where", ["nan", "zero", "p"], ["p0"]),
        helper.make_node("MatMul", ["p0", "v"], ["y"]),
    ]
    inits = [
        _t("axes12", np.array([1, 2], np.int64)),
        _t("zero", np.array(0.0, np.float32)),
        _t("ninf", np.array(-np.inf, np.float32)),
        _t("root", np.array(root, np.float32)),
    ]
    # the second sequence is fully padded: its rows are all -inf, NaN, then zeros
    feeds = {**_qkv(), "m": np.array([[1, 1, 1, 0, 0], [0] * S], np.int64)}
    g, reports = check_optimized(
        _model(nodes, [*QKV, _in("m", ["batch", "seq"], T.INT64)], [Y], inits), feeds
    )
    (att,) = _attention_nodes(g)
    assert _counts(reports) == {"sdpa_nan_guard": 1}
    assert _ops(g).count("Softmax") == 0 and "IsNaN" not in _ops(g)
    assert att.inputs[:3] == ["q", "k", "v"] and att.attrs["nan_to_zero"] == 1
    assert att.attrs["scale"] == pytest.approx(1 / np.sqrt(D), rel=1e-6)
    out = Model(g).run(feeds)["y"]
    assert np.all(out[1] == 0)  # fully masked rows give zeros, as the original graph does


def test_gpt2_causal_where_then_padding_add() -> None:
    """Older GPT-2: Where(tril, Q·Kᵀ·s, min) + padding mask; a constant tril becomes is_causal."""
    s = 6
    tril = np.tril(np.ones((s, s), bool))[None, None]
    nodes = [
        helper.make_node("Transpose", ["k"], ["kt"], perm=[0, 1, 3, 2]),
        helper.make_node("MatMul", ["q", "kt"], ["qk"]),
        helper.make_node("Mul", ["qk", "scale"], ["sc"]),
        helper.make_node("Where", ["causal", "sc", "min"], ["w"]),
        helper.make_node("Add", ["w", "pad"], ["s"]),
        helper.make_node("Softmax", ["s"], ["p"], axis=3),
        helper.make_node("MatMul", ["p", "v"], ["y"]),
    ]
    inits = [
        _t("scale", np.array(0.5, np.float32)),
        _t("causal", tril),
        _t("min", np.array(MIN, np.float32)),
    ]
    pad = np.zeros((B, 1, 1, s), np.float32)
    pad[1, ..., 4:] = MIN
    feeds = {**_qkv(s=s), "pad": pad}
    ins = [_in(n, [B, H, s, D]) for n in "qkv"] + [_in("pad", [B, 1, 1, s])]
    g, _ = check_optimized(_model(nodes, ins, [Y], inits), feeds)
    (att,) = _attention_nodes(g)
    assert att.attrs["is_causal"] == 1 and att.attrs["mask_fill"] == MIN
    assert att.inputs == ["q", "k", "v", "pad"]  # the tril constant is gone


def test_gpt2_causal_buffer_sliced_at_run_time_is_a_keep_mask() -> None:
    """Older GPT-2: Where(bias[:, :, :seq, :seq], scores, min) with a dynamic seq: the sliced
    bool buffer becomes the keep mask input (mask_fill = min)."""
    nodes = [
        helper.make_node("Shape", ["q"], ["shp"]),
        helper.make_node("Slice", ["shp", "i2", "i3"], ["seq"]),
        helper.make_node("Concat", ["seq", "seq"], ["ends"], axis=0),
        helper.make_node("Slice", ["bias", "zeros2", "ends", "axes23"], ["causal"]),
        helper.make_node("Transpose", ["k"], ["kt"], perm=[0, 1, 3, 2]),
        helper.make_node("MatMul", ["q", "kt"], ["qk"]),
        helper.make_node("Div", ["qk", "sqrt_d"], ["sc"]),
        helper.make_node("Where", ["causal", "sc", "min"], ["s"]),
        helper.make_node("Softmax", ["s"], ["p"]),
        helper.make_node("MatMul", ["p", "v"], ["y"]),
    ]
    inits = [
        _t("i2", np.array([2], np.int64)),
        _t("i3", np.array([3], np.int64)),
        _t("zeros2", np.array([0, 0], np.int64)),
        _t("axes23", np.array([2, 3], np.int64)),
        _t("bias", np.tril(np.ones((8, 8), bool))[None, None]),
        _t("sqrt_d", np.array(np.sqrt(D), np.float32)),
        _t("min", np.array(MIN, np.float32)),
    ]
    g, _ = check_optimized(_model(nodes, QKV, [Y], inits), _qkv())
    (att,) = _attention_nodes(g)
    assert att.inputs[:3] == ["q", "k", "v"] and att.inputs[3] == "" and len(att.inputs) == 5
    assert att.attrs["mask_fill"] == MIN and "is_causal" not in att.attrs


def test_masked_fill_form_with_runtime_mask_shares_one_not() -> None:
    """Where(mask == 0, -inf, scores): the masked-out form becomes one shared Not(cond)."""
    nodes = [helper.make_node("Equal", ["m4", "izero"], ["masked"])]
    for layer in range(2):
        p = f"l{layer}_"
        nodes += [
            helper.make_node("Transpose", ["k"], [p + "kt"], perm=[0, 1, 3, 2]),
            helper.make_node("MatMul", ["q" if layer == 0 else "l0_y", p + "kt"], [p + "qk"]),
            helper.make_node("Where", ["masked", "ninf", p + "qk"], [p + "s"]),
            helper.make_node("Softmax", [p + "s"], [p + "p"]),
            helper.make_node("MatMul", [p + "p", "v"], [p + "y" if layer == 0 else "y"]),
        ]
    inits = [_t("izero", np.array(0, np.int64)), _t("ninf", np.array(-np.inf, np.float32))]
    m4 = np.ones((B, 1, 1, S), np.int64)
    m4[1, ..., 3:] = 0
    feeds = {**_qkv(), "m4": m4}
    g, _ = check_optimized(
        _model(nodes, [*QKV, _in("m4", ["batch", 1, 1, "seq"], T.INT64)], [Y], inits), feeds
    )
    att = _attention_nodes(g)
    assert len(att) == 2
    # one keep mask Not(masked) for both layers (fuse_elementwise may absorb it afterwards)
    assert att[0].inputs[3] == "" and att[0].inputs[4] == att[1].inputs[4]
    g1, _ = optimize(
        import_onnx(_model(nodes, [*QKV, _in("m4", ["batch", 1, 1, "seq"], T.INT64)], [Y], inits)),
        OptimizeConfig(only=("fuse_attention",)),
    )
    assert _ops(g1) == ["Equal", "Not", "Attention", "Attention"]
    assert att[0].attrs["mask_fill"] == float("-inf")


def test_masked_fill_with_constant_mask_shares_one_keep_constant() -> None:
    masked = np.zeros((1, 1, S, S), bool)
    masked[..., 0, 2:] = True  # an arbitrary (non-causal) constant pattern
    nodes = []
    for layer in range(2):
        p = f"l{layer}_"
        nodes += [
            helper.make_node("MatMul", ["q" if layer == 0 else "l0_y", "kt"], [p + "qk"]),
            helper.make_node("Where", ["masked", "min", p + "qk"], [p + "s"]),
            helper.make_node("Softmax", [p + "s"], [p + "p"]),
            helper.make_node("MatMul", [p + "p", "v"], [p + "y" if layer == 0 else "y"]),
        ]
    inits = [_t("masked", masked), _t("min", np.array(MIN, np.float32))]
    ins = [_in("q", [B, H, S, D]), _in("kt", [B, H, D, S]), _in("v", [B, H, S, D])]
    feeds = _qkv()
    feeds["kt"] = np.ascontiguousarray(feeds.pop("k").transpose(0, 1, 3, 2))
    g, _ = check_optimized(_model(nodes, ins, [Y], inits), feeds)
    a1, a2 = _attention_nodes(g)
    assert a1.inputs[4] == a2.inputs[4]
    assert np.array_equal(g.initializers[a1.inputs[4]].numpy(), ~masked)


def test_k_already_transposed_and_bhsd_transpose() -> None:
    """Kᵀ given as [B,H,D,S] stays (k_transposed=1); Transpose([B,S,H,D], [0,2,3,1]) becomes
    a [0,2,1,3] head split feeding K."""
    nodes = [
        helper.make_node("MatMul", ["q", "kt"], ["qk"]),
        helper.make_node("Softmax", ["qk"], ["p"]),
        helper.make_node("MatMul", ["p", "v"], ["y1"]),
        helper.make_node("Transpose", ["k_bshd"], ["kt2"], perm=[0, 2, 3, 1]),
        helper.make_node("MatMul", ["y1", "kt2"], ["qk2"]),
        helper.make_node("Softmax", ["qk2"], ["p2"]),
        helper.make_node("MatMul", ["p2", "v"], ["y"]),
    ]
    ins = [_in("q", [B, H, S, D]), _in("kt", [B, H, D, S]), _in("v", [B, H, S, D])]
    ins.append(_in("k_bshd", [B, S, H, D]))
    feeds = {
        "q": RNG.standard_normal((B, H, S, D)).astype(np.float32),
        "kt": RNG.standard_normal((B, H, D, S)).astype(np.float32),
        "v": RNG.standard_normal((B, H, S, D)).astype(np.float32),
        "k_bshd": RNG.standard_normal((B, S, H, D)).astype(np.float32),
    }
    g, _ = check_optimized(_model(nodes, ins, [Y]), feeds)
    a1, a2 = _attention_nodes(g)
    assert a1.attrs["k_transposed"] == 1 and a1.inputs[1] == "kt"
    assert "k_transposed" not in a2.attrs
    tr = next(n for n in g.nodes if n.outputs[0] == a2.inputs[1])
    assert tr.op_type == "Transpose" and tr.attrs["perm"] == [0, 2, 1, 3]
    assert g.values[a2.inputs[1]].shape == (B, H, S, D)


def test_dynamo_reshape_transpose_reshape_of_k() -> None:
    """k.transpose(-2,-1) exported as Reshape([B*H,S,D]) -> Transpose -> Reshape([B,H,D,S]):
    fuse_attention reads K itself (run alone, before any other pass simplifies it)."""
    nodes = [
        helper.make_node("Reshape", ["k", "s3"], ["k3"]),
        helper.make_node("Transpose", ["k3"], ["k3t"], perm=[0, 2, 1]),
        helper.make_node("Reshape", ["k3t", "s4"], ["kt"]),
        helper.make_node("MatMul", ["q", "kt"], ["qk"]),
        helper.make_node("Mul", ["qk", "scale"], ["s"]),
        helper.make_node("Softmax", ["s"], ["p"]),
        helper.make_node("MatMul", ["p", "v"], ["y"]),
    ]
    inits = [
        _t("s3", np.array([B * H, S, D], np.int64)),
        _t("s4", np.array([B, H, D, S], np.int64)),
        _t("scale", np.array(0.5, np.float32)),
    ]
    ins = [_in(n, [B, H, S, D]) for n in "qkv"]
    g, reports = check_optimized(_model(nodes, ins, [Y], inits), _qkv(), only=("fuse_attention",))
    assert _ops(g) == ["Attention"]
    assert g.nodes[0].inputs == ["q", "k", "v"] and g.nodes[0].attrs["scale"] == 0.5


def test_inference_dropout_remnant_is_absorbed() -> None:
    nodes = [
        helper.make_node("Transpose", ["k"], ["kt"], perm=[0, 1, 3, 2]),
        helper.make_node("MatMul", ["q", "kt"], ["qk"]),
        helper.make_node("Softmax", ["qk"], ["p"]),
        helper.make_node("Dropout", ["p", "ratio"], ["pd"]),
        helper.make_node("MatMul", ["pd", "v"], ["y"]),
    ]
    inits = [_t("ratio", np.array(0.1, np.float32))]
    g, reports = check_optimized(_model(nodes, QKV, [Y], inits), _qkv(), only=("fuse_attention",))
    assert _ops(g) == ["Attention"] and _counts(reports) == {"sdpa_dropout": 1}


def test_all_true_keep_mask_and_zero_bias_are_dropped() -> None:
    """ViT (dynamo) adds Where(Expand(all-True), 0, min): a mask that masks nothing."""
    nodes = [
        helper.make_node("Shape", ["q"], ["shp"]),
        helper.make_node("Expand", ["ones", "shp4"], ["keep"]),
        helper.make_node("Where", ["keep", "zero", "min"], ["bias"]),
        helper.make_node("Transpose", ["k"], ["kt"], perm=[0, 1, 3, 2]),
        helper.make_node("MatMul", ["q", "kt"], ["qk"]),
        helper.make_node("Add", ["qk", "bias"], ["s"]),
        helper.make_node("Softmax", ["s"], ["p"]),
        helper.make_node("MatMul", ["p", "v"], ["y"]),
    ]
    inits = [
        _t("ones", np.ones((1, 1, S, 1), bool)),
        _t("shp4", np.array([B, 1, S, S], np.int64)),
        _t("zero", np.array(0.0, np.float32)),
        _t("min", np.array(MIN, np.float32)),
    ]
    ins = [_in(n, [B, H, S, D]) for n in "qkv"]
    g, _ = check_optimized(_model(nodes, ins, [Y], inits), _qkv())
    (att,) = _attention_nodes(g)
    assert att.inputs == ["q", "k", "v"]


# ---------------------------------------------------------------------- left alone
def test_softmax_over_a_non_last_axis_is_left_alone() -> None:
    nodes = [
        helper.make_node("Transpose", ["k"], ["kt"], perm=[0, 1, 3, 2]),
        helper.make_node("MatMul", ["q", "kt"], ["qk"]),
        helper.make_node("Softmax", ["qk"], ["p"], axis=2),
        helper.make_node("MatMul", ["p", "v"], ["y"]),
    ]
    g, reports = check_optimized(_model(nodes, QKV, [Y]), _qkv())
    assert not _attention_nodes(g) and "Softmax" in _ops(g)
    assert _counts(reports) == {}


def test_scores_read_twice_are_left_alone() -> None:
    """The scaled scores feed a second consumer (a ReduceMax): fusing would recompute them."""
    nodes = [
        helper.make_node("Transpose", ["k"], ["kt"], perm=[0, 1, 3, 2]),
        helper.make_node("MatMul", ["q", "kt"], ["qk"]),
        helper.make_node("Mul", ["qk", "scale"], ["s"]),
        helper.make_node("Softmax", ["s"], ["p"]),
        helper.make_node("MatMul", ["p", "v"], ["a"]),
        helper.make_node("ReduceMax", ["s"], ["mx"], keepdims=1),
        helper.make_node("Add", ["a", "mx"], ["y"]),
    ]
    inits = [_t("scale", np.array(0.5, np.float32))]
    g, reports = check_optimized(_model(nodes, QKV, [Y], inits), _qkv())
    assert not _attention_nodes(g) and "Softmax" in _ops(g)


def test_probabilities_returned_as_output_are_left_alone() -> None:
    """output_attentions: the probabilities are a graph output, so they must be computed."""
    nodes = [
        helper.make_node("Transpose", ["k"], ["kt"], perm=[0, 1, 3, 2]),
        helper.make_node("MatMul", ["q", "kt"], ["qk"]),
        helper.make_node("Softmax", ["qk"], ["p"]),
        helper.make_node("MatMul", ["p", "v"], ["y"]),
    ]
    outs = [Y, helper.make_tensor_value_info("p", T.FLOAT, None)]
    g, _ = check_optimized(_model(nodes, QKV, outs), _qkv())
    assert not _attention_nodes(g)


# ---------------------------------------------------------------------- the op itself
def test_attention_op_shapes_flops_and_kernel_semantics() -> None:
    from ecoinfer.ir.graph import Graph, Node, Value

    g = Graph(
        inputs=[
            Value("q", "float32", ("b", 2, "sq", 8)),
            Value("k", "float32", ("b", 1, 8, "sk")),  # transposed, shared across heads
            Value("v", "float32", ("b", 1, "sk", 16)),
            Value("m", "float32", ("b", 1, 1, "sk")),
        ],
        outputs=[Value("y")],
    )
    g.values.update({v.name: v for v in g.inputs})
    node = Node("Attention", ["q", "k", "v", "m"], ["y"], {"k_transposed": 1}, domain="ecoinfer")
    g.nodes = [node]
    (out,) = infer_node(g, node)
    assert out is not None and out.shape == ("b", 2, "sq", 16) and out.dtype == "float32"
    # flops with known dims: 2·Sq·Sk·D + 2·Sq·Sk·Dv + 5·Sq·Sk per (batch, head)
    for v, s in zip(g.inputs, [(3, 2, 5, 8), (3, 1, 8, 7), (3, 1, 7, 16), (3, 1, 1, 7)]):
        v.shape = s
    schema = get_schema("Attention", "ecoinfer")
    flops = schema.flops(InferContext(g, node, schema), [out])
    assert flops == 3 * 2 * 5 * 7 * (2 * 8 + 2 * 16 + 5)

    # kernel == the explicit formula, with a keep mask, causal and nan_to_zero
    torch.manual_seed(0)
    q, k, v = torch.randn(2, 2, 4, 3), torch.randn(2, 2, 4, 3), torch.randn(2, 2, 4, 5)
    keep = torch.ones(2, 1, 1, 4, dtype=torch.bool)
    keep[1] = False  # batch 1 fully masked: NaN rows -> 0
    add = torch.randn(2, 1, 4, 4)
    n2 = Node(
        "Attention",
        ["q", "k", "v", "add", "keep"],
        ["y"],
        {"scale": 0.7, "is_causal": 1, "nan_to_zero": 1},
        domain="ecoinfer",
    )
    g2 = Graph(
        inputs=[
            Value("q", "float32", (2, 2, 4, 3)),
            Value("k", "float32", (2, 2, 4, 3)),
            Value("v", "float32", (2, 2, 4, 5)),
            Value("add", "float32", (2, 1, 4, 4)),
            Value("keep", "bool", (2, 1, 1, 4)),
        ],
        outputs=[Value("y", "float32", (2, 2, 4, 5))],
        nodes=[n2],
    )
    g2.values.update({x.name: x for x in g2.inputs})
    y = Model(g2).run({"q": q, "k": k, "v": v, "add": add, "keep": keep})["y"]
    s = (q @ k.transpose(-1, -2)) * 0.7
    s = torch.where(keep, s, float("-inf"))
    s = torch.where(torch.ones(4, 4, dtype=torch.bool).tril(), s, float("-inf"))
    p = torch.softmax(s + add, -1)
    ref = torch.where(torch.isnan(p), 0.0, p) @ v
    np.testing.assert_allclose(np.asarray(y), ref.numpy(), rtol=1e-6, atol=1e-6)
    assert np.all(np.asarray(y)[1] == 0)


def test_optimized_graph_round_trips_through_onnx_writer() -> None:
    from ecoinfer.frontend.onnx_writer import to_onnx

    nodes = [
        helper.make_node("Transpose", ["k"], ["kt"], perm=[0, 1, 3, 2]),
        helper.make_node("MatMul", ["q", "kt"], ["qk"]),
        helper.make_node("Mul", ["qk", "scale"], ["s"]),
        helper.make_node("Where", ["causal", "s", "ninf"], ["w"]),
        helper.make_node("Softmax", ["w"], ["p"]),
        helper.make_node("MatMul", ["p", "v"], ["y"]),
    ]
    inits = [
        _t("scale", np.array(0.5, np.float32)),
        _t("causal", np.tril(np.ones((S, S), bool))),
        _t("ninf", np.array(-np.inf, np.float32)),
    ]
    ins = [_in(n, [B, H, S, D]) for n in "qkv"]
    feeds = _qkv()
    g, _ = check_optimized(_model(nodes, ins, [Y], inits), feeds)
    assert _attention_nodes(g)[0].attrs["is_causal"] == 1
    back = import_onnx(to_onnx(g).SerializeToString())
    assert [n.op_type for n in back.nodes] == ["Attention"]
    np.testing.assert_array_equal(Model(back).run(feeds)["y"], Model(g).run(feeds)["y"])


# ---------------------------------------------------------------------- real exports
# fuse_attention_heads (later in the pipeline) turns these 4-D nodes into MultiHeadAttention;
# tests/passes/test_fuse_attention_heads.py covers that step.
KEEP_4D = ("fuse_attention_heads",)


@pytest.mark.parametrize("exporter", list(EXPORTERS))
def test_minilm_all_six_attention_blocks_fused(minilm_export, exporter: str) -> None:  # noqa: ANN001
    path, feeds = minilm_export(EXPORTERS[exporter])
    g, reports = check_optimized(path, feeds, disable=KEEP_4D)
    att = _attention_nodes(g)
    assert len(att) == 6 and "Softmax" not in _ops(g) and "IsNaN" not in _ops(g)
    assert _counts(reports) == {"sdpa_nan_guard": 6}
    # one padding mask value, computed once, read by every layer
    assert len({n.inputs[3] for n in att}) == 1
    assert all(n.attrs["scale"] == pytest.approx(32**-0.5, rel=1e-6) for n in att)
    assert all(len(g.values[n.inputs[i]].shape) == 4 for n in att for i in range(3))


@pytest.mark.parametrize("exporter", list(EXPORTERS))
def test_vit_attention_fused(exported, exporter: str) -> None:  # noqa: ANN001
    from models import CASES

    path = exported("vit", EXPORTERS[exporter])
    g, reports = check_optimized(path, numpy_feeds(CASES["vit"].inputs(2)), disable=KEEP_4D)
    att = _attention_nodes(g)
    assert len(att) == 2 and "Softmax" not in _ops(g)
    assert all(n.inputs[3:] == [] for n in att)  # ViT: no mask (the all-zero one is dropped)
    assert all(n.attrs["scale"] == 0.25 for n in att)


@pytest.mark.parametrize("exporter", list(EXPORTERS))
def test_gpt2_causal_attention_fused(exported, exporter: str) -> None:  # noqa: ANN001
    from models import CASES

    path = exported("gpt2", EXPORTERS[exporter])
    g, reports = check_optimized(path, numpy_feeds(CASES["gpt2"].inputs(2)), disable=KEEP_4D)
    att = _attention_nodes(g)
    assert len(att) == 2 and "Softmax" not in _ops(g)
    # transformers combines causal and padding masks into one mask, shared by both layers
    assert len({n.inputs[3] for n in att}) == 1


def test_minilm_fuses_whether_or_not_projections_are_fused_gemms(minilm_export) -> None:  # noqa: ANN001
    """fuse_gemm normally runs after fuse_attention; run it first to check the pattern does
    not depend on how Q/K/V were projected."""
    from ecoinfer.passes.manager import clone_graph, run_pass
    from ecoinfer.passes.registry import all_passes, pipeline

    passes = all_passes()
    if "fuse_gemm" not in passes:
        pytest.skip("fuse_gemm is not registered yet")
    path, feeds = minilm_export(True)
    g = clone_graph(import_onnx(path))
    for p in pipeline(2):
        if p.name == "fuse_attention":
            break
        run_pass(g, p, True)
    run_pass(g, passes["fuse_gemm"], True)
    assert any(n.op_type == "FusedGemm" for n in g.nodes)
    rep = run_pass(g, passes["fuse_attention"], True)
    assert rep.counts == {"sdpa_nan_guard": 6}
    from helpers import assert_close, run_onnxruntime

    assert_close(Model(g).run(feeds), run_onnxruntime(path, feeds), "fused gemm first")


def test_level_1_leaves_attention_alone(exported) -> None:  # noqa: ANN001
    path = exported("vit", True)
    g, _ = optimize(import_onnx(path), OptimizeConfig(level=1))
    assert not _attention_nodes(g) and "Softmax" in _ops(g)
