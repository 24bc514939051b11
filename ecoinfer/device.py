"""Picking the device a command runs on, and naming it."""

from __future__ import annotations

import contextlib
import platform
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from ecoinfer.errors import EcoinferError


def pick_device(choice: str) -> str:
    """ "auto" -> cuda when a GPU is visible, else cpu; "cuda" without a GPU is an error."""
    import torch  # noqa: PLC0415

    if choice == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if choice.startswith("cuda") and not torch.cuda.is_available():
        raise EcoinferError("--device cuda: no CUDA GPU is visible to torch; use --device cpu")
    return choice


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def recover_failed_capture(device: object) -> None:
    """Leave the CUDA RNG usable after a CUDA-graph capture that failed part way.

    torch registers the default CUDA generator at capture begin and releases it only when the
    capture ends cleanly; after a failed capture (a host sync, an uncapturable call) every
    later torch.randn on that GPU raises "Offset increment outside graph capture". Swapping
    in a fresh copy of the generator's state (same seed and offset, not capturing) repairs it.
    """
    import torch  # noqa: PLC0415

    try:
        dev = torch.device(device)  # type: ignore[arg-type]
        idx = dev.index if dev.index is not None else torch.cuda.current_device()
        gen = torch.cuda.default_generators[idx]
        gen.graphsafe_set_state(gen.clone_state())
        torch.cuda.synchronize(idx)
    except Exception:  # noqa: BLE001, S110  (older torch without graph-safe states: nothing to do)
        pass


_HOST_CHECKS = threading.local()


@contextmanager
def thread_setting(store: threading.local, name: str, value: object) -> Iterator[None]:
    """`store.name = value` for this thread inside the block, restored after (None if unset)."""
    before = getattr(store, name, None)
    setattr(store, name, value)
    try:
        yield
    finally:
        setattr(store, name, before)


def host_checks_off() -> contextlib.AbstractContextManager[None]:
    """Skip the kernels' data-dependent checks that read a GPU tensor on the host (index
    bounds): each one is a device sync. The profiler runs a checked warm-up first, then times
    the plan with them off so the host stays ahead of the GPU, as in a CUDA-graph replay."""
    return thread_setting(_HOST_CHECKS, "off", True)


def host_checks_allowed(t: object) -> bool:
    """False where reading `t` on the host is not allowed or not wanted: a CUDA tensor while a
    CUDA graph is being captured, or inside host_checks_off()."""
    import torch  # noqa: PLC0415

    if not getattr(t, "is_cuda", False):
        return True
    if getattr(_HOST_CHECKS, "off", False):
        return False
    return not torch.cuda.is_current_stream_capturing()
