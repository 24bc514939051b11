"""Accuracy budget: metrics by hand, per-layer sensitivity keeps the layer made sensitive on
purpose in float, an unmeetable budget says so with the best mix, user metric files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from ecoinfer.frontend.onnx import import_onnx
from ecoinfer.passes.manager import OptimizeConfig, optimize
from ecoinfer.quant.budget import (
    AccuracyBudgetError,
    check_quant_precision,
    cosine_scores,
    fit_budget,
    get_metric,
    max_rel_error,
    top1_agreement,
)
from ecoinfer.quant.quantize import calibrate, quant_targets, quantize_graph


def sensitive_mlp(seed: int = 0) -> onnx.ModelProto:
    """x[batch, 8] -> fc1 (+b1, relu) -> fc2 (relu) -> fc3 -> y[batch, 4].

    Channel 0 of fc1's output is 200x larger than the others (an outlier-heavy activation)
    and fc2 scales it back down: with a per-tensor INT8 scale set by that channel, fc2's
    input loses nearly all resolution in the other channels, so fc2 is the sensitive layer.
    """
    rng = np.random.default_rng(seed)
    w1 = rng.normal(size=(8, 16)).astype(np.float32)
    b1 = rng.normal(size=(16,)).astype(np.float32)
    w1[:, 0] *= 200.0
    w2 = rng.normal(size=(16, 16)).astype(np.float32)
    w2[0, :] /= 200.0
    w3 = rng.normal(size=(16, 4)).astype(np.float32)
    nodes = [
        helper.make_node("MatMul", ["x", "W1"], ["h0"], name="fc1"),
        helper.make_node("Add", ["h0", "b1"], ["h1"], name="bias1"),
        helper.make_node("Relu", ["h1"], ["h"], name="relu1"),
        helper.make_node("MatMul", ["h", "W2"], ["g0"], name="fc2"),
        helper.make_node("Relu", ["g0"], ["g"], name="relu2"),
        helper.make_node("MatMul", ["g", "W3"], ["y"], name="fc3"),
    ]
    graph = helper.make_graph(
        nodes,
        "mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])],
        [
            numpy_helper.from_array(w1, "W1"),
            numpy_helper.from_array(b1, "b1"),
            numpy_helper.from_array(w2, "W2"),
            numpy_helper.from_array(w3, "W3"),
        ],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def batches(n: int = 3, seed: int = 1) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    return [{"x": rng.normal(size=(16, 8)).astype(np.float32)} for _ in range(n)]


def write_npz(folder: Path, data: list[dict[str, np.ndarray]]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i, b in enumerate(data):
        np.savez(folder / f"batch{i:03d}.npz", **b)
    return folder


@pytest.fixture(scope="module")
def setup():  # noqa: ANN201
    graph, _ = optimize(import_onnx(sensitive_mlp()), OptimizeConfig(level=2))
    data = batches()
    return graph, calibrate(graph, data, method="minmax"), data


def test_metrics_by_hand() -> None:
    ref = {"y": np.array([[1.0, 0.0], [0.0, 2.0]])}
    out = {"y": np.array([[1.0, 1.0], [0.0, -2.0]])}
    assert cosine_scores(ref, out) == pytest.approx([1 / np.sqrt(2), -1.0])
    assert max_rel_error(ref, out) == pytest.approx(4.0 / 2.0)
    assert top1_agreement(ref, out) == [1.0, 0.0]
    # zero vectors: both zero agree, one zero does not
    z = {"y": np.zeros((2, 3))}
    assert cosine_scores(z, z) == [1.0, 1.0]
    assert cosine_scores(z, {"y": np.ones((2, 3))}) == [0.0, 0.0]
    cos = get_metric("cosine")
    assert cos.higher_is_better and cos.meets(0.9995, 0.999) and not cos.meets(0.99, 0.999)
    rel = get_metric("max-rel")
    assert not rel.higher_is_better and rel.meets(0.01, 0.05) and not rel.meets(0.1, 0.05)
    with pytest.raises(AccuracyBudgetError, match="choose cosine, max-rel, top1"):
        get_metric("l2")


def test_fit_budget_keeps_the_sensitive_layer(setup) -> None:  # noqa: ANN001
    graph, amax, data = setup
    names = [t.node.name for t in quant_targets(graph)]
    assert names == ["fc1", "fc2", "fc3"]  # fused layers keep their root MatMul's name
    for metric, budget in (("cosine", 0.999), ("top1", 1.0)):
        r = fit_budget(graph, amax, data, budget, metric)
        assert r.ranked[0] == "fc2"
        assert r.kept == ["fc2"] and r.keep_fp == ["^fc2$"]
        assert r.value >= budget > r.full_int8
        assert r.sensitivity["fc2"] < min(r.sensitivity["fc1"], r.sensitivity["fc3"])
        assert sorted(r.quantized) == ["fc1", "fc3"]
        report = "\n".join(r.lines())
        assert "kept in float: fc2" in report and "only this layer quantized" in report
    # the mix it reports is what quantize_graph builds from keep_fp
    q = quantize_graph(graph, amax, keep_fp=r.keep_fp)
    assert q.op_histogram()["QuantizeLinear"] == 2
    # max-rel: lower is better, the budget is a ceiling
    r = fit_budget(graph, amax, data, 0.05, "max-rel")
    assert r.kept[0] == "fc2" and r.value <= 0.05


def test_budget_margin_asks_for_headroom(setup) -> None:  # noqa: ANN001
    """A margin moves the bar by that much, in the metric's direction: the mix that only just
    met the budget no longer does, and more layers stay in float (or none meets it)."""
    graph, amax, data = setup
    plain = fit_budget(graph, amax, data, 0.999, "cosine")
    gap = plain.value - 0.999  # how far the first passing mix cleared the budget
    assert gap >= 0
    with_margin = fit_budget(graph, amax, data, 0.999 - 0.5 * gap, "cosine", margin=gap)
    assert with_margin.value >= 0.999 - 0.5 * gap + gap and with_margin.margin == gap
    assert "margin" in with_margin.lines()[0]
    tight = plain.value + 1e-9 - 0.999  # asks for a hair more than the first mix reaches
    r = fit_budget(graph, amax, data, 0.999, "cosine", margin=tight)
    assert len(r.kept) > len(plain.kept) and r.value >= 0.999 + tight
    low = fit_budget(graph, amax, data, 0.05, "max-rel", margin=0.01)  # a ceiling: lowered
    assert low.value <= 0.04
    with pytest.raises(AccuracyBudgetError, match="margin"):
        fit_budget(graph, amax, data, 0.999, "cosine", margin=-1.0)


def test_unmeetable_budget_reports_best_mix(setup) -> None:  # noqa: ANN001
    graph, amax, data = setup
    with pytest.raises(AccuracyBudgetError) as e:
        fit_budget(graph, amax, data, 1.5, "cosine")
    msg = str(e.value)
    assert "\n" not in msg
    assert "no mix" in msg and "cosine >= 1.5" in msg and "best mix found" in msg
    assert "every layer in float" in msg
    with pytest.raises(AccuracyBudgetError, match="validation set is empty"):
        fit_budget(graph, amax, [], 0.99)


def test_user_metric_file(setup, tmp_path: Path) -> None:  # noqa: ANN001
    graph, amax, data = setup
    f = tmp_path / "neg_err.py"
    f.write_text(
        "import numpy as np\n"
        "def metric(ref, out):\n"
        "    return -float(np.abs(ref['y'] - out['y']).mean())\n"
    )
    r = fit_budget(graph, amax, data, -0.05, str(f))
    assert r.metric == "neg_err" and "fc2" in r.kept and r.value >= -0.05
    # a metric no mix meets, even every layer in float (it is always -1)
    f2 = tmp_path / "never.py"
    f2.write_text("def metric(ref, out):\n    return -1.0\n")
    with pytest.raises(AccuracyBudgetError, match=r"best mix found.*reaches never -1"):
        fit_budget(graph, amax, data, 0.0, str(f2))
    bad = tmp_path / "bad.py"
    bad.write_text("x = 1\n")
    with pytest.raises(AccuracyBudgetError, match="defines no function metric"):
        get_metric(str(bad))


def test_fp8_needs_a_gpu_and_says_use_int8(monkeypatch: pytest.MonkeyPatch) -> None:
    check_quant_precision("int8", "cpu")
    with pytest.raises(Exception, match="--fp8 needs .* 8.9.*use --int8"):
        check_quant_precision("fp8", "cpu")
    # a GPU without FP8 tensor cores (an A100 reports 8.0), and one with them (an H100)
    import torch  # noqa: PLC0415

    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "NVIDIA A100-SXM4-80GB")
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a: (8, 0))
    with pytest.raises(Exception, match="NVIDIA A100-SXM4-80GB has 8.0; use --int8 instead"):
        check_quant_precision("fp8", "cuda:0")
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a: (9, 0))
    check_quant_precision("fp8", "cuda:0")


def test_budget_met_only_in_float_warns(setup) -> None:  # noqa: ANN001
    graph, amax, data = setup
    r = fit_budget(graph, amax, data, 1.0, "cosine")  # only the exact float graph scores 1
    assert sorted(r.kept) == ["fc1", "fc2", "fc3"] and not r.quantized
    assert "only the all-float mix meets this budget" in r.lines()[-1]
    ok = fit_budget(graph, amax, data, 0.999, "cosine")
    assert not any("all-float" in line for line in ok.lines())


@pytest.mark.parametrize(
    ("precision", "given", "used"),
    [
        ("int8", None, "entropy"),
        ("fp8", None, "minmax"),
        ("fp8", "entropy", "entropy"),
        ("int8", "percentile", "percentile"),
    ],  # fmt: skip
)
def test_default_calibrator_per_precision(setup, tmp_path, precision, given, used) -> None:  # noqa: ANN001
    """No --calib-method: FP8 calibrates min-max (its range holds the outliers entropy would
    clip), INT8 entropy; a named calibrator is always the one used, in the cache too."""
    import json

    from ecoinfer.quant.budget import QuantizeOptions, default_calib_method, quantize_for_build

    graph, _, data = setup
    calib = write_npz(tmp_path / "calib", data)
    cache = tmp_path / "calib.json"
    opts = QuantizeOptions(
        precision=precision, calib_data=str(calib), calib_method=given, calib_cache=str(cache)
    )
    _, report = quantize_for_build(graph, opts)
    assert report["calibrator"] == used
    assert json.loads(cache.read_text())["calibrator"] == used
    assert default_calib_method(precision) == ("minmax" if precision == "fp8" else "entropy")


def test_int8_of_a_normed_model_without_smooth_suggests_it(tmp_path: Path) -> None:
    """An INT8 build of a model with LayerNorms and no --smooth says SmoothQuant may be needed
    (MiniLM: cosine 0.961 without); a model without norms, FP8, or --smooth given: no note."""
    from ecoinfer.quant.budget import QuantizeOptions, quantize_for_build  # noqa: PLC0415

    rng = np.random.default_rng(0)
    nodes = [
        helper.make_node("LayerNormalization", ["x", "g", "b"], ["n"], name="ln", axis=-1),
        helper.make_node("MatMul", ["n", "W"], ["y"], name="fc"),
    ]
    inits = [
        numpy_helper.from_array(np.ones(8, np.float32), "g"),
        numpy_helper.from_array(np.zeros(8, np.float32), "b"),
        numpy_helper.from_array(rng.normal(size=(8, 4)).astype(np.float32), "W"),
    ]
    g = helper.make_graph(
        nodes,
        "normed",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])],
        inits,
    )
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    calib = write_npz(tmp_path / "c", batches())

    def notes(m: onnx.ModelProto, **kw: object) -> list[str]:
        graph, _ = optimize(import_onnx(m), OptimizeConfig(level=2))
        lines: list[str] = []
        quantize_for_build(graph, QuantizeOptions(calib_data=str(calib), **kw), lines.append)
        return [s for s in lines if s.startswith("note: no --smooth")]

    assert len(notes(model, precision="int8")) == 1
    assert notes(model, precision="int8", smooth_alpha=0.5) == []
    assert notes(model, precision="fp8") == []
    assert notes(sensitive_mlp(), precision="int8") == []
