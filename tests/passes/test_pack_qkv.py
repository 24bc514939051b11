"""pack_qkv (level 2): GEMMs that read the same input -> one FusedGemm + Split."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from helpers import check_optimized, numpy_feeds
from onnx import TensorProto as T
from onnx import helper, numpy_helper

from ecoinfer.ir.graph import Graph

RNG = np.random.default_rng(5)
ONLY = ("fuse_gemm", "pack_qkv")
mk = helper.make_node
X = helper.make_tensor_value_info("x", T.FLOAT, ["batch", "seq", 8])
FEEDS = {"x": RNG.standard_normal((2, 3, 8)).astype(np.float32)}


def _model(nodes, outputs, inits=(), inputs=(X,)) -> bytes:  # noqa: ANN001
    outs = [helper.make_tensor_value_info(o, T.FLOAT, None) for o in outputs]
    g = helper.make_graph(nodes, "g", list(inputs), outs, initializer=list(inits))
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)], ir_version=10)
    return m.SerializeToString()


def _t(name: str, arr) -> onnx.TensorProto:  # noqa: ANN001
    return numpy_helper.from_array(np.asarray(arr), name)


def _w(*shape: int) -> np.ndarray:
    return (RNG.standard_normal(shape) * 0.3).astype(np.float32)


def _ops(g: Graph) -> list[str]:
    return [n.op_type for n in g.nodes]


def _counts(reports):  # noqa: ANN001, ANN202
    return next(r for r in reports if r.name == "pack_qkv").counts


def _qkv(
    acts=("", "", ""), bias=(True, True, True), widths=(8, 8, 4), residual: bool = False
) -> bytes:  # noqa: ANN001
    nodes, inits = [], []
    for k, (name, act, has_b, n) in enumerate(zip("qkv", acts, bias, widths)):
        nodes.append(mk("MatMul", ["x", f"w{name}"], [f"{name}0"]))
        inits.append(_t(f"w{name}", _w(8, n)))
        cur = f"{name}0"
        if has_b:
            nodes.append(mk("Add", [cur, f"b{name}"], [f"{name}1"]))
            inits.append(_t(f"b{name}", _w(n)))
            cur = f"{name}1"
        if act:
            nodes.append(mk(act, [cur], [f"{name}2"]))
            cur = f"{name}2"
        if residual and k == 0:
            nodes.append(mk("Add", [cur, "x"], [f"{name}3"]))
            cur = f"{name}3"
        nodes.append(mk("Identity", [cur], [name]))
    return _model(nodes, ["q", "k", "v"], inits)


def test_three_projections_pack() -> None:
    model = _qkv()
    g, reports = check_optimized(model, FEEDS, only=ONLY)
    assert _ops(g) == ["FusedGemm", "Split", "Identity", "Identity", "Identity"]
    gemm, split = g.nodes[:2]
    assert list(g.initializers[gemm.inputs[1]].shape) == [8, 20]
    assert list(g.initializers[gemm.inputs[2]].shape) == [20]
    assert g.initializers[split.inputs[1]].tolist() == [8, 8, 4]
    assert g.values[gemm.outputs[0]].shape == ("batch", "seq", 20)
    assert _counts(reports) == {"packs": 1, "gemms_packed": 3}
    check_optimized(model, FEEDS)  # whole level-2 pipeline


def test_missing_bias_is_zero() -> None:
    g, reports = check_optimized(_qkv(bias=(True, False, True)), FEEDS, only=ONLY)
    assert _counts(reports) == {"packs": 1, "gemms_packed": 3}
    bias = g.initializers[g.nodes[0].inputs[2]]
    assert bias[8:16].abs().sum() == 0


def test_same_activation_packs_different_ones_do_not() -> None:
    g, reports = check_optimized(_qkv(acts=("Relu", "Relu", "")), FEEDS, only=ONLY)
    assert _counts(reports) == {"packs": 1, "gemms_packed": 2}
    assert _ops(g).count("FusedGemm") == 2


def test_residual_member_is_not_packed() -> None:
    g, reports = check_optimized(_qkv(residual=True), FEEDS, only=ONLY)
    assert _counts(reports) == {"packs": 1, "gemms_packed": 2}  # K and V only


def test_plain_matmuls_pack_without_fuse_gemm() -> None:
    g, reports = check_optimized(_qkv(bias=(False, False, False)), FEEDS, only=("pack_qkv",))
    assert _ops(g)[:2] == ["FusedGemm", "Split"] and len(g.nodes[0].inputs) == 2
    assert _counts(reports) == {"packs": 1, "gemms_packed": 3}


def test_non_constant_weight_is_not_packed() -> None:
    w = helper.make_tensor_value_info("wk", T.FLOAT, [8, 8])
    model = onnx.load_from_string(_qkv())
    model.graph.initializer.remove(next(i for i in model.graph.initializer if i.name == "wk"))
    model.graph.input.append(w)
    feeds = {**FEEDS, "wk": _w(8, 8)}
    g, reports = check_optimized(model.SerializeToString(), feeds, only=ONLY)
    assert _counts(reports) == {"packs": 1, "gemms_packed": 2}
    assert "MatMul" in _ops(g)


def test_single_gemm_is_left_alone() -> None:
    nodes = [mk("MatMul", ["x", "w"], ["y"])]
    g, reports = check_optimized(_model(nodes, ["y"], [_t("w", _w(8, 4))]), FEEDS, only=ONLY)
    assert _ops(g) == ["FusedGemm"] and not _counts(reports)


# ------------------------------------------------------------------------------ real models
@pytest.mark.parametrize("attention", [True, False])
@pytest.mark.parametrize("dynamo", [False, True])
def test_minilm_six_packs(minilm_export, dynamo: bool, attention: bool) -> None:  # noqa: ANN001
    path, feeds = minilm_export(dynamo)
    # fuse_attention_heads would absorb the Splits into MultiHeadAttention(packed=1)
    disable = ("fuse_attention_heads",) if attention else ("fuse_attention", "fuse_attention_heads")
    g, reports = check_optimized(path, feeds, disable=disable)
    assert _counts(reports) == {"packs": 6, "gemms_packed": 18}
    assert _ops(g).count("Split") == 6
    for n in g.nodes:
        if n.op_type == "FusedGemm" and "packed" in n.name:
            assert list(g.initializers[n.inputs[1]].shape) == [384, 3 * 384]


@pytest.mark.parametrize("dynamo", [False, True])
def test_vit_packs(exported, dynamo: bool) -> None:  # noqa: ANN001
    from models import CASES  # noqa: PLC0415

    g, reports = check_optimized(exported("vit", dynamo), numpy_feeds(CASES["vit"].inputs(2)))
    assert _counts(reports) == {"packs": 2, "gemms_packed": 6}
