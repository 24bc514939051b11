"""Peers (ecoinfer.bench.peers): same inputs, same device, skipped rows with reasons, errors
against the FP32 baseline, energy labels. CPU only, tiny models, short windows."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from ecoinfer.bench import peers
from ecoinfer.bench.harness import BenchConfig
from ecoinfer.errors import InputError

FAST = BenchConfig(duration_s=0.2, warmup_s=0.05)


class TinyCNN(nn.Module):
    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.body = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1),
            nn.BatchNorm2d(8),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(8, 4),
        )
        self.eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


class TinyText(nn.Module):
    """Token ids + mask -> (hidden, pooled): the shape of a BERT-class model's outputs."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.emb = nn.Embedding(50, 16)
        self.proj = nn.Linear(16, 16)
        self.eval()

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        h = torch.tanh(self.proj(self.emb(input_ids))) * attention_mask.unsqueeze(-1).float()
        return h, h.mean(1)


def _export(module: nn.Module, example: tuple, path, names: list[str]):  # noqa: ANN001, ANN202
    from ecoinfer.frontend.torch import export_module

    axes = {n: {0: "batch"} | ({1: "seq"} if t.dim() == 2 else {}) for n, t in zip(names, example)}
    return export_module(module, example, path, input_names=names, dynamic_axes=axes, dynamo=False)


@pytest.fixture(scope="module")
def cnn(tmp_path_factory):  # noqa: ANN001, ANN201
    m = TinyCNN()
    path = _export(
        m, (torch.randn(2, 3, 16, 16),), tmp_path_factory.mktemp("cnn") / "cnn.onnx", ["x"]
    )
    return m, path


@pytest.fixture(scope="module")
def text(tmp_path_factory):  # noqa: ANN001, ANN201
    m = TinyText()
    ex = (torch.randint(0, 50, (2, 6)), torch.ones(2, 6, dtype=torch.int64))
    path = _export(
        m, ex, tmp_path_factory.mktemp("text") / "text.onnx", ["input_ids", "attention_mask"]
    )
    return m, path


def _energy_label_ok(r) -> None:  # noqa: ANN001
    """On this CPU the energy is RAPL (measured) or an estimate, and says which."""
    assert r.energy is not None
    assert r.energy.method in ("rapl", "estimated"), r.energy.method
    assert r.energy.measured is (r.energy.method != "estimated")
    assert r.j_per_inference is not None and r.j_per_inference > 0


def test_compare_cnn_with_module_on_cpu(cnn) -> None:  # noqa: ANN001
    module, path = cnn
    w0 = module.body[0].weight.detach().clone()
    comp = peers.compare(path, module, batch=3, device="cpu", config=FAST)
    by_default = [k for k in peers.PEERS if k not in peers.NOT_BY_DEFAULT]
    assert [r.extra["peer"] for r in comp.results] == by_default
    assert comp.device == "cpu" and comp.batch == 3
    assert comp.inputs == {"x": "float32[3x3x16x16]"}
    assert comp.baseline == "PyTorch eager FP32"

    ran = {r.extra["peer"]: r for r in comp.results if not r.skipped}
    skipped = {r.extra["peer"]: r.skipped for r in comp.results if r.skipped}
    assert set(ran) == {"torch-fp32", "onnxruntime", "ecoinfer-fp32", "ecoinfer-engine"}
    assert "CUDA only" in skipped["torch-fp16"]
    assert "CUDA only" in skipped["torch-compile"]
    assert "CUDA only" in skipped["torch-compile-fp16"]
    # on a CPU the engine row is an FP32 engine built for exactly these shapes
    assert ran["ecoinfer-engine"].name == "ecoinfer engine FP32"
    assert ran["ecoinfer-engine"].extra["rel_l2_error"] < 1e-5
    assert ran["onnxruntime"].name == "onnxruntime FP32 (CPU EP)"
    assert ran["ecoinfer-fp32"].name.startswith("ecoinfer reference fp32")

    base = ran["torch-fp32"]
    assert base.extra["energy_vs_baseline"] == pytest.approx(1.0)
    assert base.extra["rel_l2_error"] == 0.0
    for key in ("onnxruntime", "ecoinfer-fp32"):
        r = ran[key]
        assert r.batch == 3 and r.latency is not None and r.latency.n > 0
        assert r.throughput_per_s > 0
        assert r.extra["error_reference"] == "PyTorch eager FP32"
        assert r.extra["rel_l2_error"] < 1e-5, r.extra
        assert r.extra["max_abs_error"] < 1e-4
        expect = r.j_per_inference / base.j_per_inference
        assert r.extra["energy_vs_baseline"] == pytest.approx(expect)
    for r in ran.values():
        _energy_label_ok(r)
        assert r.energy.gpu_util_pct is None  # a CPU run has no GPU utilisation
    # the caller's module is neither moved nor cast nor changed
    assert module.body[0].weight.dtype == torch.float32
    assert torch.equal(module.body[0].weight, w0)
    assert comp.environment["torch"] == torch.__version__


def test_without_module_pytorch_peers_are_skipped_with_the_reason(text) -> None:  # noqa: ANN001
    _, path = text
    comp = peers.compare(
        path, device="cpu", batch=2, seq=5, config=FAST, peers="torch-fp32,torch-fp16,ecoinfer"
    )
    assert [r.skipped for r in comp.results[:2]] == [peers.NO_MODULE, peers.NO_MODULE]
    assert "nn.Module (Python API)" in peers.NO_MODULE and "--torch-model" in peers.NO_MODULE
    eco = comp.results[2]
    assert not eco.skipped
    # no PyTorch FP32: ecoinfer's FP32 is the baseline
    assert comp.baseline == eco.name
    assert eco.extra["energy_vs_baseline"] == pytest.approx(1.0)
    assert comp.inputs == {"input_ids": "int64[2x5]", "attention_mask": "int64[2x5]"}


def test_keyword_module_and_tuple_outputs(text) -> None:  # noqa: ANN001
    module, path = text
    comp = peers.compare(
        path, module, device="cpu", batch=2, seq=7, config=FAST, peers=["torch-fp32", "ecoinfer"]
    )
    eco = comp.result("ecoinfer-fp32")
    assert eco is not None and not eco.skipped
    assert len(eco.extra["errors_per_output"]) == 2  # hidden and pooled, matched by position
    assert eco.extra["rel_l2_error"] < 1e-5
    assert comp.warnings == []


def test_different_weights_are_flagged(cnn) -> None:  # noqa: ANN001
    _, path = cnn
    comp = peers.compare(
        path, TinyCNN(seed=1), device="cpu", batch=1, config=FAST, peers="torch-fp32,ecoinfer"
    )
    assert any("disagree" in w for w in comp.warnings), comp.warnings


def test_fp16_eager_copy_in_channels_last(cnn) -> None:  # noqa: ANN001
    module, path = cnn
    feeds = {"x": np.random.default_rng(0).standard_normal((2, 3, 16, 16)).astype(np.float32)}
    prep = peers.prepare_torch_eager(module, feeds, "cpu", fp16=True)
    assert prep.name == "PyTorch eager FP16 channels_last"
    assert prep.extra["precision"] == "fp16" and prep.extra["memory_format"] == "channels_last"
    out = prep.fn()
    assert out.dtype == torch.float16
    ref = module(torch.from_numpy(feeds["x"])).detach().numpy()
    err = peers.output_errors([peers._to_f64(out)], [ref.astype(np.float64)])
    assert err["rel_l2_error"] < 1e-2  # FP16 tolerance (DESIGN.md, Measuring)
    assert module.body[0].weight.dtype == torch.float32  # a copy was cast, not the module
    # token inputs are never cast, and no channels_last without a 4-D image
    tfeeds = peers.torch_inputs({"ids": np.zeros((2, 4), np.int64)}, "cpu", torch.float16, True)
    assert tfeeds["ids"].dtype == torch.int64


def test_torch_compile_modes_time_and_failure(cnn, text, monkeypatch) -> None:  # noqa: ANN001
    calls = []

    def fake_compile(m, mode=None):  # noqa: ANN001, ANN202
        calls.append(mode)
        return m

    monkeypatch.setattr(torch, "compile", fake_compile)
    cnn_mod, _ = cnn
    img = {"x": np.ones((1, 3, 16, 16), np.float32)}
    p = peers.prepare_torch_compile(cnn_mod, img, "cpu")
    assert calls == ["max-autotune-no-cudagraphs"]
    assert p.extra["compile_time_s"] >= 0 and "max-autotune-no-cudagraphs" in p.name
    txt_mod, _ = text
    ids = {"input_ids": np.ones((1, 4), np.int64), "attention_mask": np.ones((1, 4), np.int64)}
    p = peers.prepare_torch_compile(txt_mod, ids, "cpu")
    assert calls[-1] == "default" and p.extra["compile_mode"] == "default"

    def broken(m, mode=None):  # noqa: ANN001, ANN202
        raise RuntimeError("inductor exploded\nmore lines")

    monkeypatch.setattr(torch, "compile", broken)
    with pytest.raises(peers.Skip, match="torch.compile failed: RuntimeError: inductor exploded"):
        peers.prepare_torch_compile(cnn_mod, img, "cpu")


def test_onnxruntime_without_cuda_provider_is_skipped_on_gpu_runs(cnn, monkeypatch) -> None:  # noqa: ANN001
    ort = pytest.importorskip("onnxruntime")
    _, path = cnn
    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CPUExecutionProvider"])
    with pytest.raises(peers.Skip, match="CUDAExecutionProvider not available"):
        peers.prepare_onnxruntime(str(path), {"x": np.ones((1, 3, 16, 16), np.float32)}, "cuda")


def test_input_shapes(text, cnn) -> None:  # noqa: ANN001
    from ecoinfer.frontend.onnx import import_onnx

    g = import_onnx(text[1])
    assert peers.input_shapes(g, 4, 32) == {"input_ids": (4, 32), "attention_mask": (4, 32)}
    assert peers.input_shapes(g, 4, 32, {"input_ids": (1, 3)})["input_ids"] == (1, 3)
    g = import_onnx(cnn[1])
    assert peers.input_shapes(g, 5, 128) == {"x": (5, 3, 16, 16)}


def test_fixed_batch_is_refused(tmp_path) -> None:  # noqa: ANN001
    from ecoinfer.frontend.onnx import import_onnx

    m = TinyCNN()
    path = _export(m, (torch.randn(1, 3, 8, 8),), tmp_path / "fixed.onnx", ["x"])
    import onnx

    model = onnx.load(path)
    model.graph.input[0].type.tensor_type.shape.dim[0].dim_value = 1
    onnx.save(model, path)
    with pytest.raises(InputError, match="fixed batch dimension of 1"):
        peers.input_shapes(import_onnx(path), 8, 128)


def test_output_errors_and_flatten() -> None:
    ref = [np.array([1.0, 2.0, 2.0]), np.zeros((2, 2))]
    out = [np.array([1.0, 2.0, 2.3]), np.zeros((3,))]
    e = peers.output_errors(out, ref)
    assert e["rel_l2_error"] == pytest.approx(0.1)
    assert e["max_abs_error"] == pytest.approx(0.3)
    assert any("not compared" in n for n in e["notes"])
    t = torch.ones(2)
    assert len(peers.flatten_outputs({"a": t, "b": (t, None, [t])})) == 3
    assert len(peers.flatten_outputs(t)) == 1


def test_parse_peers() -> None:
    assert peers.parse_peers(None) == [k for k in peers.PEERS if k != "torch-compile-max-fp16"]
    # the CUDA-graph torch.compile peer runs when named (its autotuning takes minutes)
    assert peers.parse_peers("torch-compile-max-fp16,torch-fp16") == [
        "torch-fp16",
        "torch-compile-max-fp16",
    ]
    assert peers.parse_peers("ecoinfer,torch-fp32") == ["torch-fp32", "ecoinfer-fp32"]
    assert peers.parse_peers(["ort", "torch-compile"]) == ["torch-compile", "onnxruntime"]
    with pytest.raises(InputError, match="unknown peer"):
        peers.parse_peers("tensorrt")


def test_engine_file_peer(cnn, tmp_path) -> None:  # noqa: ANN001
    from ecoinfer.engine.builder import BuildConfig, build  # noqa: PLC0415
    from ecoinfer.engine.runtime import ShapeProfile  # noqa: PLC0415

    module, path = cnn
    shape = {"x": (3, 3, 16, 16)}
    eng = tmp_path / "cnn.eng"
    build(path, BuildConfig(device="cpu", profiles=[ShapeProfile(shape, shape, shape)])).save(eng)
    keys = peers.parse_peers(f"engine:{eng},torch-fp32")
    assert keys == ["torch-fp32", f"engine:{eng}"]
    comp = peers.compare(path, module, batch=3, device="cpu", config=FAST, peers=keys)
    r = comp.results[1]
    assert not r.skipped and r.name == "ecoinfer engine FP32 (cnn.eng)"
    assert r.extra["engine_file"] == str(eng) and r.extra["rel_l2_error"] < 1e-5
    assert r.throughput_per_s > 0
    with pytest.raises(InputError, match="no engine file"):
        peers.parse_peers(f"engine:{tmp_path}/missing.eng")
    # a batch outside the engine's profile is skipped with the reason
    comp = peers.compare(path, module, batch=2, device="cpu", config=FAST, peers=[f"engine:{eng}"])
    assert "outside every shape profile" in comp.results[0].skipped


def test_lowered_io_engine_peer_gets_float16_feeds(cnn, tmp_path) -> None:  # noqa: ANN001
    """A --lowered-io engine file in compare: its float32 feeds are cast to float16 once,
    before timing, its row says fp16 IO, and its error is measured like any other row's."""
    from ecoinfer.engine.builder import BuildConfig, build  # noqa: PLC0415
    from ecoinfer.engine.runtime import ShapeProfile  # noqa: PLC0415

    module, path = cnn
    shape = {"x": (3, 3, 16, 16)}
    eng = tmp_path / "cnn_low.eng"
    prof = [ShapeProfile(shape, shape, shape)]
    build(path, BuildConfig(precision="fp16", device="cpu", profiles=prof, lowered_io=True)).save(
        eng
    )
    comp = peers.compare(path, module, batch=3, device="cpu", config=FAST, peers=[f"engine:{eng}"])
    r = comp.results[0]
    assert not r.skipped, r.skipped
    assert r.name == "ecoinfer engine FP16 (cnn_low.eng) + fp16 IO"
    low = r.extra["lowered_io"]
    assert low["x"] == "float16" and len(low) == 2 and set(low.values()) == {"float16"}
    assert r.extra["rel_l2_error"] < 1e-2 and r.throughput_per_s > 0


def test_bert_base_by_name_is_bert_base_sized() -> None:
    pytest.importorskip("transformers")
    m = peers.load_torch_model("bert-base")
    assert m.config.hidden_size == 768 and m.config.num_hidden_layers == 12
    assert not m.training
    with pytest.raises(InputError, match="unknown model"):
        peers.load_torch_model("gpt-17")


@pytest.mark.slow
def test_minilm_module_against_its_onnx_export(minilm) -> None:  # noqa: ANN001
    """The bundled MiniLM as a PyTorch peer: keyword call, ModelOutput, same weights."""
    path, feeds = minilm
    module = peers.load_torch_model("minilm")
    comp = peers.compare(
        path, module, feeds=feeds, device="cpu", config=FAST, peers="torch-fp32,ecoinfer"
    )
    assert comp.batch == feeds["input_ids"].shape[0]
    eco = comp.result("ecoinfer-fp32")
    assert eco is not None and not eco.skipped, eco.skipped if eco else None
    assert eco.extra["rel_l2_error"] < 1e-4
    assert comp.warnings == []


def test_errors_without_a_timed_fp32_row(cnn) -> None:  # noqa: ANN001
    """No FP32 row among the peers: the error column still comes, from one untimed FP32 call
    of the module; the energy ratio (which needs a timed baseline) does not."""
    module, path = cnn
    comp = peers.compare(path, module, batch=3, device="cpu", config=FAST, peers="onnxruntime")
    (r,) = comp.results
    assert not r.skipped
    assert r.extra["error_reference"] == peers.UNTIMED_FP32
    assert r.extra["rel_l2_error"] < 1e-5 and r.extra["max_abs_error"] < 1e-4
    assert "energy_vs_baseline" not in r.extra and comp.baseline is None
    assert any("no FP32 baseline was timed" in w for w in comp.warnings)
    # the reference is really computed: a module with other weights gives a large error
    other = TinyCNN().eval()
    with torch.no_grad():
        for p in other.parameters():
            p.add_(0.5)
    comp2 = peers.compare(path, other, batch=3, device="cpu", config=FAST, peers="onnxruntime")
    assert comp2.results[0].extra["rel_l2_error"] > 1e-2
    # without a module there is nothing to compute it from: no error column, said so
    comp3 = peers.compare(path, None, batch=3, device="cpu", config=FAST, peers="onnxruntime")
    assert "rel_l2_error" not in comp3.results[0].extra
    assert any("no energy ratio or error column" in w for w in comp3.warnings)


def test_engine_precision_label() -> None:
    """Rows of quantized engines say what runs: 8-bit kernels next to float ones, or, where
    every quantized layer went to its float twin, that the 8-bit precision was only asked."""
    from types import SimpleNamespace

    from ecoinfer.bench.peers import engine_precision_label

    def eng(q):  # noqa: ANN001, ANN202
        return SimpleNamespace(precision="float16", report={"quantization": q} if q else {})

    assert engine_precision_label(eng(None)) == "FP16"
    assert engine_precision_label(eng({"precision": "fp8", "eight_bit": 48})) == "FP8 + FP16"
    none = eng({"precision": "fp8", "eight_bit": 0, "emulated": False})
    assert engine_precision_label(none) == "FP16 (FP8 asked: no layer runs in it)"
    emulated = eng({"precision": "int8", "eight_bit": 0, "emulated": True})
    assert engine_precision_label(emulated) == "INT8 (emulated on float kernels) + FP16"
    # an older build report without the count: as asked
    assert engine_precision_label(eng({"precision": "int8"})) == "INT8 + FP16"


def test_compile_max_peer_named_on_cpu(cnn) -> None:  # noqa: ANN001
    """The CUDA-graph torch.compile peer runs only when asked, and only on CUDA."""
    module, path = cnn
    comp = peers.compare(path, module, batch=1, device="cpu", config=FAST,
                         peers="torch-compile-max-fp16")  # fmt: skip
    (r,) = comp.results
    assert r.extra["peer"] == "torch-compile-max-fp16"
    assert r.skipped and "CUDA only" in r.skipped
