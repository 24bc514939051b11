"""engine/link_skip_codes.py: a QGemm's residual add moved into the LayerNormCodes that reads
its output (the norm's Skip input). On the CPU the builder is forced to keep the pairs (a GPU
build decides by timing); the engine must compute what it computed before."""

from __future__ import annotations

import numpy as np
import pytest
from test_link_codes import quant_model_maker

from ecoinfer.engine import link_codes, link_skip_codes
from ecoinfer.engine.builder import load_engine
from ecoinfer.errors import EcoinferError
from ecoinfer.ir.graph import Node


def _model(tmp_path, rng):  # noqa: ANN001, ANN202
    """fc0(x) + b0 + x -> LayerNorm -> fc1 -> Relu -> fc2: a post-norm block whose first GEMM
    adds the residual; returns make(**BuildConfig fields) -> Engine (INT8)."""
    from onnx import helper

    arrays = {
        "W0": (rng.standard_normal((16, 16)) * 0.3).astype(np.float32),
        "b0": rng.standard_normal(16).astype(np.float32),
        "G": (rng.random(16) + 0.5).astype(np.float32),
        "B": rng.standard_normal(16).astype(np.float32),
        "W1": rng.standard_normal((16, 32)).astype(np.float32),
        "W2": rng.standard_normal((32, 8)).astype(np.float32),
    }
    nodes = [
        helper.make_node("MatMul", ["x", "W0"], ["a"], name="fc0"),
        helper.make_node("Add", ["a", "b0"], ["ab"], name="bias0"),
        helper.make_node("Add", ["ab", "x"], ["s"], name="res0"),
        helper.make_node("LayerNormalization", ["s", "G", "B"], ["n"], name="ln", axis=-1),
        helper.make_node("MatMul", ["n", "W1"], ["h"], name="fc1"),
        helper.make_node("Relu", ["h"], ["h2"], name="relu"),
        helper.make_node("MatMul", ["h2", "W2"], ["y"], name="fc2"),
    ]
    return quant_model_maker(tmp_path, rng, "post_norm", nodes, arrays, 8)


@pytest.fixture
def linked(monkeypatch):  # noqa: ANN001, ANN201
    monkeypatch.setattr(link_codes, "link_pays", lambda before, after: True)


def test_the_residual_moves_into_the_norm(tmp_path, linked) -> None:  # noqa: ANN001
    rng = np.random.default_rng(3)
    make = _model(tmp_path, rng)
    plain = make(link_codes=True)  # a CPU build: off unless asked
    assert plain.report["skip_layernorm"] == []
    eng = make(link_codes=True, skip_layernorm=True)
    assert eng.report["skip_layernorm"] == [{"gemm": "fc0", "norm": "ln"}]
    nodes = {n.name: n for n in eng.graph.nodes}
    assert len(nodes["fc0"].inputs) == 5  # X, W_q, x_scale, w_scale, bias: no residual
    assert nodes["ln"].op_type == "LayerNormCodes" and nodes["ln"].inputs[4] == "x"
    x = {"x": rng.standard_normal((8, 16)).astype(np.float32)}
    want = np.asarray(plain.run(x)["y"])
    np.testing.assert_allclose(np.asarray(eng.run(x)["y"]), want, rtol=1e-5, atol=1e-5)
    path = tmp_path / "post_norm.eng"  # the plan round-trips through the engine file
    eng.save(str(path))
    again = np.asarray(load_engine(str(path)).run(x)["y"])
    np.testing.assert_allclose(again, np.asarray(eng.run(x)["y"]), rtol=0, atol=0)


def test_kept_only_where_it_times_faster(tmp_path, monkeypatch) -> None:  # noqa: ANN001
    make = _model(tmp_path, np.random.default_rng(3))
    calls: list[int] = []

    def only_codes(before: float, after: float) -> bool:
        calls.append(1)
        return len(calls) <= 2  # the two code links, then the skip pair: timed, not kept

    monkeypatch.setattr(link_codes, "link_pays", only_codes)
    eng = make(link_codes=True, skip_layernorm=True)
    assert len(calls) == 3 and eng.report["skip_layernorm"] == []
    assert len(next(n for n in eng.graph.nodes if n.name == "ln").inputs) == 4


def test_candidates(tmp_path, linked) -> None:  # noqa: ANN001
    make = _model(tmp_path, np.random.default_rng(3))
    g = make(link_codes=True).graph
    assert link_skip_codes.candidates(g) == [link_skip_codes.SkipCodesLink("fc0", "ln", "x")]
    gemm = next(n for n in g.nodes if n.name == "fc0")
    g.outputs.append(g.values[gemm.outputs[0]])  # the sum wanted as an output: it stays
    assert link_skip_codes.candidates(g) == []
    g.outputs.pop()
    # a second reader of the sum: the GEMM must still write it whole
    g.nodes.append(Node("Relu", [gemm.outputs[0]], ["extra"], {}, "extra"))
    assert link_skip_codes.candidates(g) == []


def test_a_failure_while_trying_leaves_the_plan_as_it_was(tmp_path, linked, monkeypatch) -> None:  # noqa: ANN001
    rng = np.random.default_rng(4)
    make = _model(tmp_path, rng)
    plain = make(link_codes=True)

    def broken(graph):  # noqa: ANN001, ANN202
        raise RuntimeError("out of memory")

    monkeypatch.setattr(link_skip_codes, "candidates", broken)
    eng = make(link_codes=True, skip_layernorm=True)
    assert eng.report["skip_layernorm"] == []
    assert any("residuals of quantized GEMMs not moved" in w for w in eng.warnings)
    x = {"x": rng.standard_normal((8, 16)).astype(np.float32)}
    np.testing.assert_allclose(eng.run(x)["y"], plain.run(x)["y"], rtol=0, atol=0)


def test_the_op_checks_its_skip(tmp_path, linked) -> None:  # noqa: ANN001
    g = _model(tmp_path, np.random.default_rng(3))(link_codes=True, skip_layernorm=True).graph
    ln = next(n for n in g.nodes if n.name == "ln")
    ln.inputs[4] = "G"  # a skip that does not match X
    with pytest.raises(EcoinferError, match=r"Skip has shape \[16\], X has \[8, 16\]"):
        g.infer_shapes()
    ln.inputs[4] = "x"
    ln.outputs += ["mu", "inv"]  # statistics of a sum no one keeps
    with pytest.raises(EcoinferError, match="Mean and InvStdDev cannot come with Skip"):
        g.infer_shapes()


def test_a_broadcast_residual_stays_in_the_gemm(tmp_path, linked) -> None:  # noqa: ANN001
    """Only a residual of the sum's own declared shape moves: one that broadcasts, or whose
    dims the graph names otherwise, is not a candidate (the norm's Skip must match X)."""
    g = _model(tmp_path, np.random.default_rng(3))(link_codes=True).graph
    assert link_skip_codes.candidates(g)
    g.values["x"].shape = (1, 16)  # as if the residual broadcast over the rows
    assert link_skip_codes.candidates(g) == []
    g.values["x"].shape = ("N", 16)  # same size at run time perhaps, but not provably
    assert link_skip_codes.candidates(g) == []


def test_a_rewrite_that_fails_leaves_the_plan_whole(tmp_path, linked, monkeypatch) -> None:  # noqa: ANN001
    """A move whose rewritten graph does not verify is undone as a whole: the build warns and
    runs the plan it had."""
    rng = np.random.default_rng(5)
    make = _model(tmp_path, rng)
    plain = make(link_codes=True)
    real = link_skip_codes.linked_consumer

    def broken(c, link):  # noqa: ANN001, ANN202
        n = real(c, link)
        n.inputs[link_skip_codes.SKIP] = "G"  # a Skip of the wrong shape: infer_shapes refuses
        return n

    monkeypatch.setattr(link_skip_codes, "linked_consumer", broken)
    eng = make(link_codes=True, skip_layernorm=True)
    assert eng.report["skip_layernorm"] == []
    assert any("residuals of quantized GEMMs not moved" in w and "Skip has shape" in w
               for w in eng.warnings)  # fmt: skip
    assert [n.inputs for n in eng.graph.nodes] == [n.inputs for n in plain.graph.nodes]
    x = {"x": rng.standard_normal((8, 16)).astype(np.float32)}
    np.testing.assert_allclose(eng.run(x)["y"], plain.run(x)["y"], rtol=0, atol=0)
