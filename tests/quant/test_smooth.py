"""SmoothQuant-style smoothing: exact in float on a hand-built LayerNorm -> GEMM model, and its
effect on full-INT8 all-MiniLM-L6-v2 (real weights) against FP32 on held-out sentences."""

from __future__ import annotations

import time

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from test_quantize import CAL_MODULES, HELD_MODULES, _mean_cosine, _pooled, stdlib_sentences

from ecoinfer.api import Model
from ecoinfer.frontend.onnx import import_onnx
from ecoinfer.ir.graph import Graph
from ecoinfer.passes.manager import OptimizeConfig, optimize
from ecoinfer.quant.quantize import calibrate, quantize_graph
from ecoinfer.quant.smooth import (
    channel_absmax,
    smooth_graph,
    smoothing_factors,
    smoothing_groups,
)

K, N, F = 8, 6, 12


def _ln_model(seed: int = 0, gemm_k: bool = False) -> onnx.ModelProto:
    """A post-LN transformer block in miniature:

    h  = LayerNorm(x)                      read by q, k (two GEMMs) and the residual of o
    q  = h @ Wq + bq ; k = h @ Wk + bk     (gemm_k: x is 2-D and k = Gemm(h, WkT, transB=1))
    o  = (q * k) @ Wo + bo + h             (the residual reads h: needs the restored h)
    r  = relu(o @ W1 + b1) ; y1 = r @ W2   (Relu producer: homogeneous, smoothable)
    g  = gelu(o @ W3 + b3) ; y2 = g @ W4   (Gelu producer: not smoothable)
    """
    rng = np.random.default_rng(seed)
    gamma = rng.uniform(0.5, 1.5, K).astype(np.float32)
    gamma[2] = 25.0  # an outlier channel, as MiniLM's LayerNorms have
    beta = rng.normal(size=K).astype(np.float32)
    inits = {"gamma": gamma, "beta": beta}
    for name, shape in {
        "Wq": (K, N), "bq": (N,), "Wk": (K, N), "bk": (N,), "Wo": (N, K), "bo": (K,),
        "W1": (K, F), "b1": (F,), "W2": (F, 3), "W3": (K, F), "b3": (F,), "W4": (F, 3),
    }.items():  # fmt: skip
        inits[name] = rng.normal(size=shape).astype(np.float32)
    if gemm_k:
        inits["WkT"] = np.ascontiguousarray(inits.pop("Wk").T)
    dims = ["batch"] if gemm_k else ["batch", "seq"]
    mk = helper.make_node
    nodes = [
        mk("LayerNormalization", ["x", "gamma", "beta"], ["h"], name="ln", axis=-1),
        mk("MatMul", ["h", "Wq"], ["q0"], name="q_mm"),
        mk("Add", ["q0", "bq"], ["q"], name="q_add"),
        *(
            [mk("Gemm", ["h", "WkT", "bk"], ["k"], name="k_gemm", transB=1)]
            if gemm_k
            else [
                mk("MatMul", ["h", "Wk"], ["k0"], name="k_mm"),
                mk("Add", ["k0", "bk"], ["k"], name="k_add"),
            ]
        ),
        mk("Mul", ["q", "k"], ["qk"], name="qk"),
        mk("MatMul", ["qk", "Wo"], ["o0"], name="o_mm"),
        mk("Add", ["o0", "bo"], ["o1"], name="o_add"),
        mk("Add", ["o1", "h"], ["o"], name="o_res"),
        mk("MatMul", ["o", "W1"], ["r0"], name="fc1_mm"),
        mk("Add", ["r0", "b1"], ["r1"], name="fc1_add"),
        mk("Relu", ["r1"], ["r"], name="fc1_relu"),
        mk("MatMul", ["r", "W2"], ["y1"], name="fc2_mm"),
        mk("MatMul", ["o", "W3"], ["g0"], name="fc3_mm"),
        mk("Add", ["g0", "b3"], ["g1"], name="fc3_add"),
        mk("Gelu", ["g1"], ["g"], name="fc3_gelu"),
        mk("MatMul", ["g", "W4"], ["y2"], name="fc4_mm"),
    ]
    graph = helper.make_graph(
        nodes,
        "ln_block",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [*dims, K])],
        [
            helper.make_tensor_value_info("y1", TensorProto.FLOAT, [*dims, 3]),
            helper.make_tensor_value_info("y2", TensorProto.FLOAT, [*dims, 3]),
        ],
        [numpy_helper.from_array(v, k) for k, v in inits.items()],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)])


def _feeds(rng: np.random.Generator, n: int, rank: int = 3) -> list[dict[str, np.ndarray]]:
    shape = (2, 5, K)[3 - rank :]
    return [{"x": (rng.normal(size=shape) * 3 + 1).astype(np.float32)} for _ in range(n)]


def _rel_err(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).max() / np.abs(b).max())


def _by_producer_op(graph, groups):  # noqa: ANN001, ANN202
    prod = {n.outputs[0]: n for n in graph.nodes if n.outputs}
    return {prod[g.tensor].op_type: g for g in groups}


@pytest.mark.parametrize(
    ("alpha", "packed", "gemm_k", "explicit"),
    [(0.5, True, False, False), (0.8, False, False, True), (0.5, False, True, True)],
)
def test_smoothing_is_exact_in_float(
    alpha: float, packed: bool, gemm_k: bool, explicit: bool
) -> None:
    cfg = OptimizeConfig(level=2, disable=() if packed else ("pack_qkv",))
    graph, _ = optimize(import_onnx(_ln_model(gemm_k=gemm_k)), cfg)
    rank = 2 if gemm_k else 3
    hist = graph.op_histogram()
    assert hist["LayerNormalization"] == 1 and hist["ecoinfer.FusedGemm"] >= (6 if packed else 7)
    if gemm_k:  # the k projection keeps its [N, K] weight
        assert any(n.attrs.get("trans_b") for n in graph.nodes)

    groups = smoothing_groups(graph)
    # the LayerNorm (two GEMMs, residual reader restored) and the Relu GEMM; never the Gelu one
    kinds = _by_producer_op(graph, groups)
    assert set(kinds) == {"LayerNormalization", "FusedGemm"}
    # q and k: one packed GEMM, or two GEMMs sharing the factors
    assert len(kinds["LayerNormalization"].gemms) == (1 if packed else 2)
    assert kinds["LayerNormalization"].others  # the residual of o
    assert kinds["FusedGemm"].producer.attrs.get("activation") == "Relu"
    assert not kinds["FusedGemm"].needs_restore
    # without compensation the LayerNorm (its output is also a residual) is declined
    assert [g.producer.op_type for g in smoothing_groups(graph, compensate=False)] == ["FusedGemm"]

    # explicit: also the inputs no producer absorbs 1/s for, smoothed by a Mul(A, 1/s): q*k
    # (an elementwise Mul), o (a GEMM with a residual, read by two GEMMs) and the Gelu output
    every = smoothing_groups(graph, explicit=True)
    assert every[:2] == groups
    assert [len(g.gemms) for g in every[2:]] == [1, 2, 1]
    assert all(g.explicit and not g.needs_restore for g in every[2:])
    gelu = every[-1].producer
    assert gelu is not None and gelu.attrs.get("activation") == "Gelu"

    rng = np.random.default_rng(1)
    stats = channel_absmax(graph, _feeds(rng, 3, rank))
    assert set(stats) == {g.tensor for g in every}
    sgraph, done = smooth_graph(graph, stats, alpha=alpha, explicit=explicit)
    assert len(done) == (5 if explicit else 2)
    assert sum(d.explicit for d in done) == (3 if explicit else 0)
    ln = next(d for d in done if d.restored)
    assert ln.act_absmax_after < ln.act_absmax_before  # the outlier channel shrank
    # one restore, for the LN, and one Mul per explicit group
    assert sgraph.op_histogram()["Mul"] == hist.get("Mul", 0) + 1 + (3 if explicit else 0)

    # the weights really changed; the float outputs did not
    assert {n for n in sgraph.initializers} != {n for n in graph.initializers}
    base, smoothed = Model(graph), Model(sgraph)
    for feeds in _feeds(np.random.default_rng(2), 3, rank):
        want, got = base.run(feeds), smoothed.run(feeds)
        for name in ("y1", "y2"):
            assert _rel_err(got[name], want[name]) <= 1e-5, name

    # the GEMM inputs the quantizer sees now have a smaller range (for the LN, the outlier
    # channel was pulled toward the others)
    after = channel_absmax(
        sgraph, _feeds(np.random.default_rng(1), 3, rank), [ln.tensor + "_smoothed"]
    )
    a = next(iter(after.values()))
    b = stats[ln.tensor]
    assert a.max() / np.median(a) < b.max() / np.median(b)


def test_smoothing_factors_and_no_stats() -> None:
    s = smoothing_factors(np.array([4.0, 0.0, 9.0]), np.array([1.0, 2.0, 0.0]), alpha=0.5)
    np.testing.assert_allclose(s, [2.0, 1.0, 1.0])
    s = smoothing_factors(np.array([8.0]), np.array([2.0]), alpha=0.75)
    np.testing.assert_allclose(s, [8.0**0.75 / 2.0**0.25])
    graph, _ = optimize(import_onnx(_ln_model()), OptimizeConfig(level=2))
    same, done = smooth_graph(graph, {})  # nothing measured: nothing smoothed
    assert done == [] and [n.op_type for n in same.nodes] == [n.op_type for n in graph.nodes]
    with pytest.raises(ValueError, match="alpha"):
        smooth_graph(graph, {}, alpha=1.5)


def test_smoothed_int8_on_tiny_model_runs() -> None:
    graph, _ = optimize(import_onnx(_ln_model()), OptimizeConfig(level=2))
    calib = _feeds(np.random.default_rng(3), 4)
    sgraph, _ = smooth_graph(graph, channel_absmax(graph, calib))
    qgraph = quantize_graph(sgraph, calibrate(sgraph, calib, method="minmax"))
    feeds = _feeds(np.random.default_rng(4), 1)[0]
    y = Model(qgraph).run(feeds)["y1"]
    ref = Model(graph).run(feeds)["y1"]
    assert np.isfinite(y).all() and _rel_err(y, ref) < 0.2


# ------------------------------------------------------------------------ all-MiniLM-L6-v2
def test_minilm_smoothed_int8(minilm_export) -> None:  # noqa: ANN001
    import ecoinfer.models.minilm as mm  # noqa: PLC0415

    t0 = time.perf_counter()
    path, _ = minilm_export(True)
    tok = mm.load_minilm_tokenizer()
    graph, _ = optimize(import_onnx(str(path)), OptimizeConfig(level=2))
    calib_sents = stdlib_sentences(CAL_MODULES, 256)
    held_sents = stdlib_sentences(HELD_MODULES, 128)

    def batches(sents: list[str]) -> list[dict[str, np.ndarray]]:
        return [mm.sample_inputs(sents[i : i + 32], tok) for i in range(0, len(sents), 32)]

    calib, held = batches(calib_sents), batches(held_sents)
    fp32 = Model(graph)
    refs = [_pooled(fp32, f) for f in held]

    def int8_cosine(g: Graph) -> float:  # full INT8, entropy calibration
        amax = calibrate(g, calib, method="entropy")
        return _mean_cosine(Model(quantize_graph(g, amax)), held, refs)

    base = int8_cosine(graph)
    stats = channel_absmax(graph, calib)
    results: dict[tuple[float, bool], float] = {}
    for alpha, explicit in ((0.5, False), (0.7, False), (0.8, True)):
        sgraph, done = smooth_graph(graph, stats, alpha=alpha, explicit=explicit)
        # the embedding LN and the 11 LNs of the blocks that feed GEMMs (the last one is the
        # output); explicit: also the 6 GELU outputs, 6 merged attention heads, the pooler input
        assert len(done) == (25 if explicit else 12)
        assert sum(d.restored for d in done) == 12  # every LN output is also a residual
        # exact in float: the smoothed FP32 model gives the same embeddings
        assert _mean_cosine(Model(sgraph), held[:1], refs[:1]) > 1 - 1e-6
        results[alpha, explicit] = int8_cosine(sgraph)
    print(
        f"\nMiniLM full INT8 (entropy) vs FP32, mean cosine of pooled embeddings over "
        f"{len(held_sents)} held-out sentences ({len(calib_sents)} calibration): unsmoothed "
        f"{base:.4f}; smoothed "
        + ", ".join(
            f"alpha {a} {'LN + explicit' if e else 'LN only'} {c:.4f}"
            for (a, e), c in results.items()
        )
        + f" [{time.perf_counter() - t0:.0f} s]"
    )
    # measured 0.9626 unsmoothed; LN only: 0.9732 (alpha 0.5), 0.9898 (0.7); LN + explicit
    # 0.9970 (0.8): the GELU outputs (not smoothable by folding) are what is left after LN
    assert results[0.5, False] > base + 0.005
    assert results[0.7, False] > results[0.5, False]
    assert results[0.8, True] >= 0.995
