"""fuse_elementwise: elementwise chains -> one ecoinfer.FusedElementwise node (level 2).

Each hand-built case runs the pass alone (structure: which ops went into the body, what
stayed outside, the counts) and the whole level-2 pipeline (numbers against onnxruntime on
the original model, and no fusible pair left behind whatever the other fusions did).
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from helpers import assert_close, check_optimized, run_onnxruntime
from onnx import TensorProto as T
from onnx import helper, numpy_helper

from ecoinfer.ir.graph import Graph, Node
from ecoinfer.passes.fuse_elementwise import ELEMENTWISE, _fusible

RNG = np.random.default_rng(0)
ONLY = ("fuse_elementwise", "dce")


def _model(nodes, inputs, outputs, inits=(), opset=18) -> bytes:  # noqa: ANN001
    g = helper.make_graph(nodes, "g", inputs, outputs, initializer=list(inits))
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)], ir_version=10)
    return m.SerializeToString()


def _t(name: str, arr) -> onnx.TensorProto:  # noqa: ANN001
    return numpy_helper.from_array(np.asarray(arr), name)


def _vi(name: str, elem: int = T.FLOAT, shape=None) -> onnx.ValueInfoProto:  # noqa: ANN001
    return helper.make_tensor_value_info(name, elem, shape)


def _fused(g: Graph) -> list[Node]:
    return [n for n in g.nodes if n.op_type == "FusedElementwise" and n.domain == "ecoinfer"]


def _body_ops(n: Node) -> list[str]:
    return [m.op_type for m in n.attrs["body"].nodes]


def _report(reports, name: str = "fuse_elementwise"):  # noqa: ANN001, ANN202
    return next(r for r in reports if r.name == name)


def _unfused_pairs(g: Graph) -> list[tuple[str, str]]:
    """Elementwise producer -> elementwise reader pairs the pass should have fused."""
    prod = g.producers()
    cons = g.consumers()
    outs = set(g.output_names)
    pairs = []
    for n in g.nodes:
        if not _fusible(g, n):
            continue
        for v in n.inputs:
            p = prod.get(v)
            if p is not None and _fusible(g, p) and v not in outs and len(cons[v]) == 1:
                pairs.append((p.op_type, n.op_type))
    return pairs


def _both(model: bytes, feeds: dict[str, np.ndarray]):  # noqa: ANN202
    """(graph, reports) of the pass alone; the full level-2 pipeline is checked too."""
    full, _ = check_optimized(model, feeds, level=2)
    assert _unfused_pairs(full) == []
    for n in _fused(full):
        assert len(n.attrs["body"].nodes) >= 2
        assert set(_body_ops(n)) <= ELEMENTWISE
    return check_optimized(model, feeds, level=2, only=ONLY)


# ------------------------------------------------------------------------------ cases
def test_gelu_like_chain_between_matmuls_becomes_one_node() -> None:
    # MatMul -> +b -> x*0.5*(1+erf(x/sqrt2)) -> MatMul: everything between the MatMuls fuses,
    # the bias add's output feeds two readers of the chain (a small DAG)
    w1 = RNG.standard_normal((8, 16)).astype(np.float32) * 0.3
    w2 = RNG.standard_normal((16, 8)).astype(np.float32) * 0.3
    b = RNG.standard_normal(16).astype(np.float32)
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["h"]),
        helper.make_node("Add", ["h", "b"], ["hb"]),
        helper.make_node("Div", ["hb", "sqrt2"], ["d"]),
        helper.make_node("Erf", ["d"], ["e"]),
        helper.make_node("Add", ["e", "one"], ["e1"]),
        helper.make_node("Mul", ["hb", "e1"], ["m"]),
        helper.make_node("Mul", ["m", "half"], ["g"]),
        helper.make_node("MatMul", ["g", "w2"], ["y"]),
    ]
    inits = [
        _t("w1", w1),
        _t("w2", w2),
        _t("b", b),
        _t("sqrt2", np.array(np.sqrt(2.0), np.float32)),
        _t("one", np.array(1.0, np.float32)),
        _t("half", np.array(0.5, np.float32)),
    ]
    model = _model(nodes, [_vi("x", shape=["batch", "seq", 8])], [_vi("y")], inits)
    feeds = {"x": RNG.standard_normal((2, 5, 8)).astype(np.float32)}
    g, reports = _both(model, feeds)

    assert [n.op_type for n in g.nodes] == ["MatMul", "FusedElementwise", "MatMul"]
    (f,) = _fused(g)
    assert _body_ops(f) == ["Add", "Div", "Erf", "Add", "Mul", "Mul"]
    body = f.attrs["body"]
    # external inputs: the MatMul output and the bias vector; the scalars live in the body
    assert f.inputs == ["h", "b"] and f.outputs == ["g"]
    assert len(body.initializers) == 3 and all(t.numel() == 1 for t in body.initializers.values())
    assert _report(reports).counts == {"fused_nodes": 1, "ops_fused": 6}
    assert g.values["g"].shape == ("batch", "seq", 16) and g.values["g"].dtype == "float32"


def test_broadcast_scale_shift_with_scalar_constants() -> None:
    # y = sigmoid((x * s[1,C,1,1] + t[C,1,1]) * 2) with x [N,C,H,W]
    s = RNG.standard_normal((1, 3, 1, 1)).astype(np.float32)
    t = RNG.standard_normal((3, 1, 1)).astype(np.float32)
    nodes = [
        helper.make_node("Mul", ["x", "s"], ["xs"]),
        helper.make_node("Add", ["xs", "t"], ["xt"]),
        helper.make_node("Mul", ["two", "xt"], ["x2"]),
        helper.make_node("Sigmoid", ["x2"], ["y"]),
    ]
    inits = [_t("s", s), _t("t", t), _t("two", np.array([2.0], np.float32))]
    model = _model(nodes, [_vi("x", shape=["n", 3, 4, 5])], [_vi("y")], inits)
    feeds = {"x": RNG.standard_normal((2, 3, 4, 5)).astype(np.float32)}
    g, reports = _both(model, feeds)

    assert [n.op_type for n in g.nodes] == ["FusedElementwise"]
    (f,) = _fused(g)
    assert _body_ops(f) == ["Mul", "Add", "Mul", "Sigmoid"]
    assert f.inputs == ["x", "s", "t"]  # tensor constants stay outer weights
    body = f.attrs["body"]
    assert [v.shape for v in body.inputs] == [("n", 3, 4, 5), (1, 3, 1, 1), (3, 1, 1)]
    assert list(body.initializers.values())[0].shape == (1,)
    assert g.values["y"].shape == ("n", 3, 4, 5)
    assert _report(reports).counts == {"fused_nodes": 1, "ops_fused": 4}


@pytest.mark.parametrize("escape", ["graph_output", "other_reader"])
def test_intermediate_read_elsewhere_splits_the_chain(escape: str) -> None:
    # x -> Exp -> Neg -> a -> Mul(2) -> Add(1) -> y, where a is a graph output too (or is
    # also read by a ReduceSum): a must stay materialised, so the chain splits at a
    nodes = [
        helper.make_node("Exp", ["x"], ["e"]),
        helper.make_node("Neg", ["e"], ["a"]),
        helper.make_node("Mul", ["a", "two"], ["m"]),
        helper.make_node("Add", ["m", "one"], ["y"]),
    ]
    outputs = [_vi("y")]
    if escape == "graph_output":
        outputs.append(_vi("a"))
    else:
        nodes.append(helper.make_node("ReduceSum", ["a"], ["r"], keepdims=1))
        outputs.append(_vi("r"))
    inits = [_t("two", np.array(2.0, np.float32)), _t("one", np.array(1.0, np.float32))]
    model = _model(nodes, [_vi("x", shape=["batch", 6])], outputs, inits)
    feeds = {"x": RNG.standard_normal((3, 6)).astype(np.float32)}
    g, reports = _both(model, feeds)

    fused = _fused(g)
    assert [_body_ops(f) for f in fused] == [["Exp", "Neg"], ["Mul", "Add"]]
    assert fused[0].outputs == ["a"] and fused[1].inputs == ["a"]
    assert "a" in g.values  # still a value of the outer graph
    assert _report(reports).counts == {"fused_nodes": 2, "ops_fused": 4}


def test_attention_mask_computation_with_cast() -> None:
    # scores + (1 - float(mask)) * -10000 -> Softmax: the int64->float Cast, Sub, Mul and the
    # broadcast Add ([B,1,1,S] onto [B,H,S,S]) are one node; Softmax is not elementwise
    nodes = [
        helper.make_node("Cast", ["mask"], ["mf"], to=T.FLOAT),
        helper.make_node("Sub", ["one", "mf"], ["inv"]),
        helper.make_node("Mul", ["inv", "neg"], ["bias"]),
        helper.make_node("Add", ["scores", "bias"], ["z"]),
        helper.make_node("Softmax", ["z"], ["y"], axis=-1),
    ]
    inits = [_t("one", np.array(1.0, np.float32)), _t("neg", np.array(-10000.0, np.float32))]
    inputs = [
        _vi("scores", shape=["batch", 2, "seq", "seq"]),
        _vi("mask", T.INT64, ["batch", 1, 1, "seq"]),
    ]
    model = _model(nodes, inputs, [_vi("y")], inits)
    mask = np.ones((2, 1, 1, 7), np.int64)
    mask[1, ..., 4:] = 0
    feeds = {"scores": RNG.standard_normal((2, 2, 7, 7)).astype(np.float32), "mask": mask}
    g, reports = _both(model, feeds)

    assert [n.op_type for n in g.nodes] == ["FusedElementwise", "Softmax"]
    (f,) = _fused(g)
    assert _body_ops(f) == ["Cast", "Sub", "Mul", "Add"]
    assert sorted(f.inputs) == ["mask", "scores"]
    body = f.attrs["body"]
    assert [v.dtype for v in body.inputs] == [g.values[i].dtype for i in f.inputs]
    assert g.values["z"].dtype == "float32" and g.values["z"].shape == ("batch", 2, "seq", "seq")
    assert _report(reports).counts == {"fused_nodes": 1, "ops_fused": 4}


def test_comparisons_where_and_clip() -> None:
    # y = Where(x > 0, Clip(x, -1, 1), x * 0.1) + mask-free residual r: one DAG, one node
    nodes = [
        helper.make_node("Greater", ["x", "zero"], ["pos"]),
        helper.make_node("Clip", ["x", "lo", "hi"], ["c"]),
        helper.make_node("Mul", ["x", "tenth"], ["s"]),
        helper.make_node("Where", ["pos", "c", "s"], ["w"]),
        helper.make_node("Add", ["w", "r"], ["y"]),
    ]
    inits = [
        _t("zero", np.array(0.0, np.float32)),
        _t("lo", np.array(-1.0, np.float32)),
        _t("hi", np.array(1.0, np.float32)),
        _t("tenth", np.array(0.1, np.float32)),
    ]
    model = _model(nodes, [_vi("x", shape=[4, 8]), _vi("r", shape=[8])], [_vi("y")], inits)
    feeds = {
        "x": (RNG.standard_normal((4, 8)) * 2).astype(np.float32),
        "r": RNG.standard_normal(8).astype(np.float32),
    }
    g, reports = _both(model, feeds)
    (f,) = _fused(g)
    assert len(g.nodes) == 1 and f.inputs == ["x", "r"]
    assert sorted(_body_ops(f)) == ["Add", "Clip", "Greater", "Mul", "Where"]
    assert _report(reports).counts == {"fused_nodes": 1, "ops_fused": 5}


def test_shape_arithmetic_is_not_fused() -> None:
    # Reshape(x, Concat(Shape(x) * [2, 1] / [2, 2], [2])): the integer math on the shape keeps
    # its symbolic contents (so the Reshape keeps "batch"); fusing it would lose them
    nodes = [
        helper.make_node("Shape", ["x"], ["s"]),
        helper.make_node("Mul", ["s", "k21"], ["s2"]),
        helper.make_node("Div", ["s2", "k22"], ["s3"]),
        helper.make_node("Concat", ["s3", "k2"], ["target"], axis=0),
        helper.make_node("Reshape", ["x", "target"], ["r"]),
        helper.make_node("Relu", ["r"], ["y"]),
    ]
    inits = [
        _t("k21", np.array([2, 1], np.int64)),
        _t("k22", np.array([2, 2], np.int64)),
        _t("k2", np.array([2], np.int64)),
    ]
    model = _model(nodes, [_vi("x", shape=["batch", 6])], [_vi("y")], inits)
    feeds = {"x": RNG.standard_normal((3, 6)).astype(np.float32)}
    g, reports = _both(model, feeds)
    assert _fused(g) == []
    assert _report(reports).counts == {}
    assert g.values["y"].shape == ("batch", 3, 2)


def test_fused_node_infers_from_its_body_with_new_outer_types() -> None:
    # the schema re-runs the body's inference: concrete outer shapes give concrete outputs
    nodes = [
        helper.make_node("Cast", ["m"], ["mf"], to=T.FLOAT),
        helper.make_node("Mul", ["x", "mf"], ["y"]),
    ]
    model = _model(nodes, [_vi("x", shape=["b", 1, 4]), _vi("m", T.BOOL, ["b", 3, 1])], [_vi("y")])
    feeds = {
        "x": RNG.standard_normal((2, 1, 4)).astype(np.float32),
        "m": RNG.random((2, 3, 1)) > 0.5,
    }
    g, _ = check_optimized(model, feeds, level=2, only=ONLY)
    (f,) = _fused(g)
    assert g.values["y"].shape == ("b", 3, 4)
    from ecoinfer.ir.graph import Value  # noqa: PLC0415
    from ecoinfer.ir.ops import infer_node  # noqa: PLC0415

    g.values["x"] = Value("x", "float32", (5, 1, 4))
    g.values["m"] = Value("m", "bool", (5, 3, 1))
    (out,) = infer_node(g, f)
    assert out.dtype == "float32" and out.shape == (5, 3, 4)


def test_optimized_graph_writes_to_onnx_and_reads_back() -> None:
    writer = pytest.importorskip("ecoinfer.frontend.onnx_writer")
    from ecoinfer.api import Model  # noqa: PLC0415
    from ecoinfer.frontend.onnx import import_onnx  # noqa: PLC0415

    nodes = [
        helper.make_node("Mul", ["x", "x"], ["sq"]),
        helper.make_node("Add", ["sq", "one"], ["p"]),
        helper.make_node("Sqrt", ["p"], ["y"]),
    ]
    model = _model(
        nodes, [_vi("x", shape=["n", 4])], [_vi("y")], [_t("one", np.array(1.0, np.float32))]
    )
    feeds = {"x": RNG.standard_normal((3, 4)).astype(np.float32)}
    g, _ = check_optimized(model, feeds, level=2, only=ONLY)
    proto = writer.to_onnx(g)
    onnx.checker.check_model(proto)
    back = import_onnx(proto.SerializeToString())
    back.verify()
    assert [n.op_type for n in back.nodes] == ["FusedElementwise"]
    assert_close(Model(back).run(feeds), run_onnxruntime(model, feeds), "written and read back")


# ------------------------------------------------------------------------------ MiniLM
def test_minilm_dynamo_level2(minilm_export) -> None:  # noqa: ANN001
    path, feeds = minilm_export(True)
    g, reports = check_optimized(path, feeds, level=2)
    rep = _report(reports)
    fused = _fused(g)
    # what the other fusions leave (embedding sums, masks, ...) ends up fused, nothing fusible
    # is left unpaired, and every fused body is pure elementwise with >= 2 ops
    assert fused and rep.counts["fused_nodes"] == len(fused)
    assert rep.counts["ops_fused"] == sum(len(f.attrs["body"].nodes) for f in fused)
    assert _unfused_pairs(g) == []
    for f in fused:
        assert len(f.attrs["body"].nodes) >= 2 and set(_body_ops(f)) <= ELEMENTWISE
        assert not f.attrs["body"].outer_scope
