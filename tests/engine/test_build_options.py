"""The builder's options end to end on the CPU: ecoinfer.build(), several shape profiles each
with its own tactics, the timing cache, --layer-precision, --verbose, --check-input, the
build report's runner-up column, and the CLI's one-line errors on bad engine files."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import struct
import subprocess
import sys

import numpy as np
import onnx
import pytest
from helpers import assert_close, run_onnxruntime
from onnx import TensorProto as T
from onnx import helper, numpy_helper

import ecoinfer
from ecoinfer.engine.builder import BuildConfig, build, load_engine, rebuild_command
from ecoinfer.engine.format import MAGIC, EngineFileError, read_engine, write_engine
from ecoinfer.engine.runtime import ShapeProfile
from ecoinfer.errors import InputError, InputShapeError
from ecoinfer.tune import tactics as registry


def _mlp(path) -> None:  # noqa: ANN001
    """x[n, 16] -> Gemm + Relu -> Gemm -> LayerNorm: two FusedGemm layers and a norm."""
    rng = np.random.default_rng(0)
    w1 = numpy_helper.from_array(rng.standard_normal((16, 32)).astype(np.float32) * 0.3, "w1")
    b1 = numpy_helper.from_array(rng.standard_normal(32).astype(np.float32), "b1")
    w2 = numpy_helper.from_array(rng.standard_normal((32, 8)).astype(np.float32) * 0.3, "w2")
    b2 = numpy_helper.from_array(rng.standard_normal(8).astype(np.float32), "b2")
    g = numpy_helper.from_array(np.ones(8, np.float32), "g")
    be = numpy_helper.from_array(np.zeros(8, np.float32), "be")
    nodes = [
        helper.make_node("Gemm", ["x", "w1", "b1"], ["h"], name="fc1"),
        helper.make_node("Relu", ["h"], ["r"], name="act1"),
        helper.make_node("Gemm", ["r", "w2", "b2"], ["o"], name="fc2"),
        helper.make_node("LayerNormalization", ["o", "g", "be"], ["y"], name="ln", axis=-1),
    ]
    graph = helper.make_graph(
        nodes,
        "mlp",
        [helper.make_tensor_value_info("x", T.FLOAT, ["n", 16])],
        [helper.make_tensor_value_info("y", T.FLOAT, ["n", 8])],
        initializer=[w1, b1, w2, b2, g, be],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)


@pytest.fixture(scope="module")
def mlp(tmp_path_factory):  # noqa: ANN001, ANN201
    path = tmp_path_factory.mktemp("mlp") / "mlp.onnx"
    _mlp(path)
    return path


def _x(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, 16)).astype(np.float32)


def _profile(lo: int, opt: int, hi: int) -> ShapeProfile:
    return ShapeProfile({"x": (lo, 16)}, {"x": (opt, 16)}, {"x": (hi, 16)})


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "ecoinfer.cli", *args], capture_output=True, text=True, timeout=600
    )


# ---------------------------------------------------------------------- Python API
def test_ecoinfer_build_saves_an_engine_that_matches_onnxruntime(mlp, tmp_path) -> None:  # noqa: ANN001
    out = tmp_path / "mlp.eng"
    eng = ecoinfer.build(mlp, out, device="cpu", shapes={"x": (4, 16)})
    assert out.is_file() and eng.profiles[0].opt == {"x": (4, 16)}
    phases = eng.report["phases_s"]  # where the build's time went
    assert {"import", "optimize", "tune", "plan"} <= set(phases)
    assert sum(phases.values()) <= eng.report["build_seconds"] + 0.01
    loaded = ecoinfer.load_engine(out)
    x = _x(4)
    assert_close(loaded.run({"x": x}), run_onnxruntime(mlp, {"x": x}), "ecoinfer.build engine")
    cfg = ecoinfer.BuildConfig(device="cpu", tune=False)  # a config, then options on top
    eng = ecoinfer.build(ecoinfer.load(mlp), config=cfg, profiles=[({"x": (1, 16)},) * 3])
    assert all(ch.tactic == "reference" for ch in eng.choices.values())
    assert eng.source == str(mlp)  # the model's file, for errors and rebuild hints
    with pytest.raises(InputError, match="unknown option 'precison'"):
        ecoinfer.build(mlp, precison="fp16")
    with pytest.raises(InputError, match="is the input model"):
        ecoinfer.build(mlp, mlp, device="cpu")


# ---------------------------------------------------------------------- shape profiles
def _sized_tactics(monkeypatch, calls: list[str]) -> None:  # noqa: ANN001
    """Two FusedGemm tactics, one offered only for batches up to 4, one only above, and a
    reference that times slowest: the tuner picks the one its profile's opt shape allows.
    Times are fixed, not measured, so a loaded CI machine cannot reorder them."""
    from ecoinfer.tune import autotune  # noqa: PLC0415
    from ecoinfer.tune.autotune import reference_runfn  # noqa: PLC0415

    sized_runs: list = []  # held, so no other function reuses their ids

    def sized(tag: str, small: bool):  # noqa: ANN202
        def make(node, attrs, inputs, cfg, build):  # noqa: ANN001, ANN202
            if (inputs[0].shape[0] <= 4) != small:
                return None  # declined at this shape
            ref = reference_runfn(node, attrs, build.device)

            def run(xs):  # noqa: ANN001, ANN202
                calls.append(tag)
                return ref(xs)

            sized_runs.append(run)
            return run

        return make

    key = ("ecoinfer", "FusedGemm")
    monkeypatch.setitem(registry._TACTICS, key, list(registry._TACTICS.get(key, [])))
    registry.tactic("FusedGemm", "test_small", "ecoinfer", devices=("cpu",))(sized("small", True))
    registry.tactic("FusedGemm", "test_big", "ecoinfer", devices=("cpu",))(sized("big", False))
    real_measure = autotune.measure

    def fixed_measure(fn, xs, device, *a, **k):  # noqa: ANN001, ANN002, ANN003, ANN202
        if any(fn is r for r in sized_runs):
            return 0.001, "cpu"
        if device is not None and str(device) == "cpu":
            return 1.0, "cpu"  # the reference and any other FusedGemm tactic: slower
        return real_measure(fn, xs, device, *a, **k)

    monkeypatch.setattr(autotune, "measure", fixed_measure)


def test_each_profile_runs_the_tactics_tuned_at_its_opt_shapes(mlp, tmp_path, monkeypatch) -> None:  # noqa: ANN001
    calls: list[str] = []
    _sized_tactics(monkeypatch, calls)
    cfg = BuildConfig(
        device="cpu",
        profiles=[_profile(1, 2, 4), _profile(5, 32, 64)],
        exclude_tactics=("addmm", "linear"),
    )
    eng = build(mlp, cfg)
    gemms = [n.name for n in eng.graph.nodes if n.op_type == "FusedGemm"]
    assert len(gemms) == 2
    assert {eng.choices[g].tactic for g in gemms} == {"test_small"}
    (over,) = eng.profile_choices
    assert {over[g].tactic for g in gemms} == {"test_big"}
    assert eng.report["profile_tactics"] == [{"profile": 1, "layers_differing": len(over)}]
    eng.save(tmp_path / "two.eng")
    from ecoinfer.commands.inspect_engine import engine_summary  # noqa: PLC0415

    info = engine_summary(tmp_path / "two.eng")  # what `ecoinfer inspect` shows per profile
    assert {(r["profile"], r["layer"], r["tactic"]) for r in info["profile_layers"]} == {
        (1, g, "test_big") for g in gemms
    }
    for e in (eng, load_engine(tmp_path / "two.eng")):
        for n, want in ((3, "small"), (40, "big"), (4, "small"), (5, "big")):
            calls.clear()
            x = _x(n, seed=n)
            got = e.run({"x": x})
            assert set(calls) == {want}, (n, calls)
            assert_close(got, run_onnxruntime(mlp, {"x": x}), f"batch {n}")
        with pytest.raises(InputShapeError, match=r"profile 0: \[1\.\.4\]x16; profile 1"):
            e.run({"x": _x(65)})


def test_profile_needs_min_opt_max_in_order(mlp) -> None:  # noqa: ANN001
    with pytest.raises(InputError, match=r"min <= opt <= max.*\[1, 16\] / \[8, 16\] / \[4, 16\]"):
        build(mlp, BuildConfig(device="cpu", profiles=[_profile(1, 8, 4)]))


# ---------------------------------------------------------------------- timing cache
def test_a_rebuild_with_the_timing_cache_times_nothing(mlp, tmp_path) -> None:  # noqa: ANN001
    cache = tmp_path / "timing.json"
    cfg = BuildConfig(device="cpu", profiles=[_profile(1, 8, 16)], timing_cache=str(cache))
    first = build(mlp, cfg)
    assert cache.is_file() and first.report["timing_cache"]["misses"] > 0
    again = build(mlp, cfg)
    stats = again.report["timing_cache"]
    assert stats["misses"] == 0 and stats["hits"] >= first.report["timing_cache"]["misses"]
    assert {n: c.tactic for n, c in again.choices.items()} == {
        n: c.tactic for n, c in first.choices.items()
    }


# ---------------------------------------------------------------------- precision
def test_layer_precision_overrides_one_layer(mlp) -> None:  # noqa: ANN001
    cfg = BuildConfig(
        precision="bf16",
        device="cpu",
        profiles=[_profile(1, 8, 16)],
        layer_precision=[("fc2.*", "fp32")],
    )
    eng = build(mlp, cfg)
    rows = {r["layer"]: r for r in eng.layer_table()}
    gemms = [n for n in rows if rows[n]["op"].endswith("FusedGemm")]
    fc2 = [n for n in gemms if n.startswith("fc2")]
    assert fc2 and all(rows[n]["precision"] == "float32" for n in fc2)
    assert [rows[n]["precision"] for n in gemms if n not in fc2] == ["bfloat16"]
    x = _x(8)
    assert_close(eng.run({"x": x}), run_onnxruntime(mlp, {"x": x}), "bf16 + fp32 fc2", rtol=3e-2)


def test_lowered_io_takes_and_gives_float16(mlp, tmp_path) -> None:  # noqa: ANN001
    """--lowered-io: float32 inputs/outputs become float16 (no entry or exit Cast), callers
    must feed float16 (a float32 feed is refused, not cast), and the values match the FP16
    engine with float32 IO; only with --fp16."""
    prof = [_profile(1, 4, 8)]
    low = build(mlp, BuildConfig(precision="fp16", device="cpu", profiles=prof, lowered_io=True))
    keep = build(mlp, BuildConfig(precision="fp16", device="cpu", profiles=prof))
    assert [(v.name, v.dtype) for v in [*low.graph.inputs, *low.graph.outputs]] == [
        ("x", "float16"),
        ("y", "float16"),
    ]
    assert low.report["lowered_io"] == {"x": "float16", "y": "float16"}
    assert keep.report["lowered_io"] == {} and keep.graph.outputs[0].dtype == "float32"
    casts = [n.op_type for n in keep.graph.nodes].count("Cast")
    assert casts == 2 and "Cast" not in [n.op_type for n in low.graph.nodes]
    x = _x(4).astype(np.float16)  # values an fp16 input can hold: both engines see the same
    y = low.run({"x": x})["y"]
    assert y.dtype == np.float16
    np.testing.assert_allclose(y, keep.run({"x": x.astype(np.float32)})["y"], rtol=0, atol=2e-3)
    with pytest.raises(ecoinfer.errors.InputDTypeError, match="input 'x': expected float16"):
        low.run({"x": x.astype(np.float32)})
    low.save(tmp_path / "low.eng")
    again = load_engine(tmp_path / "low.eng", "cpu")
    assert again.graph.inputs[0].dtype == "float16" and again.report["lowered_io"]
    # the rebuild a user is told to run on another GPU gives the same float16 interface
    header, _ = read_engine(tmp_path / "low.eng")
    assert rebuild_command(header, "low.eng").endswith("--fp16 --lowered-io --min-shapes x:1x16 "
                                                       "--opt-shapes x:4x16 --max-shapes x:8x16")  # fmt: skip
    keep.save(tmp_path / "keep.eng")
    header, _ = read_engine(tmp_path / "keep.eng")
    assert "--lowered-io" not in rebuild_command(header, "keep.eng")
    for prec in ("fp32", "bf16"):
        with pytest.raises(InputError, match="--lowered-io .* build with --fp16"):
            build(mlp, BuildConfig(precision=prec, device="cpu", profiles=prof, lowered_io=True))


def test_lowered_io_cli_and_accuracy_check(mlp, tmp_path) -> None:  # noqa: ANN001
    out = tmp_path / "low.eng"
    proc = _cli(
        "build", str(mlp), "-o", str(out), "--device", "cpu", "--fp16", "--lowered-io",
        "--shapes", "x:4x16", "--check-accuracy",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "lowered IO: 'x' float16, 'y' float16 (the model declares float32)" in proc.stdout
    acc = [ln for ln in proc.stdout.splitlines() if ln.startswith("accuracy ")]
    assert len(acc) == 2 and all(ln.endswith("ok") for ln in acc), proc.stdout
    bad = _cli("build", str(mlp), "-o", str(out), "--device", "cpu", "--lowered-io")
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "--fp16" in bad.stderr


# ---------------------------------------------------------------------- the build command
def test_build_cli_verbose_runner_up_and_check_input(mlp, tmp_path) -> None:  # noqa: ANN001
    out = tmp_path / "m.eng"
    x = _x(3, seed=5)
    np.save(tmp_path / "x.npy", x)
    proc = _cli(
        "build", str(mlp), "-o", str(out), "--device", "cpu", "--min-shapes", "x:1x16",
        "--opt-shapes", "x:8x16", "--max-shapes", "x:16x16", "--verbose", "--check-accuracy",
        "--check-input", f"x={tmp_path / 'x.npy'}",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert any(ln.startswith("phases: import ") for ln in proc.stdout.splitlines())
    # --verbose: every candidate's time, then the choice, per tuned layer
    assert any(": addmm: " in ln and " ms (" in ln for ln in proc.stderr.splitlines())
    assert any(": linear: " in ln and " ms (" in ln for ln in proc.stderr.splitlines())
    assert sum(": chose " in ln for ln in proc.stderr.splitlines()) >= 2
    # the layer table's runner-up column names another tactic and its time
    rows = [ln for ln in proc.stdout.splitlines() if ln.split()[1:2] == ["ecoinfer.FusedGemm"]]
    assert len(rows) == 2 and all(ln.rstrip().endswith(" ms") for ln in rows), proc.stdout
    # --check-input: the accuracy check ran once, on the given batch of 3
    acc = [ln for ln in proc.stdout.splitlines() if ln.startswith("accuracy ")]
    assert len(acc) == 1 and "at x:3x16 (given inputs)" in acc[0] and acc[0].endswith("ok"), acc
    # without --check-input: two random input sets, each line saying which
    proc = _cli("build", str(mlp), "-o", str(out), "--device", "cpu", "--check-accuracy")
    acc = [ln for ln in proc.stdout.splitlines() if ln.startswith("accuracy ")]
    assert len(acc) == 2 and "(random, seed 1 inputs)" in acc[0], acc
    assert "(random, seed 2 inputs)" in acc[1], acc
    bad = _cli("build", str(mlp), "-o", str(out), "--check-accuracy", "--check-input",
               str(tmp_path / "none.npy"), "--device", "cpu")  # fmt: skip
    assert bad.returncode == 2 and "--check-input" in bad.stderr and "does not exist" in bad.stderr
    bad = _cli("build", str(mlp), "-o", str(out), "--check-input", f"x={tmp_path / 'x.npy'}")
    assert bad.returncode == 2 and "add --check-accuracy" in bad.stderr


# ---------------------------------------------------------------------- bad engine files
@pytest.fixture(scope="module")
def mlp_engine(mlp, tmp_path_factory):  # noqa: ANN001, ANN201
    out = tmp_path_factory.mktemp("eng") / "mlp.eng"
    build(mlp, BuildConfig(device="cpu", profiles=[_profile(1, 4, 8)])).save(out)
    return out


def _forge(src, dst, edit) -> None:  # noqa: ANN001
    """dst: src's file with its header edited and the checksum recomputed, as a forger would."""
    from ecoinfer.engine.format import _canonical  # noqa: PLC0415

    raw = src.read_bytes()
    (n,) = struct.unpack_from("<Q", raw, len(MAGIC))
    header = json.loads(raw[len(MAGIC) + 8 : len(MAGIC) + 8 + n])
    blob = raw[len(MAGIC) + 8 + n :]
    header.pop("sha256")
    edit(header)
    header["sha256"] = hashlib.sha256(_canonical(header) + blob).hexdigest()
    data = _canonical(header)
    dst.write_bytes(MAGIC + struct.pack("<Q", len(data)) + data + blob)


def test_cli_refuses_bad_engine_files_in_one_line(mlp_engine, tmp_path) -> None:  # noqa: ANN001
    data = mlp_engine.read_bytes()
    cases = {}
    cases["short"] = data[:10]  # cut inside the magic bytes
    cases["truncated"] = data[: len(data) - 100]  # cut in the weights
    flipped = bytearray(data)
    flipped[-3] ^= 0x01
    cases["tampered"] = bytes(flipped)
    for name, blob in cases.items():
        (tmp_path / f"{name}.eng").write_bytes(blob)
    header, tensors = read_engine(mlp_engine)
    header["fingerprint"] = dict(header["fingerprint"], torch="0.0.1")
    write_engine(tmp_path / "mismatch.eng", header, tensors)
    _forge(mlp_engine, tmp_path / "forged.eng", lambda h: h.pop("choices"))
    want = {
        "short": "truncated",
        "truncated": "truncated or was modified",
        "tampered": "checksum mismatch",
        "mismatch": "torch: engine '0.0.1'",
        "forged": "engine header is malformed",
    }
    for name, text in want.items():
        path = tmp_path / f"{name}.eng"
        for cmd in (["run", str(path)], ["bench", str(path), "--iterations", "2", "--no-energy"]):
            proc = _cli(*cmd)
            lines = proc.stderr.strip().splitlines()
            assert proc.returncode == 2, (name, cmd[0], proc.stderr)
            assert len(lines) == 1 and text in lines[0] and str(path) in lines[0], (name, lines)
            assert "Traceback" not in proc.stderr
    # inspect reads any verified engine file without loading it, and says whether it would
    proc = _cli("inspect", str(mlp_engine))
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert (
        "here    loads on this machine" in out and "profile 0: x: min 1x16 opt 4x16 max 8x16" in out
    )
    assert sum(" ecoinfer.FusedGemm " in ln for ln in out.splitlines()) == 2
    proc = _cli("inspect", str(tmp_path / "mismatch.eng"))
    assert proc.returncode == 0 and "would be refused: torch: engine '0.0.1'" in proc.stdout
    proc = _cli("inspect", str(tmp_path / "tampered.eng"))
    assert proc.returncode == 2 and "checksum mismatch" in proc.stderr
    # the mismatch names the command that rebuilds it, profile and precision included
    proc = _cli("run", str(tmp_path / "mismatch.eng"))
    assert "--fp32 --min-shapes x:1x16 --opt-shapes x:4x16 --max-shapes x:8x16" in proc.stderr
    with pytest.raises(EngineFileError, match="malformed"):
        load_engine(tmp_path / "forged.eng")


def test_cli_run_outside_every_profile_names_the_engine_file(mlp_engine) -> None:  # noqa: ANN001
    proc = _cli("run", str(mlp_engine), "--shapes", "x:9x16")
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    assert f"{mlp_engine}: input 'x' has shape [9, 16]" in lines[0]
    assert "profile 0: [1..8]x16" in lines[0] and "--max-shapes" in lines[0]


def test_tuning_progress_in_a_log_is_a_line_every_interval(monkeypatch, capsys) -> None:  # noqa: ANN001
    """Off a terminal (a log file, CI) a long build says where it is every 30 s, on lines of
    their own; on a terminal it rewrites one line."""
    from ecoinfer.engine import builder  # noqa: PLC0415

    now = [100.0]
    monkeypatch.setattr(builder.time, "perf_counter", lambda: now[0])
    show = builder._Progress(True)
    show("layer 1/9")
    now[0] += 31
    show("layer 5/9")
    now[0] += 10
    show("layer 6/9")
    show.end()
    assert capsys.readouterr().err == "layer 5/9 (31 s)\n"
    monkeypatch.setattr(builder.sys.stderr, "isatty", lambda: True)
    show = builder._Progress(True)
    show("layer 1/9")
    show("layer 2/9")
    show.end()
    assert capsys.readouterr().err == "\rlayer 1/9\rlayer 2/9\n"
    show = builder._Progress(False)
    show("layer 1/9")
    show.end()
    assert capsys.readouterr().err == ""


def test_a_tactic_that_no_longer_applies_is_named(mlp_engine, monkeypatch) -> None:  # noqa: ANN001
    """A layer whose recorded tactic does not apply when the file is loaded (say, a library that
    offers fewer algorithms than at build time) runs its reference kernel, and the engine says
    so instead of falling back silently."""
    from ecoinfer.tune import tactics as tactic_registry

    engine = load_engine(mlp_engine, "cpu")
    tuned = {n: c.tactic for n, c in engine.choices.items() if c.tactic != "reference"}
    assert tuned and not any("does not apply here" in w for w in engine.warnings)
    real = tactic_registry.tactics_for

    def refusing(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        return [dataclasses.replace(t, make=lambda *a, **k: None) for t in real(*args, **kwargs)]

    monkeypatch.setattr(tactic_registry, "tactics_for", refusing)
    again = load_engine(mlp_engine, "cpu")
    named = [w for w in again.warnings if "does not apply here" in w]
    assert len(named) == len(tuned) and all(w.split(":")[0] in tuned for w in named)
    x = {"x": np.ones((2, 16), np.float32)}
    np.testing.assert_allclose(again.run(x)["y"], engine.run(x)["y"], rtol=1e-5, atol=1e-5)
