"""Quantization ops: shape/dtype inference, numerics against the ONNX reference for what the
conformance cases do not pin down (per-axis int16, blocked, float8 without saturation, per-row
zero points, per-channel QLinearConv with bias), and onnxruntime-quantized models end to end."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from onnx.reference import ReferenceEvaluator

from ecoinfer.api import Model, load
from ecoinfer.errors import ShapeInferenceError
from ecoinfer.frontend.onnx import import_onnx

F, F16, U8, I8, I16, U16, I32 = (
    TensorProto.FLOAT,
    TensorProto.FLOAT16,
    TensorProto.UINT8,
    TensorProto.INT8,
    TensorProto.INT16,
    TensorProto.UINT16,
    TensorProto.INT32,
)
CUDA = torch.cuda.is_available()
DEVICES = ["cpu"] + (["cuda"] if CUDA else [])


def _node_model(
    op: str,
    inputs: list[tuple[str, int, list]],
    inits: list[onnx.TensorProto] | None = None,
    n_out: int = 1,
    opset: int = 21,
    order: list[str] | None = None,
    **attrs,
) -> onnx.ModelProto:
    names = order or [n for n, _, _ in inputs] + [t.name for t in inits or []]
    outs = [f"y{k}" for k in range(n_out)]
    node = helper.make_node(op, names, outs, name="n0", **attrs)
    graph = helper.make_graph(
        [node],
        "g",
        [helper.make_tensor_value_info(n, t, s) for n, t, s in inputs],
        [helper.make_empty_tensor_value_info(o) for o in outs],
        initializer=inits or [],
    )
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = 10
    return m


def _w(name: str, a: np.ndarray) -> onnx.TensorProto:
    return numpy_helper.from_array(a, name)


def _check(model: onnx.ModelProto, feeds: dict[str, np.ndarray], device: str = "cpu") -> None:
    """ecoinfer equals the ONNX reference exactly (dtype, shape and every value)."""
    refs = ReferenceEvaluator(model).run(None, feeds)
    outs = Model(import_onnx(model)).run(feeds, device=device)
    for k, ref in enumerate(refs):
        out = outs[f"y{k}"]
        assert out.dtype == ref.dtype, (out.dtype, ref.dtype)
        assert out.shape == ref.shape, (out.shape, ref.shape)
        np.testing.assert_array_equal(out.astype(np.float64), ref.astype(np.float64))


# ---------------------------------------------------------------------------- inference
def test_quantize_output_dtype_from_attr_or_zero_point() -> None:
    x = [("x", F, ["n", 4])]
    m = _node_model("QuantizeLinear", x, [_w("s", np.float32(0.5))], output_dtype=I16)
    v = import_onnx(m).values["y0"]
    assert v.dtype == "int16" and v.shape == ("n", 4)
    m = _node_model("QuantizeLinear", x, [_w("s", np.float32(0.5))])
    assert import_onnx(m).values["y0"].dtype == "uint8"
    m = _node_model(
        "QuantizeLinear", x, [_w("s", np.float32(0.5)), _w("z", np.int8(3))], output_dtype=U8
    )
    with pytest.raises(ShapeInferenceError, match="output_dtype"):
        import_onnx(m)


def test_dequantize_dtype_and_param_checks() -> None:
    x = [("x", I8, ["n", 4])]
    m = _node_model("DequantizeLinear", x, [_w("s", np.ones(4, np.float16))], axis=1)
    v = import_onnx(m).values["y0"]
    assert v.dtype == "float16" and v.shape == ("n", 4)
    m = _node_model("DequantizeLinear", x, [_w("s", np.ones(3, np.float32))], axis=1)
    with pytest.raises(ShapeInferenceError, match="3 elements"):
        import_onnx(m)
    m = _node_model(
        "DequantizeLinear", x, [_w("s", np.ones((2, 3), np.float32))], axis=1, block_size=2
    )
    with pytest.raises(ShapeInferenceError, match="block"):
        import_onnx(m)


def test_integer_op_shapes() -> None:
    m = _node_model("DynamicQuantizeLinear", [("x", F, ["n", 3])], n_out=3)
    vals = import_onnx(m).values
    assert [(vals[f"y{k}"].dtype, vals[f"y{k}"].shape) for k in range(3)] == [
        ("uint8", ("n", 3)),
        ("float32", ()),
        ("uint8", ()),
    ]
    m = _node_model("MatMulInteger", [("a", U8, ["b", 5, 7]), ("w", I8, [7, 3])])
    v = import_onnx(m).values["y0"]
    assert (v.dtype, v.shape) == ("int32", ("b", 5, 3))
    m = _node_model(
        "ConvInteger", [("x", U8, ["n", 2, 9, 9]), ("w", U8, [4, 2, 3, 3])], strides=[2, 2]
    )
    v = import_onnx(m).values["y0"]
    assert (v.dtype, v.shape) == ("int32", ("n", 4, 4, 4))
    ins = [("x", I8, ["n", 2, 5, 5]), ("w", I8, [4, 2, 3, 3])]
    inits = [
        _w("xs", np.float32(0.1)),
        _w("xz", np.int8(0)),
        _w("ws", np.float32(0.1)),
        _w("wz", np.int8(0)),
        _w("ys", np.float32(0.2)),
        _w("yz", np.uint8(128)),
    ]
    m = _node_model(
        "QLinearConv",
        ins,
        inits,
        order=["x", "xs", "xz", "w", "ws", "wz", "ys", "yz"],
        pads=[1, 1, 1, 1],
    )
    v = import_onnx(m).values["y0"]
    assert (v.dtype, v.shape) == ("uint8", ("n", 4, 5, 5))


# ---------------------------------------------------------------------------- numerics
@pytest.mark.parametrize("device", DEVICES)
def test_quantize_per_axis_int16_round_half_even(device: str) -> None:
    rng = np.random.default_rng(0)
    x = (rng.integers(-40000, 40000, (2, 3, 5)) / 2).astype(np.float32)  # many exact halves
    x[0, 0, :3] = [0.5, 1.5, 2.5]
    inits = [_w("s", np.array([1.0, 0.5, 2.0], np.float32)), _w("z", np.int16([0, -7, 9]))]
    m = _node_model("QuantizeLinear", [("x", F, [2, 3, 5])], inits, axis=1)
    _check(m, {"x": x}, device)
    m = _node_model("QuantizeLinear", [("x", F, [2, 3, 5])], inits[:1], axis=-2, output_dtype=U16)
    _check(m, {"x": x}, device)


@pytest.mark.parametrize("device", DEVICES)
def test_blocked_roundtrip_with_remainder_block(device: str) -> None:
    rng = np.random.default_rng(1)
    x = rng.standard_normal((3, 7)).astype(np.float32)
    s = rng.uniform(0.01, 0.05, (3, 3)).astype(np.float32)  # 7 = 3 + 3 + 1
    z = rng.integers(-5, 5, (3, 3)).astype(np.int8)
    q = _node_model(
        "QuantizeLinear", [("x", F, [3, 7])], [_w("s", s), _w("z", z)], axis=1, block_size=3
    )
    _check(q, {"x": x}, device)
    xq = rng.integers(-128, 127, (3, 7)).astype(np.int8)
    d = _node_model(
        "DequantizeLinear", [("x", I8, [3, 7])], [_w("s", s), _w("z", z)], axis=-1, block_size=3
    )
    _check(d, {"x": xq}, device)


@pytest.mark.parametrize("device", DEVICES)
def test_float8_without_saturation_overflows(device: str) -> None:
    x = np.array([0.0, 1.0, -3.3, 400.0, 500.0, -1e6, 1e6], np.float32)
    for to in (TensorProto.FLOAT8E4M3FN, TensorProto.FLOAT8E5M2):
        zp = helper.make_tensor("z", to, [], [0])
        for sat in (0, 1):
            m = _node_model(
                "QuantizeLinear", [("x", F, [7])], [_w("s", np.float32(1.0)), zp], saturate=sat
            )
            refs = ReferenceEvaluator(m).run(None, {"x": x})[0].astype(np.float32)
            out = Model(import_onnx(m)).run({"x": x}, device=device)["y0"].astype(np.float32)
            np.testing.assert_array_equal(out, refs)


@pytest.mark.parametrize("device", DEVICES)
def test_dequantize_uint16_float16_scale(device: str) -> None:
    rng = np.random.default_rng(2)
    x = rng.integers(0, 65535, (4, 6)).astype(np.uint16)
    inits = [
        _w("s", rng.uniform(1e-4, 1e-3, 4).astype(np.float16)),
        _w("z", rng.integers(0, 65535, 4).astype(np.uint16)),
    ]
    _check(_node_model("DequantizeLinear", [("x", U16, [4, 6])], inits, axis=0), {"x": x}, device)


@pytest.mark.parametrize("device", DEVICES)
def test_dynamic_quantize_all_positive(device: str) -> None:
    x = np.array([[0.5, 3.0, 7.25], [1.0, 2.0, 4.0]], np.float32)
    _check(_node_model("DynamicQuantizeLinear", [("x", F, [2, 3])], n_out=3), {"x": x}, device)


@pytest.mark.parametrize("device", DEVICES)
def test_matmul_integer_per_row_and_per_column_zero_points(device: str) -> None:
    rng = np.random.default_rng(3)
    a = rng.integers(0, 255, (2, 5, 64)).astype(np.uint8)
    b = rng.integers(-128, 127, (64, 3)).astype(np.int8)
    inits = [
        _w("az", np.full((2, 5, 1), 128, np.uint8)),
        _w("bz", rng.integers(-3, 3, 3).astype(np.int8)),
    ]
    m = _node_model("MatMulInteger", [("a", U8, [2, 5, 64]), ("b", I8, [64, 3])], inits)
    _check(m, {"a": a, "b": b}, device)
    a2 = a[0]
    inits[0] = _w("az", rng.integers(0, 255, 5).astype(np.uint8))  # per row of a 2-D A
    m = _node_model("MatMulInteger", [("a", U8, [5, 64]), ("b", I8, [64, 3])], inits)
    refs = a2.astype(np.int32) - numpy_helper.to_array(inits[0]).astype(np.int32)[:, None]
    want = refs @ (b.astype(np.int32) - numpy_helper.to_array(inits[1]).astype(np.int32))
    out = Model(import_onnx(m)).run({"a": a2, "b": b}, device=device)["y0"]
    np.testing.assert_array_equal(out, want)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("qt", [U8, I8])
def test_qlinear_matmul_per_column(device: str, qt: int) -> None:
    rng = np.random.default_rng(4)
    npt = np.uint8 if qt == U8 else np.int8
    lo, hi = (0, 255) if qt == U8 else (-128, 127)
    a = rng.integers(lo, hi, (3, 4, 16)).astype(npt)
    b = rng.integers(lo, hi, (16, 5)).astype(npt)
    inits = [
        _w("as", np.float32(0.02)),
        _w("az", npt(7)),
        _w("bs", rng.uniform(0.01, 0.03, 5).astype(np.float32)),
        _w("bz", rng.integers(lo, hi, 5).astype(npt)),
        _w("ys", np.float32(0.3)),
        _w("yz", npt(3)),
    ]
    m = _node_model(
        "QLinearMatMul",
        [("a", qt, [3, 4, 16]), ("b", qt, [16, 5])],
        inits,
        order=["a", "as", "az", "b", "bs", "bz", "ys", "yz"],
    )
    _check(m, {"a": a, "b": b}, device)


@pytest.mark.parametrize("device", DEVICES)
def test_conv_integer_per_channel_zero_point_auto_pad(device: str) -> None:
    rng = np.random.default_rng(5)
    x = rng.integers(0, 255, (2, 4, 7, 6)).astype(np.uint8)
    w = rng.integers(0, 255, (6, 2, 3, 3)).astype(np.uint8)
    inits = [_w("xz", np.uint8(100)), _w("wz", rng.integers(0, 255, 6).astype(np.uint8))]
    m = _node_model(
        "ConvInteger",
        [("x", U8, [2, 4, 7, 6]), ("w", U8, [6, 2, 3, 3])],
        inits,
        group=2,
        strides=[2, 1],
        auto_pad="SAME_UPPER",
    )
    _check(m, {"x": x, "w": w}, device)


@pytest.mark.parametrize("device", DEVICES)
def test_qlinear_conv_per_channel_bias_int8(device: str) -> None:
    rng = np.random.default_rng(6)
    x = rng.integers(-128, 127, (1, 3, 6, 6)).astype(np.int8)
    w = rng.integers(-128, 127, (4, 3, 3, 3)).astype(np.int8)
    inits = [
        _w("xs", np.float32(0.05)),
        _w("xz", np.int8(-2)),
        _w("ws", rng.uniform(0.001, 0.01, 4).astype(np.float32)),
        _w("wz", np.zeros(4, np.int8)),
        _w("ys", np.float32(0.5)),
        _w("yz", np.int8(5)),
        _w("B", rng.integers(-2000, 2000, 4).astype(np.int32)),
    ]
    m = _node_model(
        "QLinearConv",
        [("x", I8, [1, 3, 6, 6]), ("w", I8, [4, 3, 3, 3])],
        inits,
        order=["x", "xs", "xz", "w", "ws", "wz", "ys", "yz", "B"],
        pads=[1, 0, 1, 2],
    )
    _check(m, {"x": x, "w": w}, device)


# ---------------------------------------------------------------------------- onnxruntime
def _float_mlp(path: str) -> None:
    rng = np.random.default_rng(7)
    w1 = rng.standard_normal((16, 32)).astype(np.float32)
    b1 = rng.standard_normal(32).astype(np.float32)
    w2 = rng.standard_normal((32, 8)).astype(np.float32)
    nodes = [
        helper.make_node("MatMul", ["x", "W1"], ["h"]),
        helper.make_node("Add", ["h", "B1"], ["h2"]),
        helper.make_node("Relu", ["h2"], ["h3"]),
        helper.make_node("MatMul", ["h3", "W2"], ["y"]),
    ]
    g = helper.make_graph(
        nodes,
        "mlp",
        [helper.make_tensor_value_info("x", F, ["N", 16])],
        [helper.make_tensor_value_info("y", F, ["N", 8])],
        [_w("W1", w1), _w("B1", b1), _w("W2", w2)],
    )
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    onnx.save(m, path)


def _calibration_reader(q, rng):  # noqa: ANN001, ANN202
    """onnxruntime's calibration reader over 8 random batches of the MLP's input."""

    class Reader(q.CalibrationDataReader):
        def __init__(self) -> None:
            self.it = iter(
                [{"x": rng.standard_normal((4, 16)).astype(np.float32)} for _ in range(8)]
            )

        def get_next(self):  # noqa: ANN202
            return next(self.it, None)

    return Reader()


@pytest.mark.parametrize("mode", ["static_qdq", "static_qdq_per_channel", "dynamic"])
def test_onnxruntime_quantized_model_matches(tmp_path, mode: str) -> None:
    ort = pytest.importorskip("onnxruntime")
    from onnxruntime import quantization as q  # noqa: PLC0415

    src, dst = str(tmp_path / "f.onnx"), str(tmp_path / "q.onnx")
    _float_mlp(src)
    rng = np.random.default_rng(8)

    if mode == "dynamic":
        q.quantize_dynamic(src, dst, weight_type=q.QuantType.QUInt8)
        ops = {"DynamicQuantizeLinear", "MatMulInteger"}
    else:
        q.quantize_static(
            src,
            dst,
            _calibration_reader(q, rng),
            quant_format=q.QuantFormat.QDQ,
            activation_type=q.QuantType.QUInt8,
            weight_type=q.QuantType.QInt8,
            per_channel=mode.endswith("per_channel"),
        )
        ops = {"QuantizeLinear", "DequantizeLinear"}
    assert ops <= {n.op_type for n in onnx.load(dst).graph.node}
    x = rng.standard_normal((5, 16)).astype(np.float32)
    ref = ort.InferenceSession(dst, providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    model = load(dst)
    for device in DEVICES:
        out = model.run({"x": x}, device=device)["y"]
        assert out.dtype == ref.dtype and out.shape == ref.shape
        # measured: bit-identical to onnxruntime on CPU (max abs error 0.0)
        np.testing.assert_allclose(out, ref, rtol=0, atol=1e-5 * np.abs(ref).max())
    # and the optimizing engine builds it (quantization ops run on their reference kernels)
    from ecoinfer.engine.builder import BuildConfig, build  # noqa: PLC0415

    engine = build(dst, BuildConfig(device="cpu"))
    out = engine.run({"x": x})["y"]
    np.testing.assert_allclose(np.asarray(out), ref, rtol=0, atol=1e-5 * np.abs(ref).max())


def test_symmetric_qdq_model_from_onnxruntime_builds_with_quantized_layers(
    tmp_path, capsys
) -> None:  # noqa: ANN001
    # a model quantized by another tool: symmetric int8 activations and per-channel weights
    # become ecoinfer.QGemm layers (its weights stay int8), and the engine still matches
    # onnxruntime's own run of the QDQ model
    ort = pytest.importorskip("onnxruntime")
    from onnxruntime import quantization as q  # noqa: PLC0415

    from ecoinfer.engine.builder import BuildConfig, build  # noqa: PLC0415

    src, dst = str(tmp_path / "f.onnx"), str(tmp_path / "q.onnx")
    _float_mlp(src)
    rng = np.random.default_rng(9)

    q.quantize_static(
        src,
        dst,
        _calibration_reader(q, rng),
        quant_format=q.QuantFormat.QDQ,
        activation_type=q.QuantType.QInt8,
        weight_type=q.QuantType.QInt8,
        per_channel=True,
        extra_options={"ActivationSymmetric": True, "WeightSymmetric": True},
    )
    x = rng.standard_normal((5, 16)).astype(np.float32)
    ref = ort.InferenceSession(dst, providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    engine = build(dst, BuildConfig(device="cpu"))
    qops = [n for n in engine.graph.nodes if n.op_type == "QGemm"]
    assert len(qops) == 2, engine.graph.op_histogram()
    assert all(engine.graph.initializers[n.inputs[1]].dtype == torch.int8 for n in qops)
    assert engine.report["quantization"]["fused"]
    out = np.asarray(engine.run({"x": x})["y"])
    np.testing.assert_allclose(out, ref, rtol=0, atol=1e-4 * np.abs(ref).max())
    # the CLI builds it without --int8 and reports what the model's quantization became
    from ecoinfer.cli import main  # noqa: PLC0415

    eng = str(tmp_path / "q.eng")
    argv = ["build", dst, "-o", eng, "--device", "cpu", "--obey-precision", "--shapes", "x:5x16"]
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert "from the model (Q/DQ): 2 layer(s) quantized (2 fused into quantized ops)" in text


def _modelopt_style_mlp(path: str, fp8: bool) -> None:
    """An MLP quantized the way NVIDIA ModelOpt exports: float weights stored as they are,
    each behind QuantizeLinear -> DequantizeLinear (per output channel, axis 0), activations
    behind a per-tensor Q/DQ pair, Gemm with transB; int8 or float8e4m3fn codes (opset 21)."""
    rng = np.random.default_rng(3)
    w1 = (rng.standard_normal((32, 16)) * 0.3).astype(np.float32)
    w2 = (rng.standard_normal((8, 32)) * 0.3).astype(np.float32)
    b1 = (rng.standard_normal(32) * 0.1).astype(np.float32)
    zt, qmax = (TensorProto.FLOAT8E4M3FN, 448.0) if fp8 else (TensorProto.INT8, 127.0)
    arrays = {
        "w1": w1, "w2": w2, "b1": b1,
        "w1s": (np.abs(w1).max(1) / qmax).astype(np.float32),
        "w2s": (np.abs(w2).max(1) / qmax).astype(np.float32),
        "xs": np.array(3.0 / qmax, np.float32), "hs": np.array(4.0 / qmax, np.float32),
    }  # fmt: skip
    inits = [numpy_helper.from_array(v, k) for k, v in arrays.items()]
    inits += [helper.make_tensor("z", zt, [], [0]), helper.make_tensor("z1", zt, [32], [0] * 32),
              helper.make_tensor("z2", zt, [8], [0] * 8)]  # fmt: skip

    def qdq(x: str, s: str, z: str, **kw: int) -> list:
        return [helper.make_node("QuantizeLinear", [x, s, z], [x + "_q"], **kw),
                helper.make_node("DequantizeLinear", [x + "_q", s, z], [x + "_d"], **kw)]  # fmt: skip

    nodes = [*qdq("x", "xs", "z"), *qdq("w1", "w1s", "z1", axis=0),
             helper.make_node("Gemm", ["x_d", "w1_d", "b1"], ["h"], transB=1),
             helper.make_node("Relu", ["h"], ["hr"]), *qdq("hr", "hs", "z"),
             *qdq("w2", "w2s", "z2", axis=0),
             helper.make_node("Gemm", ["hr_d", "w2_d"], ["y"], transB=1)]  # fmt: skip
    graph = helper.make_graph(
        nodes, "modelopt_mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 8])], inits,
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
    model.ir_version = 10
    onnx.checker.check_model(model)
    onnx.save(model, path)


@pytest.mark.parametrize("fp8", [False, True], ids=["int8", "fp8"])
def test_modelopt_style_qdq_model_builds_with_quantized_layers(tmp_path, fp8: bool) -> None:  # noqa: ANN001
    ort = pytest.importorskip("onnxruntime")
    from ecoinfer.engine.builder import BuildConfig, build  # noqa: PLC0415

    path = str(tmp_path / "m.onnx")
    _modelopt_style_mlp(path, fp8)
    x = np.random.default_rng(1).standard_normal((5, 16)).astype(np.float32)
    # onnxruntime's graph optimizations change the FP8 model's result (max abs error 2.3 on
    # outputs of about 3, against 6e-7 unoptimized and a float64 hand computation): its
    # unoptimized run is the reference
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    ref = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    engine = build(path, BuildConfig(device="cpu"))
    qops = [n for n in engine.graph.nodes if n.op_type == "QGemm"]
    assert len(qops) == 2, engine.graph.op_histogram()
    want = torch.float8_e4m3fn if fp8 else torch.int8
    assert all(engine.graph.initializers[n.inputs[1]].dtype == want for n in qops)
    assert all(n.attrs["qtype"] == ("fp8e4m3" if fp8 else "int8") for n in qops)
    out = np.asarray(engine.run({"x": x})["y"])
    np.testing.assert_allclose(out, ref, rtol=0, atol=1e-5 * np.abs(ref).max())
