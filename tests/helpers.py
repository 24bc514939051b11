"""Shared test helpers: comparing against onnxruntime, exporting the code-built models."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch

RTOL = 1e-5
EXPORTERS = {"dynamo": True, "torchscript": False}
SENTENCES = [
    "How do I reset my password?",
    "My parcel never arrived and nobody answered my emails for a week.",
    "Can I get a refund for a damaged item?",
    "Thanks, that solved it!",
]


def rel_error(out: np.ndarray, ref: np.ndarray) -> tuple[float, float]:
    """(relative L2 error, max abs error), computed in float64."""
    o, r = np.asarray(out, np.float64), np.asarray(ref, np.float64)
    diff = np.linalg.norm(o - r)
    rel = float(diff / np.linalg.norm(r)) if np.linalg.norm(r) > 0 else float(diff)
    return rel, float(np.max(np.abs(o - r))) if o.size else 0.0


def assert_close(
    outs: dict[str, np.ndarray], refs: dict[str, np.ndarray], what: str, rtol: float = RTOL
) -> None:
    assert set(outs) == set(refs), f"{what}: output names {sorted(outs)} != {sorted(refs)}"
    for name, ref in refs.items():
        out = outs[name]
        assert out.shape == ref.shape, f"{what} '{name}': shape {out.shape} != {ref.shape}"
        assert out.dtype == ref.dtype, f"{what} '{name}': dtype {out.dtype} != {ref.dtype}"
        assert np.isfinite(out).all(), f"{what} '{name}': non-finite values"
        rel, max_abs = rel_error(out, ref)
        assert rel <= rtol, (
            f"{what} '{name}': rel error {rel:.3e} > {rtol:g} (max abs error {max_abs:.3e})"
        )


def run_onnxruntime(path: Path | bytes, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    import onnxruntime as ort  # noqa: PLC0415

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 2  # the CPU is shared: keep to 2 cores
    sess = ort.InferenceSession(
        path if isinstance(path, bytes) else str(path), opts, providers=["CPUExecutionProvider"]
    )
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(names, feeds)))


def numpy_feeds(inputs: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
    return {k: v.numpy() for k, v in inputs.items()}


def check_optimized(
    model_path: Path | bytes,
    feeds: dict[str, np.ndarray],
    level: int = 2,
    rtol: float = RTOL,
    **config: object,
):  # noqa: ANN201
    """Optimize the model (verify() after every pass) and check its outputs against
    onnxruntime on the original model. Returns (optimized graph, pass reports)."""
    from ecoinfer.api import Model  # noqa: PLC0415
    from ecoinfer.frontend.onnx import import_onnx  # noqa: PLC0415
    from ecoinfer.passes import OptimizeConfig, optimize  # noqa: PLC0415

    graph = import_onnx(model_path)
    optimized, reports = optimize(graph, OptimizeConfig(level=level, debug=True, **config))
    refs = run_onnxruntime(model_path, feeds)
    outs = Model(optimized).run(feeds)
    assert_close(outs, refs, f"optimized (level {level})", rtol=rtol)
    return optimized, reports


def compiled_run(argv: list[str], cwd: Path | None = None) -> str:
    """`python argv` in a fresh process with Triton compiling (TRITON_INTERPRET=0, for the GPU
    tests of a session that interprets): asserts it exits 0, returns its stdout."""
    # tests/ on the path, as pytest puts it: the scripts import the test modules and helpers
    path = os.pathsep.join(
        filter(None, [str(Path(__file__).resolve().parent), os.environ.get("PYTHONPATH")])
    )
    env = {**os.environ, "TRITON_INTERPRET": "0", "PYTHONPATH": path}
    p = subprocess.run([sys.executable, *argv], cwd=cwd, env=env, capture_output=True, text=True,
                       timeout=600)  # fmt: skip
    assert p.returncode == 0, p.stdout[-4000:] + p.stderr[-4000:]
    return p.stdout
