"""Calibration runs and Q/DQ insertion: exact INT8 emulation on a hand-built model, keep_fp,
and all-MiniLM-L6-v2 (real weights) against FP32 on held-out English sentences."""

from __future__ import annotations

import importlib
import inspect
import re

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from ecoinfer.api import Model
from ecoinfer.frontend.onnx import import_onnx
from ecoinfer.ir.graph import Value
from ecoinfer.passes.manager import OptimizeConfig, optimize
from ecoinfer.quant import CalibrationDataError
from ecoinfer.quant.quantize import (
    QuantizationError,
    calibrate,
    calibrate_methods,
    quant_targets,
    quantize_graph,
)


# ------------------------------------------------------------------------ tiny hand-built model
def _tiny_model(seed: int = 0) -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    """y = relu(x @ W1 + b1) @ W2, with x [batch, 4], W1 [4, 3], W2 [3, 2]."""
    rng = np.random.default_rng(seed)
    w1 = rng.normal(size=(4, 3)).astype(np.float32)
    b1 = rng.normal(size=(3,)).astype(np.float32)
    w2 = rng.normal(size=(3, 2)).astype(np.float32)
    nodes = [
        helper.make_node("MatMul", ["x", "W1"], ["h0"], name="fc1"),
        helper.make_node("Add", ["h0", "b1"], ["h1"], name="bias1"),
        helper.make_node("Relu", ["h1"], ["h"], name="relu1"),
        helper.make_node("MatMul", ["h", "W2"], ["y"], name="fc2"),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 2])],
        [
            numpy_helper.from_array(w1, "W1"),
            numpy_helper.from_array(b1, "b1"),
            numpy_helper.from_array(w2, "W2"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    return model, {"W1": w1, "b1": b1, "W2": w2}


def _q(x: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """Symmetric int8 codes: round half to even, saturate (QuantizeLinear, zero point 0)."""
    return np.clip(np.round(x / scale), -128, 127).astype(np.int64)


def _wq(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-output-channel (column of a [K, N] MatMul weight) symmetric int8."""
    s = (np.abs(w).max(axis=0) / np.float32(127)).astype(np.float32)
    return np.clip(np.round(w / s), -127, 127).astype(np.int64), s


@pytest.mark.parametrize("level", [0, 2])
def test_tiny_model_matches_hand_computed_int8(level: int) -> None:
    model, p = _tiny_model()
    graph, _ = optimize(import_onnx(model), OptimizeConfig(level=level))
    rng = np.random.default_rng(1)
    calib = [{"x": rng.normal(size=(8, 4)).astype(np.float32)} for _ in range(3)]
    amax = calibrate(graph, calib, method="minmax")

    # min-max thresholds by hand: max |x| and max |relu(x W1 + b1)| over all batches
    xs = np.concatenate([b["x"] for b in calib])
    h_fp = np.maximum(xs @ p["W1"] + p["b1"], 0)
    assert sorted(amax.values()) == pytest.approx(
        sorted([np.abs(xs).max(), np.abs(h_fp).max()]), rel=1e-6
    )
    sx = np.float32(np.abs(xs).max() / 127)
    sh = np.float32(np.abs(h_fp).max() / 127)

    qgraph = quantize_graph(graph, amax)
    hist = qgraph.op_histogram()
    assert hist["QuantizeLinear"] == 2 and hist["DequantizeLinear"] == 4
    # the float weights are gone, their int8 codes are stored instead
    int8 = [t for t in qgraph.initializers.values() if t.dtype == torch.int8 and t.dim() == 2]
    assert len(int8) == 2

    x = rng.normal(size=(5, 4)).astype(np.float32) * 1.5  # some values beyond amax: saturate
    y = Model(qgraph).run({"x": x})["y"]

    # INT8 by hand: integer products accumulated exactly, rescaled, float epilogue
    w1q, s1 = _wq(p["W1"])
    w2q, s2 = _wq(p["W2"])
    acc1 = _q(x, sx) @ w1q  # int64 accumulator
    h = np.maximum(acc1 * (np.float64(sx) * s1.astype(np.float64)) + p["b1"], 0)
    acc2 = _q(h.astype(np.float32), sh) @ w2q
    want = acc2 * (np.float64(sh) * s2.astype(np.float64))
    np.testing.assert_allclose(y, want, rtol=1e-5, atol=1e-5)
    # and quantization really happened: the FP32 result differs by far more than that
    y_fp = Model(graph).run({"x": x})["y"]
    assert np.abs(y_fp - want).max() > 1e-3


def test_keep_fp_leaves_matched_node_in_float() -> None:
    model, _ = _tiny_model()
    graph = import_onnx(model)
    amax = calibrate(graph, [{"x": np.ones((2, 4), np.float32)}], method="minmax")
    qgraph = quantize_graph(graph, amax, keep_fp=[r"^fc1$"])
    nodes = {n.name: n for n in qgraph.nodes}
    assert nodes["fc1"].inputs == ["x", "W1"]  # untouched: float activation, float weight
    assert qgraph.initializers["W1"].dtype == torch.float32
    assert nodes["fc2"].inputs != ["h", "W2"]  # the other MatMul reads Q/DQ outputs
    assert "W2" not in qgraph.initializers
    assert qgraph.op_histogram()["QuantizeLinear"] == 1
    # keeping every node leaves the graph as it was
    same = quantize_graph(graph, {}, keep_fp=["fc"])
    assert [n.op_type for n in same.nodes] == [n.op_type for n in graph.nodes]


def test_errors() -> None:
    model, _ = _tiny_model()
    graph = import_onnx(model)
    with pytest.raises(QuantizationError, match="no calibration threshold"):
        quantize_graph(graph, {})
    with pytest.raises(QuantizationError, match="not supported"):
        quantize_graph(graph, {}, precision="int4")
    with pytest.raises(QuantizationError, match="regular expression"):
        quantize_graph(graph, {}, keep_fp=["("])
    with pytest.raises(CalibrationDataError, match="no batches"):
        calibrate(graph, [])


def test_calibrate_streams_and_honours_max_batches() -> None:
    model, _ = _tiny_model()
    graph = import_onnx(model)
    consumed = []

    def batches():  # a generator: calibrate must not need a list
        for k in range(10):
            consumed.append(k)
            yield {"x": np.full((2, 4), float(k + 1), np.float32)}

    amax = calibrate(graph, batches(), method="minmax", max_batches=3)
    assert amax["x"] == 3.0
    assert len(consumed) <= 4
    assert [t.node.name for t in quant_targets(graph)] == ["fc1", "fc2"]


def test_calibration_runs_on_the_builds_device(tmp_path, monkeypatch) -> None:  # noqa: ANN001
    """An --int8 build calibrates with the reference runner on the build's device (a GPU
    build on its GPU): the device reaches the runner through QuantizeOptions."""
    from ecoinfer.engine.builder import BuildConfig, build  # noqa: PLC0415
    from ecoinfer.kernels import runner as runner_mod  # noqa: PLC0415
    from ecoinfer.quant.budget import QuantizeOptions  # noqa: PLC0415

    seen: list[str] = []

    class Recording(runner_mod.ReferenceRunner):
        def __init__(self, graph, device="cpu"):  # noqa: ANN001, ANN204
            seen.append(str(device))
            super().__init__(graph, device)

    monkeypatch.setattr(runner_mod, "ReferenceRunner", Recording)
    model, _ = _tiny_model()
    path = tmp_path / "tiny.onnx"
    onnx.save(model, path)
    calib = tmp_path / "calib"
    calib.mkdir()
    np.savez(calib / "b0.npz", x=np.ones((2, 4), np.float32))
    quant = QuantizeOptions(calib_data=str(calib), calib_method="minmax", smooth_alpha=0.5)
    build(path, BuildConfig(device="cpu", tune=False, quant=quant))
    assert seen[:2] == ["cpu", "cpu"]  # smoothing statistics, then calibration
    seen.clear()
    amax = calibrate(import_onnx(model), [{"x": np.ones((2, 4), np.float32)}], "minmax",
                     device="cpu:0")  # fmt: skip
    assert seen == ["cpu:0"] and amax["x"] == 1.0


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_calibration_on_the_gpu_matches_the_cpu() -> None:
    model, _ = _tiny_model()
    graph = import_onnx(model)
    rng = np.random.default_rng(0)
    data = [{"x": rng.normal(size=(64, 4)).astype(np.float32)} for _ in range(4)]
    for method in ("minmax", "entropy", "percentile", "mse"):
        cpu = calibrate(graph, data, method)
        gpu = calibrate(graph, data, method, device="cuda")
        assert set(cpu) == set(gpu)
        for k in cpu:
            assert gpu[k] == pytest.approx(cpu[k], rel=1e-3), (method, k)


# ------------------------------------------------------------------------ all-MiniLM-L6-v2
# English text that ships offline: docstrings of standard-library modules and of their public
# classes and functions; calibration and held-out sentences come from different modules
CAL_MODULES = (
    "argparse", "configparser", "socketserver", "fileinput", "cmd", "io", "copy", "csv",
    "hashlib", "sched", "statistics", "timeit", "difflib", "json", "heapq", "shutil",
    "tempfile", "textwrap", "string", "random", "fractions", "decimal", "calendar", "bisect",
    "functools", "collections", "pathlib", "logging", "threading", "subprocess",
)  # fmt: skip
HELD_MODULES = (
    "pdb", "doctest", "pydoc", "shelve", "ssl", "plistlib", "ast", "sqlite3", "tokenize",
    "getopt", "mimetypes", "pprint", "inspect", "optparse", "gettext", "pickle", "platform",
    "tarfile", "zipfile", "gzip", "smtplib", "ftplib", "imaplib", "poplib", "queue",
    "selectors", "traceback", "warnings", "contextlib", "dataclasses",
)  # fmt: skip
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z])")


def stdlib_sentences(modules: tuple[str, ...], limit: int) -> list[str]:
    out: list[str] = []
    seen: set[str] = set()
    for name in modules:
        try:
            mod = importlib.import_module(name)
        except ImportError:  # a module missing from this Python build
            continue
        docs = [inspect.getdoc(mod) or ""]
        for attr, obj in sorted(vars(mod).items()):
            if attr.startswith("_") or getattr(obj, "__module__", None) != name:
                continue
            if inspect.isclass(obj) or inspect.isfunction(obj):
                docs.append(inspect.getdoc(obj) or "")
        for doc in docs:
            for para in re.split(r"\n\s*\n", doc):
                if ">>>" in para or "::" in para:  # code examples
                    continue
                for s in _SENTENCE_END.split(" ".join(para.split())):
                    prose = sum(c.isalpha() or c == " " for c in s)
                    if 30 <= len(s) <= 200 and prose >= 0.85 * len(s) and s not in seen:
                        seen.add(s)
                        out.append(s)
    step = max(1, len(out) // limit)  # spread the picks over all the modules
    return out[::step][:limit]


def _pooled(model: Model, feeds: dict[str, np.ndarray]) -> np.ndarray:
    """Mean of the token embeddings over the real (unpadded) tokens."""
    h = model.run(feeds)["last_hidden_state"].astype(np.float64)
    m = feeds["attention_mask"][..., None].astype(np.float64)
    return (h * m).sum(1) / m.sum(1)


def _mean_cosine(model: Model, batches: list[dict], refs: list[np.ndarray]) -> float:
    cos = []
    for feeds, ref in zip(batches, refs):
        e = _pooled(model, feeds)
        cos.append((e * ref).sum(1) / (np.linalg.norm(e, axis=1) * np.linalg.norm(ref, axis=1)))
    return float(np.concatenate(cos).mean())


def _exact(names: list[str]) -> list[str]:
    return [f"^{re.escape(n)}$" for n in names]


def test_minilm_int8_matches_fp32_on_held_out_sentences(minilm_export) -> None:  # noqa: ANN001
    import ecoinfer.models.minilm as mm  # noqa: PLC0415

    path, _ = minilm_export(True)
    tok = mm.load_minilm_tokenizer()
    graph, _ = optimize(import_onnx(str(path)), OptimizeConfig(level=2))

    calib_sents = stdlib_sentences(CAL_MODULES, 256)
    held_sents = stdlib_sentences(HELD_MODULES, 128)
    assert len(calib_sents) >= 200 and len(held_sents) >= 100
    assert not set(calib_sents) & set(held_sents)

    def batches(sents: list[str]) -> list[dict[str, np.ndarray]]:  # padded to the batch max
        return [mm.sample_inputs(sents[i : i + 32], tok) for i in range(0, len(sents), 32)]

    calib, held = batches(calib_sents), batches(held_sents)
    amax = calibrate_methods(graph, calib, ("entropy", "percentile", "minmax"))
    fp32 = Model(graph)
    refs = [_pooled(fp32, f) for f in held]

    # every FusedGemm quantized (full INT8), for each calibration method
    full = {m: _mean_cosine(Model(quantize_graph(graph, a)), held, refs) for m, a in amax.items()}

    # mixed precision, as the accuracy budget builds it: rank the layers by their sensitivity
    # (quantize one at a time) on calibration sentences, keep the most sensitive in float until
    # the calibration-set cosine reaches 0.997; then measure on the held-out sentences
    ent = amax["entropy"]
    names = [t.node.name for t in quant_targets(graph)]
    probe = calib[:1]
    probe_refs = [_pooled(fp32, f) for f in probe]
    sens = {
        n: 1.0
        - _mean_cosine(
            Model(quantize_graph(graph, ent, keep_fp=_exact([k for k in names if k != n]))),
            probe,
            probe_refs,
        )
        for n in names
    }
    ranked = sorted(names, key=lambda n: -sens[n])
    kept: list[str] = []
    for n in ranked:
        qgraph = quantize_graph(graph, ent, keep_fp=_exact(kept))
        if _mean_cosine(Model(qgraph), probe, probe_refs) >= 0.997:
            break
        kept.append(n)
    mixed = _mean_cosine(Model(qgraph), held, refs)

    hist = qgraph.op_histogram()
    print(
        f"\nMiniLM INT8 vs FP32, mean cosine of pooled embeddings over {len(held_sents)} held-out"
        f" sentences ({len(calib_sents)} calibration sentences): full INT8 "
        + ", ".join(f"{m} {c:.4f}" for m, c in full.items())
        + f"; entropy with {len(kept)}/{len(names)} most sensitive layers kept in FP32 "
        f"{mixed:.4f} ({hist['QuantizeLinear']} quantized activations)"
    )
    assert hist["QuantizeLinear"] > 0
    assert mixed >= 0.995
    assert len(kept) <= len(names) // 2
    for m, c in full.items():
        assert c >= 0.94, f"full INT8 with {m} calibration: cosine {c:.4f}"


@pytest.mark.parametrize("level", [0, 2, 3])
def test_conv_weights_per_output_channel(level: int) -> None:
    rng = np.random.default_rng(2)
    w = rng.normal(size=(3, 2, 3, 3)).astype(np.float32)
    w[1] *= 10  # channels of very different ranges: per-channel scales matter
    b = rng.normal(size=(3,)).astype(np.float32)
    nodes = [
        helper.make_node("Conv", ["x", "W", "B"], ["c"], name="conv", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["y"], name="relu"),
    ]
    g = helper.make_graph(
        nodes,
        "conv",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 5, 5])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, 5, 5])],
        [numpy_helper.from_array(w, "W"), numpy_helper.from_array(b, "B")],
    )
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    graph, _ = optimize(import_onnx(model), OptimizeConfig(level=level))
    x = rng.normal(size=(1, 2, 5, 5)).astype(np.float32)
    amax = calibrate(graph, [{"x": x}], method="minmax")
    qgraph = quantize_graph(graph, amax)
    assert qgraph.op_histogram()["QuantizeLinear"] == 1
    y = Model(qgraph).run({"x": x})["y"]

    sx = np.float32(np.abs(x).max() / 127)
    sw = (np.abs(w).reshape(3, -1).max(axis=1) / np.float32(127)).astype(np.float32)
    wq = np.clip(np.round(w / sw[:, None, None, None]), -127, 127)
    xq = _q(x, sx)
    acc = torch.nn.functional.conv2d(
        torch.from_numpy(xq.astype(np.float64)), torch.from_numpy(wq.astype(np.float64)), padding=1
    ).numpy()  # integer-valued: exact in float64
    want = np.maximum(acc * (np.float64(sx) * sw[None, :, None, None]) + b[None, :, None, None], 0)
    np.testing.assert_allclose(y, want, rtol=1e-5, atol=1e-5)


def test_fp8_quantization_by_hand() -> None:
    """precision="fp8": amax / 448 scales (weights per tensor), float8e4m3fn codes and zero
    points, ONNX opset 19+ Q/DQ arithmetic (saturate to +-448, round to the nearest E4M3)."""
    model, p = _tiny_model()
    graph = import_onnx(model)
    rng = np.random.default_rng(3)
    calib = [{"x": rng.normal(size=(8, 4)).astype(np.float32)}]
    amax = calibrate(graph, calib, method="minmax")
    qgraph = quantize_graph(graph, amax, "fp8")
    f8 = torch.float8_e4m3fn
    zps = [t for n, t in qgraph.initializers.items() if n.endswith("zero_point")]
    assert zps and all(t.dtype == f8 and float(t) == 0 for t in zps)
    codes = [t for t in qgraph.initializers.values() if t.dtype == f8 and t.dim() == 2]
    assert len(codes) == 2
    w1 = torch.from_numpy(p["W1"])
    s1 = w1.abs().max() / 448
    assert torch.equal(codes[0], (w1 / s1).to(f8))  # FP8 weights: one scale per tensor
    assert float(codes[0].float().abs().max()) == 448.0

    x = (rng.normal(size=(5, 4)) * 2).astype(np.float32)  # beyond amax: saturates at 448
    sx = np.float32(np.abs(calib[0]["x"]).max() / 448)
    xq = torch.from_numpy(np.clip(x / sx, -448, 448)).to(f8).float().numpy()
    h = np.maximum((xq * sx) @ (codes[0].float() * s1).numpy() + p["b1"], 0)
    # the first layer's output, read from the Q/DQ graph
    qgraph.outputs.append(Value("h", "float32", None))
    got = Model(qgraph).run({"x": x})["h"]
    np.testing.assert_allclose(got, h, rtol=1e-5, atol=1e-5)
