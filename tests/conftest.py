"""Shared test setup: makes tests/ importable so tests can `import models` (the builders)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

_TESTS = str(Path(__file__).resolve().parent)
if _TESTS not in sys.path:
    sys.path.insert(0, _TESTS)

# real-model tests read local files only (the bundled MiniLM); never reach the network
os.environ.setdefault("HF_HUB_OFFLINE", "1")
# Triton must know before its first import whether kernels run on the CPU interpreter; CI has
# no GPU (no NVIDIA driver device), so every Triton kernel test runs interpreted there
if not os.path.exists("/dev/nvidiactl"):
    os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


import pytest  # noqa: E402
from helpers import SENTENCES  # noqa: E402


@pytest.fixture(scope="session")
def exported(tmp_path_factory: pytest.TempPathFactory):  # noqa: ANN201
    """export(name, dynamo) -> ONNX path of a tests/models case; each exported once a session."""
    from models import CASES  # noqa: PLC0415

    from ecoinfer.frontend.torch import export_module  # noqa: PLC0415

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


@pytest.fixture(scope="session")
def minilm_export(tmp_path_factory: pytest.TempPathFactory):  # noqa: ANN201
    """minilm_export(dynamo) -> (ONNX path, feeds): all-MiniLM-L6-v2 with its real weights,
    exported once per exporter per session with batch/seq axes; feeds are 4 padded sentences."""
    from ecoinfer.errors import EcoinferError  # noqa: PLC0415

    mm = pytest.importorskip("ecoinfer.models.minilm")
    try:
        mm.minilm_dir()
    except EcoinferError as e:
        pytest.skip(str(e))
    tok = mm.load_minilm_tokenizer()
    root = tmp_path_factory.mktemp("minilm")
    cache: dict[bool, Path] = {}

    def get(dynamo: bool = True):  # noqa: ANN202
        if dynamo not in cache:
            path = root / f"minilm_{'dynamo' if dynamo else 'torchscript'}.onnx"
            cache[dynamo] = mm.export_minilm_onnx(path, dynamo=dynamo, tokenizer=tok)
        return cache[dynamo], mm.sample_inputs(SENTENCES, tok)

    return get


@pytest.fixture(scope="session")
def minilm(minilm_export):  # noqa: ANN001, ANN201
    """(path, feeds) of the dynamo export of all-MiniLM-L6-v2."""
    return minilm_export(True)


_TRITON_TESTS = Path(_TESTS) / "triton"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """A GPU test outside tests/triton builds and runs engines in this process, so it needs
    Triton compiling. A session that also collects tests/triton interprets (its modules set
    TRITON_INTERPRET=1 before Triton is imported, for their CPU tests); there such a test would
    run its kernels through the CPU interpreter, fail where the engine is recorded (the
    interpreter's copies are not kernels) or pass without testing the compiled kernels. Skip
    it there, saying how to run it. (One process cannot do both: Triton decides when
    @triton.jit decorates a kernel, at import, whether it will be interpreted.)"""
    from ecoinfer.kernels.triton.gemm import interpreting  # noqa: PLC0415

    if not interpreting():
        return
    skip = pytest.mark.skip(
        reason="a GPU test that needs Triton compiling, in a session that interprets: run the "
        "GPU tests of tests/triton in a pytest run of their own (pytest -m gpu tests "
        "--ignore=tests/triton, then pytest -m gpu tests/triton)"
    )
    for item in items:
        if "gpu" in item.keywords and _TRITON_TESTS not in Path(str(item.fspath)).parents:
            item.add_marker(skip)
