"""Cleanup passes (level 1): each with a numeric test against onnxruntime and a structural one."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from helpers import check_optimized
from onnx import TensorProto as T
from onnx import helper, numpy_helper

from ecoinfer.errors import GraphError
from ecoinfer.frontend.onnx import import_onnx
from ecoinfer.ir.graph import Node
from ecoinfer.passes import OptimizeConfig, optimize, register_pass
from ecoinfer.passes.registry import _PASSES


def _model(nodes, inputs, outputs, inits=(), opset=18) -> bytes:  # noqa: ANN001
    g = helper.make_graph(nodes, "g", inputs, outputs, initializer=list(inits))
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)], ir_version=10)
    return m.SerializeToString()


def _t(name: str, arr) -> onnx.TensorProto:  # noqa: ANN001
    return numpy_helper.from_array(np.asarray(arr), name)


X = helper.make_tensor_value_info("x", T.FLOAT, ["batch", "seq", 8])
Y = helper.make_tensor_value_info("y", T.FLOAT, None)
RNG = np.random.default_rng(0)
FEEDS = {"x": RNG.standard_normal((2, 5, 8)).astype(np.float32)}


def _ops(g) -> list[str]:  # noqa: ANN001
    return [n.op_type for n in g.nodes]


def test_fold_constants_evaluates_constant_subgraphs_and_shape_math() -> None:
    w = RNG.standard_normal((8, 4)).astype(np.float32)
    nodes = [
        # Transpose of a weight, computed at build time: W^T^T
        helper.make_node("Transpose", ["w"], ["wt"], perm=[1, 0]),
        helper.make_node("Transpose", ["wt"], ["wtt"], perm=[1, 0]),
        helper.make_node("MatMul", ["x", "wtt"], ["h"]),
        # Shape(h)[-1] is 4 even though batch/seq are symbolic: the Reshape target folds
        helper.make_node("Shape", ["h"], ["s"]),
        helper.make_node("Gather", ["s", "i2"], ["last"], axis=0),
        helper.make_node("Unsqueeze", ["last", "ax0"], ["last1"]),
        helper.make_node("Concat", ["minus1", "last1"], ["target"], axis=0),
        helper.make_node("Reshape", ["h", "target"], ["y"]),
    ]
    inits = [
        _t("w", w),
        _t("i2", np.array(2, np.int64)),
        _t("ax0", np.array([0], np.int64)),
        _t("minus1", np.array([-1], np.int64)),
    ]
    g, reports = check_optimized(
        _model(nodes, [X], [Y], inits), FEEDS, level=1, only=("fold_constants",)
    )
    assert _ops(g) == ["MatMul", "Reshape"]
    assert g.initializers[g.nodes[1].inputs[1]].tolist() == [-1, 4]
    assert reports[0].counts["nodes"] >= 2 and reports[0].counts["shape_values"] >= 1


def test_fold_constants_keeps_symbolic_dims_as_copy_entries() -> None:
    nodes = [
        helper.make_node("Shape", ["x"], ["s"]),
        helper.make_node("Slice", ["s", "zero", "two"], ["bs"]),
        helper.make_node("Concat", ["bs", "four", "two1"], ["target"], axis=0),
        helper.make_node("Reshape", ["x", "target"], ["y"]),
    ]
    inits = [
        _t("zero", np.array([0], np.int64)),
        _t("two", np.array([2], np.int64)),
        _t("four", np.array([4], np.int64)),
        _t("two1", np.array([2], np.int64)),
    ]
    g, reports = check_optimized(
        _model(nodes, [X], [Y], inits), FEEDS, level=1, only=("fold_constants",)
    )
    assert _ops(g) == ["Reshape"]
    assert g.initializers[g.nodes[0].inputs[1]].tolist() == [0, 0, 4, 2]
    assert g.values["y"].shape == ("batch", "seq", 4, 2)
    assert reports[0].counts["symbolic_shapes"] == 1


def test_eliminate_noops() -> None:
    nodes = [
        helper.make_node("Identity", ["x"], ["a"]),
        helper.make_node("Cast", ["a"], ["b"], to=T.FLOAT),
        helper.make_node("Dropout", ["b"], ["c"]),
        helper.make_node("Add", ["c", "zero"], ["d"]),
        helper.make_node("Mul", ["d", "one"], ["e"]),
        helper.make_node("Transpose", ["e"], ["f"], perm=[0, 1, 2]),
        helper.make_node("Relu", ["f"], ["y"]),
    ]
    inits = [_t("zero", np.zeros(8, np.float32)), _t("one", np.array(1.0, np.float32))]
    g, reports = check_optimized(
        _model(nodes, [X], [Y], inits), FEEDS, level=1, only=("eliminate_noops",)
    )
    assert _ops(g) == ["Relu"] and g.nodes[0].inputs == ["x"]
    assert sum(reports[0].counts.values()) == 6


def test_in_order_gather_nd_becomes_reshape() -> None:
    """The mask transformers builds as m[b, s] over an index grid: GatherND with constant
    indices that read every element in order is a Reshape; any other order stays a GatherND."""
    b, s = 2, 5
    grid = np.stack(np.meshgrid(np.arange(b), np.arange(s), indexing="ij"), -1)  # [b, s, 2]
    mask_in = helper.make_tensor_value_info("m", T.FLOAT, [b, s])
    feeds = {"m": RNG.standard_normal((b, s)).astype(np.float32)}
    for name, idx, rewritten in (
        ("in order", grid.reshape(b, 1, 1, s, 2), True),
        ("negative, in order", grid.reshape(b, 1, 1, s, 2) - np.array([b, s]), True),
        ("reversed", grid[:, ::-1].reshape(b, 1, 1, s, 2), False),
        ("repeated", np.concatenate([grid, grid], 1).reshape(b, 1, 2, s, 2), False),
    ):
        nodes = [helper.make_node("GatherND", ["m", "idx"], ["y"])]
        model = _model(nodes, [mask_in], [Y], [_t("idx", idx.astype(np.int64))])
        g, _ = check_optimized(model, feeds, level=1, only=("eliminate_noops",))
        assert (_ops(g) == ["Reshape"]) == rewritten, (name, _ops(g))


def test_constant_gather_becomes_a_slice() -> None:
    """Gather(x, constant) reading one index or a run of consecutive ones is a Slice (plus a
    Squeeze for a scalar index: BERT's pooler reading token 0), same values; other indices,
    out-of-range ones and lookups in a weight table stay Gathers."""
    b, s, d = 2, 5, 3
    x_in = helper.make_tensor_value_info("x", T.FLOAT, [b, s, d])
    feeds = {"x": RNG.standard_normal((b, s, d)).astype(np.float32)}
    for name, idx, axis, ops in (
        ("scalar 0", np.array(0), 1, ["Slice", "Squeeze"]),
        ("scalar -1", np.array(-1), 1, ["Slice", "Squeeze"]),
        ("one of [1]", np.array([2]), 1, ["Slice"]),
        ("run", np.array([1, 2, 3]), 1, ["Slice"]),
        ("negative axis", np.array([0, 1]), -1, ["Slice"]),
        ("not consecutive", np.array([0, 2]), 1, ["Gather"]),
        ("reversed", np.array([3, 2]), 1, ["Gather"]),
        ("2-D", np.array([[0, 1]]), 1, ["Gather"]),
    ):
        nodes = [helper.make_node("Gather", ["x", "idx"], ["y"], axis=axis)]
        model = _model(nodes, [x_in], [Y], [_t("idx", idx.astype(np.int64))])
        g, _ = check_optimized(model, feeds, level=1, only=("eliminate_noops",))
        assert _ops(g) == ops, (name, _ops(g))
    # an out-of-range constant stays a Gather, so its kernel reports it
    nodes = [helper.make_node("Gather", ["x", "idx"], ["y"], axis=1)]
    model = _model(nodes, [x_in], [Y], [_t("idx", np.array(s, np.int64))])
    g, _ = optimize(import_onnx(model), OptimizeConfig(level=1, only=("eliminate_noops",)))
    assert _ops(g) == ["Gather"]
    # a lookup in a weight table (an embedding) is left to the embedding fusions
    ids = helper.make_tensor_value_info("i", T.INT64, [b])
    nodes = [helper.make_node("Gather", ["table", "pos"], ["y"])]
    inits = [_t("table", np.ones((7, d), np.float32)), _t("pos", np.array([0, 1], np.int64))]
    g, _ = optimize(import_onnx(_model(nodes, [ids], [Y], inits)), OptimizeConfig(level=1, only=("eliminate_noops",)))  # fmt: skip
    assert _ops(g) == ["Gather"]


def test_eliminate_noops_keeps_ops_that_change_shape_or_type() -> None:
    nodes = [
        helper.make_node("Add", ["x", "zero"], ["a"]),  # broadcasts [8] -> [2, batch, seq, 8]
        helper.make_node("Cast", ["a"], ["y"], to=T.DOUBLE),
    ]
    inits = [_t("zero", np.zeros((2, 1, 1, 8), np.float32))]
    y64 = helper.make_tensor_value_info("y", T.DOUBLE, None)
    g, _ = check_optimized(
        _model(nodes, [X], [y64], inits), FEEDS, level=1, only=("eliminate_noops",)
    )
    assert _ops(g) == ["Add", "Cast"]


def test_eliminate_noops_keeps_graph_output_names() -> None:
    nodes = [helper.make_node("Relu", ["x"], ["r"]), helper.make_node("Identity", ["r"], ["y"])]
    g, _ = check_optimized(_model(nodes, [X], [Y]), FEEDS, level=1, only=("eliminate_noops",))
    assert _ops(g) == ["Relu"] and g.nodes[0].outputs == ["y"] and g.output_names == ["y"]


def test_cse_merges_identical_nodes_and_constants() -> None:
    nodes = [
        helper.make_node("Mul", ["x", "c1"], ["a"]),
        helper.make_node("Mul", ["x", "c2"], ["b"]),  # c2 == c1: same node once constants merge
        helper.make_node("Sigmoid", ["a"], ["sa"]),
        helper.make_node("Sigmoid", ["b"], ["sb"]),
        helper.make_node("Add", ["sa", "sb"], ["y"]),
    ]
    inits = [_t("c1", np.full(8, 3.0, np.float32)), _t("c2", np.full(8, 3.0, np.float32))]
    g, reports = check_optimized(_model(nodes, [X], [Y], inits), FEEDS, level=1, only=("cse",))
    assert _ops(g) == ["Mul", "Sigmoid", "Add"]
    assert g.nodes[2].inputs[0] == g.nodes[2].inputs[1]
    assert reports[0].counts == {"constants": 1, "nodes": 2}


def test_cancel_transposes_and_reshapes() -> None:
    nodes = [
        # K^T as exporters write it: merge batch*heads, swap, split back == Transpose(0,1,3,2)
        helper.make_node("Reshape", ["x", "s3"], ["m"]),
        helper.make_node("Transpose", ["m"], ["mt"], perm=[0, 2, 1]),
        helper.make_node("Reshape", ["mt", "s4"], ["kt"]),
        helper.make_node("Transpose", ["kt"], ["back"], perm=[0, 1, 3, 2]),  # cancels
        helper.make_node("Reshape", ["back", "flat"], ["r1"]),
        helper.make_node("Reshape", ["r1", "final"], ["y"]),
    ]
    inits = [
        _t("s3", np.array([-1, 7, 32], np.int64)),
        _t("s4", np.array([-1, 12, 32, 7], np.int64)),
        _t("flat", np.array([-1], np.int64)),
        _t("final", np.array([-1, 384], np.int64)),
    ]
    feeds = {"x": RNG.standard_normal((2, 12, 7, 32)).astype(np.float32)}
    x4s = helper.make_tensor_value_info("x", T.FLOAT, ["batch", 12, 7, 32])
    g, reports = check_optimized(
        _model(nodes, [x4s], [Y], inits),
        feeds,
        level=1,
        only=("fold_constants", "cancel_transpose_reshape"),
    )
    assert _ops(g) == ["Reshape"], g.dump()
    counts = reports[-1].counts
    assert counts["reshape_transpose_reshape"] == 1 and counts["transpose_transpose"] == 1
    assert counts["reshape_reshape"] == 1


def test_dce_removes_unused_nodes_and_weights() -> None:
    nodes = [
        helper.make_node("Mul", ["x", "w"], ["dead"]),
        helper.make_node("Relu", ["x"], ["y"]),
    ]
    g, reports = check_optimized(
        _model(nodes, [X], [Y], [_t("w", np.ones(8, np.float32))]), FEEDS, level=1, only=("dce",)
    )
    assert _ops(g) == ["Relu"] and not g.initializers
    assert reports[0].counts == {"nodes_removed": 1, "weights_removed": 1}


def test_level0_changes_nothing_and_original_is_untouched() -> None:
    nodes = [helper.make_node("Identity", ["x"], ["a"]), helper.make_node("Relu", ["a"], ["y"])]
    model = _model(nodes, [X], [Y])
    g0 = import_onnx(model)
    g, reports = optimize(g0, OptimizeConfig(level=0))
    assert reports == [] and _ops(g) == ["Identity", "Relu"]
    g1, _ = optimize(g0, OptimizeConfig(level=1))
    assert _ops(g1) == ["Relu"] and _ops(g0) == ["Identity", "Relu"]


def test_debug_mode_names_the_pass_that_broke_the_graph() -> None:
    @register_pass("zz_broken_for_test", level=9, doc="test only")
    def broken(graph):  # noqa: ANN001, ANN202
        graph.nodes.insert(0, Node("Relu", ["nowhere"], ["oops"], name="bad"))
        return {}

    try:
        g0 = import_onnx(_model([helper.make_node("Relu", ["x"], ["y"])], [X], [Y]))
        with pytest.raises(GraphError, match="pass 'zz_broken_for_test' broke the graph.*nowhere"):
            optimize(g0, OptimizeConfig(level=9, debug=True, only=("zz_broken_for_test",)))
    finally:
        _PASSES.pop("zz_broken_for_test")


def test_minilm_level1_keeps_outputs(minilm) -> None:  # noqa: ANN001
    path, feeds = minilm
    g, reports = check_optimized(path, feeds, level=1)
    before = reports[0].nodes_before
    assert len(g.nodes) < before * 0.85, f"{before} -> {len(g.nodes)}"
    assert [v.shape for v in g.outputs] == [("batch", "seq", 384), ("batch", 384)]


def test_fold_constants_folds_castlike_of_a_constant() -> None:
    nodes = [
        helper.make_node("CastLike", ["c", "x"], ["c2"]),
        helper.make_node("Add", ["x", "c2"], ["y"]),
    ]
    inits = [_t("c", np.arange(8, dtype=np.float64))]
    g, _ = check_optimized(_model(nodes, [X], [Y], inits), FEEDS, level=1, only=("fold_constants",))
    assert _ops(g) == ["Add"] and g.initializers[g.nodes[0].inputs[1]].dtype == torch.float32
