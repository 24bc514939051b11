"""Calibration cache: round trip, reuse without data, and a clear error for another model."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from ecoinfer.ir.graph import Graph, Node, Value
from ecoinfer.quant import (
    CalibrationCache,
    CalibrationCacheError,
    make_calibrator,
    model_fingerprint,
)


def _graph(hidden: int = 4, relu_name: str = "relu") -> Graph:
    x = Value("x", "float32", ("batch", hidden))
    y = Value("y", "float32", ("batch", hidden))
    g = Graph(inputs=[x], outputs=[y])
    g.nodes = [
        Node("Relu", ["x"], ["h"], name=relu_name),
        Node("Sigmoid", ["h"], ["y"], name="act"),
    ]
    return g


def _calibrated(method: str = "entropy") -> dict:
    rng = np.random.default_rng(0)
    cals = {}
    for name in ("x", "h"):
        c = make_calibrator(method, name=name)
        for _ in range(3):
            c.observe(rng.normal(0.0, 2.0, (8, 4)))
        cals[name] = c
    return cals


def test_round_trip_and_reuse_without_data(tmp_path: Path) -> None:
    g = _graph()
    cals = _calibrated("percentile")
    cache = CalibrationCache.from_calibrators(g, cals)
    path = tmp_path / "model.calib.json"
    cache.save(path)

    doc = json.loads(path.read_text())
    assert doc["format"] == "ecoinfer-calibration-cache"
    assert doc["calibrator"] == "percentile"
    assert doc["settings"] == {"method": "percentile", "num_bins": 2048, "percentile": 99.99}

    loaded = CalibrationCache.load_for(path, _graph())  # a fresh import of the same model
    assert loaded == cache
    for name, c in cals.items():
        assert loaded.tensors[name].amax == c.amax()
        assert loaded.tensors[name].scale == pytest.approx(c.amax() / 127)


def test_fingerprint_tracks_the_model() -> None:
    assert model_fingerprint(_graph()) == model_fingerprint(_graph())
    assert model_fingerprint(_graph()) != model_fingerprint(_graph(hidden=8))
    assert model_fingerprint(_graph()) != model_fingerprint(_graph(relu_name="relu_1"))


def test_mismatched_model_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "c.json"
    CalibrationCache.from_calibrators(_graph(), _calibrated()).save(path)
    with pytest.raises(
        CalibrationCacheError,
        match=r"made for another model \(inputs .*x:float32\[batchx4\].*this model has .*x:float32\[batchx8\]",
    ):
        CalibrationCache.load_for(path, _graph(hidden=8))
    with pytest.raises(
        CalibrationCacheError, match="c.json' was made for another model \\(different node names"
    ):
        CalibrationCache.load_for(path, _graph(relu_name="relu_1"))


def test_bad_files(tmp_path: Path) -> None:
    with pytest.raises(CalibrationCacheError, match="does not exist"):
        CalibrationCache.load(tmp_path / "none.json")
    p = tmp_path / "c.json"
    p.write_text("{not json")
    with pytest.raises(CalibrationCacheError, match="not a readable calibration cache"):
        CalibrationCache.load(p)
    p.write_text(json.dumps({"format": "something else"}))
    with pytest.raises(CalibrationCacheError, match="not an ecoinfer calibration cache"):
        CalibrationCache.load(p)
    good = CalibrationCache.from_calibrators(_graph(), _calibrated()).to_json()
    p.write_text(json.dumps({**good, "version": 99}))
    with pytest.raises(CalibrationCacheError, match="version 99 is not supported"):
        CalibrationCache.load(p)
    good["tensors"]["x"]["scale"] = -1.0
    p.write_text(json.dumps(good))
    with pytest.raises(CalibrationCacheError, match="malformed.*tensor 'x'"):
        CalibrationCache.load(p)
    del good["fingerprint"]
    p.write_text(json.dumps(good))
    with pytest.raises(CalibrationCacheError, match="malformed"):
        CalibrationCache.load(p)


def test_empty_cache_refused() -> None:
    with pytest.raises(CalibrationCacheError, match="no calibrated tensors"):
        CalibrationCache.from_calibrators(_graph(), {})
