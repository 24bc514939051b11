"""The IR: toposort, verify(), shape inference with symbolic dims, dump, parameter counts."""

from __future__ import annotations

import pytest
import torch

from ecoinfer.errors import GraphError, ShapeInferenceError
from ecoinfer.ir.graph import Graph, Node, Value, merge_shapes


def _graph(nodes: list[Node]) -> Graph:
    g = Graph(
        name="t",
        inputs=[Value("x", "float32", ("batch", 3)), Value("y", "float32", (1, 3))],
        outputs=[Value("out")],
        nodes=nodes,
    )
    for v in g.inputs:
        g.values[v.name] = v
    return g


def test_toposort_orders_nodes_and_inference_keeps_symbols() -> None:
    g = _graph([Node("Relu", ["s"], ["out"], name="r"), Node("Add", ["x", "y"], ["s"], name="a")])
    g.toposort()
    assert [n.name for n in g.nodes] == ["a", "r"]
    g.infer_shapes()
    assert g.values["out"].shape == ("batch", 3)
    assert g.values["out"].dtype == "float32"
    g.verify()


def test_cycle_is_reported() -> None:
    g = _graph([Node("Relu", ["b"], ["a"], name="n1"), Node("Relu", ["a"], ["b"], name="n2")])
    g.outputs = [Value("a")]
    with pytest.raises(GraphError, match="cycle"):
        g.toposort()


def test_verify_names_undefined_input_and_double_definition() -> None:
    g = _graph([Node("Add", ["x", "nope"], ["out"], name="bad_add")])
    with pytest.raises(GraphError, match="bad_add.*'nope'"):
        g.verify()
    g = _graph([Node("Relu", ["x"], ["out"], name="r1"), Node("Relu", ["x"], ["out"], name="r2")])
    with pytest.raises(GraphError, match="defined twice.*r2"):
        g.verify()


def test_verify_catches_inconsistent_declared_types() -> None:
    g = _graph([Node("Add", ["x", "y"], ["out"], name="a")])
    g.values["out"] = Value("out", "float16", ("batch", 3))
    with pytest.raises(GraphError, match="declared float16 but the op produces float32"):
        g.verify()
    g.values["out"] = Value("out", "float32", ("batch", 4))
    with pytest.raises(GraphError, match="declared"):
        g.verify()


def test_broadcast_error_names_node() -> None:
    g = _graph([Node("Add", ["x", "z"], ["out"], name="add7")])
    g.initializers["z"] = torch.zeros(5)
    with pytest.raises(ShapeInferenceError, match="add7.*do not broadcast"):
        g.infer_shapes()


def test_symbolic_broadcast_rules() -> None:
    g = _graph([Node("Mul", ["x", "w"], ["out"], name="m")])
    g.initializers["w"] = torch.ones(4, 1, 3)
    g.infer_shapes()
    assert g.values["out"].shape == (4, "batch", 3)


def test_dump_and_params() -> None:
    g = _graph([Node("Add", ["x", "w"], ["out"], name="add_w")])
    g.initializers["w"] = torch.ones(1, 3)
    g.infer_shapes()
    text = g.dump()
    assert "input  x: float32[batchx3]" in text
    assert "out: float32[batchx3] = Add(x, w)  # add_w" in text
    assert g.param_count() == (3, 12)
    assert g.op_histogram() == {"Add": 1}


def test_merge_shapes_prefers_precise() -> None:
    assert merge_shapes(("batch", None), (None, 4)) == ("batch", 4)
    assert merge_shapes(None, ("a",)) == ("a",)
