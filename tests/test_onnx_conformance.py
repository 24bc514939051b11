"""ONNX's own node conformance cases (onnx.backend.test), run against ecoinfer.

Cases whose ops or dtypes ecoinfer does not support are skipped by the runner
(EcoinferBackend.is_compatible). Known failures are listed, each with its reason, in
tests/conformance_xfail/*.txt ("test_name_regex | reason"); the counts are in the README.
"""

from __future__ import annotations

import os
import re
import unittest
from pathlib import Path

import onnx.backend.test

from ecoinfer.onnx_backend import EcoinferBackend, unsupported_reason

XFAIL_DIR = Path(__file__).parent / "conformance_xfail"


def load_xfails() -> dict[str, str]:
    out: dict[str, str] = {}
    for f in sorted(XFAIL_DIR.glob("*.txt")):
        for line in f.read_text().splitlines():
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            name, _, reason = line.partition("|")
            out[name.strip()] = reason.strip() or "no reason given"
    return out


class ConformanceBackend(EcoinferBackend):
    """Skips (rather than fails) cases that use an op or dtype ecoinfer does not support."""

    @classmethod
    def prepare(cls, model, device="CPU", **kwargs):  # noqa: ANN001, ANN206
        reason = unsupported_reason(model)
        if reason is not None:
            raise unittest.SkipTest(f"unsupported: {reason}")
        return super().prepare(model, device, **kwargs)


backend_test = onnx.backend.test.BackendTest(ConformanceBackend, __name__)
# only the node cases: the model zoo cases need downloads
# CPU always; CUDA too when ECOINFER_CONFORMANCE_CUDA=1 (on a GPU machine)
backend_test.include(r"^test_.*_cpu$")
if os.environ.get("ECOINFER_CONFORMANCE_CUDA") == "1":
    backend_test.include(r"^test_.*_cuda$")
for _name in load_xfails():
    backend_test.xfail(rf"^{_name}_(cpu|cuda)$")
# the "simple", "pytorch-*" and "real" model collections are kept out: node cases only
globals().update(
    {
        k: v
        for k, v in backend_test.enable_report().test_cases.items()
        if k.startswith("OnnxBackendNodeModelTest")
    }
)


def test_xfail_patterns_name_real_cases() -> None:
    """Every expected failure names a case that exists, so the list cannot rot silently."""
    from onnx.backend.test.loader import load_model_tests  # noqa: PLC0415

    names = {c.name for c in load_model_tests(kind="node")}
    for pattern in load_xfails():
        assert any(re.fullmatch(pattern, n) for n in names), f"xfail '{pattern}' matches no case"
