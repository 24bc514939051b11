"""A quantized layer runs in float where float is faster (engine/quant_fallback.py)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto as T
from onnx import helper, numpy_helper

from ecoinfer.commands.inspect_engine import engine_summary
from ecoinfer.engine import builder
from ecoinfer.engine.builder import BuildConfig, build, load_engine
from ecoinfer.engine.quant_fallback import float_twin, match_original
from ecoinfer.engine.runtime import ShapeProfile
from ecoinfer.quant.budget import QuantizeOptions

RNG = np.random.default_rng(5)
W1 = RNG.standard_normal((16, 32)).astype(np.float32)
B1 = RNG.standard_normal(32).astype(np.float32)
W2 = RNG.standard_normal((32, 8)).astype(np.float32)


@pytest.fixture(scope="module")
def mlp(tmp_path_factory):  # noqa: ANN001, ANN201
    d = tmp_path_factory.mktemp("fallback")
    nodes = [
        helper.make_node("MatMul", ["x", "W1"], ["h"], name="fc1"),
        helper.make_node("Add", ["h", "B1"], ["h2"], name="fc1_bias"),
        helper.make_node("Relu", ["h2"], ["h3"], name="fc1_relu"),
        helper.make_node("MatMul", ["h3", "W2"], ["y"], name="fc2"),
    ]
    inits = [numpy_helper.from_array(a, n) for n, a in (("W1", W1), ("B1", B1), ("W2", W2))]
    g = helper.make_graph(
        nodes,
        "mlp",
        [helper.make_tensor_value_info("x", T.FLOAT, ["n", 16])],
        [helper.make_tensor_value_info("y", T.FLOAT, ["n", 8])],
        inits,
    )
    path = d / "mlp.onnx"
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), path)
    calib = d / "calib"
    calib.mkdir()
    for i in range(4):
        np.savez(calib / f"b{i}.npz", x=RNG.standard_normal((8, 16)).astype(np.float32))
    return path, calib


def _build(mlp, **kw):  # noqa: ANN001, ANN003, ANN202
    path, calib = mlp
    shp = {"x": (8, 16)}
    cfg = BuildConfig(
        device="cpu",
        profiles=[ShapeProfile(shp, shp, shp)],
        quant=QuantizeOptions(calib_data=str(calib)),
        **kw,
    )
    return build(path, cfg)


def _ops(eng) -> list[str]:  # noqa: ANN001
    return [n.op_type for n in eng.graph.nodes]


def test_off_on_the_cpu_by_default(mlp) -> None:  # noqa: ANN001
    eng = _build(mlp)
    assert _ops(eng).count("QGemm") == 2
    assert eng.report["quantization"]["float_for_speed"] == []
    # not even timed: no float candidates in the report
    assert not any(c.get("float") for cs in eng.report["candidates"].values() for c in cs)


def test_float_twin_replaces_a_slower_quantized_layer(mlp, tmp_path, monkeypatch, capsys) -> None:  # noqa: ANN001
    quantized = _build(mlp)
    monkeypatch.setattr(builder, "prefer_float", lambda q_ms, f_ms: True)
    eng = _build(mlp, quant_fallback=True)
    assert "QGemm" not in _ops(eng) and _ops(eng).count("FusedGemm") == 2
    rows = eng.report["quantization"]["float_for_speed"]
    assert len(rows) == 2 and all(r["quantized_ms"] and r["float_ms"] for r in rows)
    assert all(r["quantized_tactic"].endswith("(quantized)") for r in rows)
    assert not [w for w in eng.graph.initializers.values() if w.dtype == torch.int8]
    # all twins: nothing 8-bit runs, and that is not called emulation (no layer emulates)
    q = eng.report["quantization"]
    assert q["tactics"] == {} and q["eight_bit"] == 0 and not q["emulated"]
    assert {r["precision"] for r in eng.layer_table()} == {"float32"}
    from ecoinfer.commands.build import _print_quantization  # noqa: PLC0415

    _print_quantization(q)
    out = capsys.readouterr().out
    assert "2 run their float twin" in out and "warning: no layer runs in int8" in out

    # each twin is the float layer as it was before quantization: the original weights
    assert all(r["float_weight"] == "original" for r in rows)
    x = RNG.standard_normal((8, 16)).astype(np.float32)
    want = np.maximum(x @ W1 + B1, 0) @ W2
    np.testing.assert_allclose(eng.run({"x": x})["y"], want, rtol=1e-5, atol=1e-5)
    eng.save(tmp_path / "f.eng")
    np.testing.assert_allclose(
        load_engine(tmp_path / "f.eng").run({"x": x})["y"], want, rtol=1e-5, atol=1e-5
    )
    info = engine_summary(tmp_path / "f.eng")  # what `ecoinfer inspect` says of it
    assert info["quantized_layers"] == {"eight_bit": 0, "emulated": 0, "float_twin": 2}
    # the headline and inspect do not call it an int8 engine
    from ecoinfer.commands.build import _precision_label  # noqa: PLC0415
    from ecoinfer.commands.inspect_engine import print_engine  # noqa: PLC0415

    assert _precision_label(eng) == "float32 (int8 asked: no layer runs in it)"
    capsys.readouterr()
    print_engine(info)
    assert "precision float32 (int8 asked: no layer runs in it);" in capsys.readouterr().out

    # without the original (a model that brought its own Q/DQ layers) the twin computes the
    # float layer on the dequantized codes
    n = next(n for n in quantized.graph.nodes if n.op_type == "QGemm")
    env = dict(quantized.graph.initializers)
    tw = float_twin(n, env, torch.float32)
    w = env[n.inputs[1]].float() * env[n.inputs[3]].float().reshape(-1, 1)
    assert not tw.original and torch.equal(tw.weight, w)
    assert float_twin(n, env, torch.float32, torch.from_numpy(W1)).original


def test_original_weight_matched_by_layout_and_values() -> None:
    w = torch.from_numpy(RNG.standard_normal((6, 6)).astype(np.float32))
    codes = (w.T * 1.01).contiguous()  # the codes' layout is [N, K]: the transpose, 1% off
    got = match_original(w, codes)
    assert got is not None and torch.equal(got, w.T)
    # a weight the codes do not quantize, or of another size, is not used
    assert match_original(w * -1, codes) is None
    assert match_original(torch.ones(30), codes) is None
    assert match_original(None, codes) is None


def test_float_twin_in_a_bf16_build(mlp, monkeypatch) -> None:  # noqa: ANN001
    # the twin takes the layer's precision: bf16 weights beside bf16 activations
    monkeypatch.setattr(builder, "prefer_float", lambda q_ms, f_ms: True)
    eng = _build(mlp, quant_fallback=True, precision="bfloat16")
    gemms = [n for n in eng.graph.nodes if n.op_type == "FusedGemm"]
    assert len(gemms) == 2 and "QGemm" not in _ops(eng)
    assert all(eng.graph.initializers[n.inputs[1]].dtype == torch.bfloat16 for n in gemms)
    x = RNG.standard_normal((8, 16)).astype(np.float32)
    ref = np.maximum(x @ W1 + B1, 0) @ W2
    got = eng.run({"x": x})["y"].astype(np.float32)
    assert np.abs(got - ref).max() / np.abs(ref).max() < 5e-2  # int8 weights + bf16


def test_quantized_layer_kept_when_it_is_faster(mlp, monkeypatch) -> None:  # noqa: ANN001
    monkeypatch.setattr(builder, "prefer_float", lambda q_ms, f_ms: False)
    eng = _build(mlp, quant_fallback=True)
    assert _ops(eng).count("QGemm") == 2
    assert eng.report["quantization"]["float_for_speed"] == []
    # the float twin was timed next to the quantized tactics
    assert any(c.get("float") for cs in eng.report["candidates"].values() for c in cs)


def test_prefer_float_needs_both_times() -> None:
    from ecoinfer.engine.quant_fallback import prefer_float  # noqa: PLC0415

    assert prefer_float(2.0, 1.0) and not prefer_float(1.0, 2.0) and not prefer_float(1.0, 1.0)
    assert not prefer_float(None, 1.0) and not prefer_float(1.0, None)
