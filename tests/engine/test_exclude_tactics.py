"""`ecoinfer build --exclude-tactics`: named tactics are never tried; unknown names are a
clear error."""

from __future__ import annotations

import pytest
from test_quant_fallback import mlp  # noqa: F401  (the shared fixture)

from ecoinfer.engine.builder import BuildConfig, build
from ecoinfer.engine.runtime import ShapeProfile
from ecoinfer.errors import InputError

SHP = {"x": (8, 16)}


def _fp32(path, **kw):  # noqa: ANN001, ANN003, ANN202
    cfg = BuildConfig(device="cpu", profiles=[ShapeProfile(SHP, SHP, SHP)], **kw)
    return build(path, cfg)


def _tried(eng) -> dict[str, set[str]]:  # noqa: ANN001
    """Layer -> every tactic the tuner timed for it (the build report's candidates)."""
    return {name: {c["tactic"] for c in cands} for name, cands in eng.report["candidates"].items()}


def test_excluded_tactics_are_never_tried(mlp) -> None:  # noqa: ANN001, F811
    path, _ = mlp
    tried = _tried(_fp32(path))
    gemm_tactics = {t for ts in tried.values() for t in ts} - {"reference"}
    assert gemm_tactics, tried  # the CPU GEMM has tactics beside the reference
    gone = sorted(gemm_tactics)[0]
    eng = _fp32(path, exclude_tactics=(gone,))
    again = _tried(eng)
    assert eng.report["excluded_tactics"] == [gone]  # recorded in the engine's report
    assert again.keys() == tried.keys()
    assert all(gone not in ts and "reference" in ts for ts in again.values())


def test_unknown_tactic_name_is_a_clear_error(mlp) -> None:  # noqa: ANN001, F811
    path, _ = mlp
    with pytest.raises(InputError, match="no tactic named 'cublas_typo'.*known tactics"):
        _fp32(path, exclude_tactics=("cublas_typo",))


def test_cli_flag(mlp, tmp_path, capsys) -> None:  # noqa: ANN001, F811
    from ecoinfer.cli import main

    path, _ = mlp
    base = ["build", str(path), "--device", "cpu", "--shapes", "x:8x16"]
    assert main([*base, "-o", str(tmp_path / "a.eng"), "--exclude-tactics", "nope"]) != 0
    err = capsys.readouterr().err
    assert "no tactic named 'nope'" in err and "Traceback" not in err
