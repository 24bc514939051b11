"""The torch-free runtime (ecoinfer/lean) and the launch recorder (engine/lean_record.py).

On the CPU: the runtime imports neither torch nor Triton, parameters are packed as Triton's
launcher packs them, the file checks and errors, and the build side (--lean on a CPU build,
single elementwise ops wrapped for their Triton tactic, the Triton preference). On a GPU: an
engine built with --lean replays in a fresh process without torch, bit-identical."""

from __future__ import annotations

import ctypes
import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import compiled_run
from test_link_skip import _block

from ecoinfer.engine.builder import BuildConfig, build
from ecoinfer.engine.container import EngineFileError, read_container
from ecoinfer.engine.format import write_engine
from ecoinfer.engine.runtime import ShapeProfile
from ecoinfer.lean.params import pack, pack_float

ROOT = Path(__file__).resolve().parents[2]
CUDA = torch.cuda.is_available()
SHAPE = {"x": (8, 16)}


def test_lean_runtime_imports_neither_torch_nor_triton() -> None:
    out = compiled_run([
        "-c",
        "import sys, ecoinfer.lean, ecoinfer.commands.run_lean, ecoinfer.cli\n"
        "ecoinfer.cli.build_parser()\n"
        "print(sorted(m for m in ('torch', 'triton') if m in sys.modules))",
    ])  # fmt: skip
    assert out.strip() == "[]"


def test_parameters_packed_as_tritons_launcher_packs_them() -> None:
    args = [
        ["p", 1, 48],
        ["i32", -7],
        ["fp32", 0.1],
        ["i64", 2**40 + 3],
        ["fp16", 1.5],
        ["bf16", -2.0],
        ["i1", 1],
        ["tma", 0, 16, {"tag": 5}],
        ["i32", 64],
        ["p0"],
        ["scratch", "global"],
        ["scratch", "profile"],
    ]
    tma_calls = []

    def encode(out: int, address: int, spec: dict) -> None:
        tma_calls.append((out, address, spec))
        ctypes.memmove(out, bytes([spec["tag"]]) * 128, 128)

    p = pack(args, lambda r, o: 0x1000 * (r + 1) + o, {"global": 0xABC, "profile": 0}.get, encode)
    # natural alignment per type, 64 for the CUtensorMap
    assert p.offsets == [0, 8, 12, 16, 24, 26, 28, 64, 192, 200, 208, 216]
    assert p.base % 64 == 0

    def at(k: int, n: int) -> bytes:
        return ctypes.string_at(p.pointers[k], n)

    assert struct.unpack("<Q", at(0, 8))[0] == 0x2000 + 48
    assert struct.unpack("<i", at(1, 4))[0] == -7
    assert at(2, 4) == struct.pack("<f", 0.1)
    assert struct.unpack("<q", at(3, 8))[0] == 2**40 + 3
    assert at(4, 2) == struct.pack("<e", 1.5)
    assert at(5, 2) == struct.pack("<f", -2.0)[2:]  # bf16: float32's upper half, as Triton
    assert at(6, 1) == b"\x01"
    assert at(7, 128) == bytes([5]) * 128 and tma_calls[0][1] == 0x1000 + 16
    assert struct.unpack("<Q", at(9, 8))[0] == 0
    assert struct.unpack("<Q", at(10, 8))[0] == 0xABC and struct.unpack("<Q", at(11, 8))[0] == 0
    with pytest.raises(ValueError, match="unknown float"):
        pack_float("fp8", 1.0)


def test_container_tensor_table_matches_the_written_tensors(tmp_path: Path) -> None:
    ts = {
        "a": torch.arange(6, dtype=torch.float16).reshape(2, 3),
        "b": torch.tensor([1, -2, 3], dtype=torch.int64),
        "c": torch.zeros(0, dtype=torch.float32),
    }
    path = write_engine(tmp_path / "e.eng", {"x": 1}, ts)
    header, raw, table = read_container(path)
    assert header["x"] == 1
    for name, t in ts.items():
        dt, shape, begin, end = table[name]
        assert shape == list(t.shape)
        assert bytes(raw[begin:end]) == t.numpy().tobytes()


def test_lean_load_errors_name_the_file(tmp_path: Path) -> None:
    from ecoinfer.lean import load

    with pytest.raises(EngineFileError, match="no such engine file"):
        load(tmp_path / "missing.eng")
    bad = tmp_path / "bad.eng"
    bad.write_bytes(b"not an engine")
    with pytest.raises(EngineFileError, match="bad.eng: not an ecoinfer engine file"):
        load(bad)


def test_cli_run_lean_reports_a_missing_file_in_one_line(tmp_path: Path) -> None:
    r = subprocess.run(
        [sys.executable, "-m", "ecoinfer.cli", "run", str(tmp_path / "none.eng"), "--lean"],
        capture_output=True,
        text=True,
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
        timeout=120,
    )
    assert r.returncode != 0
    assert "none.eng: no such engine file" in r.stderr
    assert "Traceback" not in r.stderr


@pytest.mark.skipif(CUDA, reason="checks the message on a machine without a CUDA driver")
def test_lean_without_a_cuda_driver_says_so(tmp_path: Path) -> None:
    from ecoinfer.lean import LeanCudaError, load

    if os.path.exists("/dev/nvidiactl"):
        pytest.skip("this machine has an NVIDIA driver")
    eng = build(
        _block(tmp_path / "b.onnx"),
        BuildConfig(device="cpu", profiles=[ShapeProfile(SHAPE, SHAPE, SHAPE)]),
    )
    path = eng.save(str(tmp_path / "b.eng"))
    with pytest.raises(LeanCudaError, match="needs the NVIDIA driver"):
        load(path)


def test_lean_cpu_build_warns_and_keeps_the_engine(tmp_path: Path) -> None:
    eng = build(
        _block(tmp_path / "b.onnx"),
        BuildConfig(device="cpu", profiles=[ShapeProfile(SHAPE, SHAPE, SHAPE)], lean=True),
    )
    assert any("--lean applies to CUDA builds" in w for w in eng.warnings)
    assert eng.lean_section is None
    x = np.random.default_rng(0).standard_normal((8, 16)).astype(np.float32)
    assert np.isfinite(eng.run({"x": x})["y"]).all()


def test_single_elementwise_ops_are_wrapped_under_their_own_names() -> None:
    from ecoinfer.ir.graph import Graph, Node, Value
    from ecoinfer.passes.fuse_elementwise import wrap_single_elementwise

    g = Graph(name="g")
    g.inputs = [Value("x", "float16", (4, 8))]
    g.values["x"] = g.inputs[0]
    g.nodes = [Node("Cast", ["x"], ["y"], {"to": 1}, "out_cast", "")]
    g.values["y"] = Value("y", "float32", (4, 8))
    g.outputs = [Value("y", "float32", (4, 8))]
    counts = wrap_single_elementwise(g)
    assert counts["wrapped"] == 1
    (n,) = g.nodes
    assert (n.domain, n.op_type, n.name, n.outputs) == (
        "ecoinfer",
        "FusedElementwise",
        "out_cast",
        ["y"],
    )
    assert [m.op_type for m in n.attrs["body"].nodes] == ["Cast"]


def test_prefer_triton_ranks_a_passing_triton_tactic_first(monkeypatch: pytest.MonkeyPatch) -> None:
    """A build info with prefer_triton picks a (slower) triton_* candidate over the reference."""
    import time

    from ecoinfer.ir.graph import Node
    from ecoinfer.tune import autotune
    from ecoinfer.tune.tactics import BuildInfo, TacticSpec

    def make(node, attrs, infos, cfg, build):  # noqa: ANN001, ANN202
        def run(xs):  # noqa: ANN001, ANN202
            time.sleep(0.002)
            return [torch.relu(xs[0])]

        return run

    spec = TacticSpec("triton_slow", "Relu", "", make, devices=("cpu",), dtypes=("float32",))
    node = Node("Relu", ["x"], ["y"], {}, "r", "")
    x = torch.randn(64)

    def choose(prefer: bool) -> str:
        info = BuildInfo(torch.device("cpu"), "float32", {}, prefer_triton=prefer)
        ch, _ = autotune._select(
            node, {}, [x], info, lambda xs: [torch.relu(xs[0])], None, None, 1.0, [spec]
        )
        return ch.tactic

    assert choose(False) == "reference"
    assert choose(True) == "triton_slow"


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")
@pytest.mark.parametrize("precision", ["float16", "float32"])
def test_lean_engine_replays_bit_identical_without_torch(tmp_path: Path, precision: str) -> None:
    eng = build(
        _block(tmp_path / "b.onnx"),
        BuildConfig(
            device="cuda",
            precision=precision,
            profiles=[ShapeProfile(SHAPE, SHAPE, SHAPE)],
            lean=True,
        ),
    )
    rep = eng.report["lean"]
    assert "error" not in rep, rep
    assert rep["bit_identical"] and rep["cuda_graphs"], rep
    path = eng.save(str(tmp_path / "b.eng"))
    x = np.random.default_rng(1).standard_normal((8, 16)).astype(np.float32)
    want = eng.run({"x": x})["y"]
    np.save(tmp_path / "x.npy", x)
    out = compiled_run([
        "-c",
        "import sys, json, numpy as np\n"
        "from ecoinfer.lean import load\n"
        f"e = load({str(path)!r})\n"
        f"x = np.load({str(tmp_path / 'x.npy')!r})\n"
        "ys = [e.run({'x': x})['y'] for _ in range(3)]\n"
        f"np.save({str(tmp_path / 'y.npy')!r}, ys[0])\n"
        "print(json.dumps({'torch': 'torch' in sys.modules, 'triton': 'triton' in sys.modules,"
        " 'same': all((y == ys[0]).all() for y in ys)}))",
    ])  # fmt: skip
    info = json.loads(out.strip().splitlines()[-1])
    assert info == {"torch": False, "triton": False, "same": True}
    got = np.load(tmp_path / "y.npy")
    assert got.dtype == want.dtype and np.array_equal(got, want)


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")
def test_lean_rejects_other_shapes_dtypes_and_a_plain_engine(tmp_path: Path) -> None:
    from ecoinfer.errors import InputDTypeError, InputShapeError
    from ecoinfer.lean import LeanEngineError, load

    cfg = {
        "device": "cuda",
        "precision": "float16",
        "profiles": [ShapeProfile(SHAPE, SHAPE, SHAPE)],
    }
    plain = build(_block(tmp_path / "b.onnx"), BuildConfig(**cfg)).save(str(tmp_path / "p.eng"))
    with pytest.raises(LeanEngineError, match="no lean section"):
        load(plain)
    lean = load(
        build(_block(tmp_path / "b.onnx"), BuildConfig(**cfg, lean=True)).save(
            str(tmp_path / "l.eng")
        )
    )
    with pytest.raises(InputShapeError, match="recorded"):
        lean.run({"x": np.zeros((4, 16), np.float32)})
    with pytest.raises(InputDTypeError, match="never casts"):
        lean.run({"x": np.zeros((8, 16), np.float64)})
    lean.close()


def test_non_finite_float_parameters_travel_as_text() -> None:
    """Strict JSON has no inf/nan: the recorder writes them as text, the packer reads both."""
    p = pack(
        [["fp32", "-inf"], ["fp16", "nan"], ["fp64", "inf"]], lambda r, o: 0, lambda k: 0, None
    )
    assert ctypes.string_at(p.pointers[0], 4) == struct.pack("<f", float("-inf"))
    assert np.isnan(np.frombuffer(ctypes.string_at(p.pointers[1], 2), np.float16)[0])
    assert ctypes.string_at(p.pointers[2], 8) == struct.pack("<d", float("inf"))


def test_recorder_places_every_pointer_in_a_region() -> None:
    """assemble() turns recorded pointers into (region, offset): a weight the file carries by
    name, a tactic-made constant copied into the blob, the input, an activation; an output
    view keeps its offset and strides; a cubin the carried binaries lack goes inline."""
    import base64
    from types import SimpleNamespace

    from ecoinfer.engine.lean_record import LeanProgram, LeanRecordError, _Recorder, assemble
    from ecoinfer.ir.graph import Graph

    w = torch.arange(16, dtype=torch.float32)  # a weight of the engine
    packed = torch.full((8,), 2.0, dtype=torch.float16)  # a copy a tactic made at load
    x = torch.zeros(4, dtype=torch.int64)  # the input buffer
    act = torch.empty(32, dtype=torch.float32)  # allocated during the run

    def extent(t: torch.Tensor) -> tuple[int, int]:
        st = t.untyped_storage()
        return st.data_ptr(), st.data_ptr() + st.nbytes()

    rec = _Recorder(sorted(extent(t) for t in (w, packed, x)))
    md = SimpleNamespace(num_warps=4, num_ctas=1, shared=0, launch_pdl=True)
    sig = {
        "W": "*fp32",
        "P": "*fp16",
        "X": "*i64",
        "Y": "*fp32",
        "n": "i32",
        "f": "fp32",
        "B": "constexpr",
    }
    kernel = SimpleNamespace(hash="h0", name="k", kernel=b"CUBIN", metadata=md,
                             src=SimpleNamespace(signature=sig))  # fmt: skip
    rec.layer = "layer_1"
    rec.launch(kernel, (3, 1, 1), (w, packed, x, act[8:], 5, float("-inf"), 64))
    out = act[4:12]
    rec.note_tensor(out)
    engine = SimpleNamespace(weights={"w": w}, graph=Graph(name="g"))
    prog = LeanProgram({"x": [4]}, rec, {"x": x}, {"y": out}, {})
    section, tensors = assemble(engine, [prog], {})

    kinds = [r["kind"] for r in section["regions"]]
    r_w, r_p, r_x = (kinds.index(k) for k in ("weight", "const", "input"))
    r_a = kinds.index("activation")
    assert section["regions"][r_w]["tensor"] == "w/w"
    blob = tensors["lean/blob"]
    off = section["regions"][r_p]["blob_offset"]
    assert bytes(blob[off : off + 16].numpy()) == packed.numpy().tobytes()
    assert section["regions"][r_x]["name"] == "x" and section["regions"][r_a]["bytes"] == 128
    (launch,) = section["programs"][0]["launches"]
    assert launch["grid"] == [3, 1, 1] and launch["layer"] == "layer_1"
    assert launch["params"] == [
        ["p", r_w, 0], ["p", r_p, 0], ["p", r_x, 0], ["p", r_a, 32], ["i32", 5], ["fp32", "-inf"],
        ["scratch", "global"], ["scratch", "profile"],
    ]  # fmt: skip
    y = section["programs"][0]["outputs"]["y"]
    assert (y["region"], y["offset"], y["shape"], y["strides"], y["dtype"]) == (
        r_a,
        16,
        [8],
        [1],
        "float32",
    )
    k = section["kernels"]["h0"]
    assert base64.b64decode(k["cubin_b64"]) == b"CUBIN" and k["launch_pdl"] is True
    # the runtime's load-time checks accept this section and refuse pointers past a region
    from ecoinfer.lean.runtime import LeanEngine

    lean = LeanEngine.__new__(LeanEngine)
    lean.path, lean.stream, lean._scratch = "e.eng", ctypes.c_void_p(0), {"global": 0, "profile": 0}
    lean._functions = {"h0": ctypes.c_void_p(0)}
    sizes = [r["bytes"] for r in section["regions"]]
    lean._sizes, lean._bases = sizes, [0x10000 * (k + 1) for k in range(len(sizes))]
    compiled = lean._program(section["programs"][0], section["kernels"])
    assert len(compiled.launches) == 1 and compiled.launches[0].config.blockDimX == 128
    bad = json.loads(json.dumps(section["programs"][0]))
    bad["launches"][0]["params"][3][2] = 129  # past the 128-byte activation
    with pytest.raises(EngineFileError, match="points outside its memory regions"):
        lean._program(bad, section["kernels"])
    bad = json.loads(json.dumps(section["programs"][0]))
    bad["outputs"]["y"]["offset"] = 100  # 8 floats from byte 100 overrun the region
    with pytest.raises(EngineFileError, match="points outside"):
        lean._program(bad, section["kernels"])
    # a pointer into memory the recorder never saw cannot be replayed
    rec.launches.append(
        {"kernel": "h0", "grid": [1, 1, 1], "params": [["ptr", 16]], "layer": "bad"}
    )
    with pytest.raises(LeanRecordError, match="bad: a kernel argument points at GPU memory"):
        assemble(engine, [prog], {})


def test_run_lean_draws_inputs_as_ecoinfer_run_does(tmp_path: Path) -> None:
    """Ids inside the table they index, masks ones, type ids zeros; given files kept as given."""
    from types import SimpleNamespace

    from ecoinfer.commands.run_lean import _given, lean_inputs
    from ecoinfer.errors import InputError

    specs = {
        "input_ids": {"shape": [2, 8], "dtype": "int64"},
        "attention_mask": {"shape": [2, 8], "dtype": "int64"},
        "token_type_ids": {"shape": [2, 8], "dtype": "int64"},
        "x": {"shape": [3], "dtype": "float16"},
    }
    eng = SimpleNamespace(programs=[SimpleNamespace(inputs=specs)], index_inputs={"input_ids": 5})
    given = np.array([7.0, 8.0, 9.0], np.float16)
    np.save(tmp_path / "x.npy", given)
    feeds = lean_inputs(eng, 0, _given([f"x={tmp_path / 'x.npy'}"]))
    assert (
        feeds["input_ids"].dtype == np.int64
        and 0 <= feeds["input_ids"].min() <= feeds["input_ids"].max() < 5
    )
    assert (feeds["attention_mask"] == 1).all() and (feeds["token_type_ids"] == 0).all()
    assert np.array_equal(feeds["x"], given) and feeds["x"].dtype == np.float16
    with pytest.raises(InputError, match="no such file"):
        _given([f"x={tmp_path / 'missing.npy'}"])
