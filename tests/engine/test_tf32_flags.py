"""TF32 is a process-wide torch switch: layers set it per call under one lock, so threads
running FP32 and TF32 layers at the same time never see each other's setting."""

from __future__ import annotations

import threading
import time

import torch

from ecoinfer.engine.runtime import _with_precision
from ecoinfer.kernels.torch_flags import tf32


def _flags() -> tuple[bool, bool]:
    return torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32


def test_tf32_layers_and_fp32_layers_on_threads_see_their_own_setting() -> None:
    before = _flags()
    seen: dict[str, set] = {"tf32": set(), "fp32": set()}
    stop = threading.Event()

    def layer(kind: str):  # noqa: ANN202
        def fn(xs):  # noqa: ANN001, ANN202
            for _ in range(5):  # yield the GIL: the other thread tries to flip the flags
                seen[kind].add(_flags())
                time.sleep(0)
            return xs

        return fn

    tf32_layer = _with_precision(layer("tf32"), "tf32", torch.device("cuda"))
    fp32_layer = layer("fp32")

    def run_fp32() -> None:
        while not stop.is_set():
            with tf32(False):  # what exact_fp32 / a pinned FP32 tactic does
                fp32_layer([])

    t = threading.Thread(target=run_fp32)
    t.start()
    try:
        for _ in range(300):
            tf32_layer([])
    finally:
        stop.set()
        t.join()
    assert seen["tf32"] == {(True, True)} and seen["fp32"] == {(False, False)}
    assert _flags() == before  # restored


def test_precision_wrapper_only_wraps_tf32_on_cuda() -> None:
    def fn(xs):  # noqa: ANN001, ANN202
        return xs

    assert _with_precision(fn, "float32", torch.device("cuda")) is fn
    assert _with_precision(fn, "tf32", torch.device("cpu")) is fn
    assert _with_precision(fn, "tf32", torch.device("cuda")) is not fn
