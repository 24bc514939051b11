"""Engines of the three benchmark models, built and tuned on the GPU, against onnxruntime FP32.

MiniLM-L6 (its real weights), BERT-base and ResNet-50 (random weights, seed 0, as the
benchmark exports them) are each built for CUDA in FP16 and in FP32, tuned as `ecoinfer build`
tunes, and checked with the builder's own accuracy check (two random input sets at the built
shapes, onnxruntime on the CPU as the reference): relative L2 error within 1e-2 for FP16 and
1e-5 for FP32 on every output. GPU only: `bash bench/gpu_tests.sh` runs it.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from ecoinfer.engine.builder import BuildConfig, build, check_accuracy
from ecoinfer.engine.runtime import ShapeProfile
from ecoinfer.errors import EcoinferError

CUDA = torch.cuda.is_available()
TOKENS = ("input_ids", "attention_mask", "token_type_ids")
SHAPES = {
    "minilm": {k: (2, 128) for k in TOKENS},
    "bert-base": {k: (2, 128) for k in TOKENS},
    "resnet50": {"x": (4, 3, 224, 224)},
}
TOL = {"float16": 1e-2, "float32": 1e-5}


@pytest.fixture(scope="module")
def onnx_of(tmp_path_factory: pytest.TempPathFactory):  # noqa: ANN201
    """name -> the benchmark's ONNX export of that model, made once per module."""
    from ecoinfer.bench.peers import export_torch_model  # noqa: PLC0415

    root = tmp_path_factory.mktemp("exports")
    cache: dict[str, Path] = {}

    def get(name: str) -> Path:
        if name not in cache:
            try:
                cache[name] = export_torch_model(name, root)
            except EcoinferError as e:  # e.g. MiniLM's files or torchvision missing
                pytest.skip(f"{name}: {e}")
        return cache[name]

    return get


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")
@pytest.mark.parametrize("precision", ["float16", "float32"])
@pytest.mark.parametrize("model", list(SHAPES))
def test_engine_matches_onnxruntime(onnx_of, model: str, precision: str) -> None:  # noqa: ANN001
    path = onnx_of(model)
    shapes = SHAPES[model]
    engine = build(
        str(path),
        BuildConfig(
            precision=precision, device="cuda", profiles=[ShapeProfile(shapes, shapes, shapes)]
        ),
    )
    assert engine.device.type == "cuda" and engine.precision == precision
    rows = check_accuracy(engine, str(path))
    outputs = {r["output"] for r in rows}
    assert rows and len(rows) == 2 * len(outputs)  # two input sets, every output
    for r in rows:
        assert r["rel_error"] <= TOL[precision], (
            f"{model} {precision} '{r['output']}': rel error {r['rel_error']:.3e} > "
            f"{TOL[precision]:g} (max abs {r['max_abs_error']:.3e})"
        )
