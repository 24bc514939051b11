"""One execution context driven from several threads, each on its own CUDA stream (what
`ecoinfer bench --streams N` and compare do): every CUDA-graph replay shares the plan's
input and output buffers, so the context orders replays across streams (GPU)."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch
from test_build_options import _mlp
from test_link_skip import _block

from ecoinfer.engine.builder import BuildConfig, build
from ecoinfer.engine.runtime import ShapeProfile

CUDA = torch.cuda.is_available()


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")
def test_one_context_on_two_streams(tmp_path) -> None:  # noqa: ANN001
    shp = {"x": (8, 16)}
    eng = build(
        _block(tmp_path / "ffn.onnx"),
        BuildConfig(device="cuda", precision="float32", profiles=[ShapeProfile(shp, shp, shp)]),
    )
    ctx = eng.create_context()
    rng = np.random.default_rng(0)
    feeds = [
        torch.from_numpy(rng.standard_normal((8, 16)).astype(np.float32)).cuda() for _ in range(2)
    ]
    want = [ctx.run({"x": f}, as_torch=True)["y"].clone() for f in feeds]
    assert ctx.use_graphs and not torch.allclose(want[0], want[1])
    bad: list[int] = []

    def worker(k: int) -> None:
        s = torch.cuda.Stream()
        with torch.cuda.stream(s):
            outs = [ctx.run({"x": feeds[k]}, as_torch=True)["y"] for _ in range(200)]
            s.synchronize()
        bad.extend(k for o in outs if not torch.allclose(o, want[k], rtol=1e-5, atol=1e-5))

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert ctx.graph_replays > 400 and bad == []


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")
def test_threads_capture_cuda_graphs_at_the_same_time(tmp_path) -> None:  # noqa: ANN001
    """Four threads, each with its own context (Engine.run), meet every shape for the first
    time together: their CUDA-graph captures and eager warm-ups overlap. Every capture must
    succeed (no eager fallback) and every output match a single-threaded run."""
    lo, hi = {"x": (1, 16)}, {"x": (64, 16)}
    _mlp(tmp_path / "mlp.onnx")  # x[n, 16]: any batch up to 64
    eng = build(
        tmp_path / "mlp.onnx",
        BuildConfig(device="cuda", precision="float32", profiles=[ShapeProfile(lo, hi, hi)]),
    )
    rng = np.random.default_rng(1)
    feeds = {n: rng.standard_normal((n, 16)).astype(np.float32) for n in (3, 8, 17, 40, 64)}
    ref_ctx = eng.create_context(cuda_graphs=False)
    want = {n: ref_ctx.run({"x": f})["y"] for n, f in feeds.items()}
    start = threading.Barrier(4)
    bad: list = []

    def worker(k: int) -> None:
        try:
            start.wait()
            for n in list(feeds)[k:] + list(feeds)[:k]:  # each thread in another order
                for _ in range(3):
                    got = eng.run({"x": feeds[n]})["y"]
                    if not np.allclose(got, want[n], rtol=1e-5, atol=1e-5):
                        bad.append((k, n))
        except Exception as e:  # noqa: BLE001
            bad.append((k, repr(e)))

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert bad == []
    assert not [w for w in eng.warnings if "capture failed" in w], eng.warnings
