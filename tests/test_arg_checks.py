"""Every command's arguments are checked before any work: bad numbers, and paths whose writing
would destroy something the user gave us, give one line and exit 2 (ecoinfer/commands/arg_checks.py).
Found by a bad-input audit: before, these overwrote models, caches and inputs, ran forever on
a NaN duration, or ended minutes of work in an internal error."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto as T
from onnx import helper, numpy_helper

from ecoinfer.cli import main


def _matmul_model(path: Path, width: int) -> Path:
    """y[n, width] = x[n, 4] @ ones(4, width)."""
    w = numpy_helper.from_array(np.ones((4, width), np.float32), "w")
    g = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")],
        "g",
        [helper.make_tensor_value_info("x", T.FLOAT, ["n", 4])],
        [helper.make_tensor_value_info("y", T.FLOAT, ["n", width])],
        initializer=[w],
    )
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


@pytest.fixture
def model(tmp_path: Path) -> Path:
    return _matmul_model(tmp_path / "m.onnx", 4)


def _err(capsys, argv: list[str], *needles: str) -> None:  # noqa: ANN001
    assert main(argv) == 2
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    for n in needles:
        assert n in lines[0], lines[0]


def test_outputs_never_overwrite_what_the_user_gave(model, tmp_path, capsys, monkeypatch) -> None:  # noqa: ANN001
    monkeypatch.chdir(tmp_path)
    before = model.read_bytes()
    m = str(model)
    cases = [
        (["build", m, "-o", "./m.onnx", "--device", "cpu"], "--output ./m.onnx", "MODEL"),
        (["bench", m, "--device", "cpu", "--export-json", m], "--export-json", "MODEL"),
        (["compare", m, "--json", m], "--json", "MODEL"),
        (["compare", m, "--markdown", "t.out", "--html", "t.out"], "one would be lost"),
        (["build", m, "-o", "t.json", "--timing-cache", "t.json"], "--timing-cache t.json"),
        (["build", m, "-o", "b.eng", "--int8", "--calib-cache", m], "--calib-cache", "MODEL"),
    ]
    for argv, *needles in cases:
        _err(capsys, argv, *needles)
    x = tmp_path / "x.npz"
    np.savez(x, x=np.ones((2, 4), np.float32))
    _err(capsys, ["run", m, "--device", "cpu", "--input", str(x), "-o", str(x)], "--input")
    assert model.read_bytes() == before  # nothing written over the model


def test_output_folders_are_checked_before_the_work(model, tmp_path, capsys) -> None:  # noqa: ANN001
    m = str(model)
    _err(capsys, ["optimize", m, "-o", str(tmp_path / "no" / "o.onnx")], "does not exist")
    (tmp_path / "d.eng").mkdir()
    _err(capsys, ["build", m, "-o", str(tmp_path / "d.eng"), "--device", "cpu"], "is a folder")
    _err(capsys, ["demo", "--cache-dir", m], "--cache-dir", "not a folder")


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["bench", "{m}", "--duration", "nan"], "--duration nan"),  # ran forever before
        (["bench", "{m}", "--duration", "inf"], "--duration inf"),
        (["bench", "{m}", "--iterations", "0"], "--iterations 0"),
        (["bench", "{m}", "--streams", "0"], "--streams 0"),
        (["bench", "{m}", "--declared-power-w", "-100"], "--declared-power-w -100"),
        (["run", "{m}", "--seed", "-1"], "--seed -1"),
        (["build", "{m}", "-o", "b.eng", "--int8", "--smooth", "2"], "--smooth 2"),
        (["tune-energy", "{m}", "--slo-ms", "nan"], "--slo-ms nan"),
        (["build", "{m}", "-o", "b.eng", "--sustained-tuning", "-5"], "--sustained-tuning -5"),
    ],
)
def test_bad_numbers_fail_up_front(model, capsys, argv, needle) -> None:  # noqa: ANN001
    _err(capsys, [a.format(m=model) for a in argv], needle)


def test_debug_flag_after_the_command(model, capsys) -> None:  # noqa: ANN001
    assert main(["bench", str(model), "--duration", "nan", "--debug"]) == 2
    assert "Traceback" in capsys.readouterr().err  # --debug shows it, wherever it is given


def test_run_writes_outputs_to_exactly_the_path_given(model, tmp_path, capsys) -> None:  # noqa: ANN001
    out = tmp_path / "outs"  # no .npz: numpy would have added one
    assert main(["run", str(model), "--device", "cpu", "--shapes", "x:2x4", "-o", str(out)]) == 0
    assert out.is_file() and not (tmp_path / "outs.npz").exists()
    assert np.load(out)["y"].shape == (2, 4)


def test_a_failed_accuracy_check_keeps_the_old_engine(model, tmp_path, capsys) -> None:  # noqa: ANN001
    eng = tmp_path / "m.eng"
    eng.write_bytes(b"the user's engine")
    argv = ["build", str(model), "-o", str(eng), "--device", "cpu", "--shapes", "x:2x4"]
    argv += ["--bf16", "--check-accuracy", "--check-tolerance", "1e-12"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "was not written" in err and eng.read_bytes() == b"the user's engine"


def test_a_closed_pipe_is_not_an_internal_error(model) -> None:  # noqa: ANN001
    proc = subprocess.run(
        f"{sys.executable} -m ecoinfer.cli inspect {model} --dump | head -1",
        shell=True,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.stdout.startswith("model") and "error" not in proc.stderr, proc.stderr


def test_more_bad_inputs_from_the_audit(model, tmp_path, capsys) -> None:  # noqa: ANN001
    m = str(model)
    eng = tmp_path / "m.eng"
    assert main(["build", m, "-o", str(eng), "--device", "cpu", "--shapes", "x:2x4"]) == 0
    capsys.readouterr()
    # a typo in --shapes was silently ignored by run, bench and compare
    for cmd in ("run", "bench", "compare"):
        _err(capsys, [cmd, m, "--device", "cpu", "--shapes", "y:2x4"], "'y'", "inputs: x")
    # an engine given where an ONNX model is needed says what it is
    _err(capsys, ["optimize", str(eng), "-o", str(tmp_path / "o.onnx")], "is an ecoinfer engine")
    (tmp_path / "x.eng").write_text("not an engine")
    _err(capsys, ["inspect", str(tmp_path / "x.eng")], "neither an ecoinfer engine file")
    # an engine cannot be timed on onnxruntime (it used to run on ecoinfer instead)
    _err(capsys, ["bench", str(eng), "--runner", "onnxruntime"], "drop --runner onnxruntime")
    # a compare whose every peer was skipped compared nothing
    assert main(["compare", m, "--device", "cpu", "--peers", f"engine:{tmp_path / 'x.eng'}"]) == 2
    err = capsys.readouterr().err  # the progress log, then the error
    assert err.splitlines()[-1].startswith("ecoinfer: error: every peer was skipped"), err
    # validation data is called validation data
    x = tmp_path / "cal"
    x.mkdir()
    np.savez(x / "b0.npz", x=np.ones((2, 4), np.float32))
    argv = ["build", m, "-o", str(tmp_path / "q.eng"), "--device", "cpu", "--int8"]
    argv += ["--calib-data", str(x), "--accuracy-budget", "0.9", "--val-data", str(tmp_path / "v")]
    _err(capsys, argv, "validation data (--val-data)", "does not exist")


def test_options_that_would_do_nothing_or_conflict(model, tmp_path, capsys) -> None:  # noqa: ANN001
    """Each of these used to be accepted and silently ignored (or resolved by a last-one-wins)."""
    m, out = str(model), str(tmp_path / "b.eng")
    build = ["build", m, "-o", out, "--device", "cpu"]
    _err(capsys, [*build, "--calib-method", "minmax"], "--calib-method", "add --int8 or --fp8")
    _err(capsys, [*build, "--no-quant-attention"], "--no-quant-attention only applies")
    cal = tmp_path / "cal"
    cal.mkdir()
    np.savez(cal / "b0.npz", x=np.ones((2, 4), np.float32))
    q = [*build, "--int8", "--calib-data", str(cal)]
    _err(capsys, [*q, "--budget-metric", "top1"], "--budget-metric is an option of --accuracy")
    _err(capsys, [*q, "--val-data", str(cal)], "--val-data is an option of --accuracy-budget")
    prof = ["--min-shapes", "x:1x4", "--opt-shapes", "x:2x4", "--max-shapes", "x:4x4"]
    _err(capsys, [*build, "--shapes", "x:2x4", *prof], "not both")
    _err(capsys, ["run", m, "--shapes", "x:2x4", "x:4x4"], "names 'x' twice")
    x = tmp_path / "x.npy"
    np.save(x, np.ones((2, 4), np.float32))
    _err(capsys, ["run", m, "--input", f"x={x}", "--input", f"x={x}"], "'x' is given twice")
    _err(capsys, ["run", m, "--input", f"x={x}", "--shapes", "x:4x4"], "contradicts the file")
    _err(capsys, ["bench", m, "--batch", "8", "--shapes", "x:2x4"], "--batch 8 with --shapes")
    # a calibration cache is reused with the calibrator it was made with, or not at all
    cache = str(tmp_path / "c.json")
    assert main([*q, "--calib-cache", cache, "--shapes", "x:2x4"]) == 0
    capsys.readouterr()
    _err(
        capsys,
        [*build, "--int8", "--calib-cache", cache, "--calib-method", "minmax"],
        "holds entropy thresholds",
    )
    # an engine's shapes and layers are fixed: ONNX-only inspect options are refused
    assert main([*build, "--shapes", "x:2x4"]) == 0
    capsys.readouterr()
    _err(capsys, ["inspect", out, "--dump"], "--dump applies to ONNX models")


def test_warnings_for_options_that_matched_nothing(model, tmp_path, capsys) -> None:  # noqa: ANN001
    argv = ["build", str(model), "-o", str(tmp_path / "b.eng"), "--device", "cpu"]
    argv += ["--shapes", "x:2x4", "--layer-precision", "nomatch.*:fp16", "--sustained-tuning", "1"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert 'warning: --layer-precision "nomatch.*:fp16" matches no layer' in out
    assert "warning: --sustained-tuning applies to CUDA builds" in out
    assert main(["run", str(model), "--device", "cpu"]) == 0
    assert "note: assumed n=8 (set with --shapes)" in capsys.readouterr().err


def test_a_long_calibration_says_it_is_still_reading(model, tmp_path, capsys, monkeypatch) -> None:  # noqa: ANN001
    """A script whose batches() never ends ran on without a word; now it is told (at 10, 100,
    ... batches past the threshold) to end it or give --calib-batches."""
    from ecoinfer.quant import quantize  # noqa: PLC0415

    monkeypatch.setattr(quantize, "LONG_CALIBRATION", 10)
    script = tmp_path / "cal.py"
    script.write_text(
        "import numpy as np\ndef batches():\n    for _ in range(12):\n"
        "        yield {'x': np.ones((2, 4), np.float32)}\n"
    )
    argv = ["build", str(model), "-o", str(tmp_path / "q.eng"), "--device", "cpu", "--int8"]
    assert main([*argv, "--calib-data", str(script), "--shapes", "x:2x4"]) == 0
    err = capsys.readouterr().err
    assert "calibration: 10 batches so far" in err and "--calib-batches N" in err


def test_tune_energy_and_report_name_bad_paths(model, tmp_path, capsys) -> None:  # noqa: ANN001
    # a missing calibration folder used to drop the INT8 rows and exit 0
    argv = ["tune-energy", str(model), "--slo-ms", "10", "--device", "cpu"]
    _err(capsys, [*argv, "--calib-data", str(tmp_path / "none")], "does not exist")
    _err(capsys, ["report", str(tmp_path)], "is a folder")


def test_inputs_that_share_a_dim_name_follow_the_one_given(tmp_path, capsys) -> None:  # noqa: ANN001
    """MiniLM's token_type_ids shares batch and seq with input_ids. Left out, it used to get
    default sizes: run failed ("inputs sharing a dimension name must agree"), and build tuned
    at a shape no call can have, then failed its accuracy check minutes later."""
    dims = ["batch", "seq"]
    g = helper.make_graph(
        [helper.make_node("Add", ["a", "b"], ["y"], name="add")],
        "g",
        [helper.make_tensor_value_info(n, T.FLOAT, dims) for n in ("a", "b")],
        [helper.make_tensor_value_info("y", T.FLOAT, dims)],
    )
    path = tmp_path / "two.onnx"
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), path)
    a = tmp_path / "a.npy"
    np.save(a, np.ones((3, 5), np.float32))
    for extra in (["--input", f"a={a}"], ["--shapes", "a:3x5"]):
        assert main(["run", str(path), "--device", "cpu", *extra]) == 0
        out = capsys.readouterr()
        assert "b                        float32[3x5] (random)" in out.out, out.out
        assert "note: assumed" not in out.err
    argv = ["build", str(path), "-o", str(tmp_path / "t.eng"), "--device", "cpu", "--no-tune"]
    argv += ["--min-shapes", "a:1x1", "--opt-shapes", "a:4x32", "--max-shapes", "a:8x64"]
    assert main(argv) == 0
    assert "b: [1..8]x[1..64] (opt 4x32)" in capsys.readouterr().out
    # bench --batch binds the batch by name; the sequence it had to assume, it names
    assert main(["bench", str(path), "--device", "cpu", "--batch", "2", "--iterations", "3"]) == 0
    assert "note: assumed seq=8 (set with --shapes)" in capsys.readouterr().err


def test_compare_skips_an_engine_of_another_model(model, tmp_path, capsys) -> None:  # noqa: ANN001
    """A MiniLM engine used to get a throughput row next to BERT-base (only a footnote said
    the outputs differed)."""
    eng = tmp_path / "m.eng"
    assert main(["build", str(model), "-o", str(eng), "--device", "cpu", "--shapes", "x:2x4"]) == 0
    other = _matmul_model(tmp_path / "other.onnx", 8)
    capsys.readouterr()
    argv = ["compare", str(other), "--device", "cpu", "--batch", "2", "--duration", "0.2"]
    assert main([*argv, "--warmup", "0", "--peers", f"onnxruntime,engine:{eng}"]) == 0
    err = capsys.readouterr().err
    assert "was built from another model: its output 'y' is" in err, err
