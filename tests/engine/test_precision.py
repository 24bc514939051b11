"""Precision assignment (ecoinfer/engine/precision.py): FP16/BF16 lowering, overrides, report.

Accuracy is judged against onnxruntime FP32 on the original model (relative L2 <= 1e-2 for
FP16/BF16, the engine tolerance); structure is checked on the lowered graph itself.
"""

from __future__ import annotations

import math

import numpy as np
import onnx
import pytest
import torch
from helpers import numpy_feeds, rel_error, run_onnxruntime
from onnx import TensorProto as T
from onnx import helper, numpy_helper
from torch import nn

from ecoinfer.api import Model
from ecoinfer.engine import precision as P
from ecoinfer.engine.fingerprint import TOLERANCE
from ecoinfer.engine.precision import LayerPrecision, assign_precision
from ecoinfer.errors import EcoinferError
from ecoinfer.frontend.onnx import import_onnx
from ecoinfer.frontend.torch import export_module
from ecoinfer.ir.graph import Graph
from ecoinfer.passes import OptimizeConfig, optimize

CUDA = torch.cuda.is_available()


# ---------------------------------------------------------------------------- helpers
def _check(outs: dict, refs: dict, tol: float, what: str) -> dict[str, float]:
    """Every output float32, finite and within tol of onnxruntime; returns the errors."""
    errs = {}
    for name, ref in refs.items():
        out = outs[name]
        assert out.dtype == ref.dtype == np.float32, f"{what} '{name}': dtype {out.dtype}"
        assert np.isfinite(out).all(), f"{what} '{name}': non-finite values"
        rel, max_abs = rel_error(out, ref)
        print(f"{what} '{name}': rel L2 {rel:.2e}, max abs {max_abs:.2e}")
        assert rel <= tol, f"{what} '{name}': rel error {rel:.3e} > {tol:g} (max abs {max_abs:.3e})"
        errs[name] = rel
    return errs


def _by_name(layers: list[LayerPrecision]) -> dict[str, LayerPrecision]:
    return {lp.name: lp for lp in layers}


def _to(n) -> str:  # noqa: ANN001
    from ecoinfer.ir import dtypes  # noqa: PLC0415

    to = n.attrs["to"]
    return to if isinstance(to, str) else dtypes.from_onnx(int(to))


def _no_cast_chains(g: Graph) -> None:
    """No Cast(Cast(x: half -> float32) -> half) round trip, and no value cast to one dtype
    twice."""
    prod = g.producers()
    seen: set[tuple[str, str]] = set()
    for n in g.nodes:
        if n.op_type != "Cast" or _to(n) not in ("float16", "bfloat16", "float32"):
            continue
        p = prod.get(n.inputs[0])
        if p is not None and p.op_type == "Cast" and _to(p) == "float32":
            src = g.values.get(p.inputs[0])
            assert src is None or src.dtype != _to(n), f"cast round trip: {p.name} -> {n.name}"
        key = (n.inputs[0], _to(n))
        assert key not in seen, f"'{key[0]}' is cast to {key[1]} twice"
        seen.add(key)


def _model(nodes, inputs, outputs, inits=(), opset: int = 18) -> bytes:  # noqa: ANN001
    g = helper.make_graph(nodes, "g", inputs, outputs, initializer=list(inits))
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)], ir_version=10)
    return m.SerializeToString()


def _t(name: str, arr) -> onnx.TensorProto:  # noqa: ANN001
    return numpy_helper.from_array(np.asarray(arr), name)


# ---------------------------------------------------------------------------- MiniLM
@pytest.fixture(scope="module")
def minilm_opt(minilm_export):  # noqa: ANN001, ANN201
    """(optimized level-2 graph, feeds (4 padded sentences), onnxruntime FP32 outputs)."""
    path, feeds = minilm_export(True)
    graph, _ = optimize(import_onnx(path), OptimizeConfig(level=2))
    return graph, feeds, run_onnxruntime(path, feeds)


@pytest.mark.parametrize("precision", ["float16", "bfloat16"])
def test_minilm_lowered_matches_onnxruntime(minilm_opt, precision: str) -> None:  # noqa: ANN001
    graph, feeds, refs = minilm_opt
    assert feeds["attention_mask"].min() == 0, "the batch must be padded"
    low, layers = assign_precision(graph, precision)
    # the user-facing signature is unchanged: int64 in, float32 out
    assert [(v.name, v.dtype) for v in low.inputs] == [(v.name, v.dtype) for v in graph.inputs]
    assert [low.values[o.name].dtype for o in low.outputs] == ["float32", "float32"]
    outs = Model(low).run(feeds)
    # measured (CPU, torch reference kernels): fp16 1.8e-3, bf16 8.1e-3 on last_hidden_state
    errs = _check(outs, refs, TOLERANCE[precision], f"MiniLM {precision}")
    assert errs["last_hidden_state"] > 0  # it really ran in half precision
    gemms = [x for x in layers if x.op == "FusedGemm"]
    assert gemms and all(x.precision == precision for x in gemms)
    mha = [x for x in layers if x.op == "MultiHeadAttention"]
    assert len(mha) == 6 and all(x.precision == precision for x in mha)
    (emb,) = [x for x in layers if x.op == "EmbedLayerNorm"]  # embedding lookups + LayerNorm
    # weights are converted once, under their own names
    w = low.initializers["embeddings.word_embeddings.weight"]
    if precision == "float16":
        assert emb.precision == precision and "fp32" in emb.note
        assert w.dtype == P.storage_dtype(precision)
    else:  # bf16 keeps the residual stream, which the embeddings start, in fp32
        assert emb.precision == "float32" and "residual stream" in emb.reason
        assert w.dtype == torch.float32
    assert not any(k.endswith(("_fp16", "_bf16")) for k in low.initializers)
    lns = [x for x in layers if x.op == "LayerNormalization"]
    if precision == "float16":
        assert all(x.precision == "float16" and "stash_type=1" in x.note for x in lns)
        # the only casts: none at entry (int inputs), two at the exit
        casts = [n for n in low.nodes if n.op_type == "Cast" and _to(n) == "float32"]
        assert sorted(n.outputs[0] for n in casts) == ["last_hidden_state", "pooler_output"]
    else:
        # bf16 keeps the residual stream in fp32: split residual adds and LayerNorms
        assert all(x.precision == "float32" and "residual stream" in x.reason for x in lns)
        adds = [x for x in layers if x.name.endswith("_residual_add")]
        assert len(adds) == 12 and all(x.precision == "float32" for x in adds)
        for n in low.nodes:
            if n.name.endswith("_residual_add"):  # bf16 GEMM output + fp32 skip, one kernel
                assert n.op_type == "FusedElementwise"
                assert [low.values[i].dtype for i in n.inputs] == ["bfloat16", "float32"]
                assert low.values[n.outputs[0]].dtype == "float32"
    _no_cast_chains(low)


def test_minilm_float32_and_tf32_keep_the_graph(minilm_opt) -> None:  # noqa: ANN001
    graph, feeds, refs = minilm_opt
    base = Model(graph).run(feeds)
    for prec in ("float32", "tf32", "fp32"):
        low, layers = assign_precision(graph, prec)
        assert [n.op_type for n in low.nodes] == [n.op_type for n in graph.nodes]
        assert all(t.dtype != torch.float16 for t in low.initializers.values())
        outs = Model(low).run(feeds)
        for k in base:
            np.testing.assert_array_equal(outs[k], base[k])
        lp = _by_name(layers)
        want = "tf32" if prec == "tf32" else "float32"
        assert lp["node_MatMul_146"].precision == want
        assert lp["node_scaled_dot_product_attention_attention"].precision == want
        assert lp["node_layer_norm_1"].precision == "float32"  # tf32 is for matmul/conv only
        if prec == "tf32":
            assert "matmul/conv only" in lp["node_layer_norm_1"].note


def test_input_graph_is_not_modified(minilm_opt) -> None:  # noqa: ANN001
    graph = minilm_opt[0]
    before = graph.dump()
    dts = {k: t.dtype for k, t in graph.initializers.items()}
    for prec in ("float16", "bfloat16"):
        assign_precision(graph, prec, [("attention", "fp32")])
    assert graph.dump() == before
    assert {k: t.dtype for k, t in graph.initializers.items()} == dts


def test_override_keeps_matched_nodes_fp32_with_casts(minilm_opt) -> None:  # noqa: ANN001
    graph, feeds, refs = minilm_opt
    overrides = [("attention", "fp32"), ("attention|MatMul_146$", "bf16")]
    low, layers = assign_precision(graph, "fp16", overrides)
    lp = _by_name(layers)
    prod = low.producers()
    cons = low.consumers()
    mha = [n for n in low.nodes if n.op_type == "MultiHeadAttention"]
    assert len(mha) == 6
    for n in mha:
        rep = lp[n.name]
        assert (rep.precision, rep.reason) == ("float32", "override 'attention'")
        assert low.values[n.outputs[0]].dtype == "float32"
        for i in (n.inputs[0], n.inputs[3]):  # packed QKV and the mask: up-cast to fp32
            assert prod[i].op_type == "Cast" and _to(prod[i]) == "float32", i
        (down,) = cons[n.outputs[0]]  # the output goes back down for the fp16 consumer
        assert down.op_type == "Cast" and _to(down) == "float16"
    # the shared mask is up-cast once for all six attention layers
    assert len({n.inputs[3] for n in mha}) == 1
    # first match wins: the attention nodes also match the second rule but stay fp32
    assert lp["node_MatMul_146"].precision == "bfloat16"
    assert lp["node_MatMul_146"].reason == "override 'attention|MatMul_146$'"
    assert lp["node_MatMul_148"].precision == "float16"
    table = P.format_table(layers)
    assert "override 'attention'" in table and "float32" in table
    _no_cast_chains(low)
    _check(Model(low).run(feeds), refs, 1e-2, "MiniLM fp16 + overrides")


def test_integer_paths_untouched(minilm_opt) -> None:  # noqa: ANN001
    graph = minilm_opt[0]
    low, _ = assign_precision(graph, "float16")
    assert [v.dtype for v in low.inputs] == ["int64"] * 3
    for name, v in graph.values.items():  # every integer/bool value keeps its type
        if v.dtype in ("int64", "int32", "bool") and name in low.values:
            assert low.values[name].dtype == v.dtype, name
    old = {n.name: n for n in graph.nodes}
    floats = {"float32", "float16", "bfloat16"}
    for n in low.nodes:
        o = old.get(n.name)
        if o is None or any(graph.values[x].dtype in floats for x in o.outputs if x):
            continue
        assert n.inputs == o.inputs and n.attrs == o.attrs, n.name  # same node, same reads
    (emb,) = [n for n in low.nodes if n.op_type == "EmbedLayerNorm"]  # the embedding lookups
    assert emb.inputs[0] == "input_ids"  # indices are read as given, no cast
    assert not any(n.op_type == "Cast" and "input_ids" in n.inputs for n in low.nodes)


# ---------------------------------------------------------------------------- CNN
@pytest.mark.parametrize("precision", ["bfloat16", "float16"])
def test_resnet_lowered_matches_onnxruntime(exported, precision: str) -> None:  # noqa: ANN001
    from models import CASES  # noqa: PLC0415

    path = exported("resnet", True)
    feeds = numpy_feeds(CASES["resnet"].inputs(2))
    refs = run_onnxruntime(path, feeds)
    graph, _ = optimize(import_onnx(path), OptimizeConfig(level=2))
    low, layers = assign_precision(graph, precision)
    # measured: bf16 4.6e-3, fp16 5.6e-4
    _check(Model(low).run(feeds), refs, TOLERANCE[precision], f"ResNet {precision}")
    convs = [lp for lp in layers if lp.op == "FusedConv"]
    assert convs and all(lp.precision == precision for lp in convs)
    (x,) = low.inputs
    assert x.dtype == "float32"
    (entry,) = [n for n in low.nodes if n.inputs and n.inputs[0] == x.name]
    assert entry.op_type == "Cast" and _to(entry) == precision  # one cast at the entry


# ---------------------------------------------------------------------------- masks
class MaskedAttention(nn.Module):
    """BERT-style additive mask: (1 - mask) * finfo(float32).min added to the scores."""

    def __init__(self, d: int = 16, h: int = 2):
        super().__init__()
        torch.manual_seed(0)
        self.h = h
        self.qkv = nn.Linear(d, 3 * d)
        self.o = nn.Linear(d, d)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        b, s, d = x.shape
        ext = (1.0 - mask[:, None, None, :].to(x.dtype)) * torch.finfo(torch.float32).min
        q, k, v = self.qkv(x).split(d, -1)
        q, k, v = (t.view(b, s, self.h, d // self.h).transpose(1, 2) for t in (q, k, v))
        p = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(d // self.h) + ext, -1)
        return self.o((p @ v).transpose(1, 2).reshape(b, s, d))


@pytest.fixture(scope="module")
def masked(tmp_path_factory):  # noqa: ANN001, ANN201
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 6, 16, generator=g)
    mask = torch.ones(3, 6, dtype=torch.int64)
    mask[1, 4:] = 0  # a padded batch
    mask[2, 2:] = 0
    path = tmp_path_factory.mktemp("prec") / "masked.onnx"
    export_module(MaskedAttention(), {"x": x, "mask": mask}, path, dynamo=False)
    feeds = {"x": x.numpy(), "mask": mask.numpy()}
    return path, feeds, run_onnxruntime(path, feeds)


@pytest.mark.parametrize("level", [0, 2])
@pytest.mark.parametrize("precision", ["float16", "bfloat16"])
def test_float32_mask_fill_saturates_instead_of_becoming_inf(
    masked, level: int, precision: str, monkeypatch: pytest.MonkeyPatch
) -> None:  # noqa: ANN001
    path, feeds, refs = masked
    graph, _ = optimize(import_onnx(path), OptimizeConfig(level=level))
    low, layers = assign_precision(graph, precision)
    _check(Model(low).run(feeds), refs, TOLERANCE[precision], f"masked attention L{level}")
    # the mask cast is retargeted, the finfo(float32).min constant saturated, never -inf
    dt = P.storage_dtype(precision)
    if level == 0:
        (cast,) = [n for n in low.nodes if n.name == "/module/Cast"]
        assert _to(cast) == precision
        consts = [t for t in low.initializers.values() if t.numel() == 1 and t.dtype == dt]
        assert any(float(t) == torch.finfo(dt).min for t in consts)
    assert all(torch.isfinite(t).all() for t in low.initializers.values() if t.is_floating_point())

    # the same lowering with a plain .to(dtype): -inf, and 0 * -inf = NaN on kept positions
    if precision == "float16":

        def naive(t: torch.Tensor, dtype: str) -> torch.Tensor:
            return t.to(getattr(torch, dtype)) if t.is_floating_point() else t

        monkeypatch.setattr(P, "convert_tensor", naive)
        bad, _ = assign_precision(graph, precision)
        assert np.isnan(Model(bad).run(feeds)["output"]).any()


def test_keep_io_false_gives_half_inputs_and_outputs(masked) -> None:  # noqa: ANN001
    path, feeds, refs = masked
    graph, _ = optimize(import_onnx(path), OptimizeConfig(level=2))
    low, _ = assign_precision(graph, "float16", keep_io=False)
    assert {v.name: v.dtype for v in low.inputs} == {"x": "float16", "mask": "int64"}
    assert low.values["output"].dtype == "float16"
    assert not any(n.op_type == "Cast" and n.inputs == ["x"] for n in low.nodes)
    out = Model(low).run({"x": feeds["x"].astype(np.float16), "mask": feeds["mask"]})["output"]
    assert out.dtype == np.float16
    assert rel_error(out, refs["output"])[0] <= 1e-2


def test_half_override_in_a_float32_build(masked) -> None:  # noqa: ANN001
    path, feeds, refs = masked
    graph = import_onnx(path)
    low, layers = assign_precision(graph, "float32", [("qkv", "fp16")])
    lp = _by_name(layers)
    assert lp["/module/qkv/MatMul"].precision == "float16"
    assert lp["/module/Softmax"].precision == "float32"
    (mm,) = [n for n in low.nodes if n.name == "/module/qkv/MatMul"]
    assert low.values[mm.inputs[0]].dtype == "float16"  # x cast down for it
    assert low.initializers[mm.inputs[1]].dtype == torch.float16
    _check(Model(low).run(feeds), refs, 1e-2, "fp32 build, qkv in fp16")


# ---------------------------------------------------------------------------- kept fp32
def test_shape_arithmetic_in_float_stays_fp32() -> None:
    # half = int(floor(float(shape[1]) * 0.5)); y = relu(x[:, :half]): with 4099 columns,
    # fp16 would round 4099 to 4100 and slice 2050 columns
    x = helper.make_tensor_value_info("x", T.FLOAT, [1, "n"])
    y = helper.make_tensor_value_info("y", T.FLOAT, None)
    nodes = [
        helper.make_node("Shape", ["x"], ["s"], start=1, end=2),
        helper.make_node("Cast", ["s"], ["sf"], to=T.FLOAT),
        helper.make_node("Mul", ["sf", "half"], ["h"]),
        helper.make_node("Floor", ["h"], ["hf"]),
        helper.make_node("Cast", ["hf"], ["hi"], to=T.INT64),
        helper.make_node("Slice", ["x", "zero", "hi", "one"], ["sl"]),
        helper.make_node("Relu", ["sl"], ["y"]),
    ]
    inits = [_t("half", np.array([0.5], np.float32)), _t("zero", [0]), _t("one", [1])]
    model = _model(nodes, [x], [y], inits)
    feeds = {"x": np.random.default_rng(0).standard_normal((1, 4099)).astype(np.float32)}
    ref = run_onnxruntime(model, feeds)["y"]
    low, layers = assign_precision(import_onnx(model), "float16")
    lp = {x.op: x for x in layers}
    for op in ("Cast", "Mul", "Floor"):
        assert lp[op].precision == "float32" and "shape/index" in lp[op].reason
    assert lp["Relu"].precision == "float16"
    out = Model(low).run(feeds)["y"]
    assert out.shape == ref.shape == (1, 2049)
    assert rel_error(out, ref)[0] <= 1e-3


def test_large_reductions_stay_fp32() -> None:
    # sums of 1000 values around 200 overflow fp16 (max 65504); 8 values do not
    a = helper.make_tensor_value_info("a", T.FLOAT, [2, 1000])
    b = helper.make_tensor_value_info("b", T.FLOAT, [2, 8])
    c = helper.make_tensor_value_info("c", T.FLOAT, [2, "k"])
    outs = [helper.make_tensor_value_info(n, T.FLOAT, None) for n in ("ya", "yb", "yc")]
    nodes = [
        helper.make_node("Relu", ["a"], ["ra"], name="relu_a"),
        helper.make_node("ReduceSum", ["ra", "ax"], ["ya"], name="sum_big"),
        helper.make_node("ReduceSum", ["b", "ax"], ["sb"], name="sum_small"),
        helper.make_node("Relu", ["sb"], ["yb"], name="relu_b"),
        helper.make_node("ReduceMean", ["c", "ax"], ["yc"], name="mean_unknown"),
    ]
    model = _model(nodes, [a, b, c], outs, [_t("ax", [1])])
    rng = np.random.default_rng(0)
    feeds = {
        "a": rng.uniform(100, 300, (2, 1000)).astype(np.float32),
        "b": rng.uniform(0, 1, (2, 8)).astype(np.float32),
        "c": rng.standard_normal((2, 5)).astype(np.float32),
    }
    refs = run_onnxruntime(model, feeds)
    low, layers = assign_precision(import_onnx(model), "float16")
    lp = _by_name(layers)
    assert lp["sum_big"].precision == "float32"
    assert lp["sum_big"].reason == "kept fp32: ReduceSum over 1000 elements"
    assert lp["relu_a"].precision == "float16"
    assert lp["sum_small"].precision == "float16"
    assert lp["mean_unknown"].precision == "float32" and "unknown" in lp["mean_unknown"].reason
    (big,) = [n for n in low.nodes if n.name == "sum_big"]
    assert low.producers()[big.inputs[0]].op_type == "Cast"  # fp16 Relu up-cast for it
    assert refs["ya"].max() > 65504
    _check(Model(low).run(feeds), refs, 1e-2, "reductions")


def test_control_flow_runs_fp32_with_its_outer_reads_cast() -> None:
    x = helper.make_tensor_value_info("x", T.FLOAT, [2, 3])
    cond = helper.make_tensor_value_info("cond", T.BOOL, [])
    y = helper.make_tensor_value_info("y", T.FLOAT, None)
    out = helper.make_tensor_value_info("o", T.FLOAT, None)
    then = helper.make_graph([helper.make_node("Add", ["r", "w"], ["o"])], "then", [], [out])
    other = helper.make_graph([helper.make_node("Sub", ["r", "w"], ["o"])], "else", [], [out])
    nodes = [
        helper.make_node("Relu", ["x"], ["r"], name="relu"),
        helper.make_node("If", ["cond"], ["i"], then_branch=then, else_branch=other, name="if"),
        helper.make_node("Mul", ["i", "w"], ["y"], name="mul"),
    ]
    w = np.random.default_rng(1).standard_normal((2, 3)).astype(np.float32)
    model = _model(nodes, [x, cond], [y], [_t("w", w)])
    low, layers = assign_precision(import_onnx(model), "float16")
    lp = _by_name(layers)
    assert lp["if"].precision == "float32" and "control flow" in lp["if"].reason
    assert lp["relu"].precision == lp["mul"].precision == "float16"
    for flag in (True, False):
        feeds = {"x": np.random.default_rng(2).standard_normal((2, 3)).astype(np.float32)}
        feeds["cond"] = np.array(flag)
        _check(Model(low).run(feeds), run_onnxruntime(model, feeds), 1e-2, f"If {flag}")


def test_cast_chains_cancel_only_when_exact() -> None:
    x = helper.make_tensor_value_info("x", T.FLOAT, [2, 3])
    x16 = helper.make_tensor_value_info("x16", T.FLOAT16, [2, 3])
    outs = [
        helper.make_tensor_value_info("a", T.FLOAT, None),
        helper.make_tensor_value_info("b", T.FLOAT16, None),
        helper.make_tensor_value_info("c", T.FLOAT, None),
    ]
    nodes = [
        helper.make_node("Relu", ["x"], ["r"], name="relu"),
        # fp32 -> fp16 -> fp32 is lossy: both casts stay
        helper.make_node("Cast", ["x"], ["r16"], to=T.FLOAT16, name="lossy_down"),
        helper.make_node("Cast", ["r16"], ["a"], to=T.FLOAT, name="lossy_up"),
        # fp16 -> fp32 -> fp16 is exact: the pair goes, Neg reads x16 itself
        helper.make_node("Cast", ["x16"], ["w"], to=T.FLOAT, name="widen"),
        helper.make_node("Cast", ["w"], ["w16"], to=T.FLOAT16, name="narrow"),
        helper.make_node("Neg", ["w16"], ["b"], name="neg"),
        # a float32 -> float32 cast inside the model, fp16 after lowering: dropped
        helper.make_node("Cast", ["r"], ["rr"], to=T.FLOAT, name="same"),
        helper.make_node("Sigmoid", ["rr"], ["c"], name="sigmoid"),
    ]
    model = _model(nodes, [x, x16], outs)
    rng = np.random.default_rng(3)
    feeds = {"x": rng.standard_normal((2, 3)).astype(np.float32)}
    feeds["x16"] = rng.standard_normal((2, 3)).astype(np.float16)
    low, _ = assign_precision(import_onnx(model), "float16")
    names = {n.name for n in low.nodes}
    assert {"lossy_down", "lossy_up"} <= names
    assert not names & {"widen", "narrow", "same"}
    (neg,) = [n for n in low.nodes if n.name == "neg"]
    assert neg.inputs == ["x16"]
    _no_cast_chains(low)
    outs_ = Model(low).run(feeds)
    refs = run_onnxruntime(model, feeds)
    np.testing.assert_array_equal(outs_["b"], refs["b"])
    np.testing.assert_array_equal(outs_["a"], refs["a"])
    assert rel_error(outs_["c"], refs["c"])[0] <= 1e-3


# ---------------------------------------------------------------------------- API
def test_precision_names_and_errors() -> None:
    assert P.normalize_precision("FP16") == "float16"
    assert P.normalize_precision("bf16") == "bfloat16"
    assert P.parse_layer_precision("encoder.*attention:fp32") == ("encoder.*attention", "float32")
    assert P.parse_layer_precision("a:b:tf32") == ("a:b", "tf32")
    with pytest.raises(EcoinferError, match="unknown precision 'int8'"):
        P.normalize_precision("int8")
    with pytest.raises(EcoinferError, match="NAME_REGEX:PRECISION"):
        P.parse_layer_precision("attention")
    g = Graph()
    with pytest.raises(EcoinferError, match="not a valid regex"):
        assign_precision(g, "fp16", [("(", "fp32")])


def test_convert_tensor_saturates_and_keeps_specials() -> None:
    t = torch.tensor([-3.4e38, 1e5, -float("inf"), float("nan"), 1e-12, -1e-12, 0.0, 1.5])
    h = P.convert_tensor(t, "float16")
    assert h.dtype == torch.float16
    tiny = torch.finfo(torch.float16).smallest_normal * torch.finfo(torch.float16).eps
    assert h[0] == torch.finfo(torch.float16).min and h[1] == torch.finfo(torch.float16).max
    assert h[2] == -float("inf") and torch.isnan(h[3])
    assert float(h[4]) == pytest.approx(tiny) and float(h[5]) == pytest.approx(-tiny)
    assert h[6] == 0 and h[7] == 1.5
    b = P.convert_tensor(torch.tensor([-3.4028e38, 3.4028e38]), "bfloat16")
    assert torch.isfinite(b).all()
    assert P.convert_tensor(torch.tensor([1, 2]), "float16").dtype == torch.int64


# ---------------------------------------------------------------------------- CUDA
@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")
@pytest.mark.parametrize("precision", ["float16", "bfloat16"])
def test_lowered_models_run_on_cuda(minilm_opt, exported, precision: str) -> None:  # noqa: ANN001
    from models import CASES  # noqa: PLC0415

    graph, feeds, refs = minilm_opt
    low, _ = assign_precision(graph, precision)
    _check(Model(low).run(feeds, device="cuda"), refs, TOLERANCE[precision], "MiniLM cuda")
    path = exported("resnet", True)
    feeds = numpy_feeds(CASES["resnet"].inputs(2))
    graph, _ = optimize(import_onnx(path), OptimizeConfig(level=2))
    low, _ = assign_precision(graph, precision)
    refs = run_onnxruntime(path, feeds)
    _check(Model(low).run(feeds, device="cuda"), refs, TOLERANCE[precision], "ResNet cuda")
