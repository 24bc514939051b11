"""`ecoinfer build --workspace MB`: the limit reaches the tuner and the build report; on the
CPU (no allocator count) the build says it did not apply; a negative size is a clear error.
The tuner's skipping of candidates over the limit: tests/tune/test_autotune.py."""

from __future__ import annotations

import pytest
from test_quant_fallback import mlp  # noqa: F401  (the shared fixture)

from ecoinfer.engine.builder import BuildConfig, build
from ecoinfer.engine.runtime import ShapeProfile
from ecoinfer.errors import InputError
from ecoinfer.tune import autotune

SHP = {"x": (8, 16)}


def _cfg(**kw) -> BuildConfig:  # noqa: ANN003
    return BuildConfig(device="cpu", profiles=[ShapeProfile(SHP, SHP, SHP)], **kw)


def test_limit_reaches_the_tuner_and_the_report(mlp, monkeypatch) -> None:  # noqa: ANN001, F811
    path, _ = mlp
    seen: list[int | None] = []
    real = autotune._fits_workspace

    def spy(cand, run, inputs, dev, limit, is_reference):  # noqa: ANN001, ANN202
        seen.append(limit)
        return real(cand, run, inputs, dev, limit, is_reference)

    monkeypatch.setattr(autotune, "_fits_workspace", spy)
    eng = build(str(path), _cfg(workspace_mb=3))
    assert seen and set(seen) == {3 << 20}  # every candidate of every tuned layer
    assert eng.report["workspace"] == {"limit_bytes": 3 << 20, "largest_chosen": None}
    assert any("--workspace applies to CUDA builds" in w for w in eng.warnings)
    eng = build(str(path), _cfg())
    assert eng.report["workspace"]["limit_bytes"] is None
    assert not any("--workspace" in w for w in eng.warnings)


def test_negative_workspace_is_a_clear_error(mlp, tmp_path, capsys) -> None:  # noqa: ANN001, F811
    from ecoinfer.cli import main

    path, _ = mlp
    with pytest.raises(InputError, match="--workspace -1: give a size in MiB"):
        build(str(path), _cfg(workspace_mb=-1))
    args = ["build", str(path), "--device", "cpu", "--shapes", "x:8x16", "--workspace", "-5"]
    assert main([*args, "-o", str(tmp_path / "a.eng")]) == 2
    err = capsys.readouterr().err
    assert "--workspace -5" in err and "Traceback" not in err
