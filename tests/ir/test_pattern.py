"""The pattern matcher and rewrite engine."""

from __future__ import annotations

import torch

from ecoinfer.ir.graph import Graph, Node, Value
from ecoinfer.ir.pattern import Any_, Const, Match, Op, Rewriter, Rule, apply_rules


def _graph(nodes: list[Node], outputs: list[str], consts: dict | None = None) -> Graph:
    g = Graph(
        name="t",
        inputs=[Value("x", "float32", (2, 3)), Value("z", "float32", (2, 3))],
        outputs=[Value(o) for o in outputs],
        nodes=nodes,
    )
    for v in g.inputs:
        g.values[v.name] = v
    g.initializers.update(consts or {})
    g.infer_shapes()
    return g


def _relu_of_add(m: Match, rw: Rewriter) -> list[Node]:
    # Relu(Add(a, b)) ==> Sum-then-Relu written as one custom node, to see what matched
    return [Node("Relu", [m.values["a"]], list(m.root.outputs), name="fused")]


RULE = Rule("t", Op("Relu", Op("Add", Any_("a"), Const("c"), name="add")), _relu_of_add)


def test_commutative_inputs_and_counts() -> None:
    g = _graph(
        [Node("Add", ["c", "x"], ["s"], name="a"), Node("Relu", ["s"], ["y"], name="r")],
        ["y"],
        {"c": torch.zeros(3)},
    )
    counts = apply_rules(g, [RULE])
    assert counts == {"t": 1}
    assert [(n.op_type, n.inputs, n.name) for n in g.nodes] == [("Relu", ["x"], "fused")]
    assert "c" not in g.initializers  # the weight nobody reads any more is dropped


def test_inner_value_read_twice_is_not_fused() -> None:
    g = _graph(
        [
            Node("Add", ["x", "c"], ["s"], name="a"),
            Node("Relu", ["s"], ["y"], name="r"),
            Node("Neg", ["s"], ["w"], name="n"),
        ],
        ["y", "w"],
        {"c": torch.zeros(3)},
    )
    assert apply_rules(g, [RULE]) == {}
    assert [n.op_type for n in g.nodes] == ["Add", "Relu", "Neg"]


def test_inner_value_that_is_a_graph_output_is_not_fused() -> None:
    g = _graph(
        [Node("Add", ["x", "c"], ["s"], name="a"), Node("Relu", ["s"], ["y"], name="r")],
        ["y", "s"],
        {"c": torch.zeros(3)},
    )
    assert apply_rules(g, [RULE]) == {}


def test_non_constant_where_a_constant_is_required() -> None:
    g = _graph(
        [Node("Add", ["x", "z"], ["s"], name="a"), Node("Relu", ["s"], ["y"], name="r")], ["y"]
    )
    assert apply_rules(g, [RULE]) == {}


def test_same_name_must_bind_same_value_and_decline_leaves_graph() -> None:
    square = Rule(
        "sq",
        Op("Mul", Any_("v"), Any_("v")),
        lambda m, rw: [
            Node("Pow", [m.values["v"], rw.const("two", torch.tensor(2.0))], list(m.root.outputs))
        ],
    )
    g = _graph(
        [
            Node("Mul", ["x", "x"], ["a"]),
            Node("Mul", ["x", "z"], ["b"]),
            Node("Add", ["a", "b"], ["y"]),
        ],
        ["y"],
    )
    assert apply_rules(g, [square]) == {"sq": 1}
    assert [n.op_type for n in g.nodes] == ["Pow", "Mul", "Add"]
    declines = Rule("no", Op("Add", Any_(), Any_()), lambda m, rw: None)
    assert apply_rules(g, [declines]) == {}
    assert [n.op_type for n in g.nodes] == ["Pow", "Mul", "Add"]


def test_alias_rewrite_and_fixpoint() -> None:
    # Neg(Neg(x)) ==> x, applied until nothing matches
    rule = Rule("negneg", Op("Neg", Op("Neg", Any_("v"))), lambda m, rw: m.values["v"])
    g = _graph(
        [
            Node("Neg", ["x"], ["a"]),
            Node("Neg", ["a"], ["b"]),
            Node("Neg", ["b"], ["c"]),
            Node("Neg", ["c"], ["d"]),
            Node("Relu", ["d"], ["y"]),
        ],
        ["y"],
    )
    assert apply_rules(g, [rule]) == {"negneg": 2}
    assert [(n.op_type, n.inputs) for n in g.nodes] == [("Relu", ["x"])]


def test_attribute_patterns() -> None:
    rule = Rule(
        "t01", Op("Transpose", Any_("v"), attrs={"perm": [1, 0]}), lambda m, rw: m.values["v"]
    )
    g = _graph(
        [Node("Transpose", ["x"], ["a"], {"perm": [0, 1]}), Node("Relu", ["a"], ["y"])], ["y"]
    )
    assert apply_rules(g, [rule]) == {}
