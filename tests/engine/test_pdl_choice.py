"""Programmatic dependent launch: the launch switch (kernels/triton/pdl.py) and the builder's
whole-engine choice, which keeps the mode that replays faster and is saved in the engine file.
The GPU timing itself is replaced by a fake here (no GPU in CI); the GPU A/B is
bench/gpu_pdl_ab.py."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto as T
from onnx import helper, numpy_helper

from ecoinfer.engine import builder
from ecoinfer.engine.builder import BuildConfig, build, load_engine
from ecoinfer.engine.format import read_engine, write_engine
from ecoinfer.engine.runtime import ShapeProfile
from ecoinfer.kernels.triton import gemm, pdl
from ecoinfer.tune import autotune
from ecoinfer.tune.timing_cache import TimingCache

CUDA = torch.device("cuda", 0)  # a device object only: nothing runs on it


@pytest.fixture
def hopper(monkeypatch):  # noqa: ANN001, ANN201
    """A compiler (not the interpreter) and a compute capability 9.0 device, as on an H100."""
    monkeypatch.setattr(gemm, "interpreting", lambda: False)
    monkeypatch.setattr(pdl, "_capable", lambda index: True)
    monkeypatch.delenv("ECOINFER_PDL", raising=False)


def test_pdl_needs_cuda_and_the_compiler() -> None:
    assert pdl.pdl_args(torch.device("cpu")) == {"PDL": False, "launch_pdl": False}
    # CI runs the interpreter: never on, whatever the device
    assert not pdl.pdl_enabled(CUDA)


def test_pdl_scope_and_environment(hopper, monkeypatch) -> None:  # noqa: ANN001
    assert pdl.pdl_args(CUDA) == {"PDL": True, "launch_pdl": True}  # default: on
    with pdl.pdl_scope(False):
        assert pdl.pdl_args(CUDA) == {"PDL": False, "launch_pdl": False}
        with pdl.pdl_scope(True):
            assert pdl.pdl_enabled(CUDA)
        assert not pdl.pdl_enabled(CUDA)
    assert pdl.pdl_enabled(CUDA)
    monkeypatch.setenv("ECOINFER_PDL", "1")
    with pdl.pdl_scope(False):
        assert pdl.pdl_enabled(CUDA)  # forced on
    monkeypatch.setenv("ECOINFER_PDL", "0")
    assert not pdl.pdl_supported(CUDA) and not pdl.pdl_enabled(CUDA)


def _model(path) -> None:  # noqa: ANN001
    w = numpy_helper.from_array(np.eye(4, dtype=np.float32), "w")
    nodes = [helper.make_node("MatMul", ["x", "w"], ["h"]), helper.make_node("Relu", ["h"], ["y"])]
    g = helper.make_graph(
        nodes,
        "mm",
        [helper.make_tensor_value_info("x", T.FLOAT, ["n", 4])],
        [helper.make_tensor_value_info("y", T.FLOAT, None)],
        initializer=[w],
    )
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)]), path)


def _engine(tmp_path):  # noqa: ANN001, ANN202
    onnx_path = str(tmp_path / "m.onnx")
    _model(onnx_path)
    s = {"x": (2, 4)}
    cfg = BuildConfig(device="cpu", profiles=[ShapeProfile(s, s, s)])
    return build(onnx_path, cfg)


@pytest.mark.parametrize("faster", [True, False])
def test_the_builder_keeps_the_faster_launch_mode(tmp_path, monkeypatch, faster) -> None:  # noqa: ANN001
    engine = _engine(tmp_path)
    assert engine.pdl is False and "pdl" not in engine.report  # CPU: nothing to choose
    modes: list[bool] = []

    def fake_measure(fn, xs, dev, target_ms=25.0, cuda_graph=True):  # noqa: ANN001, ANN202
        fn(xs)  # the engine runs, in the mode under test
        modes.append(engine.pdl)
        return (1.0 if engine.pdl == faster else 1.5), "fake"

    monkeypatch.setattr(pdl, "pdl_supported", lambda device: True)
    monkeypatch.setattr(autotune, "measure", fake_measure)
    cache = TimingCache()
    builder._choose_pdl(engine, 0, cache)
    assert modes == [True, False, True, False]  # alternating rounds
    assert engine.pdl is faster
    rep = engine.report["pdl"]
    assert rep["enabled"] is faster and rep["timing"] == "measured"
    assert {rep["on_ms"], rep["off_ms"]} == {1.0, 1.5}

    # the same engine again: both times come from the timing cache, nothing is run
    monkeypatch.setattr(autotune, "measure", lambda *a, **k: pytest.fail("timed again"))
    engine.pdl = not faster
    builder._choose_pdl(engine, 0, cache)
    assert engine.pdl is faster and engine.report["pdl"]["timing"] == "cache"

    # the choice travels in the engine file; a file from before it loads with PDL off
    path = tmp_path / "m.eng"
    engine.save(str(path))
    assert load_engine(str(path)).pdl is faster
    header, tensors = read_engine(str(path))
    del header["pdl"]
    write_engine(str(path), header, tensors)
    assert load_engine(str(path)).pdl is False


def test_a_failed_timing_leaves_pdl_off(tmp_path, monkeypatch) -> None:  # noqa: ANN001
    engine = _engine(tmp_path)
    monkeypatch.setattr(pdl, "pdl_supported", lambda device: True)

    def broken(*a, **k):  # noqa: ANN002, ANN003, ANN202
        raise RuntimeError("capture failed")

    monkeypatch.setattr(autotune, "measure", broken)
    builder._choose_pdl(engine, 0, None)
    assert engine.pdl is False
    assert any("left off" in w and "capture failed" in w for w in engine.warnings)


def test_the_runtime_launches_in_the_engines_mode(tmp_path, monkeypatch) -> None:  # noqa: ANN001
    engine = _engine(tmp_path)
    seen: list[object] = []
    orig = engine.create_context().__class__._execute_steps

    def spy(self, plan, inputs, marks):  # noqa: ANN001, ANN202
        seen.append(getattr(pdl._scope, "on", None))
        return orig(self, plan, inputs, marks)

    monkeypatch.setattr(engine.create_context().__class__, "_execute_steps", spy)
    x = np.ones((2, 4), np.float32)
    for mode in (True, False):
        engine.pdl = mode
        engine.create_context().run({"x": x})
    assert seen == [True, False]
    assert getattr(pdl._scope, "on", None) is None  # restored after each call
