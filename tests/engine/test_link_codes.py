"""Quantized layers handing each other codes (engine/link_codes.py): the linked pair computes
what the unlinked pair computes, the builder keeps a link only where timing says so, and the
linked engine saves, loads and runs."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_quant_fallback import _build, _ops, mlp  # noqa: F401  (the shared fixture)

from ecoinfer.engine import link_codes
from ecoinfer.engine.builder import load_engine, save_engine
from ecoinfer.errors import EcoinferError
from ecoinfer.ir.graph import Graph, Node, Value


def _x() -> dict[str, np.ndarray]:
    return {"x": np.random.default_rng(9).standard_normal((8, 16)).astype(np.float32)}


def _qgemms(eng) -> list[Node]:  # noqa: ANN001
    return [n for n in eng.graph.nodes if n.op_type == "QGemm"]


def test_off_on_the_cpu_by_default(mlp) -> None:  # noqa: ANN001, F811
    eng = _build(mlp)
    assert eng.report["quantization"]["linked_codes"] == []
    assert all(len(n.inputs) < 7 for n in _qgemms(eng))


def test_not_linked_when_not_faster(mlp, monkeypatch) -> None:  # noqa: ANN001, F811
    monkeypatch.setattr(link_codes, "link_pays", lambda before, after: False)
    eng = _build(mlp, link_codes=True)
    assert eng.report["quantization"]["linked_codes"] == []


def test_linked_pair_runs_as_the_unlinked_one(mlp, monkeypatch, tmp_path) -> None:  # noqa: ANN001, F811
    """(INT8: FP8 builds need a GPU; the FP8 kernels' codes-out path is in tests/triton.)"""
    from ecoinfer.quant.budget import QuantizeOptions

    _, calib = mlp
    q = QuantizeOptions(calib_data=str(calib))
    unlinked = _build_q(mlp, q)
    seen: list[tuple[float, float]] = []

    def pays(before: float, after: float) -> bool:
        seen.append((before, after))
        return True

    monkeypatch.setattr(link_codes, "link_pays", pays)
    linked = _build_q(mlp, q, link_codes=True)
    rows = linked.report["quantization"]["linked_codes"]
    assert len(rows) == 1 and len(seen) == 1 and all(t > 0 for t in seen[0])
    p, c = _qgemms(linked)
    assert rows[0] == {"producer": p.name, "consumer": c.name, "float_dtype": "float32"}
    assert p.inputs[6] == c.inputs[2]  # the producer writes codes at the consumer's x_scale
    assert c.attrs["out_dtype"] == "float32"
    assert linked.graph.values[p.outputs[0]].dtype == "int8"
    # the linked pair computes the unlinked pair's codes and result (its tactics may differ:
    # float32 summation order only)
    want = unlinked.run(_x())
    got = linked.run(_x())
    np.testing.assert_allclose(np.asarray(got["y"]), np.asarray(want["y"]), rtol=1e-5, atol=1e-5)
    f = save_engine(linked, tmp_path / "linked.eng")
    again = load_engine(f)
    np.testing.assert_array_equal(np.asarray(again.run(_x())["y"]), np.asarray(got["y"]))


def _build_q(mlp, q, **kw):  # noqa: ANN001, ANN003, ANN202, F811
    from ecoinfer.engine.builder import BuildConfig, build
    from ecoinfer.engine.runtime import ShapeProfile

    path, _ = mlp
    shp = {"x": (8, 16)}
    return build(
        path, BuildConfig(device="cpu", profiles=[ShapeProfile(shp, shp, shp)], quant=q, **kw)
    )


def _pair_graph(x_dtype: str = "float16") -> Graph:
    g = Graph("pair")
    g.inputs = [Value("x", x_dtype, (4, 32))]
    g.values["x"] = g.inputs[0]
    rng = torch.Generator().manual_seed(0)
    for name, shape in (("w1", (32, 32)), ("w2", (16, 32))):
        g.initializers[name] = torch.randint(-100, 100, shape, generator=rng).to(torch.int8)
    for name in ("s1", "s2"):
        g.initializers[name] = torch.tensor(0.05)
    for name, n in (("ws1", 32), ("ws2", 16)):
        g.initializers[name] = torch.full((n,), 0.01)
    g.nodes = [
        Node("QGemm", ["x", "w1", "s1", "ws1"], ["h"], {"qtype": "int8"}, "p", "ecoinfer"),
        Node("QGemm", ["h", "w2", "s2", "ws2"], ["y"], {"qtype": "int8"}, "c", "ecoinfer"),
    ]
    g.outputs = [Value("y")]
    g.infer_shapes()
    return g


def test_candidate_rules() -> None:
    g = _pair_graph()
    p, c = g.nodes
    lk = link_codes.candidate(g, c, p, "float16", 1)
    assert lk == link_codes.Link("p", "c", "s2", "float16")
    assert link_codes.candidate(g, c, p, "float16", 2) is None  # h has another reader
    assert link_codes.candidate(g, c, p, "int8", 1) is None  # c reads codes already
    assert link_codes.candidate(g, c, None, "float16", 1) is None
    link_codes.apply(g, [lk])
    assert g.values["h"].dtype == "int8" and g.values["y"].dtype == "float16"
    assert link_codes.candidate(g, g.nodes[1], g.nodes[0], "float16", 1) is None  # linked


def test_codes_input_needs_out_dtype() -> None:
    g = _pair_graph()
    g.nodes[0] = link_codes.linked_producer(g.nodes[0], link_codes.Link("p", "c", "s2", "float16"))
    del g.values["h"]  # retyped by inference: int8 codes, which c cannot read without out_dtype
    with pytest.raises(EcoinferError, match="out_dtype"):
        g.infer_shapes()


def test_link_beats_float_twins_it_replaces(mlp, monkeypatch) -> None:  # noqa: ANN001, F811
    """Both layers alone slower than float (twins chosen), the linked pair faster: the pair
    runs quantized and linked, and no twin is left in the plan or the report."""
    from ecoinfer.engine import builder
    from ecoinfer.quant.budget import QuantizeOptions

    _, calib = mlp
    monkeypatch.setattr(builder, "prefer_float", lambda q_ms, f_ms: True)
    floats = _build_q(mlp, QuantizeOptions(calib_data=str(calib)), quant_fallback=True)
    assert "QGemm" not in _ops(floats)
    monkeypatch.setattr(link_codes, "link_pays", lambda before, after: True)
    eng = _build_q(
        mlp, QuantizeOptions(calib_data=str(calib)), quant_fallback=True, link_codes=True
    )
    assert _ops(eng).count("QGemm") == 2 and "FusedGemm" not in _ops(eng)
    assert eng.report["quantization"]["float_for_speed"] == []
    assert len(eng.report["quantization"]["linked_codes"]) == 1


def test_attention_hands_codes_to_its_projection() -> None:
    """MultiHeadAttention -> QGemm: the attention writes the projection's codes; the linked
    graph computes what the unlinked one does (reference kernels, bit for bit: both round
    Y to float16 and quantize it with the projection's x_scale)."""
    import copy

    from ecoinfer.kernels.runner import ReferenceRunner

    h, d, b, s = 2, 16, 2, 8
    g = Graph("mha_proj")
    g.inputs = [Value("qkv", "float16", (b, s, 3 * h * d))]
    g.values["qkv"] = g.inputs[0]
    rng = torch.Generator().manual_seed(1)
    g.initializers["w"] = torch.randint(-100, 100, (32, h * d), generator=rng).to(torch.int8)
    g.initializers["xs"] = torch.tensor(0.02)
    g.initializers["ws"] = torch.full((32,), 0.01)
    mha = {"num_heads": h, "head_size": d, "packed": 1, "scale": d**-0.5}
    g.nodes = [
        Node("MultiHeadAttention", ["qkv"], ["att"], mha, "attn", "ecoinfer"),
        Node("QGemm", ["att", "w", "xs", "ws"], ["y"], {"qtype": "int8"}, "proj", "ecoinfer"),
    ]
    g.outputs = [Value("y")]
    g.infer_shapes()
    linked = copy.deepcopy(g)
    lk = link_codes.candidate(linked, linked.nodes[1], linked.nodes[0], "float16", 1)
    assert lk is not None and lk.qtype == "int8"
    link_codes.apply(linked, [lk])
    assert linked.nodes[0].inputs[5] == "xs" and linked.nodes[0].attrs["y_qtype"] == "int8"
    assert linked.values["att"].dtype == "int8"
    x = {"qkv": torch.randn(b, s, 3 * h * d, generator=rng).half()}
    want = ReferenceRunner(g).run(x)["y"]
    got = ReferenceRunner(linked).run(x)["y"]
    assert torch.equal(got, want)


def test_qkv_projection_hands_fp8_codes_to_attention() -> None:
    """QGemm -> MultiHeadAttention with x_scale (FP8 builds quantize attention's QKV): the
    projection writes the codes, attention reads them; bit for bit the unlinked result."""
    import copy

    from ecoinfer.kernels.runner import ReferenceRunner

    h, d, b, s, k = 2, 16, 2, 8, 24
    g = Graph("qkv_mha")
    g.inputs = [Value("x", "float16", (b, s, k))]
    g.values["x"] = g.inputs[0]
    rng = torch.Generator().manual_seed(3)
    w = torch.randn(3 * h * d, k, generator=rng) * 40
    g.initializers["w"] = w.clamp(-448, 448).to(torch.float8_e4m3fn)
    g.initializers["xs"] = torch.tensor(0.01)
    g.initializers["ws"] = torch.full((1,), 0.002)
    g.initializers["qkv_s"] = torch.tensor(0.004)
    mha = {"num_heads": h, "head_size": d, "packed": 1, "scale": d**-0.5, "x_qtype": "fp8e4m3"}
    q = {"qtype": "fp8e4m3"}
    g.nodes = [
        Node("QGemm", ["x", "w", "xs", "ws"], ["qkv"], q, "qkv_proj", "ecoinfer"),
        Node(
            "MultiHeadAttention",
            ["qkv", "", "", "", "", "", "qkv_s"],
            ["y"],
            mha,
            "attn",
            "ecoinfer",
        ),  # fmt: skip
    ]
    g.outputs = [Value("y")]
    g.infer_shapes()
    assert link_codes.is_consumer(g.nodes[1]) and not link_codes.is_consumer(
        Node("MultiHeadAttention", ["qkv"], ["y"], mha, "plain", "ecoinfer")
    )
    linked = copy.deepcopy(g)
    lk = link_codes.candidate(linked, linked.nodes[1], linked.nodes[0], "float16", 1)
    assert lk is not None and lk.qtype == "fp8e4m3" and lk.y_scale == "qkv_s"
    link_codes.apply(linked, [lk])
    assert linked.nodes[0].inputs[6] == "qkv_s"
    assert linked.nodes[1].attrs["out_dtype"] == "float16"
    assert linked.values["qkv"].dtype == "float8e4m3fn" and linked.values["y"].dtype == "float16"
    x = {"x": torch.randn(b, s, k, generator=rng).half()}
    want = ReferenceRunner(g).run(x)["y"]
    got = ReferenceRunner(linked).run(x)["y"]
    assert torch.equal(got, want)
    # the QKV quantization is real: the same attention on the float QKV differs
    plain = copy.deepcopy(g)
    plain.nodes[1] = Node("MultiHeadAttention", ["qkv"], ["y"], {**mha, "x_qtype": ""}, "attn",
                          "ecoinfer")  # fmt: skip
    assert not torch.equal(ReferenceRunner(plain).run(x)["y"], want)
    # a LayerNorm or an attention does not write QKV codes: only the QKV projection
    ln = Node("LayerNormalization", ["x"], ["qkv"], {}, "ln")
    assert link_codes.candidate(g, g.nodes[1], ln, "float16", 1) is None
    # the chain goes on: attention reading QKV codes writes the output projection's codes and
    # keeps its x_scale (input 6) beside the new y_scale (input 5)
    g.initializers["wo"] = (torch.randn(16, h * d, generator=rng) * 40).to(torch.float8_e4m3fn)
    g.initializers["os"] = torch.tensor(0.003)
    g.initializers["wos"] = torch.full((1,), 0.002)
    g.nodes.append(Node("QGemm", ["y", "wo", "os", "wos"], ["z"], q, "out_proj", "ecoinfer"))
    g.outputs = [Value("z")]
    g.infer_shapes()
    chain = copy.deepcopy(g)
    lk1 = link_codes.candidate(chain, chain.nodes[1], chain.nodes[0], "float16", 1)
    lk2 = link_codes.candidate(chain, chain.nodes[2], chain.nodes[1], "float16", 1)
    assert lk1 is not None and lk2 is not None
    link_codes.apply(chain, [lk1, lk2])
    att = chain.nodes[1]
    assert att.inputs[5] == "os" and att.inputs[6] == "qkv_s" and att.attrs["y_qtype"] == "fp8e4m3"
    assert chain.values["y"].dtype == "float8e4m3fn"
    x = {"x": torch.randn(b, s, k, generator=rng).half()}
    assert torch.equal(ReferenceRunner(chain).run(x)["z"], ReferenceRunner(g).run(x)["z"])


def _ln_graph() -> Graph:
    """LayerNorm whose Y feeds a QGemm (as X) and the same QGemm's residual."""
    g = Graph("ln_proj")
    g.inputs = [Value("x", "float16", (2, 8, 32))]
    g.values["x"] = g.inputs[0]
    rng = torch.Generator().manual_seed(2)
    g.initializers["g"] = (torch.rand(32, generator=rng) + 0.5).half()
    g.initializers["b"] = (torch.randn(32, generator=rng) * 0.1).half()
    g.initializers["w"] = torch.randint(-100, 100, (32, 32), generator=rng).to(torch.int8)
    g.initializers["xs"] = torch.tensor(0.03)
    g.initializers["ws"] = torch.full((32,), 0.01)
    g.nodes = [
        Node("LayerNormalization", ["x", "g", "b"], ["h"], {"epsilon": 1e-5}, "ln"),
        Node(
            "QGemm", ["h", "w", "xs", "ws", "", "h"], ["y"], {"qtype": "int8"}, "proj", "ecoinfer"
        ),
    ]
    g.outputs = [Value("y")]
    g.infer_shapes()
    return g


def test_layernorm_writes_codes_beside_y() -> None:
    """LayerNormalization -> QGemm: the norm becomes LayerNormCodes with the codes as a second
    output; Y keeps its other reader (the residual); results are the unlinked graph's."""
    import copy

    from ecoinfer.kernels.runner import ReferenceRunner

    g = _ln_graph()
    linked = copy.deepcopy(g)
    lk = link_codes.candidate(linked, linked.nodes[1], linked.nodes[0], "float16", 2)
    assert lk is not None and lk.codes_value == "h_codes"
    link_codes.apply(linked, [lk])
    ln, proj = linked.nodes
    assert ln.op_type == "LayerNormCodes" and ln.outputs == ["h", "h_codes"]
    assert proj.inputs[0] == "h_codes" and proj.inputs[5] == "h"
    assert linked.values["h_codes"].dtype == "int8" and linked.values["h"].dtype == "float16"
    x = {"x": torch.randn(2, 8, 32).half()}
    assert torch.equal(ReferenceRunner(linked).run(x)["y"], ReferenceRunner(g).run(x)["y"])
    # a LayerNorm that also returns its statistics is left alone
    g2 = _ln_graph()
    g2.nodes[0].outputs = ["h", "mean", ""]
    assert link_codes.candidate(g2, g2.nodes[1], g2.nodes[0], "float16", 2) is None


def ln_mlp_model(tmp_path, rng, out: int, residual: bool, pre: bool = False):  # noqa: ANN001, ANN201
    """LayerNorm -> fc1 -> Relu -> fc2 (+ the norm's output when `residual`: an FFN block),
    saved with three calibration batches; returns make(**BuildConfig fields) -> Engine.
    `pre`: x goes through tanh(x * 2) + 1 first (one fused elementwise node before the norm)."""
    from onnx import helper

    arrays = {
        "G": (rng.random(16) + 0.5).astype(np.float32),
        "B": rng.standard_normal(16).astype(np.float32),
        "W1": rng.standard_normal((16, 32)).astype(np.float32),
        "W2": (rng.standard_normal((32, out)) * (0.2 if residual else 1)).astype(np.float32),
    }
    pre_nodes = [
        helper.make_node("Mul", ["x", "two"], ["p0"], name="pre_mul"),
        helper.make_node("Tanh", ["p0"], ["p1"], name="pre_tanh"),
        helper.make_node("Add", ["p1", "one"], ["x1"], name="pre_add"),
    ]
    if pre:
        arrays["two"] = np.array(2.0, np.float32)
        arrays["one"] = np.array(1.0, np.float32)
    nodes = (pre_nodes if pre else []) + [
        helper.make_node(
            "LayerNormalization", ["x1" if pre else "x", "G", "B"], ["n"], name="ln", axis=-1
        ),
        helper.make_node("MatMul", ["n", "W1"], ["h"], name="fc1"),
        helper.make_node("Relu", ["h"], ["h2"], name="relu"),
        helper.make_node("MatMul", ["h2", "W2"], ["f" if residual else "y"], name="fc2"),
    ]
    if residual:
        nodes.append(helper.make_node("Add", ["f", "n"], ["y"], name="res"))
    return quant_model_maker(tmp_path, rng, "ln_mlp", nodes, arrays, out)


def quant_model_maker(tmp_path, rng, name: str, nodes: list, arrays: dict, out: int):  # noqa: ANN001, ANN201
    """The ONNX graph of `nodes` (input x float [8, 16], output y [8, out], initializers
    `arrays`) saved with three calibration batches; returns make(**BuildConfig fields) ->
    Engine, a CPU build quantized with that data at x's one shape."""
    import onnx
    from onnx import TensorProto as T
    from onnx import helper, numpy_helper

    from ecoinfer.engine.builder import BuildConfig, build
    from ecoinfer.engine.runtime import ShapeProfile
    from ecoinfer.quant.budget import QuantizeOptions

    g = helper.make_graph(
        nodes,
        name,
        [helper.make_tensor_value_info("x", T.FLOAT, [8, 16])],
        [helper.make_tensor_value_info("y", T.FLOAT, [8, out])],
        [numpy_helper.from_array(a, n) for n, a in arrays.items()],
    )
    path = tmp_path / f"{name}.onnx"
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), path)
    calib = tmp_path / "calib"
    calib.mkdir()
    for i in range(3):
        np.savez(calib / f"b{i}.npz", x=rng.standard_normal((8, 16)).astype(np.float32))
    shp = {"x": (8, 16)}

    def make(**kw):  # noqa: ANN003, ANN202
        q = QuantizeOptions(calib_data=str(calib))
        return build(
            path, BuildConfig(device="cpu", profiles=[ShapeProfile(shp, shp, shp)], quant=q, **kw)
        )

    return make


def test_builder_links_a_layernorm_and_a_pair(tmp_path, monkeypatch) -> None:  # noqa: ANN001
    """Through the builder (forced to keep links): LayerNorm -> fc1 -> fc2 becomes
    LayerNormCodes -> fc1 (codes in, codes out) -> fc2 (codes in), and runs as before."""
    rng = np.random.default_rng(3)
    make = ln_mlp_model(tmp_path, rng, 8, residual=False)
    plain = make()
    monkeypatch.setattr(link_codes, "link_pays", lambda before, after: True)
    eng = make(link_codes=True)
    ops = [n.op_type for n in eng.graph.nodes]
    assert "LayerNormCodes" in ops and "LayerNormalization" not in ops
    assert len(eng.report["quantization"]["linked_codes"]) == 2
    x = {"x": rng.standard_normal((8, 16)).astype(np.float32)}
    np.testing.assert_allclose(
        np.asarray(eng.run(x)["y"]), np.asarray(plain.run(x)["y"]), rtol=1e-4, atol=1e-4
    )


def test_cli_no_link_codes_flag(mlp, tmp_path, monkeypatch) -> None:  # noqa: ANN001, F811
    """`ecoinfer build --int8 --no-link-codes` builds with linking off (BuildConfig.link_codes
    False); without the flag the builder's default (on for GPU builds) applies. `--link-norm`
    asks for the norm links, which are off by default."""
    from ecoinfer.cli import main
    from ecoinfer.engine import builder

    path, calib = mlp
    seen: list = []
    real = builder.build

    def spy(model, cfg):  # noqa: ANN001, ANN202
        seen.append((cfg.link_codes, cfg.link_norm))
        return real(model, cfg)

    monkeypatch.setattr(builder, "build", spy)
    base = ["build", str(path), "--device", "cpu", "--int8", "--calib-data", str(calib)]
    base += ["--shapes", "x:8x16"]
    assert main([*base, "-o", str(tmp_path / "a.eng"), "--no-link-codes"]) == 0
    assert main([*base, "-o", str(tmp_path / "b.eng")]) == 0
    assert main([*base, "-o", str(tmp_path / "c.eng"), "--link-norm"]) == 0  # link_norm.py
    assert seen == [(False, False), (None, False), (None, True)]


def test_build_output_counts_links(capsys) -> None:  # noqa: ANN001
    from ecoinfer.commands.build import _print_quantization

    q = {"precision": "fp8", "quantized_layers": ["a", "b"], "float_layers": [], "tactics": {},
         "linked_codes": [{"producer": "a", "consumer": "b", "float_dtype": "float16"}]}  # fmt: skip
    _print_quantization(q)
    assert "1 layer(s) write the int8/FP8 codes" in capsys.readouterr().out
    del q["linked_codes"]
    _print_quantization(q)
    assert "codes" not in capsys.readouterr().out


def test_linked_forms_reject_bad_scales_and_types() -> None:
    """Shape inference of the linked forms names what is wrong."""
    g = _ln_graph()
    lk = link_codes.candidate(g, g.nodes[1], g.nodes[0], "float16", 2)
    assert lk is not None
    link_codes.apply(g, [lk])
    g.initializers["xs"] = torch.tensor([0.1, 0.2])  # y_scale of LayerNormCodes: not a scalar
    with pytest.raises(EcoinferError, match="y_scale must be a scalar"):
        g.infer_shapes()
    g2 = _pair_graph()
    g2.nodes[0] = link_codes.linked_producer(
        g2.nodes[0], link_codes.Link("p", "c", "s2", "float16")
    )
    g2.nodes[1].attrs["out_dtype"] = "int8"  # not a float dtype
    with pytest.raises(EcoinferError, match="out_dtype must be"):
        g2.infer_shapes()
    g3 = Graph("mha")
    g3.inputs = [Value("qkv", "float16", (1, 4, 96))]
    g3.values["qkv"] = g3.inputs[0]
    g3.initializers["s"] = torch.tensor(0.1)
    attrs = {"num_heads": 2, "head_size": 16, "packed": 1, "y_qtype": "int4"}
    g3.nodes = [
        Node("MultiHeadAttention", ["qkv", "", "", "", "", "s"], ["y"], attrs, "a", "ecoinfer")
    ]
    g3.outputs = [Value("y")]
    with pytest.raises(EcoinferError, match="y_qtype"):
        g3.infer_shapes()


def _conv_pair_graph() -> Graph:
    """x -> QConv 3x3 (ReLU) -> h -> QConv 3x3 -> y, int8, NCHW, float32 activations."""
    g = Graph("conv_pair")
    g.inputs = [Value("x", "float32", (2, 8, 5, 5))]
    g.values["x"] = g.inputs[0]
    rng = torch.Generator().manual_seed(1)
    for name, shape in (("w1", (8, 8, 3, 3)), ("w2", (4, 8, 3, 3))):
        g.initializers[name] = torch.randint(-100, 100, shape, generator=rng).to(torch.int8)
    g.initializers["s1"] = torch.tensor(0.02)
    g.initializers["s2"] = torch.tensor(0.05)
    g.initializers["ws1"] = torch.full((8,), 0.003)
    g.initializers["ws2"] = torch.full((4,), 0.002)
    conv = {"qtype": "int8", "kernel_shape": [3, 3], "pads": [1, 1, 1, 1], "strides": [1, 1]}
    g.nodes = [
        Node(
            "QConv",
            ["x", "w1", "s1", "ws1"],
            ["h"],
            {**conv, "activation": "Relu"},
            "p",
            "ecoinfer",
        ),  # fmt: skip
        Node("QConv", ["h", "w2", "s2", "ws2"], ["y"], conv, "c", "ecoinfer"),
    ]
    g.outputs = [Value("y")]
    g.infer_shapes()
    return g


def test_quantized_convolutions_link_like_gemms() -> None:
    """A QConv writes the next QConv's codes (y_scale) and the next reads them (out_dtype):
    the linked pair computes what the unlinked pair computes."""
    from ecoinfer.api import Model
    from ecoinfer.passes import clone_graph

    g = _conv_pair_graph()
    p, c = g.nodes
    lk = link_codes.candidate(g, c, p, "float32", 1)
    assert lk == link_codes.Link("p", "c", "s2", "float32")
    x = {"x": np.random.default_rng(3).standard_normal((2, 8, 5, 5)).astype(np.float32)}
    want = Model(clone_graph(g)).run(x)["y"]
    linked = link_codes.apply(clone_graph(g), [lk])
    lp, lc = linked.nodes
    assert lp.inputs[6] == "s2" and lc.attrs["out_dtype"] == "float32"
    assert linked.values["h"].dtype == "int8" and linked.values["y"].dtype == "float32"
    got = Model(linked).run(x)["y"]
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-5)
    # layers of different qtypes do not link
    c.attrs["qtype"] = "fp8e4m3"
    assert link_codes.candidate(g, c, p, "float32", 1) is None
