"""A FusedGemm's residual add moved into the LayerNormalization after it (engine/link_skip.py,
ecoinfer.SkipLayerNorm): the builder keeps the move only where timing says it pays, and the
moved pair computes what the original pair computes, saved and loaded."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto
from onnx import helper as oh
from onnx import numpy_helper as nh

from ecoinfer.engine import link_codes, link_skip
from ecoinfer.engine.builder import BuildConfig, build, load_engine, save_engine
from ecoinfer.engine.runtime import ShapeProfile
from ecoinfer.ir.graph import Node

SHAPE = {"x": (8, 16)}


def _block(path: Path, ln_stats: bool = False) -> Path:
    """relu(x @ W1 + b1) @ W2 + b2 + x, then LayerNorm: a transformer FFN's shape."""
    r = np.random.default_rng(3)
    inits = [
        nh.from_array((r.standard_normal(s) * 0.3).astype(np.float32), n)
        for n, s in [
            ("w1", (16, 32)),
            ("b1", (32,)),
            ("w2", (32, 16)),
            ("b2", (16,)),
            ("g", (16,)),
            ("beta", (16,)),
        ]  # fmt: skip
    ]
    outs = ["y", "mean"] if ln_stats else ["y"]
    nodes = [
        oh.make_node("MatMul", ["x", "w1"], ["m1"]),
        oh.make_node("Add", ["m1", "b1"], ["a1"]),
        oh.make_node("Relu", ["a1"], ["r1"]),
        oh.make_node("MatMul", ["r1", "w2"], ["m2"]),
        oh.make_node("Add", ["m2", "b2"], ["a2"]),
        oh.make_node("Add", ["a2", "x"], ["s"]),
        oh.make_node("LayerNormalization", ["s", "g", "beta"], outs, axis=-1, epsilon=1e-5),
    ]
    graph_outs = [oh.make_tensor_value_info("y", TensorProto.FLOAT, [8, 16])]
    if ln_stats:
        graph_outs.append(oh.make_tensor_value_info("mean", TensorProto.FLOAT, None))
    g = oh.make_graph(
        nodes, "ffn", [oh.make_tensor_value_info("x", TensorProto.FLOAT, [8, 16])], graph_outs,
        inits,
    )  # fmt: skip
    onnx.save(oh.make_model(g, opset_imports=[oh.make_opsetid("", 17)]), path)
    return path


def _build(path: Path, **kw) -> object:  # noqa: ANN003
    return build(
        path, BuildConfig(device="cpu", profiles=[ShapeProfile(SHAPE, SHAPE, SHAPE)], **kw)
    )


def _x() -> dict[str, np.ndarray]:
    return {"x": np.random.default_rng(5).standard_normal((8, 16)).astype(np.float32)}


def _ops(eng) -> list[str]:  # noqa: ANN001
    return [n.op_type for n in eng.graph.nodes]


def test_off_on_the_cpu_by_default_and_when_not_faster(tmp_path, monkeypatch) -> None:  # noqa: ANN001
    path = _block(tmp_path / "ffn.onnx")
    eng = _build(path)
    assert eng.report["skip_layernorm"] == [] and "SkipLayerNorm" not in _ops(eng)
    monkeypatch.setattr(link_codes, "link_pays", lambda before, after: False)
    eng = _build(path, skip_layernorm=True)
    assert eng.report["skip_layernorm"] == [] and "SkipLayerNorm" not in _ops(eng)


def test_moved_residual_runs_as_the_original(tmp_path, monkeypatch) -> None:  # noqa: ANN001
    path = _block(tmp_path / "ffn.onnx")
    plain = _build(path)
    seen: list[tuple[float, float]] = []

    def pays(before: float, after: float) -> bool:
        seen.append((before, after))
        return True

    monkeypatch.setattr(link_codes, "link_pays", pays)
    eng = _build(path, skip_layernorm=True)
    assert len(seen) == 1 and all(t > 0 for t in seen[0])
    gemms = [n for n in eng.graph.nodes if n.op_type == "FusedGemm"]
    (sln,) = [n for n in eng.graph.nodes if n.op_type == "SkipLayerNorm"]
    assert eng.report["skip_layernorm"] == [{"gemm": gemms[1].name, "norm": sln.name}]
    assert len(gemms[1].inputs) == 3  # A, W, bias: the residual left the GEMM
    assert sln.inputs[0] == gemms[1].outputs[0] and sln.inputs[1] == "x"
    assert sln.domain == "ecoinfer" and eng.choices[sln.name].time_ms  # tuned like any layer
    want = plain.run(_x())["y"]
    got = eng.run(_x())["y"]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    again = load_engine(save_engine(eng, tmp_path / "skip.eng"))
    np.testing.assert_array_equal(again.run(_x())["y"], got)


def test_norm_with_statistics_outputs_is_left_alone(tmp_path, monkeypatch) -> None:  # noqa: ANN001
    monkeypatch.setattr(link_codes, "link_pays", lambda before, after: True)
    eng = _build(_block(tmp_path / "ffn.onnx", ln_stats=True), skip_layernorm=True)
    assert "SkipLayerNorm" not in _ops(eng)


def test_candidate_rules() -> None:
    gemm = Node("FusedGemm", ["a", "w", "b", "r"], ["y"], {}, "g", "ecoinfer")
    ln = Node("LayerNormalization", ["y", "s", "bb"], ["z"], {"epsilon": 1e-12}, "ln")
    assert link_skip.holds(gemm, [ln], set())
    assert not link_skip.holds(gemm, [ln, ln], set())  # Y has another reader
    assert not link_skip.holds(gemm, [ln], {"y"})  # a graph output
    relu = Node("Relu", ["y"], ["z"], {}, "relu")
    assert not link_skip.holds(gemm, [relu], set())  # not read by a norm: nothing to hold for
    no_res = Node("FusedGemm", ["a", "w", "b"], ["y"], {}, "g", "ecoinfer")
    assert not link_skip.holds(no_res, [ln], set())
    sl = link_skip.candidate(gemm, ln, {"g"})
    assert sl == link_skip.SkipLink("g", "ln", "r")
    assert link_skip.candidate(gemm, ln, set()) is None  # not held
    c = link_skip.linked_consumer(ln, sl)
    assert (c.op_type, c.domain, c.inputs, c.attrs["epsilon"]) == (
        "SkipLayerNorm", "ecoinfer", ["y", "r", "s", "bb"], 1e-12
    )  # fmt: skip
    p = link_skip.linked_producer(
        Node("FusedGemm", ["a", "w", "", "r"], ["y"], {}, "g", "ecoinfer")
    )
    assert p.inputs == ["a", "w"]


@pytest.mark.parametrize("bad", ["shape", "dtype"])
def test_schema_rejects_mismatched_skip(bad: str) -> None:
    from ecoinfer.errors import EcoinferError
    from ecoinfer.ir.graph import Graph, Value

    g = Graph("g")
    g.inputs = [Value("x", "float16", (4, 8)), Value("s", "float16" if bad == "shape" else "float32",
                                                      (4, 9) if bad == "shape" else (4, 8))]  # fmt: skip
    g.values.update({v.name: v for v in g.inputs})
    g.initializers["w"] = torch.ones(8, dtype=torch.float16)
    g.values["w"] = Value("w", "float16", (8,))
    g.nodes = [Node("SkipLayerNorm", ["x", "s", "w"], ["y"], {}, "sln", "ecoinfer")]
    g.outputs = [Value("y", None, None)]
    with pytest.raises(EcoinferError, match="sln.*Skip"):
        g.infer_shapes(strict=True)


def test_cli_no_skip_layernorm_flag(tmp_path, monkeypatch) -> None:  # noqa: ANN001
    from ecoinfer.cli import main
    from ecoinfer.engine import builder

    seen: list = []
    real = builder.build

    def spy(model, cfg):  # noqa: ANN001, ANN202
        seen.append(cfg.skip_layernorm)
        return real(model, cfg)

    monkeypatch.setattr(builder, "build", spy)
    path = _block(tmp_path / "ffn.onnx")
    base = ["build", str(path), "--device", "cpu", "--shapes", "x:8x16"]
    assert main([*base, "-o", str(tmp_path / "a.eng"), "--no-skip-layernorm"]) == 0
    assert main([*base, "-o", str(tmp_path / "b.eng")]) == 0
    assert seen == [False, None]


def test_build_prints_the_moves(tmp_path, monkeypatch, capsys) -> None:  # noqa: ANN001
    from ecoinfer.cli import main
    from ecoinfer.engine import builder

    real = builder.build
    monkeypatch.setattr(link_codes, "link_pays", lambda before, after: True)
    # the CLI's default (None: GPU builds only) forced on for this CPU build
    monkeypatch.setattr(
        builder, "build", lambda m, cfg: real(m, dataclasses.replace(cfg, skip_layernorm=True))
    )
    path = _block(tmp_path / "ffn.onnx")
    assert main(["build", str(path), "--device", "cpu", "--shapes", "x:8x16", "-o",
                 str(tmp_path / "a.eng")]) == 0  # fmt: skip
    out = capsys.readouterr().out
    assert "1 residual add(s) moved from a GEMM into the LayerNorm" in out
    assert "ecoinfer.SkipLayerNorm" in out  # the layer table names the op
