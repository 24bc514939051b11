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
from helpers import EXPORTERS, SENTENCES, assert_close, numpy_feeds, run_onnxruntime
from models import CASES

import ecoinfer
from ecoinfer.errors import ModelLoadError

pytestmark = pytest.mark.slow


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
