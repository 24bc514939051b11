"""NN ops: shape/dtype inference with symbolic dims, FLOP counts, and numerics against
onnxruntime / the ONNX reference for what the conformance cases do not pin down (dtypes,
fast-path vs generic pooling, CUDA)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from onnx.reference import ReferenceEvaluator

from ecoinfer.api import Model
from ecoinfer.errors import ShapeInferenceError
from ecoinfer.frontend.onnx import import_onnx
from ecoinfer.ir.ops import get_schema
from ecoinfer.ir.ops.registry import InferContext
from ecoinfer.kernels.torch_ops import nn as nn_kernels

F, F16, I64 = TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.INT64
CUDA = torch.cuda.is_available()


# ---------------------------------------------------------------------------- helpers
def _model(
    nodes: list[onnx.NodeProto],
    inputs: list[tuple[str, int, list]],
    outputs: list[str],
    inits: list[onnx.TensorProto] | None = None,
    opset: int = 21,
) -> onnx.ModelProto:
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info(n, t, s) for n, t, s in inputs],
        [helper.make_empty_tensor_value_info(o) for o in outputs],
        initializer=inits or [],
    )
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = 9
    return m


def _node_model(
    op: str, inputs: list[tuple[str, int, list]], inits=None, n_out=1, opset=21, **attrs
) -> onnx.ModelProto:
    names = [n for n, _, _ in inputs] + [t.name for t in inits or []]
    outs = [f"y{k}" for k in range(n_out)]
    node = helper.make_node(op, names, outs, name="n0", **attrs)
    return _model([node], inputs, outs, inits, opset)


def _w(name: str, a: np.ndarray) -> onnx.TensorProto:
    return numpy_helper.from_array(a, name)


def _shape(model: onnx.ModelProto, out: str = "y0") -> tuple:
    return import_onnx(model).values[out].shape


def _flops(model: onnx.ModelProto) -> int | None:
    g = import_onnx(model)
    node = g.nodes[0]
    schema = get_schema(node.op_type)
    ctx = InferContext(g, node, schema)
    outs = schema.infer(ctx)
    assert schema.flops is not None
    return schema.flops(ctx, outs)


def _ort(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    ort = pytest.importorskip("onnxruntime")
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)


def _rel(a: np.ndarray, b: np.ndarray) -> float:
    a64, b64 = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a64 - b64) / max(np.linalg.norm(b64), 1e-30))


rng = np.random.default_rng(0)


def _rand(*shape: int, dtype=np.float32) -> np.ndarray:
    return rng.standard_normal(shape).astype(dtype)


# ---------------------------------------------------------------------------- inference
def test_conv_symbolic_batch_and_flops() -> None:
    w = _w("w", _rand(64, 3, 7, 7))
    m = _node_model("Conv", [("x", F, ["batch", 3, 224, 224])], [w], strides=[2, 2], pads=[3] * 4)
    assert _shape(m) == ("batch", 64, 112, 112)
    assert _flops(m) is None  # unknown batch
    m1 = _node_model("Conv", [("x", F, [1, 3, 224, 224])], [w], strides=[2, 2], pads=[3] * 4)
    assert _flops(m1) == 2 * 64 * 112 * 112 * 3 * 7 * 7


def test_conv_auto_pad_and_symbolic_spatial() -> None:
    w = _w("w", _rand(8, 4, 3, 3))
    m = _node_model("Conv", [("x", F, ["n", 4, "h", "w"])], [w], auto_pad="SAME_UPPER")
    assert _shape(m) == ("n", 8, "h", "w")  # stride 1 SAME keeps the size
    m = _node_model(
        "Conv", [("x", F, ["n", 4, "h", 9])], [w], auto_pad="SAME_LOWER", strides=[2, 2]
    )
    assert _shape(m) == ("n", 8, None, 5)
    m = _node_model("Conv", [("x", F, [1, 4, 9, 9])], [w], auto_pad="VALID", dilations=[2, 2])
    assert _shape(m) == (1, 8, 5, 5)
    g = _w("g", _rand(8, 2, 3, 3))
    m = _node_model("Conv", [("x", F, [1, 4, 9, 9])], [g], group=2, pads=[0, 1, 2, 1])
    assert _shape(m) == (1, 8, 9, 9)


def test_conv_channel_mismatch_is_reported() -> None:
    w = _w("w", _rand(8, 3, 3, 3))
    with pytest.raises(ShapeInferenceError, match="channels"):
        import_onnx(_node_model("Conv", [("x", F, [1, 4, 9, 9])], [w]))


def test_conv_transpose_shapes_and_flops() -> None:
    w = _w("w", _rand(4, 3, 3, 3))
    m = _node_model(
        "ConvTranspose",
        [("x", F, [2, 4, 5, 5])],
        [w],
        strides=[2, 2],
        pads=[1, 1, 1, 1],
        output_padding=[1, 1],
    )
    assert _shape(m) == (2, 3, 10, 10)
    m = _node_model(
        "ConvTranspose", [("x", F, [2, 4, 5, 5])], [w], strides=[2, 2], output_shape=[11, 12]
    )
    assert _shape(m) == (2, 3, 11, 12)
    m = _node_model(
        "ConvTranspose", [("x", F, ["b", 4, 5, 5])], [w], strides=[3, 3], auto_pad="SAME_UPPER"
    )
    assert _shape(m) == ("b", 3, 15, 15)
    m = _node_model("ConvTranspose", [("x", F, [2, 4, 5, 5])], [w], group=2)
    assert _shape(m) == (2, 6, 7, 7)
    assert _flops(m) == 2 * (2 * 4 * 5 * 5) * 3 * 9


def test_pool_shapes() -> None:
    m = _node_model(
        "MaxPool",
        [("x", F, ["n", 3, 6, 6])],
        n_out=2,
        kernel_shape=[3, 3],
        strides=[2, 2],
        ceil_mode=1,
    )
    g = import_onnx(m)
    assert g.values["y0"].shape == ("n", 3, 3, 3)
    assert g.values["y1"].dtype == "int64" and g.values["y1"].shape == ("n", 3, 3, 3)
    # ceil_mode: the last window may not start in the right padding
    m = _node_model(
        "AveragePool",
        [("x", F, [1, 1, 5])],
        kernel_shape=[2],
        strides=[2],
        pads=[1, 1],
        ceil_mode=1,
    )
    assert _shape(m) == (1, 1, 3)
    m = _node_model("GlobalAveragePool", [("x", F, ["n", "c", 7, 7])])
    assert _shape(m) == ("n", "c", 1, 1)


def test_matmul_shapes_and_flops() -> None:
    w = _w("w", _rand(384, 1536))
    m = _node_model("MatMul", [("x", F, ["batch", "seq", 384])], [w])
    assert _shape(m) == ("batch", "seq", 1536)
    m = _node_model("MatMul", [("a", F, [4]), ("b", F, [2, 4, 5])])
    assert _shape(m) == (2, 5)
    m = _node_model("MatMul", [("a", F, [2, 1, 3, 4]), ("b", F, [5, 4, 6])])
    assert _shape(m) == (2, 5, 3, 6)
    assert _flops(m) == 2 * (2 * 5 * 3 * 6) * 4
    m = _node_model("MatMul", [("a", F, [3, 4]), ("b", F, [4])])
    assert _shape(m) == (3,)
    with pytest.raises(ShapeInferenceError):
        import_onnx(_node_model("MatMul", [("a", F, [3, 4]), ("b", F, [5, 6])]))


def test_gemm_shapes_and_flops() -> None:
    m = _node_model("Gemm", [("a", F, ["m", 8]), ("b", F, [16, 8]), ("c", F, [16])], transB=1)
    assert _shape(m) == ("m", 16)
    m = _node_model("Gemm", [("a", F, [8, 3]), ("b", F, [8, 16])], transA=1)
    assert _shape(m) == (3, 16)
    assert _flops(m) == 2 * 3 * 8 * 16


def test_einsum_shapes() -> None:
    m = _node_model(
        "Einsum", [("a", F, ["b", 3, 4]), ("c", F, ["b", 4, 5])], equation="bij,bjk->bik"
    )
    assert _shape(m) == ("b", 3, 5)
    assert _flops(m) is None
    m = _node_model("Einsum", [("a", F, [2, 3, 4])], equation="...ij->...ji")
    assert _shape(m) == (2, 4, 3)
    m = _node_model("Einsum", [("a", F, [3, 4]), ("c", F, [4, 5])], equation="ij,jk")
    assert _shape(m) == (3, 5)
    assert _flops(m) == 2 * 3 * 4 * 5


def test_resize_pad_depth_shapes() -> None:
    sc = _w("sc", np.array([1, 1, 2, 2], np.float32))
    roi = _w("roi", np.zeros(0, np.float32))
    m = _node_model("Resize", [("x", F, ["n", 3, 5, 7])], [roi, sc])
    assert _shape(m) == ("n", 3, 10, 14)
    sz = _w("sz", np.array([9, 4], np.int64))
    m = _model(
        [helper.make_node("Resize", ["x", "", "", "sz"], ["y0"], axes=[2, 3])],
        [("x", F, ["n", 3, 5, 7])],
        ["y0"],
        [sz],
    )
    assert _shape(m) == ("n", 3, 9, 4)
    pads = _w("p", np.array([0, 0, 1, 2, 0, 0, 3, -1], np.int64))
    m = _node_model("Pad", [("x", F, ["n", "c", 5, 7])], [pads], mode="reflect")
    assert _shape(m) == ("n", "c", 9, 8)
    m = _node_model("DepthToSpace", [("x", F, ["n", 12, 5, 7])], blocksize=2)
    assert _shape(m) == ("n", 3, 10, 14)
    m = _node_model("SpaceToDepth", [("x", F, ["n", 3, 4, 6])], blocksize=2)
    assert _shape(m) == ("n", 12, 2, 3)


def test_layer_norm_stats_types() -> None:
    m = _node_model(
        "LayerNormalization",
        [("x", F16, ["b", "s", 8]), ("s", F16, [8])],
        n_out=3,
        axis=-1,
        opset=17,
    )
    g = import_onnx(m)
    assert g.values["y0"].dtype == "float16"
    assert g.values["y1"].dtype == "float32" and g.values["y1"].shape == ("b", "s", 1)
    assert g.values["y2"].shape == ("b", "s", 1)


def test_attention_shapes_with_past_and_flops() -> None:
    inputs = [
        ("q", F, ["b", "s", 64]),
        ("k", F, ["b", "s", 32]),
        ("v", F, ["b", "s", 32]),
        ("m", F, ["b", 1, "s", "t"]),
        ("pk", F, ["b", 2, "p", 16]),
        ("pv", F, ["b", 2, "p", 16]),
    ]
    m = _node_model("Attention", inputs, n_out=4, q_num_heads=4, kv_num_heads=2, opset=23)
    g = import_onnx(m)
    assert g.values["y0"].shape == ("b", "s", 64)
    assert g.values["y1"].shape == ("b", 2, "p+s", 16)
    assert g.values["y3"].shape == ("b", 4, "s", "p+s")
    m = _node_model(
        "Attention",
        [("q", F, [1, 4, 8, 16]), ("k", F, [1, 4, 10, 16]), ("v", F, [1, 4, 10, 32])],
        opset=23,
    )
    assert _shape(m) == (1, 4, 8, 32)
    assert _flops(m) == 2 * 4 * 8 * 10 * (16 + 32)


# ---------------------------------------------------------------------------- numerics
def test_conv_bn_pool_gemm_model_matches_onnxruntime() -> None:
    w = _rand(8, 2, 3, 3)
    nodes = [
        helper.make_node(
            "Conv", ["x", "w", "b"], ["c"], group=2, strides=[2, 1], pads=[1, 0, 2, 1]
        ),
        helper.make_node("BatchNormalization", ["c", "s", "bb", "mu", "var"], ["bn"], epsilon=1e-3),
        helper.make_node(
            "MaxPool",
            [
                "bn",
            ],
            ["mp"],
            kernel_shape=[3, 3],
            strides=[2, 2],
            pads=[1, 1, 1, 1],
            ceil_mode=1,
        ),
        helper.make_node(
            "AveragePool",
            ["mp"],
            ["ap"],
            kernel_shape=[2, 2],
            pads=[0, 0, 1, 1],
            count_include_pad=0,
        ),
        helper.make_node("GlobalAveragePool", ["ap"], ["gp"]),
        helper.make_node("Flatten", ["gp"], ["fl"]),
        helper.make_node("Gemm", ["fl", "gw", "gb"], ["y"], transB=1, alpha=0.5, beta=2.0),
    ]
    inits = [
        _w("w", w),
        _w("b", _rand(8)),
        _w("s", _rand(8)),
        _w("bb", _rand(8)),
        _w("mu", _rand(8)),
        _w("var", np.abs(_rand(8)) + 0.5),
        _w("gw", _rand(5, 8)),
        _w("gb", _rand(5)),
    ]
    m = _model(nodes, [("x", F, ["n", 4, 17, 15])], ["y"], inits, opset=17)
    x = _rand(3, 4, 17, 15)
    ref = _ort(m, {"x": x})[0]
    out = Model(import_onnx(m)).run({"x": x})["y"]
    assert out.shape == ref.shape and out.dtype == np.float32
    assert _rel(out, ref) <= 1e-5


@pytest.mark.parametrize("dtype", [np.float16, np.float64])
def test_dtypes_are_preserved(dtype) -> None:
    t = helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
    x = _rand(2, 4, 9, 9, dtype=dtype)
    w = _rand(6, 4, 3, 3, dtype=dtype)
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("InstanceNormalization", ["c", "s", "b"], ["i"]),
        helper.make_node("Resize", ["i", "", "sc"], ["r"], mode="linear"),
        helper.make_node("LpPool", ["r"], ["y"], kernel_shape=[2, 2], strides=[2, 2]),
    ]
    inits = [
        _w("w", w),
        _w("s", _rand(6, dtype=dtype)),
        _w("b", _rand(6, dtype=dtype)),
        _w("sc", np.array([1, 1, 1.5, 1.5], np.float32)),
    ]
    m = _model(nodes, [("x", t, list(x.shape))], ["y"], inits)
    out = Model(import_onnx(m)).run({"x": x})["y"]
    assert out.dtype == dtype
    if dtype == np.float64:  # onnxruntime lacks some of these ops in double
        assert _rel(out, ReferenceEvaluator(m).run(None, {"x": x})[0]) <= 1e-12


def test_bfloat16_runs() -> None:
    import ml_dtypes  # noqa: PLC0415

    x = _rand(2, 8).astype(ml_dtypes.bfloat16)
    m = _node_model(
        "LayerNormalization",
        [("x", TensorProto.BFLOAT16, [2, 8]), ("s", TensorProto.BFLOAT16, [8])],
        opset=17,
    )
    y = Model(import_onnx(m)).run({"x": x, "s": np.ones(8, ml_dtypes.bfloat16)})["y0"]
    assert y.dtype == ml_dtypes.bfloat16
    xf = x.astype(np.float32)
    ref = (xf - xf.mean(-1, keepdims=True)) / np.sqrt(xf.var(-1, keepdims=True) + 1e-5)
    np.testing.assert_allclose(y.astype(np.float32), ref, atol=3e-2)


@pytest.mark.parametrize(
    "attrs",
    [
        dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1], ceil_mode=1),
        dict(kernel_shape=[2, 3], strides=[1, 2], pads=[0, 1, 0, 1]),
        dict(
            kernel_shape=[3, 2], strides=[2, 2], pads=[1, 0, 1, 0], ceil_mode=1, count_include_pad=1
        ),
    ],
)
def test_pool_fast_path_equals_generic_path(attrs, monkeypatch) -> None:
    # symmetric pads take torch's pooling functions; without them the unfold path runs
    x = _rand(2, 3, 11, 10)
    for op in ("MaxPool", "AveragePool"):
        a = dict(attrs)
        if op == "MaxPool":
            a.pop("count_include_pad", None)
        proto = _node_model(op, [("x", F, list(x.shape))], **a)
        model = Model(import_onnx(proto))
        fast = model.run({"x": x})["y0"]
        with monkeypatch.context() as mp:
            mp.setattr(nn_kernels, "_MAXPOOL", {})
            mp.setattr(nn_kernels, "_AVGPOOL", {})
            generic = Model(model.graph).run({"x": x})["y0"]
        assert fast.shape == generic.shape
        assert _rel(fast, generic) <= 1e-6
        assert _rel(fast, _ort(proto, {"x": x})[0]) <= 1e-6, (op, a)


@pytest.mark.parametrize("storage_order", [0, 1])
def test_maxpool_indices_match_onnxruntime(storage_order: int) -> None:
    x = _rand(2, 3, 7, 6)
    for pads in ([1, 1, 1, 1], [0, 1, 2, 0]):  # fast path, then the generic one
        m = _node_model(
            "MaxPool",
            [("x", F, list(x.shape))],
            n_out=2,
            kernel_shape=[3, 2],
            strides=[2, 2],
            pads=pads,
            storage_order=storage_order,
        )
        out = Model(import_onnx(m)).run({"x": x})
        ref = _ort(m, {"x": x})
        np.testing.assert_array_equal(out["y0"], ref[0])
        np.testing.assert_array_equal(out["y1"], ref[1])


@pytest.mark.parametrize("mode", ["constant", "reflect", "edge", "wrap"])
def test_pad_modes_with_negative_pads(mode: str) -> None:
    x = np.arange(2 * 3 * 4, dtype=np.int32).reshape(2, 3, 4)
    pads = np.array([0, 2, -1, 1, 1, 2], np.int64)
    m = _node_model(
        "Pad",
        [("x", TensorProto.INT32, [2, 3, 4])],
        [_w("p", pads), _w("v", np.array(7, np.int32))],
        mode=mode,
    )
    out = Model(import_onnx(m)).run({"x": x})["y0"]
    cropped = x[:, :, 1:]
    np_mode = {"constant": "constant", "reflect": "reflect", "edge": "edge", "wrap": "wrap"}[mode]
    kw = {"constant_values": 7} if mode == "constant" else {}
    ref = np.pad(cropped, [(0, 1), (2, 1), (0, 2)], mode=np_mode, **kw)
    np.testing.assert_array_equal(out, ref)


def test_resize_linear_and_nearest_match_onnxruntime() -> None:
    x = _rand(1, 2, 5, 6)
    for mode, ctm in [
        ("linear", "half_pixel"),
        ("nearest", "asymmetric"),
        ("cubic", "pytorch_half_pixel"),
        ("linear", "align_corners"),
    ]:
        m = _model(
            [
                helper.make_node(
                    "Resize",
                    ["x", "", "", "sz"],
                    ["y0"],
                    mode=mode,
                    coordinate_transformation_mode=ctm,
                )
            ],
            [("x", F, list(x.shape))],
            ["y0"],
            [_w("sz", np.array([1, 2, 9, 4], np.int64))],
        )
        out = Model(import_onnx(m)).run({"x": x})["y0"]
        assert _rel(out, _ort(m, {"x": x})[0]) <= 1e-6, (mode, ctm)


def test_resize_uint8_rounds() -> None:
    x = np.array([[[[0, 255, 10, 3]]]], np.uint8)
    m = _node_model(
        "Resize",
        [("x", TensorProto.UINT8, [1, 1, 1, 4])],
        [_w("roi", np.zeros(0, np.float32)), _w("sc", np.array([1, 1, 1, 2], np.float32))],
        mode="linear",
    )
    out = Model(import_onnx(m)).run({"x": x})["y0"]
    assert out.dtype == np.uint8
    # the ONNX reference rounds to nearest (onnxruntime truncates)
    np.testing.assert_array_equal(out, ReferenceEvaluator(m).run(None, {"x": x})[0])


def test_old_opset_forms() -> None:
    # Resize-10 (X, scales) and GroupNormalization-18 (one scale per group)
    x = _rand(1, 2, 3, 4)
    m = _node_model(
        "Resize",
        [("x", F, list(x.shape))],
        [_w("s", np.array([1, 1, 2, 1.5], np.float32))],
        mode="nearest",
        opset=10,
    )
    out = Model(import_onnx(m)).run({"x": x})["y0"]
    np.testing.assert_array_equal(out, _ort(m, {"x": x})[0])
    x = _rand(2, 6, 3)
    m = _node_model(
        "GroupNormalization",
        [("x", F, [2, 6, 3])],
        [
            _w("s", np.array([1.0, 2.0, 3.0], np.float32)),
            _w("b", np.array([0.0, 1.0, -1.0], np.float32)),
        ],
        num_groups=3,
        opset=18,
    )
    out = Model(import_onnx(m)).run({"x": x})["y0"]
    xg = x.reshape(2, 3, -1)
    ref = (xg - xg.mean(-1, keepdims=True)) / np.sqrt(xg.var(-1, keepdims=True) + 1e-5)
    ref = ref * np.array([1, 2, 3.0])[None, :, None] + np.array([0, 1, -1.0])[None, :, None]
    np.testing.assert_allclose(out, ref.reshape(x.shape), rtol=1e-5, atol=1e-6)


def test_dropout_inference_is_identity_with_mask() -> None:
    x = _rand(3, 4)
    m = _node_model("Dropout", [("x", F, [3, 4])], [_w("r", np.array(0.3, np.float32))], n_out=2)
    g = import_onnx(m)
    assert g.values["y1"].dtype == "bool"
    out = Model(g).run({"x": x})
    np.testing.assert_array_equal(out["y0"], x)
    assert out["y1"].dtype == np.bool_ and out["y1"].all()


# ---------------------------------------------------------------------------- CUDA
@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")
def test_cuda_matches_cpu() -> None:
    x = _rand(2, 8, 16, 16)
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node(
            "MaxPool", ["c"], ["p", "i"], kernel_shape=[3, 3], strides=[2, 2], pads=[0, 0, 1, 1]
        ),
        helper.make_node("Resize", ["p", "", "sc"], ["r"], mode="cubic"),
        helper.make_node("LayerNormalization", ["r", "ls"], ["y"], axis=1),
    ]
    inits = [
        _w("w", _rand(16, 8, 3, 3)),
        _w("sc", np.array([1, 1, 2, 2], np.float32)),
        _w("ls", _rand(16, 16, 16)),
    ]
    m = _model(nodes, [("x", F, list(x.shape))], ["y", "i"], inits, opset=17)
    model = Model(import_onnx(m))
    cpu = model.run({"x": x})
    gpu = model.run({"x": torch.from_numpy(x).cuda()}, as_torch=True)
    assert gpu["y"].is_cuda and gpu["y"].dtype == torch.float32
    assert _rel(gpu["y"].cpu().numpy(), cpu["y"]) <= 1e-5
    np.testing.assert_array_equal(gpu["i"].cpu().numpy(), cpu["i"])
