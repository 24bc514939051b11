"""Elementwise ops: shape/dtype inference (symbolic dims, broadcasting, known contents) and
kernel semantics that the ONNX conformance cases do not pin down (unsigned ints, float8 casts,
old-opset Softmax)."""

from __future__ import annotations

import ml_dtypes
import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper

from ecoinfer.api import Model
from ecoinfer.errors import ShapeInferenceError
from ecoinfer.frontend.onnx import import_onnx
from ecoinfer.ir.graph import Graph, Node, Value

F, I64, B = TensorProto.FLOAT, TensorProto.INT64, TensorProto.BOOL


# ---------------------------------------------------------------------------- helpers
def _model(
    op: str,
    inputs: list[tuple[str, int, list]],
    n_out: int = 1,
    opset: int = 21,
    inits: list[TensorProto] | None = None,
    **attrs,
) -> onnx.ModelProto:
    node = helper.make_node(
        op,
        [n for n, _, _ in inputs] + [t.name for t in inits or []],
        [f"y{k}" for k in range(n_out)],
        name="node0",
        **attrs,
    )
    graph = helper.make_graph(
        [node],
        "g",
        [helper.make_tensor_value_info(n, t, s) for n, t, s in inputs],
        [helper.make_empty_tensor_value_info(f"y{k}") for k in range(n_out)],
        initializer=inits or [],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def _infer(op: str, inputs: list[tuple[str, int, list]], **attrs) -> Value:
    g = import_onnx(_model(op, inputs, **attrs))
    return g.values["y0"]


def _run(op: str, *arrays: np.ndarray, device: str = "cpu", opset: int = 21, **attrs) -> np.ndarray:
    names = [f"x{k}" for k in range(len(arrays))]
    inputs = [
        (n, helper.np_dtype_to_tensor_dtype(a.dtype), list(a.shape)) for n, a in zip(names, arrays)
    ]
    model = Model(import_onnx(_model(op, inputs, opset=opset, **attrs)))
    return model.run(dict(zip(names, arrays)), device=device)["y0"]


def _sym_graph(op: str, syms: list[tuple], dtype: str = "int64", **attrs) -> Value:
    """Infer one node whose inputs are 1-D int tensors with the given known contents."""
    g = Graph()
    names = []
    for k, s in enumerate(syms):
        v = Value(f"s{k}", dtype if not isinstance(s, Value) else s.dtype, (len(s),), tuple(s))
        g.inputs.append(v)
        g.values[v.name] = v
        names.append(v.name)
    g.nodes.append(Node(op, names, ["y"], attrs, "n"))
    g.outputs.append(Value("y"))
    g.infer_shapes()
    return g.values["y"]


# ---------------------------------------------------------------------------- shapes
def test_unary_keeps_symbolic_shape_and_dtype() -> None:
    v = _infer("Exp", [("x", F, ["batch", None, 4])])
    assert v.dtype == "float32" and v.shape == ("batch", None, 4)


def test_broadcast_with_symbols_and_unknowns() -> None:
    v = _infer("Add", [("a", F, ["batch", 1, 4]), ("b", F, [3, 1])])
    assert v.shape == ("batch", 3, 4)
    v = _infer("Mul", [("a", F, ["n", None]), ("b", F, ["m", 5])])
    assert v.shape == (None, 5)  # two different symbols: unknown
    v = _infer("Sub", [("a", F, ["n", 2]), ("b", F, ["n", 1])])
    assert v.shape == ("n", 2)


def test_broadcast_error_names_the_node() -> None:
    with pytest.raises(ShapeInferenceError, match=r"Add node 'node0'.*do not broadcast"):
        _infer("Add", [("a", F, [2, 3]), ("b", F, [4, 3])])
    with pytest.raises(ShapeInferenceError, match="node0"):
        _infer("Where", [("c", B, [2]), ("a", F, [3]), ("b", F, [1])])


def test_dtype_errors() -> None:
    with pytest.raises(ShapeInferenceError, match="different dtypes.*Cast"):
        _infer("Add", [("a", F, [2]), ("b", I64, [2])])
    with pytest.raises(ShapeInferenceError, match="takes floats"):
        _infer("Sqrt", [("a", I64, [2])])
    with pytest.raises(ShapeInferenceError, match="bools"):
        _infer("And", [("a", F, [2]), ("b", F, [2])])


def test_comparisons_and_predicates_give_bool() -> None:
    for op in ("Equal", "Greater", "Less", "GreaterOrEqual", "LessOrEqual"):
        v = _infer(op, [("a", I64, ["n"]), ("b", I64, [1])])
        assert v.dtype == "bool" and v.shape == ("n",)
    assert _infer("IsNaN", [("a", F, ["n", 2])]).dtype == "bool"
    assert _infer("IsInf", [("a", TensorProto.FLOAT16, [2])]).dtype == "bool"


def test_pow_cast_where_clip_softmax_types() -> None:
    assert _infer("Pow", [("a", I64, [2, 1]), ("b", F, [3])]).type_str() == "int64[2x3]"
    assert _infer("Cast", [("a", F, ["n"])], to=TensorProto.FLOAT16).type_str() == "float16[n]"
    v = _infer("Where", [("c", B, ["n", 1]), ("a", F, [1, 4]), ("b", F, [4])])
    assert v.type_str() == "float32[nx4]"
    assert _infer("Clip", [("a", F, ["n"])]).type_str() == "float32[n]"
    assert _infer("Max", [("a", F, [2, 1]), ("b", F, [3]), ("c", F, [1, 1, 1])]).shape == (1, 2, 3)
    with pytest.raises(ShapeInferenceError, match="axis 3 is out of range"):
        _infer("Softmax", [("a", F, [2, 3])], axis=3)


def test_prelu_slope_must_broadcast_to_x() -> None:
    assert _infer("PRelu", [("x", F, ["n", 3]), ("s", F, [3])]).shape == ("n", 3)
    with pytest.raises(ShapeInferenceError, match="node0"):
        _infer("PRelu", [("x", F, [3]), ("s", F, [2, 3])])


# ---------------------------------------------------------------------------- known contents
def test_sym_arithmetic_on_shape_contents() -> None:
    assert _sym_graph("Mul", [("batch", "seq", 64), (1, 1, 2)]).sym == ("batch", "seq", 128)
    assert _sym_graph("Mul", [("batch", "seq"), ("heads",)]).sym == ("batch*heads", "seq*heads")
    assert _sym_graph("Add", [("seq", 3), (0, 4)]).sym == ("seq", 7)
    assert _sym_graph("Sub", [("seq", 3), ("seq", 1)]).sym == (0, 2)
    assert _sym_graph("Sub", [("seq",), (1,)]).sym == ("seq-1",)
    assert _sym_graph("Div", [("b*s", 768, "x"), ("s", 12, 3)]).sym == ("b", 64, None)
    assert _sym_graph("Div", [(-7,), (2,)]).sym == (-3,)  # truncates toward zero


def test_sym_equal_where_pattern_from_torch_export() -> None:
    # Expand targets exported by torch: Where(Equal(shape, -1), ones, shape)
    eq = _sym_graph("Equal", [("batch", -1, 4), (-1,)])
    assert eq.dtype == "bool" and eq.sym == (0, 1, 0)
    g = Graph()
    for name, dt, sym in (
        ("c", "bool", (0, 1, 0)),
        ("a", "int64", (1, 1, 1)),
        ("b", "int64", ("batch", -1, 4)),
    ):
        g.values[name] = Value(name, dt, (3,), sym)
        g.inputs.append(g.values[name])
    g.nodes.append(Node("Where", ["c", "a", "b"], ["y"], {}, "w"))
    g.infer_shapes()
    assert g.values["y"].sym == ("batch", 1, 4)


def test_sym_through_cast_and_max() -> None:
    v = _sym_graph("Cast", [("n", 300)], to=TensorProto.INT32)
    assert v.dtype == "int32" and v.sym == ("n", 300)
    assert _sym_graph("Cast", [("n", 300)], to=TensorProto.UINT8).sym == ("n", 44)
    assert _sym_graph("Cast", [("n", 3)], to=TensorProto.FLOAT).sym is None
    assert _sym_graph("Max", [("n", 3), (0, 5)]).sym == ("n", 5)


def test_sym_from_shape_reaches_reshape() -> None:
    # y = Reshape(x, Shape(x)[0:1] * [1] ++ [-1]) keeps the symbolic batch dim
    nodes = [
        helper.make_node("Shape", ["x"], ["s"], end=1),
        helper.make_node("Mul", ["s", "one"], ["s1"]),
        helper.make_node("Concat", ["s1", "m1"], ["shape"], axis=0),
        helper.make_node("Reshape", ["x", "shape"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", F, ["batch", 3, 4])],
        [helper.make_empty_tensor_value_info("y")],
        initializer=[
            helper.make_tensor("one", I64, [1], [1]),
            helper.make_tensor("m1", I64, [1], [-1]),
        ],
    )
    g = import_onnx(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)]))
    assert g.values["s1"].sym == ("batch",)
    assert g.values["y"].shape == ("batch", 12)


# ---------------------------------------------------------------------------- kernels
def test_integer_div_truncates_and_mod_follows_fmod() -> None:
    a, b = np.array([-7, 7, -7, 7], np.int32), np.array([2, -2, -2, 2], np.int32)
    np.testing.assert_array_equal(_run("Div", a, b), np.array([-3, -3, 3, 3], np.int32))
    np.testing.assert_array_equal(_run("Mod", a, b), np.mod(a, b))
    np.testing.assert_array_equal(_run("Mod", a, b, fmod=1), np.fmod(a, b))


def test_unsigned_64_bit_semantics() -> None:
    big = np.array([2**64 - 1, 2**63 + 5, 10, 2**63], np.uint64)
    small = np.array([3, 2**63, 3, 7], np.uint64)
    np.testing.assert_array_equal(_run("Div", big, small), big // small)
    np.testing.assert_array_equal(_run("Mod", big, small), big % small)
    np.testing.assert_array_equal(_run("Greater", big, small), big > small)
    np.testing.assert_array_equal(_run("Max", big, small), np.maximum(big, small))
    np.testing.assert_array_equal(_run("Add", big, small), big + small)  # wraps
    shift = np.array([1, 63, 0, 64], np.uint64)
    want = np.array([(int(x) >> int(s)) if s < 64 else 0 for x, s in zip(big, shift)], np.uint64)
    np.testing.assert_array_equal(_run("BitShift", big, shift, direction="RIGHT"), want)


def test_uint16_uint32_wrap_and_compare() -> None:
    for dt in (np.uint16, np.uint32):
        hi = np.array([np.iinfo(dt).max, 5], dt)
        one = np.array([1, 7], dt)
        np.testing.assert_array_equal(_run("Add", hi, one), hi + one)
        np.testing.assert_array_equal(_run("Sub", one, hi), one - hi)
        np.testing.assert_array_equal(_run("Less", hi, one), hi < one)
        np.testing.assert_array_equal(_run("BitwiseNot", hi), ~hi)
        np.testing.assert_array_equal(
            _run("Where", np.array([True, False]), hi, one), [hi[0], one[1]]
        )


def test_pow_mixed_dtypes() -> None:
    x, y = np.array([2, 3, -2], np.int64), np.array([0.5, 2.0, 3.0], np.float32)
    got = _run("Pow", x, y)
    assert got.dtype == np.int64
    np.testing.assert_array_equal(got, np.power(x, y).astype(np.int64))
    got = _run("Pow", y, np.array([2, 3, 1], np.int32))
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, [0.25, 8.0, 3.0])


@pytest.mark.parametrize(
    "onnx_type, np_type",
    [
        (TensorProto.FLOAT8E4M3FN, ml_dtypes.float8_e4m3fn),
        (TensorProto.FLOAT8E4M3FNUZ, ml_dtypes.float8_e4m3fnuz),
        (TensorProto.FLOAT8E5M2, ml_dtypes.float8_e5m2),
        (TensorProto.FLOAT8E5M2FNUZ, ml_dtypes.float8_e5m2fnuz),
    ],
)
def test_cast_float8_saturate(onnx_type: int, np_type: type) -> None:
    x = np.array(
        [0.1, -3.3, 240.0, 247.0, 248.0, 464.0, 470.0, 1e5, -1e5, np.inf, -np.inf, np.nan],
        np.float32,
    )
    top = float(ml_dtypes.finfo(np_type).max)
    sat = _run("Cast", x, to=onnx_type).astype(np.float32)
    want = np.clip(x, -top, top).astype(np_type).astype(np.float32)
    np.testing.assert_array_equal(sat, want)
    nosat = _run("Cast", x, to=onnx_type, saturate=0).astype(np.float32)
    np.testing.assert_array_equal(nosat, x.astype(np_type).astype(np.float32))


def test_clip_min_above_max_and_hardmax_ties() -> None:
    x = np.array([1.0, 5.0, -3.0], np.float32)
    graph = helper.make_graph(
        [helper.make_node("Clip", ["x", "lo", "hi"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", F, [3])],
        [helper.make_empty_tensor_value_info("y")],
        initializer=[
            helper.make_tensor("lo", F, [], [4.0]),
            helper.make_tensor("hi", F, [], [2.0]),
        ],
    )
    m = Model(import_onnx(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])))
    np.testing.assert_array_equal(m.run({"x": x})["y"], [2.0, 2.0, 2.0])
    h = _run("Hardmax", np.array([[3.0, 3.0, 1.0]], np.float32))
    np.testing.assert_array_equal(h, [[1.0, 0.0, 0.0]])  # first maximum wins


@pytest.mark.parametrize("op", ["Softmax", "LogSoftmax", "Hardmax"])
def test_old_opset_softmax_coerces_to_2d(op: str) -> None:
    x = np.random.default_rng(0).standard_normal((2, 3, 4)).astype(np.float32)
    got = _run(op, x, opset=11, axis=1)
    flat = x.reshape(2, 12)
    if op == "Hardmax":
        want = np.eye(12, dtype=np.float32)[flat.argmax(1)]
    else:
        e = np.exp(flat - flat.max(1, keepdims=True))
        want = e / e.sum(1, keepdims=True)
        if op == "LogSoftmax":
            want = np.log(want)
    np.testing.assert_allclose(got, want.reshape(x.shape), rtol=1e-5, atol=1e-6)
    # the old default axis (1) on a 2-D input is the last axis: nothing to coerce
    g = import_onnx(_model(op, [("x", F, [2, 5])], opset=11))
    assert [n.op_type for n in g.nodes] == [op] and g.nodes[0].attrs["axis"] == -1


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_kernels_on_cuda_match_cpu() -> None:
    rng = np.random.default_rng(1)
    a = rng.integers(0, 2**63, 8, dtype=np.uint64)
    b = rng.integers(1, 2**20, 8, dtype=np.uint64)
    for op in ("Div", "Mod", "Less", "Max", "Add"):
        np.testing.assert_array_equal(_run(op, a, b, device="cuda"), _run(op, a, b))
    x = rng.standard_normal((3, 5)).astype(np.float32) * 300
    for op, attrs in (
        ("Cast", {"to": TensorProto.FLOAT8E4M3FN, "saturate": 0}),
        ("Softmax", {}),
        ("Gelu", {"approximate": "tanh"}),
        ("Hardmax", {"axis": 0}),
    ):
        got = _run(op, x, device="cuda", **attrs)
        want = _run(op, x, **attrs)
        np.testing.assert_allclose(
            got.astype(np.float32), want.astype(np.float32), rtol=1e-5, atol=1e-6
        )
    s = np.array([1, 7, 70, 3], np.int32)
    np.testing.assert_array_equal(
        _run("BitShift", s, np.array([1, 31, 32, -1], np.int32), device="cuda", direction="LEFT"),
        _run("BitShift", s, np.array([1, 31, 32, -1], np.int32), direction="LEFT"),
    )


_ELEMENTWISE_OPS = frozenset(
    """Abs Neg Exp Log Sqrt Reciprocal Floor Ceil Round Sign Sin Cos Tan Asin Acos Atan Sinh Cosh
    Asinh Acosh Atanh Erf Tanh Sigmoid Relu Softplus Softsign IsNaN IsInf Not BitwiseNot LeakyRelu
    Elu Selu Celu HardSigmoid HardSwish ThresholdedRelu Gelu Mish Shrink Swish PRelu Add Sub Mul Div
    Pow Mod Max Min Sum Mean Equal Greater Less GreaterOrEqual LessOrEqual And Or Xor BitShift
    BitwiseAnd BitwiseOr BitwiseXor Where Cast CastLike Clip Softmax LogSoftmax Hardmax
    Constant""".split()
)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_elementwise_conformance_cases_on_cuda() -> None:
    """The ONNX node cases made of elementwise ops only, run on CUDA (the suite runs CPU)."""
    from onnx.backend.test.loader import load_model_tests  # noqa: PLC0415
    from onnx.backend.test.runner import Runner, _normalize_tensor  # noqa: PLC0415

    from ecoinfer.onnx_backend import EcoinferBackend, unsupported_reason  # noqa: PLC0415

    ran, failed = 0, []
    for case in load_model_tests(kind="node"):
        model = case.model
        if model is None or not case.data_sets:
            continue
        if not {n.op_type for n in model.graph.node} <= _ELEMENTWISE_OPS:
            continue
        if unsupported_reason(model) is not None or model.opset_import[0].version < 7:
            continue
        try:
            rep = EcoinferBackend.prepare(model, "CUDA")
            for inputs, outputs in case.data_sets:
                # cases may hold TensorProtos (float8 data): as the suite's runner does
                got = rep.run([_normalize_tensor(x) for x in inputs])
                want = [_normalize_tensor(x) for x in outputs]
                Runner.assert_similar_outputs(want, got, rtol=case.rtol, atol=case.atol)
        except Exception as e:  # noqa: BLE001
            failed.append(f"{case.name}: {type(e).__name__}: {str(e).strip().splitlines()[:3]}")
        ran += 1
    assert ran > 300
    assert not failed, "\n".join(failed)


def test_old_opset_clip_bounds_follow_input_dtype() -> None:
    # opset < 11 Clip takes min/max attributes, imported as float32 constants
    x = np.array([-5.0, 0.5, 7.0], np.float64)
    got = _run("Clip", x, opset=10, min=-1.0, max=2.0)
    assert got.dtype == np.float64
    np.testing.assert_array_equal(got, [-1.0, 0.5, 2.0])
