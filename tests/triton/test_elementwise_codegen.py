"""Generated FusedElementwise kernels against the torch reference (the body run op by op).

Runs under Triton's CPU interpreter (tests/triton/conftest.py sets TRITON_INTERPRET=1); with
TRITON_INTERPRET=0 on a machine with CUDA the same tests run the compiled kernels on the GPU.
References are computed in float32; tolerances are relative L2 per dtype.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from helpers import rel_error
from onnx import TensorProto as T
from onnx import helper, numpy_helper

from ecoinfer.frontend.onnx import import_onnx
from ecoinfer.ir.graph import Graph, Node, Value
from ecoinfer.kernels.runner import ReferenceRunner
from ecoinfer.kernels.triton import elementwise as ew
from ecoinfer.passes import OptimizeConfig, optimize
from ecoinfer.tune.tactics import BuildInfo, TensorInfo, tactics_for

INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"
# without CUDA and without the interpreter (test_compile_sm90.py's pass) launches on CPU
# tensors are compiled for sm_90, not run
DEVICE = torch.device("cuda" if not INTERPRET and torch.cuda.is_available() else "cpu")
BUILD = BuildInfo(device=DEVICE, precision="float32")

TOL = {torch.float32: 1e-5, torch.float16: 1e-2, torch.bfloat16: 1e-2}
FLOATS = [torch.float32, torch.float16, torch.bfloat16]
ONNX_ELEM = {torch.float32: T.FLOAT, torch.int64: T.INT64, torch.bool: T.BOOL}


# ------------------------------------------------------------------------------ helpers
def _fused_from_onnx(nodes, inputs, inits=(), opset: int = 18) -> Node:  # noqa: ANN001
    """The FusedElementwise node the optimizer makes of a small ONNX model (one output y)."""
    g = helper.make_graph(
        nodes, "g", inputs, [helper.make_tensor_value_info("y", T.FLOAT, None)], list(inits)
    )
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)], ir_version=10)
    graph = import_onnx(m.SerializeToString())
    opt, _ = optimize(graph, OptimizeConfig(level=2, only=("fuse_elementwise", "dce")))
    fused = [n for n in opt.nodes if n.op_type == "FusedElementwise"]
    assert len(fused) == 1, [n.op_type for n in opt.nodes]
    return fused[0]


def _body(
    nodes: list[Node],
    inputs: list[tuple[str, torch.dtype]],
    outputs: list[str],
    consts: dict[str, torch.Tensor] | None = None,
) -> Graph:
    """A hand-built body (ops the ONNX importer may not take at the test's opset)."""
    return Graph(
        name="body",
        inputs=[Value(n, None, None) for n, _ in inputs],
        outputs=[Value(o) for o in outputs],
        nodes=nodes,
        initializers=dict(consts or {}),
    )


def _reference(body: Graph, xs: list[torch.Tensor]) -> list[torch.Tensor]:
    feeds = {v.name: x.cpu() for v, x in zip(body.inputs, xs)}
    outs = ReferenceRunner(body, "cpu").run(feeds)
    return [outs[o] for o in body.output_names]


def _f32(x: torch.Tensor) -> torch.Tensor:
    return x.float() if x.is_floating_point() else x


def _check(body: Graph, xs: list[torch.Tensor], tol: float | None = None) -> list[torch.Tensor]:
    """Run the generated kernel; compare with the reference run in float32 (values) and in
    the inputs' dtypes (output dtypes and shapes)."""
    kern = ew.FusedElementwise(body)
    outs = kern([x.to(DEVICE) for x in xs])
    same = _reference(body, xs)
    refs = _reference(body, [_f32(x) for x in xs])
    half = next((x.dtype for x in xs if x.dtype in (torch.float16, torch.bfloat16)), None)
    tol = tol if tol is not None else TOL[half or torch.float32]
    assert len(outs) == len(refs)
    for out, ref, ref_dt in zip(outs, refs, same):
        out = out.cpu()
        assert out.shape == ref_dt.shape, (out.shape, ref_dt.shape)
        assert out.dtype == ref_dt.dtype, (out.dtype, ref_dt.dtype)
        if not out.is_floating_point():
            # masks and integers: exact (half operands are rounded before discrete ops)
            assert torch.equal(out, ref.to(out.dtype)), (out, ref)
            continue
        o, r = out.double().numpy(), ref.double().numpy()
        nan = np.isnan(r)
        assert (np.isnan(o) == nan).all(), "NaN positions differ"
        rel, max_abs = rel_error(o[~nan], r[~nan])
        assert rel <= tol, f"rel L2 {rel:.3e} > {tol:g} (max abs {max_abs:.3e})"
    return outs


def _rand(shape: tuple[int, ...], dtype: torch.dtype, lo: float = -3.0, hi: float = 3.0):
    g = torch.Generator().manual_seed(hash((shape, lo, hi)) % 2**31)
    return (torch.rand(shape, generator=g) * (hi - lo) + lo).to(dtype)


# ------------------------------------------------------------------------------ chains
@pytest.mark.parametrize("dtype", FLOATS, ids=str)
def test_gelu_erf_chain_with_row_vector_bias(dtype: torch.dtype) -> None:
    # the BERT FFN chain the optimizer leaves when the GEMM epilogue does not take it:
    # (h + b) * 0.5 * (1 + erf((h + b) / sqrt2)), bias a row vector over [B, S, 37]
    nodes = [
        helper.make_node("Add", ["h", "b"], ["hb"]),
        helper.make_node("Div", ["hb", "sqrt2"], ["d"]),
        helper.make_node("Erf", ["d"], ["e"]),
        helper.make_node("Add", ["e", "one"], ["e1"]),
        helper.make_node("Mul", ["hb", "e1"], ["m"]),
        helper.make_node("Mul", ["m", "half"], ["y"]),
    ]
    inits = [
        numpy_helper.from_array(np.array(np.sqrt(2.0), np.float32), "sqrt2"),
        numpy_helper.from_array(np.array(1.0, np.float32), "one"),
        numpy_helper.from_array(np.array(0.5, np.float32), "half"),
    ]
    ins = [
        helper.make_tensor_value_info("h", T.FLOAT, ["b", "s", 37]),
        helper.make_tensor_value_info("b", T.FLOAT, [37]),
    ]
    node = _fused_from_onnx(nodes, ins, inits)
    body = node.attrs["body"]
    assert [n.op_type for n in body.nodes] == ["Add", "Div", "Erf", "Add", "Mul", "Mul"]
    h, b = _rand((2, 5, 37), dtype), _rand((37,), dtype)
    _check(body, [h, b])
    # the bias is the only strided (broadcast) input: one index, no per-dim split of h
    src = ew.FusedElementwise(body).source_for([h, b])
    assert "x0 = tl.load(in0 + offs" in src


@pytest.mark.parametrize("dtype", FLOATS, ids=str)
def test_gelu_tanh_chain(dtype: torch.dtype) -> None:
    # 0.5 * x * (1 + tanh(sqrt(2/pi) * (x + 0.044715 * x^3)))
    c = {
        "c3": torch.tensor(3.0),
        "ck": torch.tensor(0.044715),
        "cs": torch.tensor(0.7978845608028654),
        "c1": torch.tensor(1.0),
        "ch": torch.tensor(0.5),
    }
    nodes = [
        Node("Pow", ["x0", "c3"], ["p"]),
        Node("Mul", ["p", "ck"], ["pk"]),
        Node("Add", ["x0", "pk"], ["s"]),
        Node("Mul", ["s", "cs"], ["ss"]),
        Node("Tanh", ["ss"], ["t"]),
        Node("Add", ["t", "c1"], ["t1"]),
        Node("Mul", ["x0", "t1"], ["m"]),
        Node("Mul", ["m", "ch"], ["y0"]),
    ]
    body = _body(nodes, [("x0", dtype)], ["y0"], c)
    _check(body, [_rand((3, 41), dtype, -5, 5)])


@pytest.mark.parametrize("dtype", FLOATS, ids=str)
def test_channel_broadcasts_and_one_element_constant(dtype: torch.dtype) -> None:
    # sigmoid((x * s[1,C,1,1] + t[C,1,1]) * two[1]) on [N, C, H, W]; `two` has shape [1], so
    # (as in torch) it promotes a half x to float32
    nodes = [
        helper.make_node("Mul", ["x", "s"], ["xs"]),
        helper.make_node("Add", ["xs", "t"], ["xt"]),
        helper.make_node("Mul", ["two", "xt"], ["x2"]),
        helper.make_node("Sigmoid", ["x2"], ["y"]),
    ]
    inits = [
        numpy_helper.from_array(np.random.default_rng(1).standard_normal((1, 3, 1, 1)).astype(np.float32), "s"),
        numpy_helper.from_array(np.random.default_rng(2).standard_normal((3, 1, 1)).astype(np.float32), "t"),
        numpy_helper.from_array(np.array([2.0], np.float32), "two"),
    ]  # fmt: skip
    node = _fused_from_onnx(
        nodes, [helper.make_tensor_value_info("x", T.FLOAT, ["n", 3, 5, 7])], inits
    )
    body = node.attrs["body"]
    x = _rand((2, 3, 5, 7), dtype)
    s = _rand((1, 3, 1, 1), dtype)
    t = _rand((3, 1, 1), dtype)
    _check(body, [x, s, t])
    src = ew.FusedElementwise(body).source_for([x, s, t])
    assert "in1_s1" in src and "in1_s0" not in src  # only the channel stride is walked


@pytest.mark.parametrize("dtype", FLOATS, ids=str)
def test_scalar_input_and_transposed_input(dtype: torch.dtype) -> None:
    # y = relu(a * s + b^T): s is a 0-dim runtime input (one scalar load), b a transposed view
    body = _body(
        [Node("Mul", ["x0", "x1"], ["m"]), Node("Add", ["m", "x2"], ["a"]), Node("Relu", ["a"], ["y0"])],
        [("x0", dtype), ("x1", dtype), ("x2", dtype)],
        ["y0"],
    )  # fmt: skip
    a = _rand((6, 11), dtype)
    s = torch.tensor(1.7, dtype=dtype)
    b = _rand((11, 6), dtype).t()
    _check(body, [a, s, b])
    src = ew.FusedElementwise(body).source_for([a, s, b])
    assert "x1 = tl.load(in1)" in src


def test_minilm_attention_mask_chain() -> None:
    # the mask chain of the MiniLM dynamo export after level-2 fusion:
    # where((pos >= 0) & True & attention_mask, 0, float32 min): [1,1,S,1] x [B,1,1,S]
    nodes = [
        helper.make_node("GreaterOrEqual", ["pos", "zero"], ["ge"]),
        helper.make_node("And", ["tru", "ge"], ["a1"]),
        helper.make_node("And", ["a1", "am"], ["a2"]),
        helper.make_node("Where", ["a2", "fz", "fmin"], ["y"]),
    ]
    inits = [
        numpy_helper.from_array(np.array(0, np.int64), "zero"),
        numpy_helper.from_array(np.array(True), "tru"),
        numpy_helper.from_array(np.array(0.0, np.float32), "fz"),
        numpy_helper.from_array(np.array(np.finfo(np.float32).min, np.float32), "fmin"),
    ]
    ins = [
        helper.make_tensor_value_info("pos", T.INT64, [1, 1, "s", 1]),
        helper.make_tensor_value_info("am", T.BOOL, ["b", 1, 1, "s"]),
    ]
    body = _fused_from_onnx(nodes, ins, inits).attrs["body"]
    pos = torch.arange(-3, 10).reshape(1, 1, 13, 1)
    am = torch.rand(3, 1, 1, 13, generator=torch.Generator().manual_seed(0)) > 0.3
    (out,) = _check(body, [pos, am])
    ref = _reference(body, [pos, am])[0]
    assert torch.equal(out.cpu(), ref)  # bit exact, including the float32 minimum


def test_two_outputs_and_bool_output() -> None:
    # y0 = x * 2 + 1 (float), y1 = (x * 2 + 1) > 0 (bool): one kernel writes both
    body = _body(
        [
            Node("Mul", ["x0", "c0"], ["m"]),
            Node("Add", ["m", "c1"], ["y0"]),
            Node("Greater", ["y0", "c2"], ["y1"]),
        ],
        [("x0", torch.float16)],
        ["y0", "y1"],
        {"c0": torch.tensor(2.0), "c1": torch.tensor(1.0), "c2": torch.tensor(0.0)},
    )
    outs = _check(body, [_rand((4, 33), torch.float16)])
    assert [o.dtype for o in outs] == [torch.float16, torch.bool]


# ------------------------------------------------------------------------------ op sweeps
# (op, attrs, input range): each op runs on a [5, 23] input, its result times a constant
_UNARY = [
    ("Exp", {}, (-4, 4)),
    ("Log", {}, (0.05, 6)),
    ("Sqrt", {}, (0.0, 6)),
    ("Reciprocal", {}, (0.5, 4)),
    ("Floor", {}, (-6, 6)),
    ("Ceil", {}, (-6, 6)),
    ("Round", {}, (-6, 6)),
    ("Sin", {}, (-4, 4)),
    ("Cos", {}, (-4, 4)),
    ("Tan", {}, (-1.2, 1.2)),
    ("Sinh", {}, (-3, 3)),
    ("Cosh", {}, (-3, 3)),
    ("Asinh", {}, (-20, 20)),
    ("Acosh", {}, (1, 20)),
    ("Atanh", {}, (-0.95, 0.95)),
    ("Erf", {}, (-3, 3)),
    ("Tanh", {}, (-4, 4)),
    ("Sigmoid", {}, (-8, 8)),
    ("Softplus", {}, (-20, 20)),
    ("Softsign", {}, (-5, 5)),
    ("HardSwish", {}, (-5, 5)),
    ("Mish", {}, (-5, 5)),
    ("Abs", {}, (-3, 3)),
    ("Neg", {}, (-3, 3)),
    ("Sign", {}, (-3, 3)),
    ("Relu", {}, (-3, 3)),
    ("LeakyRelu", {"alpha": 0.1}, (-3, 3)),
    ("Elu", {"alpha": 0.7}, (-3, 3)),
    ("Celu", {"alpha": 1.3}, (-3, 3)),
    ("Selu", {}, (-3, 3)),
    ("HardSigmoid", {"alpha": 0.3, "beta": 0.4}, (-5, 5)),
    ("ThresholdedRelu", {"alpha": 0.5}, (-3, 3)),
    ("Gelu", {}, (-4, 4)),
    ("Gelu", {"approximate": "tanh"}, (-4, 4)),
    ("Swish", {"alpha": 1.5}, (-5, 5)),
    ("Shrink", {"lambd": 0.6, "bias": 0.2}, (-3, 3)),
]


@pytest.mark.parametrize("dtype", FLOATS, ids=str)
@pytest.mark.parametrize(
    ("op", "attrs", "rng"), _UNARY, ids=[f"{o}{'_' + str(a) if a else ''}" for o, a, _ in _UNARY]
)
def test_unary_ops(op: str, attrs: dict, rng: tuple[float, float], dtype: torch.dtype) -> None:
    body = _body(
        [Node(op, ["x0"], ["u"], dict(attrs)), Node("Mul", ["u", "c0"], ["y0"])],
        [("x0", dtype)],
        ["y0"],
        {"c0": torch.tensor(1.5)},
    )
    _check(body, [_rand((5, 23), dtype, *rng)])


def test_round_half_to_even_and_nan() -> None:
    x = torch.tensor([0.5, 1.5, 2.5, -0.5, -1.5, 0.49999997, 2.4, -2.6, 1e8, float("nan")])
    body = _body(
        [Node("Round", ["x0"], ["r"]), Node("Abs", ["r"], ["y0"])], [("x0", x.dtype)], ["y0"]
    )
    out = ew.FusedElementwise(body)([x.to(DEVICE)])[0].cpu()
    ref = _reference(body, [x])[0]
    assert torch.equal(out[:-1], ref[:-1]) and torch.isnan(out[-1])


_BINARY = ["Add", "Sub", "Mul", "Div", "Max", "Min", "Sum", "Mean", "PRelu", "Pow"]


@pytest.mark.parametrize("dtype", FLOATS, ids=str)
@pytest.mark.parametrize("op", _BINARY)
def test_binary_ops_with_broadcast(op: str, dtype: torch.dtype) -> None:
    body = _body(
        [Node(op, ["x0", "x1"], ["b"]), Node("Add", ["b", "c0"], ["y0"])],
        [("x0", dtype), ("x1", dtype)],
        ["y0"],
        {"c0": torch.tensor(0.25)},
    )
    lo = 0.5 if op == "Pow" else -3.0  # Pow of negative bases with real exponents is NaN
    # PRelu broadcasts its slope one way only (into x's shape)
    a = _rand((4, 1, 9), dtype, lo, 3.0)
    b = _rand((9,) if op == "PRelu" else (3, 1), dtype, -2.0, 2.0)
    if op == "Div":
        b = torch.where(b.abs() < 0.3, torch.ones_like(b), b)
    _check(body, [a, b])


@pytest.mark.parametrize("exponent", [2.0, 3.0, 0.5, -1.0, 1.7])
def test_pow_constant_exponents_and_negative_bases(exponent: float) -> None:
    body = _body(
        [Node("Pow", ["x0", "c0"], ["y0"])],
        [("x0", torch.float32)],
        ["y0"],
        {"c0": torch.tensor(exponent)},
    )
    lo = -3.0 if exponent == int(exponent) else 0.1
    _check(body, [_rand((7, 13), torch.float32, lo, 3.0)])


@pytest.mark.parametrize("dtype", FLOATS, ids=str)
def test_where_clip_compare_cast(dtype: torch.dtype) -> None:
    # y = where(x > t, clip(x, -1, 2), cast(cast(x, int32), float)) with comparisons on
    # a half input rounding to the half dtype first
    body = _body(
        [
            Node("Greater", ["x0", "x1"], ["g"]),
            Node("Clip", ["x0", "lo", "hi"], ["cl"]),
            Node("Cast", ["x0"], ["xi"], {"to": 6}),
            Node("Cast", ["xi"], ["xf"], {"to": 1}),
            Node("Where", ["g", "cl", "xf"], ["y0"]),
        ],
        [("x0", dtype), ("x1", dtype)],
        ["y0"],
        {"lo": torch.tensor(-1.0), "hi": torch.tensor(2.0)},
    )
    _check(body, [_rand((3, 4, 10), dtype, -4, 4), _rand((10,), dtype)])


def test_clip_bounds_as_runtime_inputs() -> None:
    body = _body([Node("Clip", ["x0", "x1", "x2"], ["c"]), Node("Neg", ["c"], ["y0"])],
                 [("x0", torch.float32), ("x1", torch.float32), ("x2", torch.float32)], ["y0"])  # fmt: skip
    x = _rand((5, 7), torch.float32)
    _check(body, [x, torch.tensor(-0.5), torch.tensor([1.25])])


def test_logic_isnan_isinf_equal() -> None:
    x = torch.tensor([[1.0, float("nan"), float("inf"), -float("inf"), 0.0, 2.0, -2.0]]).repeat(
        3, 1
    )
    body = _body(
        [
            Node("IsNaN", ["x0"], ["n"]),
            Node("IsInf", ["x0"], ["i"], {"detect_negative": 0}),
            Node("Or", ["n", "i"], ["o"]),
            Node("Equal", ["x0", "c0"], ["e"]),
            Node("Xor", ["o", "e"], ["xo"]),
            Node("Not", ["xo"], ["y0"]),
        ],
        [("x0", torch.float32)],
        ["y0"],
        {"c0": torch.tensor(2.0)},
    )
    _check(body, [x])


@pytest.mark.parametrize("dtype", [torch.int32, torch.int64], ids=str)
def test_integer_arithmetic(dtype: torch.dtype) -> None:
    # trunc division, both Mod flavours, bitwise ops and int Max on negative operands
    a = torch.tensor([[7, -7, 7, -7, 5, -9, 0, 12]], dtype=dtype).repeat(2, 1)
    b = torch.tensor([[2, 2, -2, -2, 3, 4, 5, -5]], dtype=dtype)
    body = _body(
        [
            Node("Div", ["x0", "x1"], ["q"]),
            Node("Mod", ["x0", "x1"], ["r"]),
            Node("Mod", ["x0", "x1"], ["f"], {"fmod": 1}),
            Node("Mul", ["q", "c0"], ["q3"]),
            Node("Add", ["q3", "r"], ["s"]),
            Node("BitwiseXor", ["s", "f"], ["x"]),
            Node("Max", ["x", "x1"], ["y0"]),
        ],
        [("x0", dtype), ("x1", dtype)],
        ["y0"],
        {"c0": torch.tensor(3, dtype=dtype)},
    )
    _check(body, [a, b])


def test_half_input_rounded_before_discrete_ops() -> None:
    # x * 3 computed in float32 registers differs from the float16 product; Floor must see
    # the float16 value the reference sees
    x = torch.tensor([0.1, 0.3, 0.7, 1.1, 2.9, 33.3, -0.7], dtype=torch.float16)
    body = _body(
        [Node("Mul", ["x0", "c0"], ["m"]), Node("Floor", ["m"], ["f"]), Node("Cast", ["f"], ["y0"], {"to": 7})],
        [("x0", torch.float16)], ["y0"], {"c0": torch.tensor(3.0)},
    )  # fmt: skip
    _check(body, [x])


# ------------------------------------------------------------------------------ the tactic
def _node_and_infos(body: Graph, xs: list[torch.Tensor]) -> tuple[Node, list[TensorInfo]]:
    node = Node(
        "FusedElementwise",
        [f"i{k}" for k in range(len(xs))],
        ["y"],
        {"body": body},
        "f",
        "ecoinfer",
    )
    return node, [TensorInfo(tuple(x.shape), x.dtype) for x in xs]  # fmt: skip


def test_tactic_runs_every_config() -> None:
    body = _body([Node("Mul", ["x0", "x1"], ["m"]), Node("Tanh", ["m"], ["y0"])],
                 [("x0", torch.float16), ("x1", torch.float16)], ["y0"])  # fmt: skip
    xs = [_rand((3, 7, 19), torch.float16), _rand((19,), torch.float16)]
    node, infos = _node_and_infos(body, xs)
    cfgs = ew.configs(node, node.attrs, infos, BUILD)
    assert cfgs
    ref = _reference(body, [x.float() for x in xs])[0]
    for cfg in cfgs:
        run = ew.make(node, node.attrs, infos, cfg, BUILD)
        assert run is not None, cfg
        out = run([x.to(DEVICE) for x in xs])[0].cpu()
        assert rel_error(out.double().numpy(), ref.double().numpy())[0] <= 1e-2


@pytest.mark.parametrize(
    "case", ["unsupported_op", "float_mod", "float64", "outputs_of_two_shapes", "cpu_without_interpreter"]
)  # fmt: skip
def test_tactic_declines(case: str, monkeypatch: pytest.MonkeyPatch) -> None:
    x = _rand((4, 5), torch.float32)
    build = BUILD
    if case == "unsupported_op":  # Atan has no core Triton op: the reference stays
        body = _body(
            [Node("Atan", ["x0"], ["a"]), Node("Neg", ["a"], ["y0"])], [("x0", x.dtype)], ["y0"]
        )
    elif case == "float_mod":
        body = _body([Node("Mod", ["x0", "x0"], ["y0"], {"fmod": 1})], [("x0", x.dtype)], ["y0"])
    elif case == "float64":
        x = x.double()
        body = _body([Node("Neg", ["x0"], ["y0"])], [("x0", x.dtype)], ["y0"])
    elif case == "outputs_of_two_shapes":
        body = _body(
            [Node("Neg", ["x0"], ["y0"]), Node("Add", ["x0", "x1"], ["y1"])],
            [("x0", x.dtype), ("x1", x.dtype)], ["y0", "y1"],
        )  # fmt: skip
        node, infos = _node_and_infos(body, [x, _rand((3, 1, 5), x.dtype)])
        assert ew.make(node, node.attrs, infos, {}, build) is None
        return
    else:
        monkeypatch.setenv("TRITON_INTERPRET", "0")
        build = BuildInfo(device=torch.device("cpu"), precision="float32")
        body = _body([Node("Neg", ["x0"], ["y0"])], [("x0", x.dtype)], ["y0"])
    node, infos = _node_and_infos(body, [x])
    assert ew.make(node, node.attrs, infos, {}, build) is None


def test_registered_for_cuda_only() -> None:
    names = [t.name for t in tactics_for("FusedElementwise", "ecoinfer", "cuda", "float16")]
    assert "triton_codegen" in names
    assert "triton_codegen" not in [
        t.name for t in tactics_for("FusedElementwise", "ecoinfer", "cpu", "float32")
    ]


def test_kernels_cached_by_source() -> None:
    def make_body() -> Graph:
        return _body(
            [Node("Exp", ["x0"], ["e"]), Node("Neg", ["e"], ["y0"])],
            [("x0", torch.float32)],
            ["y0"],
        )

    x = _rand((8, 8), torch.float32)
    k1, k2 = ew.FusedElementwise(make_body()), ew.FusedElementwise(make_body())
    s1, s2 = k1.source_for([x]), k2.source_for([x])
    assert s1 == s2
    assert ew.compile_source(s1) is ew.compile_source(s2)
    # another dtype is another kernel
    assert k1.source_for([x.half()]) != s1
    k1([x.to(DEVICE)])
    assert k1.sources() == [s1]


def test_merge_dims() -> None:
    # x [2,3,4,5] contiguous, bias [1,3,1,1]: H and W merge, N and C stay apart
    shape, strides = ew._merge_dims((2, 3, 4, 5), [[60, 20, 5, 1], [0, 1, 0, 0]])
    assert shape == [2, 3, 20] and strides == [[60, 20, 1], [0, 1, 0]]
    # everything contiguous: one dimension
    assert ew._merge_dims((2, 1, 3, 4), [[12, 12, 4, 1]]) == ([24], [[1]])


def test_empty_and_zero_dim() -> None:
    body = _body(
        [Node("Exp", ["x0"], ["e"]), Node("Neg", ["e"], ["y0"])], [("x0", torch.float32)], ["y0"]
    )
    kern = ew.FusedElementwise(body)
    assert kern([torch.empty(0, 3, device=DEVICE)])[0].shape == (0, 3)
    _check(body, [torch.tensor(0.5)])


# ------------------------------------------------------------------------------ a real model
@pytest.mark.slow
def test_every_fused_node_of_optimized_minilm(minilm) -> None:  # noqa: ANN001
    """Each FusedElementwise node of the level-2 MiniLM graph, at batch 2 / seq 7, through the
    registered tactic, against the reference kernel."""
    from ecoinfer.tune.tactics import all_tactics  # noqa: PLC0415

    path, _ = minilm
    graph, _ = optimize(import_onnx(path), OptimizeConfig(level=2))
    dims = {"batch": 2, "seq": 7}
    spec = next(
        t for t in all_tactics()[("ecoinfer", "FusedElementwise")] if t.name == "triton_codegen"
    )
    gen = torch.Generator().manual_seed(0)
    seen = 0
    for node in graph.nodes:
        if node.op_type != "FusedElementwise":
            continue
        xs = []
        for name in node.inputs:
            if name in graph.initializers:
                xs.append(graph.initializers[name])
                continue
            v = graph.values[name]
            shape = tuple(dims.get(d, d) if isinstance(d, str) else d for d in v.shape)
            if v.dtype == "bool":
                xs.append(torch.rand(shape, generator=gen) > 0.3)
            elif v.dtype == "int64":
                xs.append(torch.randint(-3, 10, shape, generator=gen))
            else:
                xs.append(torch.randn(shape, generator=gen))
        infos = [TensorInfo(tuple(x.shape), x.dtype) for x in xs]
        run = spec.make(node, node.attrs, infos, {}, BUILD)
        assert run is not None, node.name
        out = run([x.to(DEVICE) for x in xs])
        ref = _reference(node.attrs["body"], xs)
        for o, r in zip(out, ref):
            assert o.dtype == r.dtype and o.shape == r.shape
            assert rel_error(o.cpu().double().numpy(), r.double().numpy())[0] <= 1e-5
        seen += 1
    assert seen >= 1  # the attention mask chain (the embeddings' adds are EmbedLayerNorm's)
