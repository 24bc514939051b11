"""Which layers the builder tunes: every op with a registered tactic, FusedElementwise
included (its body is self-contained), not control flow (bodies read the outer scope)."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto as T
from onnx import helper, numpy_helper

from ecoinfer.engine.builder import BuildConfig, build, load_engine
from ecoinfer.engine.runtime import ShapeProfile
from ecoinfer.tune import tactics as registry

CALLS: list[str] = []


def _model(path) -> None:  # noqa: ANN001
    # sigmoid((x * s + t) * 2): fuse_elementwise makes it one ecoinfer.FusedElementwise node
    s = numpy_helper.from_array(np.full((1, 4), 0.5, np.float32), "s")
    t = numpy_helper.from_array(np.full((1, 4), 0.25, np.float32), "t")
    two = numpy_helper.from_array(np.array([2.0], np.float32), "two")
    nodes = [
        helper.make_node("Mul", ["x", "s"], ["xs"]),
        helper.make_node("Add", ["xs", "t"], ["xt"]),
        helper.make_node("Mul", ["two", "xt"], ["x2"]),
        helper.make_node("Sigmoid", ["x2"], ["y"]),
    ]
    g = helper.make_graph(
        nodes,
        "fe",
        [helper.make_tensor_value_info("x", T.FLOAT, ["n", 4])],
        [helper.make_tensor_value_info("y", T.FLOAT, None)],
        initializer=[s, t, two],
    )
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)]), path)


def test_fused_elementwise_layers_are_tuned(tmp_path, monkeypatch) -> None:  # noqa: ANN001
    from ecoinfer.kernels.torch_ops.registry import get_kernel  # noqa: PLC0415
    from ecoinfer.tune.autotune import reference_runfn  # noqa: PLC0415

    def make(node, attrs, inputs, cfg, build):  # noqa: ANN001, ANN202
        ref = reference_runfn(node, attrs, build.device)

        def run(xs):  # noqa: ANN001, ANN202
            CALLS.append(node.name)
            return ref(xs)

        return run

    key = ("ecoinfer", "FusedElementwise")
    saved = list(registry._TACTICS.get(key, []))
    monkeypatch.setitem(registry._TACTICS, key, saved)  # restored after the test
    registry.tactic("FusedElementwise", "test_cpu_fe", "ecoinfer", devices=("cpu",))(make)
    assert get_kernel("FusedElementwise", "ecoinfer") is not None

    path = tmp_path / "fe.onnx"
    _model(path)
    shp = {"x": (8, 4)}
    eng = build(path, BuildConfig(device="cpu", profiles=[ShapeProfile(shp, shp, shp)]))
    (fe,) = [n for n in eng.graph.nodes if n.op_type == "FusedElementwise"]
    cands = {c["tactic"] for c in eng.report["candidates"][fe.name]}
    assert cands == {"reference", "test_cpu_fe"}  # it was tuned, not skipped
    assert fe.name in CALLS  # the candidate ran against the reference
    ch = eng.choices[fe.name]
    assert ch.time_ms is not None and ch.tactic in cands
    x = np.random.default_rng(0).standard_normal((8, 4)).astype(np.float32)
    want = 1 / (1 + np.exp(-((x * 0.5 + 0.25) * 2)))
    np.testing.assert_allclose(eng.run({"x": x})["y"], want, rtol=1e-6, atol=1e-6)
    eng.save(tmp_path / "fe.eng")
    np.testing.assert_allclose(
        load_engine(tmp_path / "fe.eng").run({"x": x})["y"], want, rtol=1e-6, atol=1e-6
    )


def test_control_flow_runs_in_an_engine_with_outer_reads(tmp_path) -> None:  # noqa: ANN001
    # If bodies read outer values (r, w): the engine runs them in the plan's environment
    from helpers import run_onnxruntime  # noqa: PLC0415

    out = helper.make_tensor_value_info("o", T.FLOAT, None)
    then = helper.make_graph([helper.make_node("Add", ["r", "w"], ["o"])], "then", [], [out])
    other = helper.make_graph([helper.make_node("Sub", ["r", "w"], ["o"])], "else", [], [out])
    w = numpy_helper.from_array(np.arange(6, dtype=np.float32).reshape(2, 3), "w")
    g = helper.make_graph(
        [
            helper.make_node("Relu", ["x"], ["r"], name="relu"),
            helper.make_node("If", ["cond"], ["i"], then_branch=then, else_branch=other, name="if"),
            helper.make_node("Mul", ["i", "w"], ["y"], name="mul"),
        ],
        "cf",
        [
            helper.make_tensor_value_info("x", T.FLOAT, [2, 3]),
            helper.make_tensor_value_info("cond", T.BOOL, []),
        ],
        [helper.make_tensor_value_info("y", T.FLOAT, None)],
        initializer=[w],
    )
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)])
    path = tmp_path / "cf.onnx"
    onnx.save(model, path)
    shp = {"x": (2, 3), "cond": ()}
    eng = build(path, BuildConfig(device="cpu", profiles=[ShapeProfile(shp, shp, shp)]))
    for flag in (True, False):
        feeds = {"x": np.random.default_rng(3).standard_normal((2, 3)).astype(np.float32)}
        feeds["cond"] = np.array(flag)
        want = run_onnxruntime(str(path), feeds)["y"]
        np.testing.assert_allclose(eng.run(feeds)["y"], want, rtol=1e-6, atol=1e-6)


def _build_with(tmp_path, monkeypatch, run_error: Exception):  # noqa: ANN001, ANN202
    """Build the FusedElementwise model with one extra tactic whose run raises run_error."""

    def make(node, attrs, inputs, cfg, build):  # noqa: ANN001, ANN202
        def run(xs):  # noqa: ANN001, ANN202
            raise run_error

        return run

    key = ("ecoinfer", "FusedElementwise")
    monkeypatch.setitem(registry._TACTICS, key, list(registry._TACTICS.get(key, [])))
    registry.tactic(
        "FusedElementwise",
        "test_broken",
        "ecoinfer",
        devices=("cpu",),
        configs=lambda *a: [{}, {"b": 1}],
    )(make)
    path = tmp_path / "fe.onnx"
    _model(path)
    shp = {"x": (8, 4)}
    return build(path, BuildConfig(device="cpu", profiles=[ShapeProfile(shp, shp, shp)]))


def test_a_tactic_that_crashes_everywhere_is_reported(tmp_path, monkeypatch) -> None:  # noqa: ANN001
    eng = _build_with(tmp_path, monkeypatch, RuntimeError("CompilationError: at 146:17"))
    (b,) = eng.report["broken_tactics"]
    assert b["tactic"] == "test_broken" and b["layers"] == 1
    assert "CompilationError" in b["reason"]
    (w,) = [w for w in eng.warnings if "test_broken" in w]
    assert "failed in every configuration on 1 layer" in w and "CompilationError" in w
    # the engine still runs, on the other tactic
    x = np.ones((8, 4), np.float32)
    np.testing.assert_allclose(eng.run({"x": x})["y"], 1 / (1 + np.exp(-1.5)), rtol=1e-6)


def test_a_tile_too_big_for_the_gpu_is_not_a_broken_tactic(tmp_path, monkeypatch) -> None:  # noqa: ANN001
    err = RuntimeError("OutOfResources: out of resource: shared memory, Required: 245784")
    eng = _build_with(tmp_path, monkeypatch, err)
    assert eng.report["broken_tactics"] == []
    assert not [w for w in eng.warnings if "test_broken" in w]
