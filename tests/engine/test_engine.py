"""Engine build / file / runtime on the CPU target (CI has no GPU)."""

from __future__ import annotations

import hashlib
import json
import pickle
import struct
import subprocess
import sys
import threading

import numpy as np
import pytest
import torch
from helpers import assert_close, run_onnxruntime

from ecoinfer.engine.builder import BuildConfig, build, load_engine
from ecoinfer.engine.format import (
    MAGIC,
    EngineFileError,
    EngineMismatchError,
    read_engine,
    write_engine,
)
from ecoinfer.engine.runtime import ShapeProfile
from ecoinfer.errors import IndexOutOfRangeError, InputShapeError

SHAPES = ("input_ids", "attention_mask", "token_type_ids")


def _profile(lo: tuple, opt: tuple, hi: tuple) -> ShapeProfile:
    return ShapeProfile({n: lo for n in SHAPES}, {n: opt for n in SHAPES}, {n: hi for n in SHAPES})


@pytest.fixture(scope="module")
def engine_file(minilm, tmp_path_factory):  # noqa: ANN001, ANN201
    path, _ = minilm
    eng = build(path, BuildConfig(profiles=[_profile((1, 1), (4, 16), (8, 64))], device="cpu"))
    out = tmp_path_factory.mktemp("eng") / "minilm.eng"
    eng.save(out)
    return out, eng


def test_engine_round_trip_matches_onnxruntime(minilm, engine_file) -> None:  # noqa: ANN001
    path, feeds = minilm
    out, built = engine_file
    eng = load_engine(out)
    assert eng.precision == "float32" and eng.fingerprint["device_type"] == "cpu"
    assert len(eng.graph.nodes) == len(built.graph.nodes)
    got = eng.run(feeds)
    assert_close(got, run_onnxruntime(path, feeds), "engine fp32 (cpu)")
    mem = eng.report["memory"]["profile 0"]
    assert 0 < mem["peak_activation_bytes"] < mem["naive_activation_bytes"]


def test_profile_violation_names_input_and_ranges(engine_file) -> None:  # noqa: ANN001
    eng = load_engine(engine_file[0])
    bad = {n: np.ones((1, 100), np.int64) for n in SHAPES}
    with pytest.raises(
        InputShapeError, match=r"input 'input_ids' has shape \[1, 100\].*\[1\.\.8\]x\[1\.\.64\]"
    ):
        eng.run(bad)


def test_index_inputs_checked_before_running(engine_file) -> None:  # noqa: ANN001
    eng = load_engine(engine_file[0])
    feeds = {n: np.zeros((1, 8), np.int64) for n in SHAPES}
    feeds["input_ids"][0, 3] = 10**6
    with pytest.raises(IndexOutOfRangeError, match="input 'input_ids' holds index 1000000"):
        eng.run(feeds)


def test_truncated_tampered_and_foreign_files(engine_file, tmp_path) -> None:  # noqa: ANN001
    data = engine_file[0].read_bytes()
    cut = tmp_path / "cut.eng"
    cut.write_bytes(data[: len(data) - 1000])
    with pytest.raises(EngineFileError, match="truncated or was modified"):
        load_engine(cut)
    cut.write_bytes(data[:30])
    with pytest.raises(EngineFileError, match="truncated"):
        load_engine(cut)
    bad = bytearray(data)
    bad[-5] ^= 0xFF  # one flipped bit in the weights
    tampered = tmp_path / "t.eng"
    tampered.write_bytes(bytes(bad))
    with pytest.raises(EngineFileError, match="checksum mismatch"):
        load_engine(tampered)
    other = tmp_path / "model.onnx"
    other.write_bytes(b"\x08\x07" + b"x" * 100)
    with pytest.raises(EngineFileError, match="not an ecoinfer engine file"):
        load_engine(other)


def test_other_machine_or_stack_is_refused_with_what_differs(engine_file, tmp_path) -> None:  # noqa: ANN001
    header, tensors = read_engine(engine_file[0])
    header["fingerprint"] = dict(
        header["fingerprint"], device_name="NVIDIA H100 80GB HBM3", torch="2.11.0+cu130"
    )
    moved = write_engine(tmp_path / "moved.eng", header, tensors)
    with pytest.raises(EngineMismatchError) as e:
        load_engine(moved)
    msg = str(e.value)
    assert (
        "device_name: engine 'NVIDIA H100 80GB HBM3'" in msg
        and "torch: engine '2.11.0+cu130'" in msg
    )
    assert "ecoinfer build" in msg and "\n" not in msg
    eng = load_engine(moved, allow_mismatch=True)
    assert any("mismatch" in w for w in eng.warnings)


def test_loading_never_unpickles(engine_file, monkeypatch) -> None:  # noqa: ANN001
    def refuse(*a, **k):  # noqa: ANN002, ANN003, ANN202
        raise AssertionError("an engine file must not be unpickled")

    monkeypatch.setattr(pickle, "loads", refuse)
    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(torch, "load", refuse)
    load_engine(engine_file[0])
    raw = engine_file[0].read_bytes()
    (n,) = struct.unpack("<Q", raw[len(MAGIC) : len(MAGIC) + 8])
    json.loads(raw[len(MAGIC) + 8 : len(MAGIC) + 8 + n])  # the header is plain JSON


def test_contexts_share_weights_and_threads_agree(minilm, engine_file) -> None:  # noqa: ANN001
    _, feeds = minilm
    eng = load_engine(engine_file[0])
    a, b = eng.create_context(), eng.create_context()
    ref = a.run(feeds)["last_hidden_state"]
    assert np.array_equal(b.run(feeds)["last_hidden_state"], ref)
    results, errors = [], []

    def worker() -> None:
        try:
            for _ in range(3):
                results.append(eng.run(feeds)["last_hidden_state"])
        except Exception as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(results) == 12
    assert all(np.array_equal(r, ref) for r in results)


def test_shape_specialisations_are_cached(engine_file) -> None:  # noqa: ANN001
    eng = load_engine(engine_file[0])
    ctx = eng.create_context()
    for s in (8, 16, 8):
        ctx.run({n: np.ones((2, s), np.int64) for n in SHAPES})
    assert len(ctx._plans) == 2


def test_per_layer_profile_covers_every_layer(engine_file) -> None:  # noqa: ANN001
    eng = load_engine(engine_file[0])
    ctx = eng.create_context()
    times = ctx.profile_layers({n: np.ones((2, 8), np.int64) for n in SHAPES}, iterations=3)
    assert set(times) == {n.name for n in ctx._plans[next(iter(ctx._plans))].graph.nodes}
    assert all(len(v) == 3 and all(t >= 0 for t in v) for v in times.values())
    assert sum(sum(v) for v in times.values()) > 0


def test_cold_start_imports_no_sympy(engine_file) -> None:  # noqa: ANN001
    # torch.broadcast_shapes imports sympy (2.4 s on the H200 machine): load + first run of
    # an engine, and the Triton tactics' make(), must not
    code = (
        "import sys, numpy as np, torch\n"
        "from ecoinfer.engine.builder import load_engine\n"
        "from ecoinfer.kernels.triton.norms import _params_fit\n"
        "from ecoinfer.tune.tactics import TensorInfo as T\n"
        f"e = load_engine({str(engine_file[0])!r})\n"
        f"e.run({{n: np.ones((2, 8), np.int64) for n in {SHAPES!r}}})\n"
        "h = torch.float16\n"
        "assert _params_fit([T((2, 8, 768), h), T((768,), h), T((768,), h)], 2, 3)\n"
        "print('sympy' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == "False"


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "ecoinfer.cli", *args], capture_output=True, text=True, timeout=600
    )


def test_build_cli_with_check_accuracy_and_errors(minilm, tmp_path) -> None:  # noqa: ANN001
    path, _ = minilm
    out = tmp_path / "m.eng"
    shapes = [f"{n}:2x16" for n in SHAPES]
    proc = _cli(
        "build",
        str(path),
        "-o",
        str(out),
        "--shapes",
        *shapes,
        "--check-accuracy",
        "--device",
        "cpu",
    )
    assert proc.returncode == 0, proc.stderr
    assert "accuracy last_hidden_state" in proc.stdout and "FAIL" not in proc.stdout
    assert "planned vs" in proc.stdout and "reference" in proc.stdout
    proc = _cli("run", str(out))
    assert proc.returncode == 0 and "float32[2x16x384]" in proc.stdout, proc.stderr
    proc = _cli("build", str(path), "-o", str(out), "--layer-precision", "nocolon")
    assert proc.returncode == 2 and "REGEX:PRECISION" in proc.stderr
    proc = _cli("build", str(path), "-o", str(out), "--min-shapes", *shapes)
    assert proc.returncode == 2 and "together" in proc.stderr
    proc = _cli("build", str(path), "-o", str(out), "--tf32", "--device", "cpu")
    assert proc.returncode == 2 and "tf32" in proc.stderr


def test_weights_are_checked_even_under_a_valid_checksum(tmp_path) -> None:  # noqa: ANN001
    # the checksum guards against damage, not against a forger: a re-hashed file whose
    # weights table points outside the file must still fail cleanly
    from ecoinfer.engine.format import MAGIC, _canonical, read_engine, write_engine  # noqa: PLC0415

    good = tmp_path / "good.eng"
    w = {
        "w": torch.arange(6, dtype=torch.float16).reshape(2, 3),
        "i": torch.tensor([7], dtype=torch.int8),
    }
    write_engine(good, {"plan": {}}, w)
    header, got = read_engine(good)
    assert (
        set(got) == {"w", "i"} and torch.equal(got["w"], w["w"]) and torch.equal(got["i"], w["i"])
    )

    raw = good.read_bytes()
    (n,) = struct.unpack_from("<Q", raw, len(MAGIC))
    blob = raw[len(MAGIC) + 8 + n :]
    (hn,) = struct.unpack_from("<Q", blob, 0)
    meta = json.loads(blob[8 : 8 + hn])
    meta["w"]["data_offsets"] = [0, 10**12]
    forged_meta = json.dumps(meta).encode()
    forged = struct.pack("<Q", len(forged_meta)) + forged_meta + blob[8 + hn :]
    body = dict(header)
    body["sha256"] = hashlib.sha256(_canonical(header) + forged).hexdigest()
    data = _canonical(body)
    bad = tmp_path / "bad.eng"
    bad.write_bytes(MAGIC + struct.pack("<Q", len(data)) + data + forged)
    with pytest.raises(EngineFileError, match="weights section cannot be read.*out of bounds"):
        read_engine(bad)


def test_weights_load_as_views_not_copies(tmp_path) -> None:  # noqa: ANN001
    """The header is padded so the weights section is 64-byte aligned: every tensor (odd
    sizes, mixed dtypes) is a view into the one read buffer, none a private copy."""
    from ecoinfer.engine.format import MAGIC, read_engine, write_engine  # noqa: PLC0415

    w = {
        "a": torch.arange(3, dtype=torch.int8),
        "b": torch.randn(5, 3).half(),
        "c": torch.randn(7),
        "d": torch.arange(3, dtype=torch.int64),
    }
    for extra in range(5):  # header lengths with every remainder mod 8 in practice
        path = tmp_path / f"e{extra}.eng"
        write_engine(path, {"plan": {}, "pad": "x" * extra}, w)
        raw = path.read_bytes()
        (n,) = struct.unpack_from("<Q", raw, len(MAGIC))
        assert (len(MAGIC) + 8 + n) % 64 == 0
        _, got = read_engine(path)
        blob = raw[len(MAGIC) + 8 + n :]
        (hn,) = struct.unpack_from("<Q", blob, 0)
        begin = {k: v["data_offsets"][0] for k, v in json.loads(blob[8 : 8 + hn]).items()}
        first = min(got, key=lambda k: begin[k])
        for k, t in got.items():
            assert torch.equal(t, w[k])
            # views into one buffer sit as far apart in memory as in the file
            assert t.data_ptr() - got[first].data_ptr() == begin[k] - begin[first], k


def test_fixed_shape_profile_folds_shape_arithmetic(minilm, engine_file) -> None:  # noqa: ANN001
    """One profile with min = opt = max: the inputs are bound to that shape before optimizing,
    so the mask's index arithmetic (Shape, Range, Expand, Unsqueeze) folds into constants; the
    outputs are those of the dynamic-shape engine and of onnxruntime."""
    path, feeds = minilm
    shape = tuple(np.asarray(feeds["input_ids"]).shape)
    static = build(path, BuildConfig(profiles=[_profile(shape, shape, shape)], device="cpu"))
    _, dynamic = engine_file
    ops = static.graph.op_histogram()
    assert not {"Shape", "Range", "Expand", "GatherND"} & set(ops), ops  # the mask: a Reshape
    assert len(static.graph.nodes) < len(dynamic.graph.nodes)
    got = static.run(feeds)
    assert_close(got, dynamic.run(feeds), "static vs dynamic engine")
    assert_close(got, run_onnxruntime(path, feeds), "static engine vs onnxruntime")
    with pytest.raises(InputShapeError):  # the profile still bounds what it accepts
        static.run({k: np.concatenate([v, v]) for k, v in feeds.items()})


def test_tensor_feeds_validated_once_per_signature(engine_file, monkeypatch) -> None:  # noqa: ANN001
    """Tensor feeds of a signature that passed once skip validate_inputs; anything else (new
    shape, dtype or names, numpy arrays) is validated again, and index values always are."""
    from ecoinfer.engine import runtime  # noqa: PLC0415
    from ecoinfer.errors import InputDTypeError, UnknownInputError  # noqa: PLC0415

    calls = []
    real = runtime.validate_inputs
    monkeypatch.setattr(runtime, "validate_inputs", lambda *a: calls.append(1) or real(*a))
    ctx = load_engine(engine_file[0]).create_context()
    feeds = {n: torch.ones((2, 8), dtype=torch.int64) for n in SHAPES}
    first = ctx.run(feeds)
    again = ctx.run({n: t.clone() for n, t in feeds.items()})
    assert len(calls) == 1
    for k in first:
        np.testing.assert_array_equal(first[k], again[k])
    ctx.run({n: torch.ones((2, 16), dtype=torch.int64) for n in SHAPES})  # a new shape
    assert len(calls) == 2
    ctx.run({n: np.ones((2, 16), np.int64) for n in SHAPES})  # numpy: always validated
    assert len(calls) == 3
    with pytest.raises(InputDTypeError, match="input_ids"):
        ctx.run({**feeds, "input_ids": feeds["input_ids"].int()})
    with pytest.raises(UnknownInputError, match="input_idz"):
        ctx.run({**{n: feeds[n] for n in SHAPES[1:]}, "input_idz": feeds["input_ids"]})
    with pytest.raises(InputShapeError, match="input_ids"):
        ctx.run({n: torch.ones((1, 100), dtype=torch.int64) for n in SHAPES})
    bad = {n: t.clone() for n, t in feeds.items()}  # the validated signature, a bad index
    bad["input_ids"][0, 3] = 10**6
    with pytest.raises(IndexOutOfRangeError, match="input 'input_ids' holds index 1000000"):
        ctx.run(bad)
