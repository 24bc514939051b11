"""Real models end to end: torch module -> ONNX (both torch exporters) -> ecoinfer vs onnxruntime.

Each model is exported once per session (cached under tmp_path_factory) and run on the same
random inputs by onnxruntime (CPUExecutionProvider) and ecoinfer; every output must agree to
1e-5 relative error (||out - ref|| / ||ref||). The inputs use another batch size (and for
GPT-2 another sequence length) than the export, so the symbolic dims are exercised too.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from models import CASES

import ecoinfer
from ecoinfer.errors import EcoinferError, ModelLoadError
from ecoinfer.frontend.torch import export_module

ort = pytest.importorskip("onnxruntime")

RTOL = 1e-5
EXPORTERS = {"dynamo": True, "torchscript": False}
SENTENCES = [
    "How do I reset my password?",
    "My parcel never arrived and nobody answered my emails for a week.",
    "Can I get a refund for a damaged item?",
    "Thanks, that solved it!",
]

pytestmark = pytest.mark.slow


def rel_error(out: np.ndarray, ref: np.ndarray) -> tuple[float, float]:
    """(relative L2 error, max abs error), computed in float64."""
    o, r = np.asarray(out, np.float64), np.asarray(ref, np.float64)
    diff = np.linalg.norm(o - r)
    rel = float(diff / np.linalg.norm(r)) if np.linalg.norm(r) > 0 else float(diff)
    return rel, float(np.max(np.abs(o - r))) if o.size else 0.0


def assert_close(outs: dict[str, np.ndarray], refs: dict[str, np.ndarray], what: str) -> None:
    assert set(outs) == set(refs), f"{what}: output names {sorted(outs)} != {sorted(refs)}"
    for name, ref in refs.items():
        out = outs[name]
        assert out.shape == ref.shape, f"{what} '{name}': shape {out.shape} != {ref.shape}"
        assert out.dtype == ref.dtype, f"{what} '{name}': dtype {out.dtype} != {ref.dtype}"
        assert np.isfinite(out).all(), f"{what} '{name}': non-finite values"
        rel, max_abs = rel_error(out, ref)
        assert rel <= RTOL, (
            f"{what} '{name}': rel error {rel:.3e} > {RTOL:g} (max abs error {max_abs:.3e})"
        )


def run_onnxruntime(path: Path, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 2  # the CPU is shared: keep to 2 cores
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(names, feeds)))


def numpy_feeds(inputs: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
    return {k: v.numpy() for k, v in inputs.items()}


@pytest.fixture(scope="session")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str, bool], Path]:
    """export(name, dynamo) -> ONNX path; each (model, exporter) is exported once a session."""
    root = tmp_path_factory.mktemp("onnx_models")
    cache: dict[tuple[str, bool], Path] = {}

    def get(name: str, dynamo: bool) -> Path:
        key = (name, dynamo)
        if key not in cache:
            case = CASES[name]
            path = root / f"{name}_{'dynamo' if dynamo else 'torchscript'}.onnx"
            cache[key] = export_module(case.build(), case.inputs(2), path, dynamo=dynamo)
        return cache[key]

    return get


@pytest.mark.parametrize("exporter", list(EXPORTERS))
@pytest.mark.parametrize("name", list(CASES))
def test_model_matches_onnxruntime(
    name: str, exporter: str, exported: Callable[[str, bool], Path]
) -> None:
    path = exported(name, EXPORTERS[exporter])
    model = ecoinfer.load(path)
    # the export used batch 2: batch 3 (and seq 12 for GPT-2) checks the symbolic dims
    case = CASES[name]
    inputs = case.inputs(3)
    if name == "gpt2":
        inputs = {k: v[:, :12].contiguous() for k, v in inputs.items()}
    assert [v.shape[0] for v in model.inputs if v.shape] == ["batch"] * len(model.inputs)
    feeds = numpy_feeds(inputs)
    refs = run_onnxruntime(path, feeds)
    outs = model.run(feeds)
    assert_close(outs, refs, f"{name} ({exporter} export)")


@pytest.mark.parametrize("exporter", list(EXPORTERS))
def test_load_module(exporter: str) -> None:
    """ecoinfer.load(nn.Module, example_inputs): exports in memory and runs like the module."""
    case = CASES["mobilenet_v3"]
    module = case.build()
    model = ecoinfer.load(module, case.inputs(2), dynamo=EXPORTERS[exporter])
    assert [(v.name, v.shape) for v in model.inputs] == [("x", ("batch", 3, 64, 64))]
    assert [v.name for v in model.outputs] == ["output"]
    inputs = case.inputs(3)
    with torch.no_grad():
        ref = module(**inputs).numpy()
    assert_close(model.run(numpy_feeds(inputs)), {"output": ref}, f"load(module, {exporter})")


def test_load_module_export_error_is_one_line() -> None:
    class Bad(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.diff(x, dim=-1)  # aten::diff has no TorchScript ONNX symbolic

    with pytest.raises(ModelLoadError, match="TorchScript ONNX exporter failed") as info:
        ecoinfer.load(Bad(), (torch.randn(2, 3),), dynamic_axes={}, dynamo=False)
    assert "\n" not in str(info.value)


# ---------------------------------------------------------------------------- MiniLM
@pytest.fixture(scope="session")
def minilm(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, np.ndarray]]:
    """all-MiniLM-L6-v2 with its real weights, exported once (dynamo) with batch/seq axes."""
    mm = pytest.importorskip("ecoinfer.models.minilm")
    try:
        mm.minilm_dir()
    except EcoinferError as e:
        pytest.skip(str(e))
    tok = mm.load_minilm_tokenizer()
    path = tmp_path_factory.mktemp("minilm") / "minilm.onnx"
    mm.export_minilm_onnx(path, dynamo=True, tokenizer=tok)
    return path, mm.sample_inputs(SENTENCES, tok)


def test_minilm_matches_onnxruntime(minilm: tuple[Path, dict[str, np.ndarray]]) -> None:
    path, feeds = minilm
    model = ecoinfer.load(path)
    assert [(v.name, v.shape) for v in model.inputs] == [
        (n, ("batch", "seq")) for n in ("input_ids", "attention_mask", "token_type_ids")
    ]
    assert feeds["attention_mask"].min() == 0, "the sentences should need padding"
    ref = run_onnxruntime(path, feeds)["last_hidden_state"]
    out = model.run(feeds)["last_hidden_state"]
    assert out.shape == (len(SENTENCES), feeds["input_ids"].shape[1], 384)
    assert_close({"last_hidden_state": out}, {"last_hidden_state": ref}, "all-MiniLM-L6-v2")
