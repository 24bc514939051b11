"""Process-wide torch switches (TF32, cuDNN benchmark, the SDPA backend), set per call.

torch keeps these flags global. A kernel that needs one sets it, dispatches (asynchronous:
microseconds) and restores it while holding FLAGS_LOCK, so engines or contexts running on
several threads never see each other's settings. The lock is reentrant: a TF32 layer's
wrapper may call a tactic that pins the same flags again.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from typing import Any

import torch

FLAGS_LOCK = threading.RLock()


@contextlib.contextmanager
def pinned(flags: list[tuple[Any, str, Any]]) -> Iterator[None]:
    """Each (module, attribute) set to its value inside the block, under FLAGS_LOCK."""
    with FLAGS_LOCK:
        old = [getattr(mod, name) for mod, name, _ in flags]
        for mod, name, value in flags:
            setattr(mod, name, value)
        try:
            yield
        finally:
            for (mod, name, _), value in zip(flags, old):
                setattr(mod, name, value)


def tf32(on: bool) -> contextlib.AbstractContextManager[None]:
    """CUDA matmuls and cuDNN convolutions in TF32 (on) or exact FP32 (off) inside the block."""
    return pinned(
        [(torch.backends.cuda.matmul, "allow_tf32", on), (torch.backends.cudnn, "allow_tf32", on)]
    )
